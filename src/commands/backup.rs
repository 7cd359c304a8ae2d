//! `lvmsync-rs backup VG/ORIGIN DEST`: the nightly backup, done for the
//! user (see [`lvmsync::backup`]).

use std::path::PathBuf;
use std::time::Instant;

use lvmsync::backup::{self, Outcome};
use lvmsync::config;
use lvmsync::snapshots::{SnapshotSize, DEFAULT_SNAPSHOT_SIZE};
use lvmsync::units::{counted, human, printable};
use lvmsync::Error;

use super::{usage_error, Shipping, StoreArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The volume to back up: VG/LV
    #[arg(required_unless_present = "config")]
    pub origin: Option<String>,
    /// [user@]host:PATH or a local PATH: a block device or a regular file;
    /// or an archive (a directory, file:///PATH, s3://BUCKET[/PREFIX])
    #[arg(required_unless_present = "config")]
    pub dest: Option<String>,
    /// Back up every volume FILE names (TOML: [defaults] and one
    /// [[volume]] each, with origin, dest and any option), one after the
    /// other; one failing does not stop the others
    #[arg(long, value_name = "FILE", conflicts_with_all = ["origin", "dest"])]
    pub config: Option<PathBuf>,
    /// COW space of each classic snapshot: bytes (with k/M/G/T) or
    /// N%ORIGIN, N%VG, N%FREE (thin snapshots need none)
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_SNAPSHOT_SIZE, value_parser = SnapshotSize::parse)]
    pub snapshot_size: SnapshotSize,
    /// Copy the whole volume, whatever DEST holds
    #[arg(long)]
    pub reseed: bool,
    /// With an archive as DEST: the volume's name in it (default
    /// HOST/VG/LV)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub ship: Shipping,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Say what the run would do (seed, incremental or repair; the bytes
    /// to send; the snapshots to create and remove) without doing any of it
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

/// Runs the backup the arguments name, or every backup of `--config`;
/// `Ok(0)` when all went well, else the exit status of the failures
/// (already reported, each on its own line).
pub fn run(args: Args) -> Result<u8, Error> {
    let link = args.ship.link(false, "backup");
    let requests = match (&args.config, &args.origin, &args.dest) {
        (Some(path), None, None) => {
            if args.reseed || args.name.is_some() {
                usage_error(
                    "backup",
                    "--reseed and --name go with one ORIGIN and DEST, not with --config",
                );
            }
            match config::load(path, &link) {
                // The key or passphrase given opens each encrypted archive.
                Ok(mut requests) => {
                    for r in &mut requests {
                        r.store.secrets = args.store.keys.secrets();
                    }
                    requests
                }
                Err(e) => return Err(failed(e.into(), args.ship.json)),
            }
        }
        (None, Some(origin), Some(dest)) => vec![backup::Request {
            origin: origin.clone(),
            dest: dest.clone(),
            snapshot_size: args.snapshot_size.clone(),
            compression: args.ship.compress,
            link,
            reseed: args.reseed,
            name: args.name.clone(),
            store: args.store.options(),
        }],
        _ => usage_error("backup", "name ORIGIN and DEST, or give --config FILE"),
    };
    let quiet = args.ship.quiet;
    if args.dry_run {
        return dry_run(&requests, &args)
            .map(|()| 0)
            .map_err(|e| failed(e, args.ship.json));
    }
    if args.config.is_none() {
        let (outcome, result) = run_one(&requests[0], quiet);
        if args.ship.json {
            println!(
                "{}",
                serde_json::to_string(&outcome).expect("plain fields serialize")
            );
        }
        return result.map(|()| 0);
    }
    // Each volume in turn; one failing does not stop the others.
    let mut outcomes = Vec::new();
    for request in &requests {
        let (outcome, result) = run_one(request, quiet);
        if let Err(e) = &result {
            eprintln!(
                "lvmsync-rs: error: {} to {}: {}",
                printable(&request.origin),
                printable(&request.dest),
                printable(&e.to_string().replace('\n', " "))
            );
        }
        outcomes.push(outcome);
    }
    let code = config::exit_status(&outcomes);
    let failed = outcomes.iter().filter(|o| o.result != "ok").count();
    if args.ship.json {
        println!(
            "{}",
            serde_json::json!({
                "command": "backup",
                "result": if failed == 0 { "ok" } else { "failed" },
                "config": args.config.as_ref().map(|p| p.display().to_string()),
                "volumes_total": outcomes.len(),
                "volumes_failed": failed,
                "exit_code": code,
                "volumes": outcomes,
            })
        );
    }
    if !quiet || failed > 0 {
        eprintln!(
            "lvmsync-rs backup: {} volume{}: {} backed up, {failed} failed",
            outcomes.len(),
            if outcomes.len() == 1 { "" } else { "s" },
            outcomes.len() - failed
        );
    }
    Ok(code)
}

