//! From what a user types (`vg/lv`, `/dev/vg/lv`, `/dev/mapper/vg-lv`, a dm
//! name) to the devices behind a classic LVM snapshot.
//!
//! Names are never split or unescaped by hand: the path is resolved to a
//! device number, the kernel (sysfs) names the device-mapper device, its table
//! (`dmsetup table`) names the COW and origin devices by number, and `lvs`
//! reports the LVM view (names, UUIDs, attributes) for the same number.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::cow::SECTOR_SIZE;
use crate::stream::PointInTime;
use crate::tool::{self, ToolError};

#[derive(Debug, Error)]
pub enum LvmError {
    #[error("{spec}: no such device ({path}){hint}")]
    NotFound {
        spec: String,
        path: String,
        hint: String,
    },
    #[error("{spec}: cannot open {path}: {source}")]
    Access {
        spec: String,
        path: String,
        source: io::Error,
    },
    #[error("{spec}: not a block device")]
    NotBlockDevice { spec: String },
    #[error("{spec}: a regular file, not an LVM snapshot; {hint}")]
    RegularFile { spec: String, hint: String },
    #[error("{spec}: not a device-mapper device, so not an LVM snapshot")]
    NotDeviceMapper { spec: String },
    #[error(
        "{spec}: not a snapshot: it is the origin of snapshots{names}; name one of its snapshots"
    )]
    IsOrigin { spec: String, names: String },
    #[error("{spec}: a thin volume, not a thin snapshot: lvm2 names no origin for it (a thin snapshot is made with lvcreate -s VG/THIN-LV; if its origin was removed, nothing is left to compare it with)")]
    ThinNotSnapshot { spec: String },
    #[error("{spec}: a thin pool, not a snapshot; name a thin snapshot in it")]
    ThinPool { spec: String },
    #[error("{spec}: a thin volume that lvm2 does not know, so its origin cannot be found; name a thin snapshot made by lvm2")]
    ThinNoLvm { spec: String },
    #[error("{spec}: its origin {origin} is not a thin volume (an external origin?); only snapshots of thin volumes in the same pool can be compared")]
    ThinExternalOrigin { spec: String, origin: String },
    #[error("{spec} is in thin pool {pool}, but {other} is in {other_pool}: thin volumes can only be compared within one pool")]
    ThinOtherPool {
        spec: String,
        pool: String,
        other: String,
        other_pool: String,
    },
    #[error("{source_name}: a thin volume of the same pool as {spec}, but neither its origin {origin} nor a snapshot of it, so it holds no later state of what {spec} froze")]
    ThinUnrelated {
        spec: String,
        source_name: String,
        origin: String,
    },
    #[error("{spec}: not a snapshot (its device-mapper table is {target})")]
    NotSnapshot { spec: String, target: String },
    #[error("{spec}: the snapshot is being merged into its origin; its table no longer describes the changes")]
    Merging { spec: String },
    #[error("{spec}: the snapshot is invalid (dm status {status}): the kernel invalidated it, usually because its COW space ran out; its changes can no longer be listed; take a new snapshot and copy the whole volume")]
    Invalid { spec: String, status: String },
    #[error(
        "{spec}: the snapshot uses a transient exception store (N), which keeps no table on disk"
    )]
    Transient { spec: String },
    #[error("{spec}: unexpected device-mapper {what}: {text:?}")]
    Unexpected {
        spec: String,
        what: &'static str,
        text: String,
    },
    #[error("{spec}: {why}")]
    Volume { spec: String, why: String },
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// A device-mapper device, by kernel name and number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmDevice {
    pub name: String,
    pub major: u32,
    pub minor: u32,
}

impl DmDevice {
    /// A path that opens this device: `/dev/mapper/NAME` when it is that
    /// device, else the kernel's `/dev/dm-N` node.
    pub fn path(&self) -> PathBuf {
        let mapper = Path::new("/dev/mapper").join(&self.name);
        if device_number(&mapper) == Some((self.major, self.minor)) {
            return mapper;
        }
        let uevent = sysfs(self.major, self.minor, "uevent").unwrap_or_default();
        match uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
            Some(devname) => Path::new("/dev").join(devname),
            None => mapper,
        }
    }
}

