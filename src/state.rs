//! What a destination holds: a small JSON file that `apply` keeps for each
//! destination, so that a delta meant for another copy is refused and an
//! interrupted transfer can resume.
//!
//! The state names the point in time the destination holds (the origin's
//! UUID and the UUID of the snapshot that froze it), or, while a delta is
//! being applied, the delta's base and target and how far the destination
//! has confirmed it: every byte before `confirmed` is written and synced.
//!
//! Where it is kept:
//! - for a regular file `DEST`: `DEST.lvmsync-state`, beside it;
//! - for a block device: in `/var/lib/lvmsync-rs/` (or `$LVMSYNC_STATE_DIR`),
//!   named after the device-mapper UUID of the device (stable across
//!   reboots and renames), else its dm name, else its kernel name.
//!
//! The file is replaced atomically (written beside under a random name,
//! synced, renamed, and the directory synced), so a crash leaves either the
//! old or the new state; it is read only when it is a small regular file,
//! never through a symlink.
//!
//! [`Tracker`] keeps the state while a delta is applied: which transfer is
//! under way and how far it is confirmed.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::files;
use crate::stream::{Header, PointInTime};

/// Where the states of block devices are kept, unless `$LVMSYNC_STATE_DIR`
/// names another directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lvmsync-rs";
/// The environment variable that overrides [`DEFAULT_STATE_DIR`].
pub const STATE_DIR_ENV: &str = "LVMSYNC_STATE_DIR";
/// The suffix of a regular file's state file.
pub const SUFFIX: &str = ".lvmsync-state";
/// The state file's own format version.
pub const STATE_VERSION: u32 = 1;

/// What a destination holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The point in time the destination holds; none when it is unknown
    /// or while a delta is being applied.
    pub holds: Option<PointInTime>,
    /// The delta being applied, when one was started and not finished.
    pub applying: Option<Applying>,
}

/// A delta partway through being applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applying {
    pub base: Option<PointInTime>,
    pub target: PointInTime,
    /// Every extent before this offset is written and synced.
    pub confirmed: u64,
}

