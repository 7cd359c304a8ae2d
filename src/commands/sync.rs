//! `lvmsync-rs sync` (and `lvmsync-rs SNAPSHOT [user@]host:DEST`): sends
//! the changes since a snapshot was taken to an `apply` at DEST, here or
//! through ssh, and checks its report; no file is written on either side.

use std::path::PathBuf;
use std::time::Instant;

use lvmsync::ship::Transfer;
use lvmsync::sync::{self, What};
use lvmsync::units::{counted, human, printable};
use lvmsync::Error;

use super::{usage_error, Shipping, TableArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A classic or thin LVM snapshot (with --full, SOURCE: any device or
    /// image); with --cow or --thin-metadata, DEST alone is named
    #[arg(value_name = "SNAPSHOT", required = true)]
    pub snapshot: String,
    /// [user@]host:PATH, or a local PATH
    #[arg(value_name = "DEST")]
    pub dest: Option<String>,
    /// Copy all of SOURCE (any device or image, a snapshot included)
    /// instead of a snapshot's changes: the first copy (the seed). Blocks
    /// of zeroes go as ZERO records, without data
    #[arg(long, conflicts_with_all = ["cow", "thin_metadata", "data_source", "origin_size"])]
    pub full: bool,
    #[command(flatten)]
    pub table: TableArgs,
    /// Read the changed chunks' data from PATH (a later snapshot, or any
    /// device or image of the origin's size) instead of the origin
    #[arg(long, value_name = "PATH")]
    pub data_source: Option<PathBuf>,
    #[command(flatten)]
    pub ship: Shipping,
    /// Apply even when DEST's recorded state says it holds another point
    /// in time than the one the delta applies to
    #[arg(long)]
    pub force: bool,
    /// Say what would be sent, and check DEST as the apply would, without
    /// reading any data or sending anything
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

/// SNAPSHOT and DEST as given: one name or two.
fn names(args: &Args) -> Vec<String> {
    std::iter::once(args.snapshot.clone())
        .chain(args.dest.clone())
        .collect()
}

pub fn run(args: Args) -> Result<(), Error> {
    let table = args.table.names_a_table();
    let (snapshot, dest) = match (names(&args).as_slice(), table) {
        ([src, dest], false) if args.full => (src.clone(), dest.clone()),
        ([dest], true) => (String::new(), dest.clone()),
        (_, true) if args.data_source.is_none() => usage_error(
            "sync",
            "--cow needs --data-source PATH: the device or image holding the origin's new contents",
        ),
        (_, true) => usage_error("sync", "with --cow or --thin-metadata, name only DEST"),
        ([snapshot, dest], false) => (snapshot.clone(), dest.clone()),
        (_, false) if args.full => usage_error(
            "sync",
            "name a SOURCE and a DEST ([user@]host:PATH or a local PATH)",
        ),
        _ => usage_error(
            "sync",
            "name a SNAPSHOT and a DEST ([user@]host:PATH or a local PATH)",
        ),
    };
    let what = if args.full {
        What::Full(PathBuf::from(snapshot))
    } else {
        let source = args
            .table
            .change_source(
                (!table).then_some(snapshot),
                true,
                args.data_source.is_some(),
            )
            .unwrap_or_else(|e| usage_error("sync", &e));
        What::Changes {
            source,
            data_source: args.data_source,
        }
    };
    let request = sync::Request {
        what,
        compression: args.ship.compress,
        dest: dest.clone(),
        link: args.ship.link(args.force, "sync"),
    };
    if args.dry_run {
        return dry_run(&request, args.ship.json, args.ship.quiet);
    }
    let started = Instant::now();
    let mut transfer = Transfer {
        result: "failed",
        ..Transfer::default()
    };
    let result = sync::sync(&request, &mut transfer);
    transfer.seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => transfer.result = "ok",
        Err(e) => {
            transfer.error = Some(e.to_string().replace('\n', " "));
            transfer.error_kind = Some(e.kind().name());
            transfer.exit_code = Some(e.kind().exit_code());
        }
    }
    if args.ship.json {
        println!(
            "{}",
            serde_json::to_string(&transfer).expect("plain fields serialize")
        );
    }
    if result.is_ok() && !args.ship.quiet {
        if transfer.resumed_from > 0 {
            eprintln!(
                "lvmsync-rs sync: {dest} had confirmed this transfer up to byte {}: resumed from there",
                transfer.resumed_from
            );
        }
        eprintln!(
            "lvmsync-rs sync: {} from {}: {} of data and {} of zeroes, sent as a delta of {} bytes ({}) in {:.1} s ({}/s) to {dest}, applied and checked there; the copy is synced",
            counted(transfer.records, "record"),
            transfer.source.as_deref().unwrap_or("?"),
            human(transfer.data_bytes),
            human(transfer.zero_bytes),
            transfer.bytes_on_wire,
            human(transfer.bytes_on_wire),
            transfer.seconds,
            human((transfer.bytes_read as f64 / transfer.seconds.max(1e-3)) as u64),
        );
        if let Some(auto) = &transfer.auto {
            eprintln!("lvmsync-rs sync: --compress auto: {}", auto.line());
        }
    }
    result
}

/// Prints what the sync would do.
fn dry_run(request: &sync::Request, json: bool, quiet: bool) -> Result<(), Error> {
    let p = sync::preview(request)?;
    if json {
        let mut doc = serde_json::to_value(&p).expect("plain fields serialize");
        doc["command"] = "sync".into();
        doc["result"] = "ok".into();
        doc["dry_run"] = true.into();
        println!("{doc}");
    }
    if quiet {
        return Ok(());
    }
    let holds = match (&p.dest_status.holds, &p.dest_status.applying) {
        (Some(h), _) => format!("which holds {}", h.snapshot),
        (None, Some(a)) => format!("which is partway to {}", a.target.snapshot),
        (None, None) if p.dest_status.exists => "whose content is not recorded".into(),
        (None, None) => "which would be created".into(),
    };
    let mut line = format!(
        "lvmsync-rs sync: dry run: would send {} extent{} ({}, {} bytes) of {} to {} ({holds})",
        p.extents,
        if p.extents == 1 { "" } else { "s" },
        human(p.bytes),
        p.bytes,
        printable(&p.source),
        printable(&p.dest),
    );
    if p.resume_from > 0 {
        line.push_str(&format!(", resuming at byte {}", p.resume_from));
    }
    line.push_str("; blocks of zeroes go without data, the rest compressed; nothing was sent");
    eprintln!("{line}");
    Ok(())
}
