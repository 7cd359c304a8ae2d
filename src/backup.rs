//! The nightly backup of an LVM volume to a copy: each run takes a new
//! snapshot of the origin and brings DEST to it. The first run copies the
//! whole snapshot (the seed); later runs send what the previous snapshot
//! (the base) recorded as changed, with the data read from the new
//! snapshot, so DEST becomes a consistent point in time while the origin
//! keeps being written. The new snapshot then replaces the base.
//!
//! The snapshots it creates carry an LVM tag naming DEST (see
//! [`crate::snapshots`]); it never touches any other. DEST's state (see
//! [`crate::state`]) says which snapshot DEST holds, or which transfer is
//! partway. Every run starts by deciding, from the tagged snapshots and
//! that state alone, what to do ([`decide`], a pure function), so a run
//! that died at any step is recovered by the next one; then it does it
//! ([`run`]).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapt::Compress;
use crate::archive::catalog;
use crate::archive::{self, Archive, ArchiveError};
use crate::blockdev::Source;
use crate::changes::ChangeSource;
use crate::lvm::Lv;
use crate::send::Delta;
use crate::ship::{Link, Session, Transfer};
use crate::snapshots::{self, SnapshotSize};
use crate::state::State;
use crate::status::{self, DestStatus};
use crate::store::StoreOptions;
use crate::stream::{SourceInfo, SourceKind};
use crate::transport::Location;
use crate::units::human;
use crate::verify;
use crate::Error;

/// A base snapshot whose COW space is fuller than this, in percent, gets
/// a warning.
const FULL_WARNING: f64 = 80.0;

/// A backup to run.
#[derive(Debug, Clone)]
pub struct Request {
    /// `VG/LV`.
    pub origin: String,
    /// `[user@]host:PATH` or a local path.
    pub dest: String,
    pub snapshot_size: SnapshotSize,
    pub compression: Compress,
    /// How DEST is reached (its `force` is not used: a backup never
    /// overrides DEST's state).
    pub link: Link,
    /// Copy the whole snapshot even when DEST holds a base.
    pub reseed: bool,
    /// With an archive as DEST: the volume's name there (else
    /// `HOST/VG/LV`), and how to reach its store.
    pub name: Option<String>,
    pub store: StoreOptions,
}

/// Whether `dest` names an archive rather than a copy: an `s3://` or
/// `file://` location, or an existing directory.
pub fn is_archive(dest: &str) -> bool {
    dest.starts_with("s3://")
        || dest.starts_with("file://")
        || (!dest.contains(':') || dest.starts_with('/')) && Path::new(dest).is_dir()
}

/// A volume's name in an archive when none is given: `HOST/VG/LV`.
pub fn default_volume_name(origin: &Lv) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{host}/{}/{}", origin.vg_name, origin.lv_name)
}

/// What a run did: what `backup --json` prints.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub result: &'static str,
    pub error: Option<String>,
    /// The kind of failure (see [`crate::error::Kind`]) and its exit status.
    pub error_kind: Option<&'static str>,
    pub exit_code: Option<u8>,
    pub origin: String,
    pub dest: String,
    /// `seed`, `incremental`, `resumed seed`, `resumed incremental` or
    /// `repair`.
    pub kind: Option<String>,
    /// The snapshot DEST held before, if any.
    pub base: Option<String>,
    /// The snapshot DEST holds now.
    pub snapshot: Option<String>,
    /// Tool-owned snapshots removed by this run.
    pub removed: Vec<String>,
    /// With an archive: the volume's name there and the point stored.
    pub volume: Option<String>,
    pub point: Option<u64>,
    pub notes: Vec<String>,
    /// What was sent (sync's summary).
    pub transfer: Transfer,
}

/// What a run sends, decided from the tagged snapshots and DEST's state.
/// Made once per run, so the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Copy all of a new snapshot.
    Seed,
    /// Go on copying all of `new` from byte `at`.
    ResumeSeed { new: Lv, at: u64 },
    /// Send what `base` recorded, with the data of a new snapshot.
    Incremental { base: Lv },
    /// Go on sending what `base` recorded with the data of `new`, from
    /// byte `at`.
    ResumeIncremental { base: Lv, new: Lv, at: u64 },
    /// Compare DEST with a new snapshot and send the blocks that differ
    /// (DEST has a recorded state, but no base to send changes from).
    Repair,
}

impl Plan {
    /// The kind of run, as the summary says it.
    pub fn kind(&self) -> &'static str {
        match self {
            Plan::Seed => "seed",
            Plan::ResumeSeed { .. } => "resumed seed",
            Plan::Incremental { .. } => "incremental",
            Plan::ResumeIncremental { .. } => "resumed incremental",
            Plan::Repair => "repair",
        }
    }

    /// The tagged snapshots the plan uses.
    fn uses(&self) -> Vec<&Lv> {
        match self {
            Plan::Seed | Plan::Repair => vec![],
            Plan::ResumeSeed { new, .. } => vec![new],
            Plan::Incremental { base } => vec![base],
            Plan::ResumeIncremental { base, new, .. } => vec![base, new],
        }
    }
}