/// A logical volume as lvm2 reports it (`lvs`): the one model of an LV,
/// whatever it is used for (finding a snapshot's names, the snapshots
/// `backup` owns).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Lv {
    pub vg_name: String,
    pub lv_name: String,
    /// lvm2's ten attribute characters, decoded by the methods below.
    pub lv_attr: String,
    /// The origin's LV name, for a snapshot.
    pub origin: String,
    pub lv_uuid: String,
    pub lv_kernel_major: String,
    pub lv_kernel_minor: String,
    /// Creation time, as lvs prints it: `2024-05-01 10:11:12 +0000`.
    pub lv_time: String,
    /// For a thin volume: its pool's LV name.
    pub pool_lv: String,
    /// For a thin volume: its thin device id in the pool.
    pub thin_id: String,
    /// Comma-separated.
    pub lv_tags: String,
    /// In bytes (`--units b --nosuffix`).
    pub lv_size: String,
    /// `thin` for a thin LV.
    pub segtype: String,
    /// For a classic snapshot: how full its COW space is, in percent.
    pub snap_percent: String,
}

impl Lv {
    /// `vg/lv`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.vg_name, self.lv_name)
    }

    /// `vg/lv` when lvm2 knows the device (`lv`), else `other`.
    fn name_or(lv: &Option<Lv>, other: &str) -> String {
        lv.as_ref().map_or_else(|| other.to_string(), Lv::full_name)
    }

    /// `/dev/vg/lv`.
    pub fn device(&self) -> PathBuf {
        Path::new("/dev").join(&self.vg_name).join(&self.lv_name)
    }

    /// Size in bytes (0 when lvs did not say).
    pub fn size(&self) -> u64 {
        self.lv_size.trim().parse().unwrap_or(0)
    }

    /// The origin's `vg/lv`, for a snapshot.
    pub fn origin_name(&self) -> Option<String> {
        (!self.origin.is_empty()).then(|| format!("{}/{}", self.vg_name, self.origin))
    }

    fn attr(&self, i: usize) -> Option<char> {
        self.lv_attr.chars().nth(i)
    }

    pub fn is_thin(&self) -> bool {
        self.segtype == "thin"
    }

    /// `lv_attr` character 1 is `s` or `S` for a classic snapshot.
    pub fn is_classic_snapshot(&self) -> bool {
        matches!(self.attr(0), Some('s' | 'S'))
    }

    /// A classic snapshot, or a thin LV with an origin.
    pub fn is_snapshot(&self) -> bool {
        self.is_classic_snapshot() || (self.is_thin() && !self.origin.is_empty())
    }

    /// `lv_attr` character 1 `S`: a merge into the origin is pending (the
    /// only sign of a deferred merge while the table still says
    /// `snapshot`).
    pub fn is_merging(&self) -> bool {
        self.attr(0) == Some('S')
    }

    /// `lv_attr` character 5 `I`: a snapshot the kernel invalidated.
    pub fn is_invalid(&self) -> bool {
        self.attr(4) == Some('I')
    }

    /// `lv_attr` character 5 `a`: active.
    pub fn is_active(&self) -> bool {
        self.attr(4) == Some('a')
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.lv_tags.split(',').any(|t| t == tag)
    }

    /// How full a classic snapshot's COW space is, in percent.
    pub fn cow_percent(&self) -> Option<f64> {
        self.snap_percent.trim().parse().ok()
    }

    /// The point in time this snapshot froze, of `origin`.
    pub fn point_in_time(&self, origin: &Lv) -> PointInTime {
        PointInTime {
            origin_uuid: origin.lv_uuid.clone(),
            snapshot_uuid: self.lv_uuid.clone(),
            snapshot: self.full_name(),
            time: self.lv_time.clone(),
        }
    }
}