/// `e`, its failure object printed first with `--json` (the backups' own
/// objects are not made yet).
fn failed(e: Error, json: bool) -> Error {
    if json {
        super::print_failure("backup", &e);
    }
    e
}

/// One backup, and what it did; its summary on stderr unless `quiet`.
fn run_one(request: &backup::Request, quiet: bool) -> (Outcome, Result<(), Error>) {
    let started = Instant::now();
    let mut outcome = Outcome {
        result: "failed",
        origin: request.origin.clone(),
        dest: request.dest.clone(),
        ..Outcome::default()
    };
    let result = backup::run(request, &mut outcome, |note| {
        if !quiet {
            eprintln!("lvmsync-rs backup: {note}");
        }
    });
    outcome.transfer.seconds = started.elapsed().as_secs_f64();
    // The transfer's own result says the same as the backup's.
    match &result {
        Ok(()) => {
            outcome.result = "ok";
            outcome.transfer.result = "ok";
        }
        Err(e) => {
            outcome.transfer.result = "failed";
            outcome.error = Some(e.to_string().replace('\n', " "));
            outcome.error_kind = Some(e.kind().name());
            outcome.exit_code = Some(e.kind().exit_code());
        }
    }
    if result.is_ok() && !quiet {
        eprintln!("{}", summary(&outcome));
    }
    (outcome, result)
}

/// The line a successful backup ends with.
fn summary(outcome: &Outcome) -> String {
    let t = &outcome.transfer;
    let mut line = format!(
        "lvmsync-rs backup: {} now holds {} ({}): {} of data and {} of zeroes in {}, {} bytes ({}) sent in {:.1} s",
        outcome.dest,
        outcome.snapshot.as_deref().unwrap_or("?"),
        outcome.kind.as_deref().unwrap_or("?"),
        human(t.data_bytes),
        human(t.zero_bytes),
        counted(t.records, "record"),
        t.bytes_on_wire,
        human(t.bytes_on_wire),
        t.seconds,
    );
    if t.resumed_from > 0 {
        line.push_str(&format!(", resumed at byte {}", t.resumed_from));
    }
    if let (Some(volume), Some(point)) = (&outcome.volume, outcome.point) {
        line.push_str(&format!("; stored as point {point} of {volume}"));
    }
    if !outcome.removed.is_empty() {
        line.push_str(&format!("; removed {}", outcome.removed.join(", ")));
    }
    line
}

/// What each backup would do.
fn dry_run(requests: &[backup::Request], args: &Args) -> Result<(), Error> {
    let mut previews = Vec::new();
    for request in requests {
        let p = backup::preview(request)?;
        if !args.ship.quiet {
            for note in &p.notes {
                eprintln!("lvmsync-rs backup: {note}");
            }
            eprintln!(
                "lvmsync-rs backup: dry run: {} to {}: {}; nothing was done",
                request.origin,
                request.dest,
                p.describe()
            );
        }
        previews.push(p);
    }
    if args.ship.json {
        let mut doc = if args.config.is_some() {
            serde_json::json!({ "volumes": previews })
        } else {
            serde_json::to_value(&previews[0]).expect("plain fields serialize")
        };
        doc["command"] = "backup".into();
        doc["result"] = "ok".into();
        doc["dry_run"] = true.into();
        println!("{doc}");
    }
    Ok(())
}