/// A plan, what to say about it, and the tagged snapshots it leaves
/// behind: leftovers of runs that died, to remove.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub plan: Plan,
    pub notes: Vec<String>,
    pub leftovers: Vec<Lv>,
}

/// What a run knows before it acts.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    pub origin: &'a Lv,
    /// The snapshots of the origin carrying this DEST's tag.
    pub owned: &'a [Lv],
    /// DEST's recorded state, as its hello said.
    pub state: Option<&'a State>,
    /// DEST as the user wrote it, for messages.
    pub dest: &'a str,
    pub reseed: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("{dest}: it holds a copy of another volume ({snapshot}, origin uuid {origin_uuid}), not of {origin}; name another DEST, or give --reseed to overwrite it")]
    OtherVolume {
        dest: String,
        snapshot: String,
        origin_uuid: String,
        origin: String,
    },
    #[error(
        "another backup of {origin} to {dest} is running (it holds {lock}); wait for it to end"
    )]
    Running {
        origin: String,
        dest: String,
        lock: String,
    },
}

/// Decides what a run does. Pure: it only reads what it is given.
pub fn decide(s: &Situation<'_>) -> Result<Decision, BackupError> {
    let mut notes = Vec::new();
    let plan = plan(s, &mut notes)?;
    if let Plan::Incremental { base } | Plan::ResumeIncremental { base, .. } = &plan {
        if let Some(p) = base.cow_percent().filter(|p| *p > FULL_WARNING) {
            notes.push(format!(
                "warning: the base snapshot {} is {p:.0}% full; when its COW space runs out the kernel invalidates it and the next backup has no base: give a larger --snapshot-size",
                base.full_name()
            ));
        }
    }
    let used: Vec<&str> = plan.uses().iter().map(|lv| lv.lv_uuid.as_str()).collect();
    let leftovers = s
        .owned
        .iter()
        .filter(|lv| !used.contains(&lv.lv_uuid.as_str()))
        .cloned()
        .collect();
    Ok(Decision {
        plan,
        notes,
        leftovers,
    })
}

fn plan(s: &Situation<'_>, notes: &mut Vec<String>) -> Result<Plan, BackupError> {
    let by_uuid = |uuid: &str| s.owned.iter().find(|lv| lv.lv_uuid == uuid).cloned();
    let ours = |uuid: &str, origin_uuid: &str| {
        if origin_uuid == s.origin.lv_uuid {
            by_uuid(uuid)
        } else {
            None
        }
    };
    if s.reseed {
        notes.push("--reseed: copying the whole volume".into());
        return Ok(Plan::Seed);
    }
    // A transfer partway, to a snapshot that is still here: resume it.
    if let Some(a) = s.state.and_then(|st| st.applying.as_ref()) {
        let new = ours(&a.target.snapshot_uuid, &a.target.origin_uuid);
        let base = a
            .base
            .as_ref()
            .map(|b| ours(&b.snapshot_uuid, &b.origin_uuid));
        return Ok(match (new, base) {
            (Some(new), None) if !new.is_invalid() => {
                notes.push(format!(
                    "resuming the interrupted copy of {} at byte {}",
                    new.full_name(),
                    a.confirmed
                ));
                Plan::ResumeSeed {
                    new,
                    at: a.confirmed,
                }
            }
            (Some(new), Some(Some(base))) if !new.is_invalid() && !base.is_invalid() => {
                notes.push(format!(
                    "resuming the interrupted transfer from {} to {} at byte {}",
                    base.full_name(),
                    new.full_name(),
                    a.confirmed
                ));
                Plan::ResumeIncremental {
                    base,
                    new,
                    at: a.confirmed,
                }
            }
            _ => {
                notes.push(format!(
                    "{} is partway through a transfer to {} whose snapshots are gone: comparing it with a new snapshot and sending what differs, instead of copying everything",
                    s.dest, a.target
                ));
                Plan::Repair
            }
        });
    }
    let Some(holds) = s.state.and_then(|st| st.holds.as_ref()) else {
        if s.state.is_some() {
            notes.push(format!(
                "what {} holds is not known: comparing it with a new snapshot and sending what differs, instead of copying everything",
                s.dest
            ));
            return Ok(Plan::Repair);
        }
        return Ok(Plan::Seed);
    };
    if holds.origin_uuid != s.origin.lv_uuid {
        return Err(BackupError::OtherVolume {
            dest: s.dest.to_string(),
            snapshot: holds.snapshot.clone(),
            origin_uuid: holds.origin_uuid.clone(),
            origin: s.origin.full_name(),
        });
    }
    Ok(match by_uuid(&holds.snapshot_uuid) {
        Some(base) if base.is_invalid() => {
            notes.push(format!(
                "the base snapshot {} was invalidated (its COW space ran out), so it cannot say what changed since {} was brought to it: comparing {} with a new snapshot and sending what differs instead; give a larger --snapshot-size",
                base.full_name(),
                s.dest,
                s.dest
            ));
            Plan::Repair
        }
        Some(base) => Plan::Incremental { base },
        None => {
            notes.push(format!(
                "{} holds {}, but that snapshot is gone: comparing {} with a new snapshot and sending what differs, instead of copying everything",
                s.dest, holds, s.dest
            ));
            Plan::Repair
        }
    })
}