/// A classic snapshot, ready to have its COW table read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// What the user typed.
    pub spec: String,
    pub device: DmDevice,
    pub cow: DmDevice,
    pub origin: DmDevice,
    /// Size of the origin (and of the snapshot) in bytes.
    pub origin_size: u64,
    /// Chunk size in bytes, as the dm table gives it.
    pub chunk_size: u64,
    /// The LVM names, when lvm2 knows the device.
    pub lv: Option<Lv>,
}

impl Snapshot {
    /// The name to show: `vg/lv` when LVM knows it, else what was typed.
    pub fn display_name(&self) -> String {
        Lv::name_or(&self.lv, &self.spec)
    }
}

/// A snapshot of either kind.
#[derive(Debug, Clone)]
pub enum Found {
    /// A classic (dm-snapshot) snapshot, with its COW table.
    Classic(Box<Snapshot>),
    /// A thin snapshot, whose changes are in its pool's metadata.
    Thin(Box<ThinSnapshot>),
}

/// A thin pool: the pool device (`VG-POOL-tpool`), its metadata device
/// (`VG-POOL_tmeta`), its data block size.
#[derive(Debug, Clone)]
pub struct ThinPool {
    pub device: DmDevice,
    pub metadata: DmDevice,
    /// The data block size in bytes.
    pub block_size: u64,
    /// The pool LV, when lvm2 knows it.
    pub lv: Option<Lv>,
}

impl ThinPool {
    /// `VG/POOL` when lvm2 knows it, else the pool device's dm name.
    pub fn display_name(&self) -> String {
        Lv::name_or(&self.lv, &self.device.name)
    }
}

/// A thin volume: its device, the pool device it maps through, its thin
/// device id and its size.
#[derive(Debug, Clone)]
pub struct ThinVolume {
    pub device: DmDevice,
    /// The thin-pool device, by number.
    pub pool_dev: (u32, u32),
    pub thin_id: u64,
    /// Size in bytes.
    pub size: u64,
    pub lv: Option<Lv>,
}

impl ThinVolume {
    /// `vg/lv` when LVM knows it, else the dm name.
    pub fn display_name(&self) -> String {
        Lv::name_or(&self.lv, &self.device.name)
    }
}

/// A thin snapshot and the thin volume it was taken of, in one pool.
#[derive(Debug, Clone)]
pub struct ThinSnapshot {
    /// What the user typed.
    pub spec: String,
    pub snapshot: ThinVolume,
    pub origin: ThinVolume,
    pub pool: ThinPool,
}

impl ThinSnapshot {
    pub fn display_name(&self) -> String {
        Lv::name_or(&self.snapshot.lv, &self.spec)
    }
}

