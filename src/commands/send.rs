//! `lvmsync-rs send`: the changes since a snapshot was taken, as a delta
//! stream written to a file or to stdout.

use std::path::PathBuf;

use lvmsync::adapt::Compress;
use lvmsync::send::{self, Delta, Output};
use lvmsync::units::{counted, human};
use lvmsync::Error;

use super::{usage_error, ChangeArgs, KeyArgs, LogArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub changes: ChangeArgs,
    /// Read the changed chunks' data from PATH (a later snapshot, or any
    /// device or image of the origin's size) instead of the origin
    #[arg(long, value_name = "PATH")]
    pub data_source: Option<PathBuf>,
    /// Write the delta to FILE, or to stdout with `-o -`
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Compress DATA records: lz4, zstd[:LEVEL] (LEVEL 1 to 19, 3 by
    /// default), none, or auto (zstd at the level that keeps the output
    /// busy, chosen as the delta is written); each is stored raw when that
    /// does not make it smaller
    #[arg(long, value_name = "HOW", default_value = "lz4")]
    pub compress: Compress,
    /// Encrypt the delta, with the key of --key-file, or else a key made
    /// from the passphrase (--passphrase-file, --passphrase-fd or
    /// LVMSYNC_PASSPHRASE)
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// No summary on stderr; errors only
    #[arg(short, long)]
    pub quiet: bool,
    /// Print one JSON object on stdout at the end (on failure too); not
    /// with -o -, where the delta goes
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub log: LogArgs,
}

pub fn run(args: Args) -> Result<(), Error> {
    let source = args
        .changes
        .change_source("send", true, args.data_source.is_some());
    let output = match args.output {
        Some(path) if path.as_os_str() == "-" => Output::Stdout,
        Some(path) => Output::File(path),
        None => usage_error(
            "send",
            "say where the delta goes: -o FILE, or -o - for stdout (to pipe it into apply or ssh)",
        ),
    };
    if output == Output::Stdout {
        if args.json {
            usage_error(
                "send",
                "--json writes to stdout, where -o - writes the delta: give -o FILE",
            );
        }
        send::refuse_terminal(std::io::IsTerminal::is_terminal(&std::io::stdout()))?;
    }
    let seal = if args.encrypt {
        Some(sealing_stream(&args.keys)?)
    } else {
        if args.keys.key_file.is_some() || args.keys.passphrase_named() {
            usage_error(
                "send",
                "a key or passphrase is for --encrypt: give --encrypt to encrypt the delta",
            );
        }
        None
    };
    let mut delta =
        Delta::of_changes(&source, args.data_source.as_deref(), args.compress.header())?;
    delta.compress(args.compress);
    let written = send::write_delta(&delta, &output, args.log.style(args.quiet), seal.as_ref())?;
    let auto = delta.auto.as_ref().map(|a| a.report());
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "command": "send",
                "result": "ok",
                "source": delta.name,
                "output": written.to,
                "records": written.totals.records,
                "data_bytes": written.totals.data_bytes,
                "zero_bytes": written.totals.zero_bytes,
                "payload_bytes": written.totals.payload_bytes,
                "delta_bytes": written.length,
                "compression": delta.compression_name(),
                "auto": auto,
                "encrypted": written.sealed.is_some(),
                "written_bytes": written.sealed.unwrap_or(written.length),
                "base": delta.header.base,
                "target": delta.header.target,
            })
        );
    }
    if args.quiet {
        return Ok(());
    }
    let sealed = match written.sealed {
        Some(n) => format!(", encrypted as {n} bytes ({})", human(n)),
        None => String::new(),
    };
    eprintln!(
        "lvmsync-rs send: {} from {}: {} of data and {} of zeroes, written as a delta of {} bytes ({}){sealed} to {}",
        counted(written.totals.records, "record"),
        delta.name,
        human(written.totals.data_bytes),
        human(written.totals.zero_bytes),
        written.length,
        human(written.length),
        written.to
    );
    if let Some(auto) = &auto {
        eprintln!("lvmsync-rs send: --compress auto: {}", auto.line());
    }
    Ok(())
}

/// The stream a delta is sealed in: under the key file's key, or a key
/// made from the passphrase.
fn sealing_stream(keys: &KeyArgs) -> Result<lvmsync::crypt::Stream, Error> {
    use lvmsync::crypt::{Envelope, Stream};
    let secrets = keys.secrets();
    if keys.key_file.is_some() && keys.passphrase_named() {
        usage_error(
            "send",
            "--encrypt takes a key file or a passphrase, not both",
        );
    }
    if let Some(key) = secrets.key()? {
        let envelope = Envelope::for_key(&key)?;
        return Ok(Stream::new(&envelope, &key, b""));
    }
    match secrets.passphrase()? {
        Some(pass) => {
            let (envelope, key) = Envelope::for_passphrase(&pass)?;
            Ok(Stream::new(&envelope, &key, b""))
        }
        None => usage_error(
            "send",
            "--encrypt needs a key: --key-file FILE (lvmsync-rs key new FILE makes one), or a passphrase from --passphrase-file FILE, --passphrase-fd N or LVMSYNC_PASSPHRASE",
        ),
    }
}
