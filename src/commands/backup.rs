//! `lvmsync-rs backup VG/ORIGIN DEST`: the nightly backup, done for the
//! user (see [`lvmsync::backup`]).

use std::time::Instant;

use lvmsync::backup::{self, Outcome};
use lvmsync::snapshots::{SnapshotSize, DEFAULT_SNAPSHOT_SIZE};
use lvmsync::units::{counted, human};
use lvmsync::Error;

use super::{Shipping, StoreArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The volume to back up: VG/LV
    pub origin: String,
    /// [user@]host:PATH or a local PATH: a block device or a regular file
    pub dest: String,
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
}

pub fn run(args: Args) -> Result<(), Error> {
    let request = backup::Request {
        origin: args.origin.clone(),
        dest: args.dest.clone(),
        snapshot_size: args.snapshot_size,
        compression: args.ship.compress.into(),
        link: args.ship.link(false, "backup"),
        reseed: args.reseed,
        name: args.name.clone(),
        store: args.store.options(),
    };
    let started = Instant::now();
    let mut outcome = Outcome {
        result: "failed",
        origin: args.origin.clone(),
        dest: args.dest.clone(),
        ..Outcome::default()
    };
    let quiet = args.ship.quiet;
    let result = backup::run(&request, &mut outcome, |note| {
        if !quiet {
            eprintln!("lvmsync-rs backup: {note}");
        }
    });
    outcome.transfer.seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => outcome.result = "ok",
        Err(e) => {
            outcome.error = Some(e.to_string().replace('\n', " "));
            outcome.error_kind = Some(e.kind().name());
            outcome.exit_code = Some(e.kind().exit_code());
        }
    }
    if args.ship.json {
        println!(
            "{}",
            serde_json::to_string(&outcome).expect("plain fields serialize")
        );
    }
    if result.is_ok() && !quiet {
        let t = &outcome.transfer;
        let mut line = format!(
            "lvmsync-rs backup: {} now holds {} ({}): {} of data and {} of zeroes in {}, {} bytes ({}) sent in {:.1} s",
            args.dest,
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
        eprintln!("{line}");
    }
    result
}