/// Finds the snapshot that `spec` names, classic or thin, and checks that
/// its changes can be read.
pub fn find(spec: &str) -> Result<Found, LvmError> {
    let device = resolve(spec).map_err(|e| match e {
        LvmError::NotFound { .. } | LvmError::NotBlockDevice { .. } => {
            regular_file(spec).unwrap_or(e)
        }
        e => e,
    })?;
    let lv = lv_for_device(&device);
    let table = dmsetup("table", &device.name)?;
    let lines: Vec<&str> = table.lines().filter(|l| !l.trim().is_empty()).collect();
    let first = lines.first().copied().unwrap_or("");
    let fields: Vec<&str> = first.split_whitespace().collect();
    let target = fields.get(2).copied().unwrap_or("");
    match target {
        "snapshot" if lines.len() == 1 => {}
        "snapshot-merge" => return Err(LvmError::Merging { spec: spec.into() }),
        "snapshot-origin" => {
            return Err(LvmError::IsOrigin {
                spec: spec.into(),
                names: snapshot_names_of(lv.as_ref()),
            })
        }
        "thin" if lines.len() == 1 => {
            let volume = thin_volume_of(spec, device, lv, first)?;
            return find_thin(spec, volume).map(|t| Found::Thin(Box::new(t)));
        }
        "thin-pool" => return Err(LvmError::ThinPool { spec: spec.into() }),
        _ => {
            let target = if lines.is_empty() {
                "empty".to_string()
            } else {
                lines
                    .iter()
                    .map(|l| l.split_whitespace().nth(2).unwrap_or("?"))
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            return Err(LvmError::NotSnapshot {
                spec: spec.into(),
                target,
            });
        }
    }
    if let Some(lv) = &lv {
        if lv.is_merging() {
            return Err(LvmError::Merging { spec: spec.into() });
        }
    }
    // 0 <len> snapshot <origin maj:min> <cow maj:min> <P|PO|N> <chunk sectors>
    let unexpected = || LvmError::Unexpected {
        spec: spec.into(),
        what: "table",
        text: first.to_string(),
    };
    if fields.len() < 7 {
        return Err(unexpected());
    }
    let sectors: u64 = fields[1].parse().map_err(|_| unexpected())?;
    let origin_dev = parse_dev(fields[3]).ok_or_else(unexpected)?;
    let cow_dev = parse_dev(fields[4]).ok_or_else(unexpected)?;
    if fields[5].starts_with('N') {
        return Err(LvmError::Transient { spec: spec.into() });
    }
    if !fields[5].starts_with('P') {
        return Err(unexpected());
    }
    let chunk_sectors: u64 = fields[6].parse().map_err(|_| unexpected())?;

    let status = dmsetup("status", &device.name)?;
    let status_text = status
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(3)
        .collect::<Vec<_>>()
        .join(" ");
    if status_text.starts_with("Invalid")
        || status_text.starts_with("Overflow")
        || status_text.starts_with("Merge failed")
    {
        return Err(LvmError::Invalid {
            spec: spec.into(),
            status: status_text,
        });
    }
    if let Some(lv) = &lv {
        if lv.is_invalid() {
            return Err(LvmError::Invalid {
                spec: spec.into(),
                status: format!("lv_attr {}", lv.lv_attr),
            });
        }
    }
    Ok(Found::Classic(Box::new(Snapshot {
        spec: spec.into(),
        cow: dm_device(cow_dev.0, cow_dev.1),
        origin: dm_device(origin_dev.0, origin_dev.1),
        device,
        origin_size: sectors * SECTOR_SIZE,
        chunk_size: chunk_sectors * SECTOR_SIZE,
        lv,
    })))
}

/// A thin volume from its one-line table `0 LEN thin POOL_MAJ:MIN ID [EXT]`.
fn thin_volume_of(
    spec: &str,
    device: DmDevice,
    lv: Option<Lv>,
    line: &str,
) -> Result<ThinVolume, LvmError> {
    let unexpected = || LvmError::Unexpected {
        spec: spec.into(),
        what: "table",
        text: line.to_string(),
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 5 || fields[2] != "thin" {
        return Err(unexpected());
    }
    let sectors: u64 = fields[1].parse().map_err(|_| unexpected())?;
    Ok(ThinVolume {
        device,
        pool_dev: parse_dev(fields[3]).ok_or_else(unexpected)?,
        thin_id: fields[4].parse().map_err(|_| unexpected())?,
        size: sectors * SECTOR_SIZE,
        lv,
    })
}

/// The thin volume that `spec` names, or none when it names something that
/// is not a thin device-mapper device (a file, a partition, a linear LV).
fn thin_volume(spec: &str) -> Result<Option<ThinVolume>, LvmError> {
    let device = match resolve(spec) {
        Ok(d) => d,
        Err(LvmError::NotBlockDevice { .. } | LvmError::NotDeviceMapper { .. }) => return Ok(None),
        Err(LvmError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let table = dmsetup("table", &device.name)?;
    let lines: Vec<&str> = table.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.as_slice() {
        [line] if line.split_whitespace().nth(2) == Some("thin") => {
            let lv = lv_for_device(&device);
            thin_volume_of(spec, device, lv, line).map(Some)
        }
        _ => Ok(None),
    }
}

/// The thin pool behind pool device `dev`, from its table
/// `0 LEN thin-pool META_MAJ:MIN DATA_MAJ:MIN BLOCK_SECTORS LOW_WATER ...`.
fn thin_pool(spec: &str, dev: (u32, u32), lv: Option<&Lv>) -> Result<ThinPool, LvmError> {
    let device = dm_device(dev.0, dev.1);
    let table = dmsetup("table", &device.name)?;
    let line = table.lines().next().unwrap_or("").to_string();
    let unexpected = || LvmError::Unexpected {
        spec: spec.into(),
        what: "thin-pool table",
        text: line.clone(),
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 6 || fields[2] != "thin-pool" {
        return Err(unexpected());
    }
    let meta = parse_dev(fields[3]).ok_or_else(unexpected)?;
    let block: u64 = fields[5].parse().map_err(|_| unexpected())?;
    let pool_lv = lv
        .filter(|lv| !lv.pool_lv.is_empty())
        .and_then(|lv| lvs(&[&format!("{}/{}", lv.vg_name, lv.pool_lv)]).ok())
        .and_then(|v| v.into_iter().next());
    Ok(ThinPool {
        device,
        metadata: dm_device(meta.0, meta.1),
        block_size: block * SECTOR_SIZE,
        lv: pool_lv,
    })
}

/// The origin and pool of thin volume `volume`, which must be a snapshot
/// of a thin volume of the same pool.
fn find_thin(spec: &str, snapshot: ThinVolume) -> Result<ThinSnapshot, LvmError> {
    let Some(lv) = snapshot.lv.clone() else {
        return Err(LvmError::ThinNoLvm { spec: spec.into() });
    };
    if lv.origin.is_empty() {
        return Err(LvmError::ThinNotSnapshot { spec: spec.into() });
    }
    let origin_name = format!("{}/{}", lv.vg_name, lv.origin);
    let origin = match thin_volume(&origin_name)? {
        Some(o) => o,
        None => {
            // Not active, or not thin: say which.
            resolve(&origin_name)?;
            return Err(LvmError::ThinExternalOrigin {
                spec: spec.into(),
                origin: origin_name,
            });
        }
    };
    let pool = thin_pool(spec, snapshot.pool_dev, Some(&lv))?;
    if origin.pool_dev != snapshot.pool_dev {
        let other = thin_pool(&origin_name, origin.pool_dev, origin.lv.as_ref())?;
        return Err(LvmError::ThinOtherPool {
            spec: spec.into(),
            pool: pool.display_name(),
            other: origin_name,
            other_pool: other.display_name(),
        });
    }
    Ok(ThinSnapshot {
        spec: spec.into(),
        snapshot,
        origin,
        pool,
    })
}

/// The thin volume to compare thin snapshot `snap` with when the data is
/// read from `data_source`: that volume itself when it is a thin volume of
/// the same pool (the origin, or another snapshot of it), else none (the
/// snapshot is compared with its origin). A thin volume of another pool, or
/// one that holds no state of the same origin, is refused.
pub fn thin_data_source(
    snap: &ThinSnapshot,
    data_source: &Path,
) -> Result<Option<ThinVolume>, LvmError> {
    let shown = data_source.display().to_string();
    let Some(vol) = thin_volume(&shown)? else {
        return Ok(None);
    };
    if vol.pool_dev != snap.snapshot.pool_dev {
        let other = thin_pool(&shown, vol.pool_dev, vol.lv.as_ref())?;
        return Err(LvmError::ThinOtherPool {
            spec: snap.display_name(),
            pool: snap.pool.display_name(),
            other: shown,
            other_pool: other.display_name(),
        });
    }
    let same_origin = vol.thin_id == snap.origin.thin_id
        || matches!((&vol.lv, &snap.origin.lv), (Some(v), Some(o))
            if v.vg_name == o.vg_name && v.origin == o.lv_name);
    if !same_origin {
        return Err(LvmError::ThinUnrelated {
            spec: snap.display_name(),
            source_name: shown,
            origin: snap.origin.display_name(),
        });
    }
    Ok(Some(vol))
}

/// The device that reads as the snapshot's origin reads now, to send the
/// changed chunks' data from: the origin LV (`/dev/VG/ORIGIN`) when lvm2
/// knows it; else the `snapshot-origin` device stacked on the same origin
/// device as the snapshot; else that origin device itself (the `-real`
/// device, which holds the same data).
pub fn origin_device(snap: &Snapshot) -> PathBuf {
    if let Some(lv) = snap.lv.as_ref().filter(|lv| !lv.origin.is_empty()) {
        let path = Path::new("/dev").join(&lv.vg_name).join(&lv.origin);
        if device_number(&path).is_some() {
            return path;
        }
    }
    let args = ["table", "--target", "snapshot-origin"];
    if let Ok(text) = tool::run_str("dmsetup", "dmsetup", &args) {
        if let Some(name) = snapshot_origin_on(&text, (snap.origin.major, snap.origin.minor)) {
            let path = Path::new("/dev/mapper").join(name);
            if device_number(&path).is_some() {
                return path;
            }
        }
    }
    snap.origin.path()
}

/// In `dmsetup table --target snapshot-origin` output (`NAME: 0 LEN
/// snapshot-origin MAJ:MIN` per line), the device stacked on `dev`.
fn snapshot_origin_on(text: &str, dev: (u32, u32)) -> Option<&str> {
    text.lines().find_map(|line| {
        let (name, table) = line.rsplit_once(": ")?;
        let fields: Vec<&str> = table.split_whitespace().collect();
        (fields.get(2) == Some(&"snapshot-origin")
            && fields.get(3).and_then(|d| parse_dev(d)) == Some(dev))
        .then_some(name)
    })
}

/// The LVM view of the snapshot's origin LV, when lvm2 knows it.
pub fn origin_lv(snap: &Snapshot) -> Option<Lv> {
    let lv = snap.lv.as_ref().filter(|lv| !lv.origin.is_empty())?;
    lvs(&[&format!("{}/{}", lv.vg_name, lv.origin)])
        .ok()?
        .into_iter()
        .next()
}

/// Resolves what a user typed to a device-mapper device.
pub fn resolve(spec: &str) -> Result<DmDevice, LvmError> {
    let path = spec_path(spec);
    let meta = fs::metadata(&path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            LvmError::NotFound {
                spec: spec.into(),
                path: path.display().to_string(),
                hint: not_found_hint(spec),
            }
        } else {
            LvmError::Access {
                spec: spec.into(),
                path: path.display().to_string(),
                source,
            }
        }
    })?;
    if !meta.file_type().is_block_device() {
        return Err(LvmError::NotBlockDevice { spec: spec.into() });
    }
    let rdev = meta.rdev();
    let (major, minor) = (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    );
    match sysfs(major, minor, "dm/name") {
        Some(name) => Ok(DmDevice { name, major, minor }),
        None => Err(LvmError::NotDeviceMapper { spec: spec.into() }),
    }
}

/// When `spec`, named as a snapshot, is a regular file (as a path, or
/// where its snapshot name points), what to say: what it is, and what to
/// give instead.
fn regular_file(spec: &str) -> Option<LvmError> {
    let path = [Path::new(spec).to_path_buf(), spec_path(spec)]
        .into_iter()
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))?;
    let mut magic = [0u8; 4];
    let cow = fs::File::open(&path)
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && u32::from_le_bytes(magic) == crate::cow::SNAP_MAGIC;
    Some(LvmError::RegularFile {
        spec: spec.into(),
        hint: if cow {
            format!(
                "it holds a dm-snapshot COW store: read it with --cow {spec} --origin-size SIZE"
            )
        } else {
            "SNAPSHOT names an LVM snapshot (VG/LV, /dev/VG/LV or a device-mapper name)".into()
        },
    })
}

/// `vg/lv` is `/dev/vg/lv`; a bare name is a dm name; a path is a path.
fn spec_path(spec: &str) -> PathBuf {
    if spec.starts_with('/') {
        PathBuf::from(spec)
    } else if spec.contains('/') {
        Path::new("/dev").join(spec)
    } else {
        Path::new("/dev/mapper").join(spec)
    }
}

fn not_found_hint(spec: &str) -> String {
    let Some((vg, lv)) = spec.trim_start_matches("/dev/").split_once('/') else {
        return String::new();
    };
    match lvs(&[&format!("{vg}/{lv}")]) {
        Ok(found)
            if found
                .iter()
                .any(|l| !l.pool_lv.is_empty() && !l.origin.is_empty()) =>
        {
            format!("; the LV exists but is not active: thin snapshots skip activation (try: lvchange -ay -K {vg}/{lv})")
        }
        Ok(found) if !found.is_empty() => {
            format!("; the LV exists but is not active (try: lvchange -ay {vg}/{lv})")
        }
        Ok(_) => format!("; lvm2 knows no LV {vg}/{lv}"),
        Err(_) => String::new(),
    }
}

fn sysfs(major: u32, minor: u32, file: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/{file}")).ok()?;
    Some(text.trim_end_matches('\n').to_string())
}

fn device_number(path: &Path) -> Option<(u32, u32)> {
    let meta = fs::metadata(path).ok()?;
    meta.file_type().is_block_device().then(|| {
        let rdev = meta.rdev();
        (
            nix::sys::stat::major(rdev) as u32,
            nix::sys::stat::minor(rdev) as u32,
        )
    })
}

fn dm_device(major: u32, minor: u32) -> DmDevice {
    DmDevice {
        name: sysfs(major, minor, "dm/name").unwrap_or_else(|| format!("{major}:{minor}")),
        major,
        minor,
    }
}

fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn dmsetup(command: &str, name: &str) -> Result<String, LvmError> {
    Ok(tool::run_str("dmsetup", "dmsetup", &[command, name])?)
}

#[derive(Deserialize)]
struct LvsReport {
    report: Vec<LvsSection>,
}

#[derive(Deserialize)]
struct LvsSection {
    #[serde(default)]
    lv: Vec<Lv>,
}

/// The fields of [`Lv`], as `lvs -o` names them.
const LVS_FIELDS: &str = "vg_name,lv_name,lv_attr,origin,lv_uuid,lv_kernel_major,lv_kernel_minor,lv_time,pool_lv,thin_id,lv_tags,lv_size,segtype,snap_percent";

/// `lvs -a` for the given VGs or LVs (all when empty).
pub fn lvs(names: &[&str]) -> Result<Vec<Lv>, LvmError> {
    let mut args: Vec<&str> = vec![
        "--reportformat",
        "json",
        "-a",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        LVS_FIELDS,
    ];
    args.extend(names);
    let text = tool::run_str("lvs", "lvm2", &args)?;
    let report: LvsReport = serde_json::from_str(&text).map_err(|e| ToolError::Failed {
        tool: "lvs".into(),
        message: format!("unreadable report: {e}"),
    })?;
    Ok(report.report.into_iter().flat_map(|s| s.lv).collect())
}

/// The LV whose device `path` is (any spelling: /dev/vg/lv,
/// /dev/mapper/vg-lv, /dev/dm-N), if lvm2 knows it.
pub fn lv_at(path: &Path) -> Option<Lv> {
    let (major, minor) = device_number(path)?;
    lv_for_device(&dm_device(major, minor))
}

/// The LV that is this device, if lvm2 is installed and knows it.
fn lv_for_device(device: &DmDevice) -> Option<Lv> {
    let uuid = sysfs(device.major, device.minor, "dm/uuid")?;
    if !uuid.starts_with("LVM-") {
        return None;
    }
    lvs(&[]).ok()?.into_iter().find(|lv| {
        lv.lv_kernel_major == device.major.to_string()
            && lv.lv_kernel_minor == device.minor.to_string()
    })
}

fn snapshot_names_of(origin: Option<&Lv>) -> String {
    let Some(origin) = origin else {
        return String::new();
    };
    let snaps: Vec<String> = lvs(&[&origin.vg_name])
        .unwrap_or_default()
        .into_iter()
        .filter(|lv| lv.origin == origin.lv_name)
        .map(|lv| lv.full_name())
        .collect();
    if snaps.is_empty() {
        String::new()
    } else {
        format!(" ({})", snaps.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_forms_map_to_paths() {
        assert_eq!(spec_path("vg/lv"), Path::new("/dev/vg/lv"));
        assert_eq!(spec_path("my-vg/a-b"), Path::new("/dev/my-vg/a-b"));
        assert_eq!(spec_path("/dev/vg/lv"), Path::new("/dev/vg/lv"));
        assert_eq!(
            spec_path("/dev/mapper/my--vg-a--b"),
            Path::new("/dev/mapper/my--vg-a--b")
        );
        assert_eq!(spec_path("vg-lv"), Path::new("/dev/mapper/vg-lv"));
    }

    #[test]
    fn device_numbers_parse() {
        assert_eq!(parse_dev("253:12"), Some((253, 12)));
        assert_eq!(parse_dev("253"), None);
        assert_eq!(parse_dev("a:1"), None);
    }

    #[test]
    fn the_snapshot_origin_device_is_found_by_its_table() {
        let text = "vg-other: 0 2048 snapshot-origin 253:7\nmy--vg-data--lv: 0 65536 snapshot-origin 253:3\n";
        assert_eq!(snapshot_origin_on(text, (253, 3)), Some("my--vg-data--lv"));
        assert_eq!(snapshot_origin_on(text, (253, 4)), None);
        assert_eq!(snapshot_origin_on("No devices found\n", (253, 3)), None);
    }

    #[test]
    fn lvs_json_report_parses() {
        let text = r#"  {
      "report": [
          {
              "lv": [
                  {"vg_name":"my-vg", "lv_name":"data-lv-snap", "lv_attr":"swi-a-s---", "origin":"data-lv", "lv_uuid":"abc", "lv_kernel_major":"253", "lv_kernel_minor":"4", "lv_time":"2024-05-01 10:11:12 +0000"}
              ]
          }
      ]
  }"#;
        let r: LvsReport = serde_json::from_str(text).unwrap();
        assert_eq!(r.report[0].lv[0].full_name(), "my-vg/data-lv-snap");
        assert_eq!(r.report[0].lv[0].lv_time, "2024-05-01 10:11:12 +0000");
    }

    #[test]
    fn a_thin_table_gives_the_pool_device_the_id_and_the_size() {
        let dev = DmDevice {
            name: "vg-snap".into(),
            major: 253,
            minor: 9,
        };
        let v = thin_volume_of("vg/snap", dev.clone(), None, "0 65536 thin 253:4 7").unwrap();
        assert_eq!((v.pool_dev, v.thin_id, v.size), ((253, 4), 7, 65536 * 512));
        // With an external origin device after the id.
        let v = thin_volume_of("vg/snap", dev.clone(), None, "0 2048 thin 253:4 3 253:1").unwrap();
        assert_eq!(v.thin_id, 3);
        for bad in [
            "0 2048 thin 253:4",
            "0 2048 thin x 3",
            "0 2048 linear 8:0 0",
            "0 x thin 253:4 3",
        ] {
            let err = thin_volume_of("vg/snap", dev.clone(), None, bad).unwrap_err();
            assert!(
                err.to_string().contains("unexpected device-mapper table"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_regular_file_is_not_a_snapshot() {
        let err = resolve("/proc/self/status").unwrap_err();
        assert!(matches!(err, LvmError::NotBlockDevice { .. }), "{err}");
        let err = resolve("/nonexistent/thing").unwrap_err();
        assert!(err.to_string().contains("no such device"), "{err}");
    }
}