/// Runs a backup; `outcome` says what was done, also when it fails, and
/// `note` hears each note as it is made.
pub fn run(req: &Request, outcome: &mut Outcome, mut note: impl FnMut(&str)) -> Result<(), Error> {
    outcome.origin = req.origin.clone();
    outcome.dest = req.dest.clone();
    outcome.transfer.dest = req.dest.clone();
    if is_archive(&req.dest) {
        return run_to_archive(req, outcome, note);
    }
    let dest = Location::parse(&req.dest)?;
    let origin = snapshots::origin(&req.origin)?;
    // The origin itself as DEST: refused before anything is created.
    if let Location::Local(path) = &dest {
        let same = (fs::metadata(path), fs::metadata(origin.device()));
        if let (Ok(d), Ok(o)) = same {
            if crate::send::same_file(&d, &o) {
                return Err(crate::send::SendError::DestIsInput {
                    dest: path.clone(),
                    input: origin.full_name(),
                }
                .into());
            }
        }
    }
    let tag = snapshots::tag_for(&req.dest);
    let _lock = Lock::take(&tag, &req.origin, &req.dest)?;
    let owned = snapshots::owned(&origin, &tag)?;
    let link = Link {
        force: false,
        ..req.link.clone()
    };
    let format = req.compression.header().version();
    let mut session = Session::connect(&dest, &link, format, &mut outcome.transfer)?;
    let state = session.dest_state().cloned();
    let decision = decide(&Situation {
        origin: &origin,
        owned: &owned,
        state: state.as_ref(),
        dest: &req.dest,
        reseed: req.reseed,
    });
    let decision = match decision {
        Ok(d) => d,
        Err(e) => {
            session.stop();
            return Err(e.into());
        }
    };
    for text in &decision.notes {
        note(text);
        outcome.notes.push(text.clone());
    }
    for lv in &decision.leftovers {
        snapshots::remove(lv, &tag)?;
        outcome.removed.push(lv.full_name());
    }
    outcome.kind = Some(decision.plan.kind().to_string());
    let create = || {
        snapshots::create(
            &origin,
            &snapshots::new_name(&origin),
            &tag,
            &req.snapshot_size,
        )
    };
    let (delta, new) = match decision.plan {
        Plan::Repair => {
            session.stop();
            let new = create()?;
            outcome.snapshot = Some(new.full_name());
            let mut compared = verify::Comparison::default();
            verify::verify(
                &verify::Request {
                    src: new.device(),
                    dest: req.dest.clone(),
                    block_size: verify::DEFAULT_BLOCK_SIZE,
                    repair: true,
                    link: Link {
                        progress: crate::progress::Style::Hidden,
                        ..link.clone()
                    },
                    target: Some(new.point_in_time(&origin)),
                    compression: req.compression.header(),
                },
                &mut compared,
            )?;
            let t = &mut outcome.transfer;
            t.bytes_read = compared.src_bytes_read;
            t.data_bytes = compared.differing_bytes;
            t.bytes_on_wire = compared.repaired.as_ref().map_or(0, |r| r.delta_bytes);
            let text = format!(
                "compared {} with {}: {} differed and were sent ({} bytes of delta)",
                req.dest,
                new.full_name(),
                human(compared.differing_bytes),
                t.bytes_on_wire
            );
            note(&text);
            outcome.notes.push(text);
            return remove_all_but(&origin, &tag, &new, outcome);
        }
        Plan::Seed => {
            let new = create()?;
            (full_copy(&origin, &new, req.compression)?, new)
        }
        Plan::ResumeSeed { new, at } => {
            let mut delta = full_copy(&origin, &new, req.compression)?;
            delta.resume_from(at);
            (delta, new)
        }
        Plan::Incremental { base } => {
            let new = create()?;
            (incremental(&origin, &base, &new, req.compression)?, new)
        }
        Plan::ResumeIncremental { base, new, at } => {
            let mut delta = incremental(&origin, &base, &new, req.compression)?;
            delta.resume_from(at);
            (delta, new)
        }
    };
    if let Some(base) = &delta.header.base {
        outcome.base = Some(base.snapshot.clone());
    }
    outcome.snapshot = Some(new.full_name());
    if let Location::Local(path) = &dest {
        if let Err(e) = delta.check_dest(Path::new(path)) {
            session.stop();
            return Err(e.into());
        }
    }
    session.check_base(&req.dest, &delta, false)?;
    session.ship(&delta, &mut outcome.transfer)?;
    // DEST holds `new` now, and its state says so: the old base goes.
    remove_all_but(&origin, &tag, &new, outcome)
}