impl Applying {
    /// Whether this is the transfer from `base` to `target`.
    pub fn is(&self, base: Option<&PointInTime>, target: &PointInTime) -> bool {
        self.target.same(target)
            && match (&self.base, base) {
                (Some(a), Some(b)) => a.same(b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// The file's layout: the state and what it is about.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    lvmsync_state: u32,
    dest: String,
    #[serde(flatten)]
    state: State,
}

#[derive(Debug, Error)]
pub enum StateError {
    #[error("{path}: cannot read the destination's state: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: damaged state file ({reason}); remove it, or give --force to apply anyway and write a new one")]
    Damaged { path: String, reason: String },
    #[error("{path}: cannot record the destination's state: {source}; nothing was written to the destination (set {STATE_DIR_ENV} to a writable directory for block devices)")]
    Write { path: String, source: io::Error },
    #[error("{0}")]
    Refused(String),
    #[error("{dest}: cannot record which point in time the device holds: it has no name that survives a reboot (no device-mapper UUID or name, WWN, serial, partition UUID or loop backing file), so its state could be taken for another disk's; apply to an LV or a disk the kernel can identify; nothing was written")]
    NoStableName { dest: String },
}

/// Where the state of `dest` is kept; none for a block device that has no
/// name that survives a reboot (its kernel name, `sdb`, can move to
/// another disk, whose copy its state would then vouch for): such a
/// device keeps no state, and a delta that would record one is refused.
pub fn location(dest: &Path) -> io::Result<Option<PathBuf>> {
    let meta = fs::metadata(dest)?;
    if !meta.file_type().is_block_device() {
        let mut name = dest.as_os_str().to_owned();
        name.push(SUFFIX);
        return Ok(Some(PathBuf::from(name)));
    }
    let dir = std::env::var_os(STATE_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    Ok(device_key(meta.rdev()).map(|key| dir.join(format!("{key}.state"))))
}

/// A name for the block device `rdev` that survives reboots and cannot
/// move to another disk, as kernel names (`sdb`) can: its dm UUID or name,
/// its WWN, its serial or its partition's UUID (from sysfs and udev), or
/// for a loop device its backing file; none when it has none of these.
fn device_key(rdev: u64) -> Option<String> {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let key = dm_key(&sys)
        .or_else(|| udev_key(major, minor))
        .or_else(|| sysfs_key(&sys))
        .or_else(|| loop_key(&sys))?;
    Some(
        key.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.+".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    )
}

/// The trimmed, non-empty content of a small sysfs or udev file.
fn read_small(path: &Path) -> Option<String> {
    let body = files::read_capped(path, 4096).ok()??;
    let text = String::from_utf8_lossy(&body).trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn dm_key(sys: &Path) -> Option<String> {
    read_small(&sys.join("dm/uuid"))
        .or_else(|| read_small(&sys.join("dm/name")).map(|n| format!("dm-name-{n}")))
}

/// From udev's database: the partition's UUID, else the disk's WWN or
/// serial (with the partition's number).
fn udev_key(major: u64, minor: u64) -> Option<String> {
    let db = read_small(Path::new(&format!("/run/udev/data/b{major}:{minor}")))?;
    let get = |key: &str| {
        db.lines()
            .find_map(|l| l.strip_prefix("E:")?.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
            .filter(|v| !v.is_empty())
    };
    let part = get("ID_PART_ENTRY_NUMBER").map(|n| format!("-part{n}"));
    if let (Some(uuid), Some(_)) = (get("ID_PART_ENTRY_UUID"), &part) {
        return Some(format!("partuuid-{uuid}"));
    }
    let part = part.unwrap_or_default();
    get("ID_WWN_WITH_EXTENSION")
        .or_else(|| get("ID_WWN"))
        .map(|w| format!("wwn-{w}{part}"))
        .or_else(|| get("ID_SERIAL").map(|s| format!("serial-{s}{part}")))
}

/// From sysfs: the disk's WWID or serial, with the partition's number for
/// a partition.
fn sysfs_key(sys: &Path) -> Option<String> {
    let (disk, part) = match read_small(&sys.join("partition")) {
        Some(n) => (sys.join(".."), format!("-part{n}")),
        None => (sys.to_path_buf(), String::new()),
    };
    ["wwid", "device/wwid"]
        .iter()
        .find_map(|f| read_small(&disk.join(f)))
        .map(|w| format!("wwid-{w}{part}"))
        .or_else(|| {
            ["serial", "device/serial"]
                .iter()
                .find_map(|f| read_small(&disk.join(f)))
                .map(|s| format!("serial-{s}{part}"))
        })
}

/// A loop device is the file behind it, at its offset.
fn loop_key(sys: &Path) -> Option<String> {
    let backing = read_small(&sys.join("loop/backing_file"))?;
    let meta = fs::metadata(backing.trim_end_matches(" (deleted)")).ok()?;
    let offset = read_small(&sys.join("loop/offset")).unwrap_or_else(|| "0".into());
    Some(format!("loop-{}-{}-{offset}", meta.dev(), meta.ino()))
}

/// The largest state file read: a state is a few hundred bytes.
const MAX_STATE_LEN: u64 = 64 << 10;

/// Reads the state at `path`: `None` when there is none. The file must be
/// a regular file, not reached through a symlink, and small (see
/// [`files::read_capped`]).
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let shown = path.display().to_string();
    let text = match files::read_capped(path, MAX_STATE_LEN) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: shown,
                source,
            })
        }
    };
    let file: StateFile = serde_json::from_slice(&text).map_err(|e| StateError::Damaged {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    if file.lvmsync_state != STATE_VERSION {
        return Err(StateError::Damaged {
            path: shown,
            reason: format!(
                "state format {} is not {STATE_VERSION}, the one this lvmsync-rs knows",
                file.lvmsync_state
            ),
        });
    }
    Ok(Some(file.state))
}

/// Replaces the state at `path` with `state`, atomically and durably (see
/// [`files::NewFile`]: a new file under a random name, renamed over it).
pub fn save(path: &Path, dest: &Path, state: &State) -> Result<(), StateError> {
    let write = || -> io::Result<()> {
        fs::create_dir_all(files::parent_dir(path))?;
        let mut body = serde_json::to_vec_pretty(&StateFile {
            lvmsync_state: STATE_VERSION,
            dest: dest.display().to_string(),
            state: state.clone(),
        })
        .map_err(io::Error::other)?;
        body.push(b'\n');
        files::replace(path, &body, 0o644)
    };
    write().map_err(|source| StateError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Whether a delta with `header` may be applied to `dest`, whose state is
/// `state`. The refusal says what each is.
pub fn check(dest: &str, state: Option<&State>, header: &Header) -> Result<(), StateError> {
    let refuse = |what: String| {
        Err(StateError::Refused(format!(
            "{dest}: {what}; nothing was written (--force applies it anyway)"
        )))
    };
    // A delta that names no base applies to any content: a full copy
    // overwrites all of it, a repair was computed from what DEST holds.
    if header.base.is_none() && header.resume_from == 0 {
        return Ok(());
    }
    let Some(state) = state else {
        if header.resume_from > 0 {
            return refuse(format!(
                "the delta resumes at byte {}, but no state is recorded for the destination, so nothing says the bytes before were applied",
                header.resume_from
            ));
        }
        return Ok(());
    };
    if let Some(a) = &state.applying {
        let same = header
            .target
            .as_ref()
            .is_some_and(|t| a.is(header.base.as_ref(), t));
        if !same {
            return refuse(format!(
                "it is partway through a delta that brings it to {} (confirmed up to byte {}), but this delta {}; finish that transfer first",
                a.target,
                a.confirmed,
                describe(header)
            ));
        }
        if header.resume_from > a.confirmed {
            return refuse(format!(
                "the delta resumes at byte {}, but the destination confirmed only the bytes before {}",
                header.resume_from, a.confirmed
            ));
        }
        return Ok(());
    }
    if header.resume_from > 0 {
        return refuse(format!(
            "the delta resumes at byte {}, but the destination is not partway through it",
            header.resume_from
        ));
    }
    match (&state.holds, &header.base) {
        (Some(holds), Some(base)) if !holds.same(base) => refuse(format!(
            "it holds {holds}, but the delta applies to {base}: it was made for another copy"
        )),
        _ => Ok(()),
    }
}

/// `applies to X and brings the copy to Y`, for messages.
fn describe(header: &Header) -> String {
    let base = match &header.base {
        Some(b) => format!("applies to {b}"),
        None => "applies to any content".to_string(),
    };
    match &header.target {
        Some(t) => format!("{base} and brings the copy to {t}"),
        None => format!("{base} and brings the copy to no point in time"),
    }
}

/// Keeps the destination's state while a delta is applied: which transfer
/// is under way and how far it is confirmed.
pub struct Tracker {
    path: PathBuf,
    dest: PathBuf,
    /// The transfer, for a delta that produces a point in time.
    applying: Option<Applying>,
    /// The end of the last record written.
    last_end: u64,
    /// Bytes written since the last confirmation.
    pub unconfirmed: u64,
    /// Whether a state file is kept for this destination.
    kept: bool,
}

impl Tracker {
    /// Records, before anything is written, that the delta of `header` is
    /// being applied (or, for a delta that produces no point in time, that
    /// the destination's content is no longer known).
    pub fn begin(
        path: Option<PathBuf>,
        dest: &Path,
        had_state: bool,
        header: &Header,
    ) -> Result<Tracker, StateError> {
        let applying = header.target.clone().map(|target| Applying {
            base: header.base.clone(),
            target,
            confirmed: header.resume_from,
        });
        let kept = had_state || applying.is_some();
        let path = match path {
            Some(path) => path,
            None if kept => {
                return Err(StateError::NoStableName {
                    dest: dest.display().to_string(),
                })
            }
            None => PathBuf::new(),
        };
        let t = Tracker {
            path,
            dest: dest.to_path_buf(),
            applying,
            last_end: header.resume_from,
            unconfirmed: 0,
            kept,
        };
        if kept {
            t.save_applying()?;
        }
        Ok(t)
    }

    fn save_applying(&self) -> Result<(), StateError> {
        save(
            &self.path,
            &self.dest,
            &State {
                holds: None,
                applying: self.applying.clone(),
            },
        )
    }

    /// Whether enough was written since the last confirmation was asked
    /// for.
    pub fn wrote(&mut self, end: u64, length: u64) -> bool {
        self.last_end = end;
        self.unconfirmed += length;
        self.applying.is_some() && self.unconfirmed >= crate::apply::CONFIRM_BYTES
    }

    /// Records that everything before the last record's end is on disk
    /// (the caller synced the destination).
    pub fn confirm(&mut self) -> Result<Option<u64>, StateError> {
        self.unconfirmed = 0;
        self.confirm_at(self.last_end)
    }

    /// Records that everything before `end` is on disk (the caller synced
    /// the destination after the record that ends there was written).
    pub fn confirm_at(&mut self, end: u64) -> Result<Option<u64>, StateError> {
        let Some(a) = self.applying.as_mut() else {
            return Ok(None);
        };
        if end <= a.confirmed {
            return Ok(Some(a.confirmed));
        }
        a.confirmed = end;
        self.save_applying()?;
        Ok(Some(end))
    }

    /// Records that the whole delta is applied and synced.
    pub fn finish(&self) -> Result<(), StateError> {
        if !self.kept {
            return Ok(());
        }
        save(
            &self.path,
            &self.dest,
            &State {
                holds: self.applying.as_ref().map(|a| a.target.clone()),
                applying: None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{Compression, SourceInfo, SourceKind};

    fn pit(snap: &str) -> PointInTime {
        PointInTime {
            origin_uuid: "O".into(),
            snapshot_uuid: format!("uuid-{snap}"),
            snapshot: format!("vg/{snap}"),
            time: "2026-11-26 08:00:00 +0000".into(),
        }
    }

    fn header(base: Option<&str>, target: Option<&str>, resume_from: u64) -> Header {
        Header {
            origin_size: 1 << 20,
            chunk_size: 4096,
            source: SourceInfo::of_kind(SourceKind::Classic),
            compression: Compression::Lz4,
            tool: "test".into(),
            base: base.map(pit),
            target: target.map(pit),
            resume_from,
            properties: Default::default(),
        }
    }

    #[test]
    fn a_delta_for_another_base_is_refused() {
        let holds_a = State {
            holds: Some(pit("a")),
            applying: None,
        };
        assert!(check("d", Some(&holds_a), &header(Some("a"), Some("b"), 0)).is_ok());
        let err = check("d", Some(&holds_a), &header(Some("c"), Some("d"), 0)).unwrap_err();
        assert!(
            err.to_string().starts_with("d: it holds vg/a taken"),
            "{err}"
        );
        assert!(err.to_string().contains("applies to vg/c taken"), "{err}");
        // No base: applies to anything; no state: nothing to check.
        assert!(check("d", Some(&holds_a), &header(None, Some("b"), 0)).is_ok());
        assert!(check("d", None, &header(Some("c"), None, 0)).is_ok());
        // A state that holds nothing known.
        assert!(check("d", Some(&State::default()), &header(Some("c"), None, 0)).is_ok());
    }

    #[test]
    fn a_transfer_partway_accepts_only_itself_and_resumes_from_what_was_confirmed() {
        let st = State {
            holds: None,
            applying: Some(Applying {
                base: Some(pit("a")),
                target: pit("b"),
                confirmed: 4096,
            }),
        };
        assert!(check("d", Some(&st), &header(Some("a"), Some("b"), 0)).is_ok());
        assert!(check("d", Some(&st), &header(Some("a"), Some("b"), 4096)).is_ok());
        let err = check("d", Some(&st), &header(Some("a"), Some("b"), 8192)).unwrap_err();
        assert!(err
            .to_string()
            .contains("confirmed only the bytes before 4096"));
        let err = check("d", Some(&st), &header(Some("a"), Some("c"), 0)).unwrap_err();
        assert!(err.to_string().contains("partway through"), "{err}");
        assert!(check("d", Some(&st), &header(Some("a"), None, 0)).is_err());
        // A full copy or a repair is taken whatever the state.
        assert!(check("d", Some(&st), &header(None, Some("c"), 0)).is_ok());
        let err = check("d", None, &header(Some("a"), Some("b"), 4096)).unwrap_err();
        assert!(err.to_string().contains("no state is recorded"), "{err}");
    }

    #[test]
    fn states_are_saved_and_read_back_and_damage_is_reported() {
        let dir = std::env::temp_dir().join(format!("lvmsync-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("copy.img");
        fs::write(&dest, b"x").unwrap();
        let path = location(&dest).unwrap().unwrap();
        assert_eq!(path, dir.join("copy.img.lvmsync-state"));
        assert_eq!(load(&path).unwrap(), None);
        let st = State {
            holds: Some(pit("a")),
            applying: None,
        };
        save(&path, &dest, &st).unwrap();
        assert_eq!(load(&path).unwrap(), Some(st));
        fs::write(&path, b"{not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("damaged state file"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
