//! `lvmsync-rs backup VG/ORIGIN DEST`: the nightly backup, done for the
//! user. Each run takes a new snapshot of the origin and brings DEST to it:
//! the first run copies the whole snapshot (the seed), later runs send what
//! the previous snapshot (the base) recorded as changed, with the data read
//! from the new snapshot, so DEST becomes a consistent point in time while
//! the origin keeps being written. The new snapshot then replaces the base.
//!
//! The snapshots it creates carry an LVM tag naming DEST; it never touches
//! any other. DEST's state (see [`crate::state`]) says which snapshot DEST
//! holds, or which transfer is partway; every run starts by reconciling the
//! tagged snapshots with that state, so a run that died at any step is
//! recovered by the next one.

use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::blockdev::Source;
use crate::commands::list::Target;
use crate::commands::send::Prepared;
use crate::commands::sync::{clip, Link, Report, Session};
use crate::commands::verify;
use crate::extents::Extent;
use crate::send::Changes;
use crate::snapshots::{self, SnapshotSize, Volume};
use crate::state::State;
use crate::stream::{Compression, Header, SourceInfo, SourceKind};
use crate::transport::Dest;
use crate::units::human;
use crate::Error;

/// A base snapshot whose COW space is fuller than this, in percent, gets
/// a warning.
pub const FULL_WARNING: f64 = 80.0;

pub struct Args {
    /// `VG/LV`.
    pub origin: String,
    /// `[user@]host:PATH` or a local path.
    pub dest: String,
    pub snapshot_size: SnapshotSize,
    pub compression: Compression,
    pub create: bool,
    pub rsh: String,
    pub remote_path: String,
    pub hello_timeout: Duration,
    /// Copy the whole snapshot even when DEST holds a base.
    pub reseed: bool,
    pub quiet: bool,
    pub json: bool,
}

/// What `--json` prints.
#[derive(Debug, Default, Serialize)]
struct Summary {
    result: &'static str,
    error: Option<String>,
    origin: String,
    dest: String,
    /// `seed`, `incremental`, `resumed seed` or `resumed incremental`.
    kind: Option<String>,
    /// The snapshot DEST held before, if any.
    base: Option<String>,
    /// The snapshot DEST holds now.
    snapshot: Option<String>,
    /// Tool-owned snapshots removed by this run.
    removed: Vec<String>,
    notes: Vec<String>,
    #[serde(flatten)]
    transfer: Report,
}

pub fn run(args: Args) -> Result<(), Error> {
    let started = Instant::now();
    let mut summary = Summary {
        result: "failed",
        origin: args.origin.clone(),
        dest: args.dest.clone(),
        ..Summary::default()
    };
    let result = backup(&args, &mut summary);
    summary.transfer.seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => summary.result = "ok",
        Err(e) => summary.error = Some(e.to_string().replace('\n', " ")),
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("plain fields serialize")
        );
    }
    if result.is_ok() && !args.quiet {
        let t = &summary.transfer;
        let mut line = format!(
            "lvmsync-rs backup: {} now holds {} ({}): {} of data and {} of zeroes in {} records, {} bytes ({}) sent in {:.1} s",
            args.dest,
            summary.snapshot.as_deref().unwrap_or("?"),
            summary.kind.as_deref().unwrap_or("?"),
            human(t.data_bytes),
            human(t.zero_bytes),
            t.records,
            t.bytes_on_wire,
            human(t.bytes_on_wire),
            t.seconds,
        );
        if t.resumed_from > 0 {
            line.push_str(&format!(", resumed at byte {}", t.resumed_from));
        }
        if !summary.removed.is_empty() {
            line.push_str(&format!("; removed {}", summary.removed.join(", ")));
        }
        eprintln!("{line}");
    }
    result
}

/// What a run does, decided from the tagged snapshots and DEST's state.
/// Made once per run, so the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Plan {
    /// Copy all of `new` (a resumed copy from `resume` on).
    Seed { new: Volume, resume: u64 },
    /// Send what `base` recorded, with the data of `new`.
    Incremental {
        base: Volume,
        new: Volume,
        resume: u64,
    },
    /// Compare DEST with `new` and send the blocks that differ (DEST has a
    /// recorded state, but no base to send changes from).
    Repair { new: Volume },
}

fn note(summary: &mut Summary, quiet: bool, text: String) {
    if !quiet {
        eprintln!("lvmsync-rs backup: {text}");
    }
    summary.notes.push(text);
}