/// What a backup would do (`backup --dry-run`): decided as a run decides,
/// from the tagged snapshots and DEST's state, with nothing created,
/// removed, locked or sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Preview {
    pub origin: String,
    pub dest: String,
    /// `seed`, `incremental`, `resumed seed`, `resumed incremental` or
    /// `repair`.
    pub kind: String,
    /// The snapshot DEST holds, that the changes are read from.
    pub base: Option<String>,
    /// The snapshot the run would create (named as it would be now), or
    /// the one a resumed transfer goes on with.
    pub snapshot: Option<String>,
    pub creates_snapshot: bool,
    /// Tool-owned snapshots removed before the transfer (left over by an
    /// earlier run), and once DEST holds the new one.
    pub removes_first: Vec<String>,
    pub removes_after: Vec<String>,
    /// What is read and sent (before blocks of zeroes are left out and the
    /// rest compressed): the base's changes, or all of the origin; past
    /// `resume_from`. None for a repair, which compares instead.
    pub bytes: Option<u64>,
    /// A repair reads this much on each side to compare.
    pub compares: Option<u64>,
    pub resume_from: u64,
    pub origin_size: u64,
    /// With an archive: the volume's name there.
    pub volume: Option<String>,
    pub notes: Vec<String>,
    /// What DEST is and holds (a copy, not an archive).
    pub dest_status: Option<DestStatus>,
}

impl Preview {
    /// One sentence: what the backup would do.
    pub fn describe(&self) -> String {
        let mut text = self.kind.clone();
        if let Some(base) = &self.base {
            text.push_str(&format!(" from {base}"));
        }
        if let Some(snap) = &self.snapshot {
            if self.creates_snapshot {
                text.push_str(&format!(" to a new snapshot {snap}"));
            } else {
                text.push_str(&format!(" to {snap}"));
            }
        }
        if self.resume_from > 0 {
            text.push_str(&format!(", resumed at byte {}", self.resume_from));
        }
        if let Some(b) = self.bytes {
            text.push_str(&format!(
                ": {} to read and send ({b} bytes, of a {} volume; blocks of zeroes go without data, the rest compressed)",
                human(b),
                human(self.origin_size)
            ));
        }
        if let Some(c) = self.compares {
            text.push_str(&format!(
                ": {} read on each side to compare, what differs sent",
                human(c)
            ));
        }
        if !self.removes_first.is_empty() {
            text.push_str(&format!(
                "; removes first {}",
                self.removes_first.join(", ")
            ));
        }
        if !self.removes_after.is_empty() {
            text.push_str(&format!(
                "; removes after {}",
                self.removes_after.join(", ")
            ));
        }
        text
    }
}

