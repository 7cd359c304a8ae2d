//! The snapshots `backup` owns: created with an LVM tag that names the
//! destination they serve, found by that tag, and removed only when they
//! carry it. Snapshots without the tag are never touched.

use std::ffi::OsStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_64;

use crate::lvm::{self, LvmError};
use crate::stream::PointInTime;

/// Every tag `backup` puts on a snapshot starts with this.
pub const TAG_PREFIX: &str = "lvmsync_rs_";
/// Part of the name of every snapshot `backup` creates.
pub const NAME_MARK: &str = "-lvmsync-";

/// An LV as `backup` needs to know it.
#[derive(Debug, Clone, Deserialize)]
pub struct Volume {
    pub vg_name: String,
    pub lv_name: String,
    pub lv_attr: String,
    pub origin: String,
    pub lv_uuid: String,
    pub lv_time: String,
    /// Comma-separated.
    pub lv_tags: String,
    /// In bytes (`--units b --nosuffix`).
    pub lv_size: String,
    /// `thin` for a thin LV.
    pub segtype: String,
    /// For a classic snapshot: how full its COW space is, in percent.
    #[serde(default)]
    pub snap_percent: String,
}

impl Volume {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.vg_name, self.lv_name)
    }

    pub fn device(&self) -> std::path::PathBuf {
        std::path::Path::new("/dev")
            .join(&self.vg_name)
            .join(&self.lv_name)
    }

    pub fn size(&self) -> u64 {
        self.lv_size.trim().parse().unwrap_or(0)
    }

    pub fn is_thin(&self) -> bool {
        self.segtype == "thin"
    }

    /// `lv_attr` character 1 is `s` or `S` for a classic snapshot; a thin
    /// snapshot is a thin LV with an origin.
    pub fn is_snapshot(&self) -> bool {
        matches!(self.lv_attr.chars().next(), Some('s' | 'S'))
            || (self.is_thin() && !self.origin.is_empty())
    }

    /// `lv_attr` character 5: `I` for a snapshot the kernel invalidated.
    pub fn is_invalid(&self) -> bool {
        self.lv_attr.chars().nth(4) == Some('I')
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.lv_tags.split(',').any(|t| t == tag)
    }

    /// How full a classic snapshot's COW space is, in percent.
    pub fn cow_percent(&self) -> Option<f64> {
        self.snap_percent.trim().parse().ok()
    }

    /// The point in time this snapshot froze, of `origin`.
    pub fn point_in_time(&self, origin: &Volume) -> PointInTime {
        PointInTime {
            origin_uuid: origin.lv_uuid.clone(),
            snapshot_uuid: self.lv_uuid.clone(),
            snapshot: self.full_name(),
            time: self.lv_time.clone(),
        }
    }
}

#[derive(Deserialize)]
struct Report {
    report: Vec<ReportSection>,
}

#[derive(Deserialize)]
struct ReportSection {
    #[serde(default)]
    lv: Vec<Volume>,
}

/// The LVs of volume group `vg` (or the one LV `vg/lv`).
pub fn volumes(name: &str) -> Result<Vec<Volume>, LvmError> {
    let words = [
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "vg_name,lv_name,lv_attr,origin,lv_uuid,lv_time,lv_tags,lv_size,segtype,snap_percent",
        name,
    ];
    let args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
    let text = lvm::run("lvs", "lvm2", &args)?;
    let report: Report = serde_json::from_str(&text).map_err(|e| LvmError::ToolFailed {
        tool: "lvs".into(),
        message: format!("unreadable report: {e}"),
    })?;
    Ok(report.report.into_iter().flat_map(|s| s.lv).collect())
}

/// The origin named `vg/lv`, refused when it is not an LV that can be
/// backed up (a snapshot, or inactive).
pub fn origin(spec: &str) -> Result<Volume, LvmError> {
    let bad = |why: String| LvmError::Volume {
        spec: spec.to_string(),
        why,
    };
    let name = spec.trim_start_matches("/dev/");
    if name.split('/').count() != 2 {
        return Err(bad("name the origin as VG/LV".into()));
    }
    let found = volumes(name).map_err(|e| match e {
        LvmError::ToolFailed { message, .. } => {
            bad(format!("lvm2 knows no such LV (lvs: {message})"))
        }
        other => other,
    })?;
    let Some(lv) = found.into_iter().next() else {
        return Err(bad("lvm2 knows no such LV".into()));
    };
    if lv.is_snapshot() {
        return Err(bad(format!(
            "is a snapshot (of {}); name the volume to back up",
            lv.origin
        )));
    }
    if lv.lv_attr.chars().nth(4) != Some('a') {
        return Err(bad(format!(
            "is not active (try: lvchange -ay {})",
            lv.full_name()
        )));
    }
    Ok(lv)
}

/// The tag that marks the snapshots kept for the destination `dest` (as
/// written on the command line).
pub fn tag_for(dest: &str) -> String {
    format!("{TAG_PREFIX}{:016x}", xxh3_64(dest.as_bytes()))
}

/// The snapshots of `origin` that carry `tag`, oldest first.
pub fn owned(origin: &Volume, tag: &str) -> Result<Vec<Volume>, LvmError> {
    let mut found: Vec<Volume> = volumes(&origin.vg_name)?
        .into_iter()
        .filter(|lv| lv.origin == origin.lv_name && lv.has_tag(tag))
        .collect();
    found.sort_by(|a, b| a.lv_time.cmp(&b.lv_time).then(a.lv_name.cmp(&b.lv_name)));
    Ok(found)
}