fn backup(args: &Args, summary: &mut Summary) -> Result<(), Error> {
    let dest = Dest::parse(&args.dest)?;
    let origin = snapshots::origin(&args.origin)?;
    let tag = snapshots::tag_for(&args.dest);
    let _lock = Lock::take(&tag, &args.origin, &args.dest)?;
    let owned = snapshots::owned(&origin, &tag)?;
    let link = Link {
        rsh: args.rsh.clone(),
        remote_path: args.remote_path.clone(),
        create: args.create,
        force: false,
        hello_timeout: args.hello_timeout,
    };
    let mut session = Session::connect(&dest, &link, args.quiet, &mut summary.transfer)?;
    let state = session.dest_state().cloned();
    let plan = match plan(args, summary, &origin, &owned, state.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            session.stop();
            return Err(e);
        }
    };
    // Every tagged snapshot but the ones the plan uses is a leftover.
    let keep: Vec<&str> = match &plan {
        Plan::Seed { new, .. } | Plan::Repair { new } => vec![new.lv_uuid.as_str()],
        Plan::Incremental { base, new, .. } => vec![base.lv_uuid.as_str(), new.lv_uuid.as_str()],
    };
    for lv in owned
        .iter()
        .filter(|lv| !keep.contains(&lv.lv_uuid.as_str()))
    {
        snapshots::remove(lv, &tag)?;
        summary.removed.push(lv.full_name());
    }
    let (header, source, extents, new) = match plan {
        Plan::Repair { new } => {
            session.stop();
            summary.kind = Some("repair".into());
            summary.snapshot = Some(new.full_name());
            let outcome = verify::compare(&verify::Args {
                src: new.device(),
                dest: args.dest.clone(),
                block_size: crate::verify::DEFAULT_BLOCK_SIZE,
                repair: true,
                rsh: args.rsh.clone(),
                remote_path: args.remote_path.clone(),
                hello_timeout: args.hello_timeout,
                json: false,
                target: Some(new.point_in_time(&origin)),
            })?;
            let t = &mut summary.transfer;
            t.bytes_read = outcome.bytes_read;
            t.data_bytes = outcome.differing_bytes;
            t.bytes_on_wire = outcome.delta_bytes;
            note(
                summary,
                args.quiet,
                format!(
                    "compared {} with {}: {} differed and were sent ({} bytes of delta)",
                    args.dest,
                    new.full_name(),
                    human(outcome.differing_bytes),
                    outcome.delta_bytes
                ),
            );
            remove_all_but(&origin, &tag, &new, summary)?;
            return Ok(());
        }
        Plan::Seed { new, resume } => {
            summary.kind = Some(if resume > 0 { "resumed seed" } else { "seed" }.into());
            let (mut header, source, extents) = full_copy(&origin, &new, args.compression)?;
            header.resume_from = resume;
            (header, source, (clip(&extents, resume), Vec::new()), new)
        }
        Plan::Incremental { base, new, resume } => {
            summary.kind = Some(
                if resume > 0 {
                    "resumed incremental"
                } else {
                    "incremental"
                }
                .into(),
            );
            summary.base = Some(base.full_name());
            if let Some(p) = base.cow_percent().filter(|p| *p > FULL_WARNING) {
                note(summary, args.quiet, format!(
                    "warning: the base snapshot {} is {p:.0}% full; when its COW space runs out the kernel invalidates it and the next backup has no base: give a larger --snapshot-size",
                    base.full_name()
                ));
            }
            let mut prepared = Prepared::new(
                &Target::Snapshot(base.full_name()),
                Some(&new.device()),
                args.compression,
            )?;
            prepared.header.base = Some(base.point_in_time(&origin));
            prepared.header.target = Some(new.point_in_time(&origin));
            prepared.header.resume_from = resume;
            let changes = prepared.listing.changes();
            let extents = (clip(changes.read, resume), clip(changes.zero, resume));
            (prepared.header, prepared.source, extents, new)
        }
    };
    summary.snapshot = Some(new.full_name());
    session.check_base(&args.dest, &header, false)?;
    let changes = Changes {
        read: &extents.0,
        zero: &extents.1,
    };
    session.ship(&header, &source, changes, &mut summary.transfer)?;
    // DEST holds `new` now, and its state says so: the old base goes.
    remove_all_but(&origin, &tag, &new, summary)
}

/// Removes the snapshots tagged `tag` other than `keep`.
fn remove_all_but(
    origin: &Volume,
    tag: &str,
    keep: &Volume,
    summary: &mut Summary,
) -> Result<(), Error> {
    for lv in snapshots::owned(origin, tag)? {
        if lv.lv_uuid != keep.lv_uuid {
            snapshots::remove(&lv, tag)?;
            summary.removed.push(lv.full_name());
        }
    }
    Ok(())
}