/// What `req` would do now; see [`Preview`].
pub fn preview(req: &Request) -> Result<Preview, Error> {
    let origin = snapshots::origin(&req.origin)?;
    let mut p = Preview {
        origin: req.origin.clone(),
        dest: req.dest.clone(),
        origin_size: origin.size(),
        ..Preview::default()
    };
    let (tag, shown, state) = if is_archive(&req.dest) {
        let volume = match &req.name {
            Some(name) => name.clone(),
            None => default_volume_name(&origin),
        };
        archive::check_volume_name(&volume)?;
        let archive = Archive::open(&req.dest, &req.store, false)?;
        let catalog = archive.catalog(&volume)?;
        if let Some(c) = &catalog {
            if c.origin.uuid != origin.lv_uuid {
                return Err(ArchiveError::OtherOrigin {
                    volume,
                    has: format!("{} of {}", c.origin.name, c.origin.host),
                    uuid: c.origin.uuid.clone(),
                    this: origin.full_name(),
                }
                .into());
            }
        }
        let state = catalog.as_ref().and_then(|c| c.latest()).map(|l| State {
            holds: Some(l.point.clone()),
            applying: None,
        });
        let tag = snapshots::tag_for(&format!("{}#{volume}", req.dest));
        let shown = format!("{}#{volume}", archive.location());
        p.volume = Some(volume);
        (tag, shown, state)
    } else {
        let dest = Location::parse(&req.dest)?;
        if let Location::Local(path) = &dest {
            let same = (fs::metadata(path), fs::metadata(origin.device()));
            if let (Ok(d), Ok(o)) = same {
                if crate::send::same_file(&d, &o) {
                    return Err(crate::send::SendError::DestIsInput {
                        dest: path.clone(),
                        input: origin.full_name(),
                    }
                    .into());
                }
            }
        }
        let status = status::query(&req.dest, &req.link)?;
        let state = status.state();
        p.dest_status = Some(status);
        (snapshots::tag_for(&req.dest), req.dest.clone(), state)
    };
    let owned = snapshots::owned(&origin, &tag)?;
    let decision = decide(&Situation {
        origin: &origin,
        owned: &owned,
        state: state.as_ref(),
        dest: &shown,
        reseed: req.reseed,
    })?;
    p.notes = match &p.volume {
        Some(_) => decision
            .notes
            .iter()
            .map(|n| archive_note(n, &shown))
            .collect(),
        None => decision.notes,
    };
    p.removes_first = decision.leftovers.iter().map(Lv::full_name).collect();
    let mut plan = decision.plan;
    if p.volume.is_some() && !matches!(plan, Plan::Incremental { .. }) {
        // An archive has no copy to compare or resume: a new seed.
        plan = Plan::Seed;
    }
    p.kind = plan.kind().to_string();
    let new_name = || format!("{}/{}", origin.vg_name, snapshots::new_name(&origin));
    let changes_of = |base: &Lv, from: u64| -> Result<u64, Error> {
        let listing = crate::changes::read(&ChangeSource::Snapshot(base.full_name()), None)?;
        Ok(listing
            .into_change_set()
            .from_offset(from)
            .as_changes()
            .total_bytes())
    };
    let keep = match &plan {
        Plan::Seed => {
            p.bytes = Some(origin.size());
            None
        }
        Plan::ResumeSeed { new, at } => {
            p.resume_from = *at;
            p.bytes = Some(origin.size().saturating_sub(*at));
            Some(new)
        }
        Plan::Incremental { base } => {
            p.base = Some(base.full_name());
            p.bytes = Some(changes_of(base, 0)?);
            None
        }
        Plan::ResumeIncremental { base, new, at } => {
            p.base = Some(base.full_name());
            p.resume_from = *at;
            p.bytes = Some(changes_of(base, *at)?);
            Some(new)
        }
        Plan::Repair => {
            p.compares = Some(origin.size());
            None
        }
    };
    match keep {
        Some(new) => p.snapshot = Some(new.full_name()),
        None => {
            p.snapshot = Some(new_name());
            p.creates_snapshot = true;
        }
    }
    p.removes_after = owned
        .iter()
        .filter(|lv| keep.is_none_or(|k| k.lv_uuid != lv.lv_uuid))
        .filter(|lv| !decision.leftovers.iter().any(|l| l.lv_uuid == lv.lv_uuid))
        .map(Lv::full_name)
        .collect();
    if let (Some(status), None) = (&p.dest_status, &p.volume) {
        if let Some(w) = &status.writer {
            p.notes.push(format!(
                "{} is being written now ({w}): a run now would be refused",
                req.dest
            ));
        }
    }
    Ok(p)
}

/// A note of [`decide`] said of an archive, which has no copy to compare:
/// a point without a base is a new seed.
fn archive_note(text: &str, shown: &str) -> String {
    text.replace(
        "comparing it with a new snapshot and sending what differs, instead of copying everything",
        "storing a full copy, which starts a new chain",
    )
    .replace(
        &format!("comparing {shown} with a new snapshot and sending what differs instead"),
        "storing a full copy instead, which starts a new chain",
    )
}

