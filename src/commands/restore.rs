//! `lvmsync-rs restore ARCHIVE VOLUME[@POINT] DEST`: a point of a volume
//! from an archive, onto a device or a file (see
//! [`lvmsync::archive::restore`]).

use std::path::PathBuf;
use std::time::Instant;

use lvmsync::archive::restore::{self, Request};
use lvmsync::archive::Archive;
use lvmsync::units::{counted, human};
use lvmsync::Error;

use super::{usage_error, LogArgs, StoreArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The archive: a directory, file:///PATH, or s3://BUCKET[/PREFIX]
    pub archive: String,
    /// The volume's name in the archive, and the point: NAME@N, or NAME
    /// (or NAME@latest) for the latest
    pub volume: String,
    /// The device or file to restore onto
    pub dest: PathBuf,
    /// Create DEST as a regular file when it does not exist
    #[arg(long)]
    pub create: bool,
    /// Restore the whole volume, even when DEST holds a point of it that
    /// only the difference could be restored from
    #[arg(long)]
    pub full: bool,
    /// Print one JSON object instead of text (on failure too)
    #[arg(long)]
    pub json: bool,
    /// No summary on stderr; errors only
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

pub fn run(args: Args) -> Result<(), Error> {
    let (volume, point) =
        restore::parse_spec(&args.volume).unwrap_or_else(|e| usage_error("restore", &e));
    let started = Instant::now();
    let archive = Archive::open(&args.archive, &args.store.options(), false)?;
    let restored = restore::restore(
        &archive,
        &Request {
            volume,
            point,
            dest: args.dest,
            create: args.create,
            full: args.full,
            progress: args.log.style(args.quiet),
        },
    )?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        let mut doc = serde_json::to_value(&restored).expect("plain fields serialize");
        doc["command"] = "restore".into();
        doc["result"] = "ok".into();
        doc["seconds"] = seconds.into();
        println!("{doc}");
        return Ok(());
    }
    if args.quiet {
        return Ok(());
    }
    let what = match restored.from_point {
        Some(q) if q == restored.point => format!("already held point {q}: nothing to write"),
        Some(q) => format!("held point {q}: only what differs was restored"),
        None => "the whole volume was restored".into(),
    };
    eprintln!(
        "lvmsync-rs restore: {} holds point {} of {} ({}) now; {what}: {} checked, {} written from {} read in {} of {}, in {seconds:.1} s; the copy is synced",
        restored.dest,
        restored.point,
        restored.volume,
        restored.snapshot,
        counted(restored.records, "record"),
        human(restored.bytes_written),
        human(restored.bytes_read),
        counted(restored.reads, "ranged read"),
        counted(restored.deltas as u64, "delta"),
    );
    Ok(())
}