/// Decides what to send, and creates the new snapshot when one is needed.
fn plan(
    args: &Args,
    summary: &mut Summary,
    origin: &Volume,
    owned: &[Volume],
    state: Option<&State>,
) -> Result<Plan, Error> {
    let by_uuid = |uuid: &str| owned.iter().find(|lv| lv.lv_uuid == uuid).cloned();
    let ours = |uuid: &str, origin_uuid: &str| {
        if origin_uuid == origin.lv_uuid {
            by_uuid(uuid)
        } else {
            None
        }
    };
    let create = || -> Result<Volume, Error> {
        let name = snapshots::new_name(origin);
        Ok(snapshots::create(
            origin,
            &name,
            &snapshots::tag_for(&args.dest),
            &args.snapshot_size,
        )?)
    };
    if args.reseed {
        note(
            summary,
            args.quiet,
            "--reseed: copying the whole volume".into(),
        );
        return Ok(Plan::Seed {
            new: create()?,
            resume: 0,
        });
    }
    // A transfer partway, to a snapshot that is still here: resume it.
    if let Some(a) = state.and_then(|s| s.applying.as_ref()) {
        let new = ours(&a.target.snapshot_uuid, &a.target.origin_uuid);
        let base = a
            .base
            .as_ref()
            .map(|b| ours(&b.snapshot_uuid, &b.origin_uuid));
        match (new, base) {
            (Some(new), None) if !new.is_invalid() => {
                note(
                    summary,
                    args.quiet,
                    format!(
                        "resuming the interrupted copy of {} at byte {}",
                        new.full_name(),
                        a.confirmed
                    ),
                );
                return Ok(Plan::Seed {
                    new,
                    resume: a.confirmed,
                });
            }
            (Some(new), Some(Some(base))) if !new.is_invalid() && !base.is_invalid() => {
                note(
                    summary,
                    args.quiet,
                    format!(
                        "resuming the interrupted transfer from {} to {} at byte {}",
                        base.full_name(),
                        new.full_name(),
                        a.confirmed
                    ),
                );
                return Ok(Plan::Incremental {
                    base,
                    new,
                    resume: a.confirmed,
                });
            }
            _ => {
                note(summary, args.quiet, format!(
                    "{} is partway through a transfer to {} whose snapshots are gone: comparing it with a new snapshot and sending what differs, instead of copying everything",
                    args.dest, a.target
                ));
                return Ok(Plan::Repair { new: create()? });
            }
        }
    }
    let holds = state.and_then(|s| s.holds.as_ref());
    let Some(holds) = holds else {
        if state.is_some() {
            note(
                summary,
                args.quiet,
                format!(
                    "what {} holds is not known: comparing it with a new snapshot and sending what differs, instead of copying everything",
                    args.dest
                ),
            );
            return Ok(Plan::Repair { new: create()? });
        }
        return Ok(Plan::Seed {
            new: create()?,
            resume: 0,
        });
    };
    if holds.origin_uuid != origin.lv_uuid {
        return Err(Error::Usage(format!(
            "{}: it holds a copy of another volume ({}, origin uuid {}), not of {}; name another DEST, or give --reseed to overwrite it",
            args.dest, holds.snapshot, holds.origin_uuid, args.origin
        )));
    }
    match by_uuid(&holds.snapshot_uuid) {
        Some(base) if base.is_invalid() => {
            note(summary, args.quiet, format!(
                "the base snapshot {} was invalidated (its COW space ran out), so it cannot say what changed since {} was brought to it: comparing {} with a new snapshot and sending what differs instead; give a larger --snapshot-size",
                base.full_name(),
                args.dest,
                args.dest
            ));
            Ok(Plan::Repair { new: create()? })
        }
        Some(base) => Ok(Plan::Incremental {
            base,
            new: create()?,
            resume: 0,
        }),
        None => {
            note(summary, args.quiet, format!(
                "{} holds {}, but that snapshot is gone: comparing {} with a new snapshot and sending what differs, instead of copying everything",
                args.dest, holds, args.dest
            ));
            Ok(Plan::Repair { new: create()? })
        }
    }
}

/// The delta of a full copy of `snap`, a snapshot of `origin`: every
/// extent, all-zero blocks as ZERO records.
fn full_copy(
    origin: &Volume,
    snap: &Volume,
    compression: Compression,
) -> Result<(Header, Source, Vec<Extent>), Error> {
    let path = snap.device();
    let source = Source::open(&path).map_err(|source| Error::Open {
        path: path.display().to_string(),
        source,
    })?;
    let (mut header, extents) = crate::commands::send::full_copy(&source, compression);
    header.source = SourceInfo {
        kind: SourceKind::Full,
        vg: Some(origin.vg_name.clone()),
        snapshot: Some(snap.lv_name.clone()),
        snapshot_uuid: Some(snap.lv_uuid.clone()),
        snapshot_time: Some(snap.lv_time.clone()),
        origin: Some(origin.lv_name.clone()),
        origin_uuid: Some(origin.lv_uuid.clone()),
        thin: None,
    };
    header.target = Some(snap.point_in_time(origin));
    Ok((header, source, extents))
}

/// One backup of an origin to a DEST at a time: an exclusive `flock` on a
/// file named after the pair, in `/run/lvmsync-rs` (or the temporary
/// directory when that cannot be created).
struct Lock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl Lock {
    fn take(tag: &str, origin: &str, dest: &str) -> Result<Lock, Error> {
        let dir = [PathBuf::from("/run/lvmsync-rs"), std::env::temp_dir()]
            .into_iter()
            .find(|d| fs::create_dir_all(d).is_ok())
            .unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!("{tag}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Open {
                path: path.display().to_string(),
                source,
            })?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(locked) => Ok(Lock(locked)),
            Err(_) => Err(Error::Usage(format!(
                "another backup of {origin} to {dest} is running (it holds {}); wait for it to end",
                path.display()
            ))),
        }
    }
}