/// A backup into an archive: a new point of the volume, stored as a delta
/// from the latest one (a seed when there is none, or when the snapshot
/// that froze the latest is gone).
fn run_to_archive(
    req: &Request,
    outcome: &mut Outcome,
    mut note: impl FnMut(&str),
) -> Result<(), Error> {
    let origin = snapshots::origin(&req.origin)?;
    let volume = match &req.name {
        Some(name) => name.clone(),
        None => default_volume_name(&origin),
    };
    archive::check_volume_name(&volume)?;
    outcome.volume = Some(volume.clone());
    let archive = Archive::open(&req.dest, &req.store, true)?;
    let tag = snapshots::tag_for(&format!("{}#{volume}", req.dest));
    let _lock = Lock::take(&tag, &req.origin, &format!("{}#{volume}", req.dest))?;
    let owned = snapshots::owned(&origin, &tag)?;
    let catalog = archive.catalog(&volume)?;
    if let Some(c) = &catalog {
        if c.origin.uuid != origin.lv_uuid {
            return Err(ArchiveError::OtherOrigin {
                volume,
                has: format!("{} of {}", c.origin.name, c.origin.host),
                uuid: c.origin.uuid.clone(),
                this: origin.full_name(),
            }
            .into());
        }
        if c.origin_size != origin.size() && !c.points.is_empty() {
            return Err(ArchiveError::Mismatch {
                location: archive.location(),
                key: format!("volumes/{volume}"),
                reason: format!(
                    "its points are of a volume of {} bytes, {} is {} bytes now; give another --name for the resized volume",
                    c.origin_size,
                    origin.full_name(),
                    origin.size()
                ),
            }
            .into());
        }
    }
    let latest = catalog.as_ref().and_then(|c| c.latest()).cloned();
    let state = latest.as_ref().map(|p| State {
        holds: Some(p.point.clone()),
        applying: None,
    });
    let shown = format!("{}#{volume}", archive.location());
    let decision = decide(&Situation {
        origin: &origin,
        owned: &owned,
        state: state.as_ref(),
        dest: &shown,
        reseed: req.reseed,
    })?;
    for text in &decision.notes {
        let text = archive_note(text, &shown);
        note(&text);
        outcome.notes.push(text);
    }
    for lv in &decision.leftovers {
        snapshots::remove(lv, &tag)?;
        outcome.removed.push(lv.full_name());
    }
    let new = snapshots::create(
        &origin,
        &snapshots::new_name(&origin),
        &tag,
        &req.snapshot_size,
    )?;
    outcome.snapshot = Some(new.full_name());
    let (delta, base) = match &decision.plan {
        Plan::Incremental { base } => {
            let number = latest.as_ref().map(|p| p.number);
            (incremental(&origin, base, &new, req.compression)?, number)
        }
        _ => (full_copy(&origin, &new, req.compression)?, None),
    };
    let kind = if base.is_some() {
        "incremental"
    } else {
        "seed"
    };
    outcome.kind = Some(kind.into());
    outcome.base = delta.header.base.as_ref().map(|b| b.snapshot.clone());
    let new_volume = archive::NewVolume {
        volume: volume.clone(),
        origin: catalog::Origin {
            host: volume.split('/').next().unwrap_or("").to_string(),
            name: origin.full_name(),
            uuid: origin.lv_uuid.clone(),
        },
    };
    let progress = crate::progress::Progress::new(
        req.link.progress,
        "backup",
        "storing",
        delta.changes.as_changes().total_bytes(),
    );
    let time = crate::time::parse(&new.lv_time).unwrap_or_else(crate::time::now);
    let stored = archive.store_point(
        catalog,
        new_volume,
        &delta,
        new.point_in_time(&origin),
        time,
        |done| progress.set(done),
    );
    drop(progress);
    let (number, totals, delta_ref) = stored?;
    let t = &mut outcome.transfer;
    t.bytes_read = totals.data_bytes + totals.zero_bytes;
    t.data_bytes = totals.data_bytes;
    t.zero_bytes = totals.zero_bytes;
    t.records = totals.records;
    t.bytes_on_wire = delta_ref.bytes;
    outcome.point = Some(number);
    // The archive holds `new` now: it is the next base.
    remove_all_but(&origin, &tag, &new, outcome)
}

/// Removes the snapshots tagged `tag` other than `keep`.
fn remove_all_but(origin: &Lv, tag: &str, keep: &Lv, outcome: &mut Outcome) -> Result<(), Error> {
    for lv in snapshots::owned(origin, tag)? {
        if lv.lv_uuid != keep.lv_uuid {
            snapshots::remove(&lv, tag)?;
            outcome.removed.push(lv.full_name());
        }
    }
    Ok(())
}

/// The delta of a full copy of `snap`, a snapshot of `origin`: every
/// extent, all-zero blocks as ZERO records, bringing a copy to `snap`.
fn full_copy(origin: &Lv, snap: &Lv, compression: Compress) -> Result<Delta, Error> {
    let path = snap.device();
    let source = Source::open(&path).map_err(|source| Error::Open {
        path: path.display().to_string(),
        source,
    })?;
    let mut delta = Delta::full_copy(source, compression.header());
    delta.compress(compression);
    delta.header.source = SourceInfo {
        kind: SourceKind::Full,
        vg: Some(origin.vg_name.clone()),
        snapshot: Some(snap.lv_name.clone()),
        snapshot_uuid: Some(snap.lv_uuid.clone()),
        snapshot_time: Some(snap.lv_time.clone()),
        origin: Some(origin.lv_name.clone()),
        origin_uuid: Some(origin.lv_uuid.clone()),
        thin: None,
    };
    delta.header.target = Some(snap.point_in_time(origin));
    Ok(delta)
}

