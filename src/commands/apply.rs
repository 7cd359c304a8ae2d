//! `lvmsync-rs apply`: replays a delta on the backup copy, each record only
//! after it has passed its checks, and says what it did on stderr. With
//! the hidden `--remote`, the far end of `sync` and `backup`.

use std::path::PathBuf;

use lvmsync::apply::{self, describe_source, Applied};
use lvmsync::files::DeltaInput;
use lvmsync::progress::Progress;
use lvmsync::ship;
use lvmsync::units::{human, printable};
use lvmsync::Error;

use super::{KeyArgs, LogArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The delta (`-` for stdin)
    pub delta: String,
    /// The copy to update: a regular file or a block device
    pub dest: PathBuf,
    /// Create DEST as a regular file when it does not exist
    #[arg(long)]
    pub create: bool,
    /// Save the old contents of every range written to FILE (a new
    /// file), as a delta that restores them
    #[arg(long, value_name = "FILE")]
    pub snapback: Option<PathBuf>,
    /// The far end of `sync`: open DEST, say hello on stdout, apply,
    /// report on stdout
    #[arg(long, hide = true, requires = "expect_format")]
    pub remote: bool,
    /// With --remote: the delta format version the sender writes
    #[arg(long, hide = true, value_name = "VERSION", requires = "remote")]
    pub expect_format: Option<u32>,
    /// Apply even when DEST's recorded state says it holds another point
    /// in time than the one the delta applies to
    #[arg(long)]
    pub force: bool,
    /// No summary on stderr; errors only
    #[arg(short, long)]
    pub quiet: bool,
    /// Print one JSON object on stdout at the end (on failure too)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

pub fn run(args: Args) -> Result<(), Error> {
    let delta = DeltaInput::from_arg(&args.delta);
    if let (true, Some(format)) = (args.remote, args.expect_format) {
        return ship::receive(&ship::Receive {
            delta,
            dest: args.dest,
            create: args.create,
            force: args.force,
            format,
        });
    }
    // The delta's length, when it is a file, is what there is to read.
    let total = match &delta {
        // An encrypted one's envelope is a little longer than the delta.
        DeltaInput::File(path) => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        DeltaInput::Stdin => 0,
    };
    let shown = Progress::new(args.log.style(args.quiet), "apply", "applying", total);
    let options = apply::Options {
        create: args.create,
        snapback: args.snapback,
        force: args.force,
        finishing: None,
        progress: Some(shown.handle()),
    };
    let applied = apply::apply_delta(&delta, &args.dest, &options, &args.keys.secrets());
    drop(shown);
    let applied = applied?;
    if args.json {
        let t = &applied.totals;
        println!(
            "{}",
            serde_json::json!({
                "command": "apply",
                "result": "ok",
                "delta": delta.name(),
                "dest": applied.dest,
                "records": t.records,
                "data_records": applied.data_records,
                "zero_records": applied.zero_records,
                "data_bytes": t.data_bytes,
                "zero_bytes": t.zero_bytes,
                "payload_bytes": t.payload_bytes,
                "delta_bytes": applied.stream_len,
                "extended": applied.extended,
                "truncated_from": applied.truncated_from,
                "base": applied.header.base,
                "target": applied.header.target,
                "snapback": applied.snapback.as_ref().map(|(p, _, len)| serde_json::json!({"path": p, "bytes": len})),
            })
        );
    }
    if !args.quiet {
        eprintln!("{}", describe(&delta.name(), &applied));
    }
    Ok(())
}

/// The paragraph printed after a successful apply.
pub fn describe(delta: &str, s: &Applied) -> String {
    // The header's names come from whoever made the delta.
    let header = s.header.printable();
    let delta = printable(delta);
    let t = &s.totals;
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    let mut text = format!(
        "lvmsync-rs apply: applied {delta} to {}: {} record{}, {} of data in {} DATA record{} and {} of zeroes in {} ZERO record{}, from a delta of {} bytes ({}",
        s.dest,
        t.records,
        plural(t.records),
        human(t.data_bytes),
        s.data_records,
        plural(s.data_records),
        human(t.zero_bytes),
        s.zero_records,
        plural(s.zero_records),
        s.stream_len,
        human(s.stream_len),
    );
    if t.data_bytes > 0 {
        text.push_str(&format!(
            "; payload {} bytes, {:.1}% of the data",
            t.payload_bytes,
            t.payload_bytes as f64 * 100.0 / t.data_bytes as f64
        ));
    }
    text.push_str(&format!(
        "). Every record's checksums, the END record and the stream digest matched; {} is synced.",
        s.dest
    ));
    if s.extended {
        text.push_str(&format!(
            " {} was extended from {} to the origin's size, {} bytes.",
            s.dest,
            s.dest_size_before
                .map(|n| format!("{n} bytes"))
                .unwrap_or_else(|| "nothing (created)".to_string()),
            s.header.origin_size
        ));
    } else if let Some(before) = s.truncated_from {
        text.push_str(&format!(
            " {} was cut from {before} bytes to the origin's size, {} bytes, as the delta asks.",
            s.dest, s.header.origin_size
        ));
    } else if s.dest_size_before.is_some_and(|n| n > s.header.origin_size) {
        text.push_str(&format!(
            " {} is larger than the origin ({} bytes); its bytes past that were left as they were.",
            s.dest, s.header.origin_size
        ));
    }
    text.push_str(&format!(
        " The delta is of {} (from {}, origin of {} bytes), written by {}.",
        describe_source(&header.source).unwrap_or_else(|| "an unnamed source".to_string()),
        header.source.kind.describe(),
        s.header.origin_size,
        header.tool
    ));
    if let Some((path, st, len)) = &s.snapback {
        text.push_str(&format!(
            " Snapback: {} holds the old contents ({} record{}, {} bytes) and is synced; `lvmsync-rs apply {} {}` restores them.",
            path.display(),
            st.records,
            plural(st.records),
            len,
            path.display(),
            s.dest
        ));
    }
    text
}