/// How `backup` sizes a classic snapshot's COW space: lvcreate's
/// `-L BYTES` or `-l N%ORIGIN` (also `%VG`, `%FREE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotSize {
    Bytes(u64),
    Extents(String),
}

/// The default COW space of a classic snapshot.
pub const DEFAULT_SNAPSHOT_SIZE: &str = "20%ORIGIN";

impl SnapshotSize {
    pub fn parse(text: &str) -> Result<SnapshotSize, String> {
        if let Some((n, of)) = text.split_once('%') {
            let ok = n.parse::<u32>().is_ok_and(|n| (1..=100).contains(&n))
                && matches!(of.to_ascii_uppercase().as_str(), "ORIGIN" | "VG" | "FREE");
            if !ok {
                return Err(format!(
                    "{text}: not a size: give bytes (with k/M/G/T) or N%ORIGIN, N%VG, N%FREE"
                ));
            }
            return Ok(SnapshotSize::Extents(format!(
                "{n}%{}",
                of.to_ascii_uppercase()
            )));
        }
        crate::units::parse_size(text).map(SnapshotSize::Bytes)
    }
}

/// A name for a new snapshot of `origin`: `ORIGIN-lvmsync-YYYYmmddHHMMSS`
/// (UTC), the origin's part shortened to fit lvm2's 127 characters.
pub fn new_name(origin: &Volume) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stamp = utc_stamp(secs);
    let keep = 127 - NAME_MARK.len() - stamp.len();
    let mut base: String = origin.lv_name.chars().take(keep).collect();
    while base.len() > keep {
        base.pop();
    }
    format!("{base}{NAME_MARK}{stamp}")
}

/// `YYYYmmddHHMMSS` for `secs` after the epoch, in UTC.
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from a day count (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Creates a snapshot of `origin` named `name`, tagged `tag`, and returns
/// it. A classic snapshot gets `size` of COW space; a thin one is made
/// active (thin snapshots are created with activation skipped).
pub fn create(
    origin: &Volume,
    name: &str,
    tag: &str,
    size: &SnapshotSize,
) -> Result<Volume, LvmError> {
    let full = origin.full_name();
    let mut args: Vec<String> = vec!["-s".into(), "-n".into(), name.into()];
    args.extend(["--addtag".into(), tag.into()]);
    if origin.is_thin() {
        args.extend(["-kn".into(), "-ay".into()]);
    } else {
        match size {
            SnapshotSize::Bytes(b) => args.extend(["-L".into(), format!("{b}b")]),
            SnapshotSize::Extents(e) => args.extend(["-l".into(), e.clone()]),
        }
    }
    args.push(full);
    let os: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    lvm::run("lvcreate", "lvm2", &os)?;
    let made = format!("{}/{name}", origin.vg_name);
    let lv = volumes(&made)?
        .into_iter()
        .next()
        .ok_or_else(|| LvmError::ToolFailed {
            tool: "lvcreate".into(),
            message: format!("{made} was created but lvs does not show it"),
        })?;
    if lv.lv_attr.chars().nth(4) != Some('a') {
        let os: Vec<&OsStr> = ["-ay", "-K", made.as_str()].map(OsStr::new).to_vec();
        lvm::run("lvchange", "lvm2", &os)?;
    }
    Ok(lv)
}

/// Removes `snap`, which must carry `tag`.
pub fn remove(snap: &Volume, tag: &str) -> Result<(), LvmError> {
    // Looked up again: only what carries the tag now is removed.
    let name = snap.full_name();
    let now = volumes(&name)?;
    match now.first() {
        Some(lv) if lv.has_tag(tag) && lv.lv_uuid == snap.lv_uuid => {
            let os: Vec<&OsStr> = ["-y", name.as_str()].map(OsStr::new).to_vec();
            lvm::run("lvremove", "lvm2", &os).map(|_| ())
        }
        Some(_) => Err(LvmError::Volume {
            spec: name.clone(),
            why: format!("no longer carries the tag {tag}, so backup leaves it alone"),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names() {
        assert_eq!(utc_stamp(0), "19700101000000");
        assert_eq!(utc_stamp(951_782_400), "20000229000000");
        assert_eq!(utc_stamp(1_795_683_661), "20261126090101");
        let lv = |name: &str| Volume {
            vg_name: "vg".into(),
            lv_name: name.into(),
            lv_attr: "owi-a-----".into(),
            origin: String::new(),
            lv_uuid: "u".into(),
            lv_time: String::new(),
            lv_tags: "a,lvmsync_rs_1".into(),
            lv_size: "4096".into(),
            segtype: "linear".into(),
            snap_percent: String::new(),
        };
        assert!(new_name(&lv("root")).starts_with("root-lvmsync-20"));
        assert_eq!(new_name(&lv(&"x".repeat(200))).len(), 127);
        assert!(lv("a").has_tag("lvmsync_rs_1"));
        assert!(!lv("a").has_tag("lvmsync_rs_"));
        assert_eq!(lv("a").size(), 4096);
    }

    #[test]
    fn snapshot_sizes_parse() {
        assert_eq!(
            SnapshotSize::parse("20%origin").unwrap(),
            SnapshotSize::Extents("20%ORIGIN".into())
        );
        assert_eq!(
            SnapshotSize::parse("1G").unwrap(),
            SnapshotSize::Bytes(1 << 30)
        );
        assert!(SnapshotSize::parse("0%ORIGIN").is_err());
        assert!(SnapshotSize::parse("20%PV").is_err());
        assert!(tag_for("host:/a").starts_with(TAG_PREFIX));
        assert_ne!(tag_for("host:/a"), tag_for("host:/b"));
    }
}