/// The delta of what `base` recorded, with the data of `new`: from `base`
/// to `new`.
fn incremental(origin: &Lv, base: &Lv, new: &Lv, compression: Compress) -> Result<Delta, Error> {
    let mut delta = Delta::of_changes(
        &ChangeSource::Snapshot(base.full_name()),
        Some(&new.device()),
        compression.header(),
    )?;
    delta.compress(compression);
    delta.header.base = Some(base.point_in_time(origin));
    delta.header.target = Some(new.point_in_time(origin));
    Ok(delta)
}

/// One backup of an origin to a DEST at a time on this host: an exclusive
/// `flock` on a file named after the pair, in `/run/lvmsync-rs` (or the
/// temporary directory when that cannot be created), opened without
/// following a symlink someone may have planted there. (DEST itself is
/// locked by the apply that writes it: see [`crate::apply::DestLock`].)
struct Lock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl Lock {
    fn take(tag: &str, origin: &str, dest: &str) -> Result<Lock, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = [PathBuf::from("/run/lvmsync-rs"), std::env::temp_dir()]
            .into_iter()
            .find(|d| fs::create_dir_all(d).is_ok())
            .unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!("{tag}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(|source| Error::Open {
                path: path.display().to_string(),
                source,
            })?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(locked) => Ok(Lock(locked)),
            Err(_) => Err(BackupError::Running {
                origin: origin.into(),
                dest: dest.into(),
                lock: path.display().to_string(),
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Applying;
    use crate::stream::PointInTime;

    #[test]
    fn a_preview_says_in_one_sentence_what_the_run_would_do() {
        let incremental = Preview {
            kind: "incremental".into(),
            base: Some("vg/data-lvmsync-1".into()),
            snapshot: Some("vg/data-lvmsync-2".into()),
            creates_snapshot: true,
            bytes: Some(3 << 20),
            origin_size: 1 << 30,
            removes_after: vec!["vg/data-lvmsync-1".into()],
            ..Preview::default()
        };
        assert_eq!(
            incremental.describe(),
            "incremental from vg/data-lvmsync-1 to a new snapshot vg/data-lvmsync-2: \
             3 MiB to read and send (3145728 bytes, of a 1 GiB volume; blocks of zeroes go \
             without data, the rest compressed); removes after vg/data-lvmsync-1"
        );
        let repair = Preview {
            kind: "repair".into(),
            snapshot: Some("vg/data-lvmsync-3".into()),
            compares: Some(1 << 30),
            resume_from: 4096,
            ..Preview::default()
        };
        assert_eq!(
            repair.describe(),
            "repair to vg/data-lvmsync-3, resumed at byte 4096: 1 GiB read on each side to \
             compare, what differs sent"
        );
    }

    fn lv(name: &str, attr: &str) -> Lv {
        Lv {
            vg_name: "vg".into(),
            lv_name: name.into(),
            lv_attr: attr.into(),
            origin: "root".into(),
            lv_uuid: format!("uuid-{name}"),
            lv_time: "2026-11-26 08:00:00 +0000".into(),
            ..Lv::default()
        }
    }

    fn origin() -> Lv {
        Lv {
            origin: String::new(),
            ..lv("root", "owi-a-----")
        }
    }

    fn snap(name: &str) -> Lv {
        lv(name, "swi-a-s---")
    }

    fn invalid(name: &str) -> Lv {
        lv(name, "swi-I-s---")
    }

    fn pit(of: &Lv) -> PointInTime {
        of.point_in_time(&origin())
    }

    fn holds(of: &Lv) -> State {
        State {
            holds: Some(pit(of)),
            applying: None,
        }
    }

    fn applying(base: Option<&Lv>, target: &Lv, confirmed: u64) -> State {
        State {
            holds: None,
            applying: Some(Applying {
                base: base.map(pit),
                target: pit(target),
                confirmed,
            }),
        }
    }

    fn decide_with(
        owned: &[Lv],
        state: Option<&State>,
        reseed: bool,
    ) -> Result<Decision, BackupError> {
        let origin = origin();
        decide(&Situation {
            origin: &origin,
            owned,
            state,
            dest: "backup:/dev/vg/copy",
            reseed,
        })
    }

    fn names(lvs: &[Lv]) -> Vec<&str> {
        lvs.iter().map(|lv| lv.lv_name.as_str()).collect()
    }

    #[test]
    fn a_copy_with_no_state_is_seeded_and_leftovers_go() {
        let d = decide_with(&[snap("a")], None, false).unwrap();
        assert_eq!(d.plan, Plan::Seed);
        assert_eq!(names(&d.leftovers), ["a"]);
        assert!(d.notes.is_empty());
    }

    #[test]
    fn reseed_copies_everything_whatever_the_state() {
        let d = decide_with(&[snap("a")], Some(&holds(&snap("a"))), true).unwrap();
        assert_eq!(d.plan, Plan::Seed);
        assert_eq!(names(&d.leftovers), ["a"]);
        assert!(d.notes[0].contains("--reseed"));
    }

    #[test]
    fn a_copy_holding_a_snapshot_that_is_here_gets_its_changes() {
        let owned = [snap("a"), snap("b")];
        let d = decide_with(&owned, Some(&holds(&snap("b"))), false).unwrap();
        assert_eq!(d.plan, Plan::Incremental { base: snap("b") });
        assert_eq!(names(&d.leftovers), ["a"]);
    }

    #[test]
    fn a_base_nearly_full_is_warned_about() {
        let mut base = snap("b");
        base.snap_percent = "85.00".into();
        let d = decide_with(&[base.clone()], Some(&holds(&base)), false).unwrap();
        assert!(matches!(d.plan, Plan::Incremental { .. }));
        assert!(d.notes[0].contains("is 85% full"), "{:?}", d.notes);
        base.snap_percent = "50.00".into();
        let d = decide_with(&[base.clone()], Some(&holds(&base)), false).unwrap();
        assert!(d.notes.is_empty());
    }

    #[test]
    fn a_base_that_is_gone_or_invalid_means_a_repair() {
        let d = decide_with(&[snap("a")], Some(&holds(&snap("gone"))), false).unwrap();
        assert_eq!(d.plan, Plan::Repair);
        assert_eq!(names(&d.leftovers), ["a"]);
        assert!(d.notes[0].contains("that snapshot is gone"));
        let d = decide_with(&[invalid("b")], Some(&holds(&invalid("b"))), false).unwrap();
        assert_eq!(d.plan, Plan::Repair);
        assert_eq!(names(&d.leftovers), ["b"]);
        assert!(d.notes[0].contains("was invalidated"));
    }

    #[test]
    fn a_state_that_holds_nothing_known_means_a_repair() {
        let d = decide_with(&[], Some(&State::default()), false).unwrap();
        assert_eq!(d.plan, Plan::Repair);
        assert!(d.notes[0].contains("is not known"));
    }

    #[test]
    fn a_copy_of_another_volume_is_refused() {
        let mut other = holds(&snap("x"));
        other.holds.as_mut().unwrap().origin_uuid = "another".into();
        let err = decide_with(&[snap("a")], Some(&other), false).unwrap_err();
        assert!(matches!(err, BackupError::OtherVolume { .. }));
        assert!(err.to_string().contains("holds a copy of another volume"));
        assert!(err.to_string().contains("vg/root"), "{err}");
    }

    #[test]
    fn a_transfer_partway_resumes_while_its_snapshots_are_here() {
        let (a, b) = (snap("a"), snap("b"));
        let owned = [a.clone(), b.clone(), snap("c")];
        let d = decide_with(&owned, Some(&applying(None, &b, 4096)), false).unwrap();
        assert_eq!(
            d.plan,
            Plan::ResumeSeed {
                new: b.clone(),
                at: 4096
            }
        );
        assert_eq!(names(&d.leftovers), ["a", "c"]);
        let d = decide_with(&owned, Some(&applying(Some(&a), &b, 8192)), false).unwrap();
        assert_eq!(
            d.plan,
            Plan::ResumeIncremental {
                base: a.clone(),
                new: b.clone(),
                at: 8192
            }
        );
        assert_eq!(names(&d.leftovers), ["c"]);
        assert!(d.notes[0].contains("resuming the interrupted transfer"));
    }

    #[test]
    fn a_transfer_partway_whose_snapshots_are_gone_or_invalid_means_a_repair() {
        let (a, b) = (snap("a"), snap("b"));
        for (owned, state) in [
            (vec![a.clone()], applying(Some(&a), &b, 1)),
            (vec![b.clone()], applying(Some(&a), &b, 1)),
            (vec![invalid("b")], applying(None, &invalid("b"), 1)),
            (
                vec![a.clone(), invalid("b")],
                applying(Some(&a), &invalid("b"), 1),
            ),
        ] {
            let d = decide_with(&owned, Some(&state), false).unwrap();
            assert_eq!(d.plan, Plan::Repair, "{owned:?}");
            assert_eq!(d.leftovers, owned);
            assert!(d.notes[0].contains("partway through a transfer"));
        }
        // Snapshots of another origin with the same names are not ours.
        let mut state = applying(None, &b, 1);
        state.applying.as_mut().unwrap().target.origin_uuid = "another".into();
        let d = decide_with(std::slice::from_ref(&b), Some(&state), false).unwrap();
        assert_eq!(d.plan, Plan::Repair);
    }
}
