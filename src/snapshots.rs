//! The snapshots `backup` owns: created with an LVM tag that names the
//! destination they serve, found by that tag, and removed only when they
//! carry it. Snapshots without the tag are never touched.

use xxhash_rust::xxh3::xxh3_64;

use crate::lvm::{self, Lv, LvmError};
use crate::tool::{self, ToolError};

/// Every tag `backup` puts on a snapshot starts with this.
pub const TAG_PREFIX: &str = "lvmsync_rs_";
/// Part of the name of every snapshot `backup` creates.
const NAME_MARK: &str = "-lvmsync-";

/// The origin named `vg/lv`, refused when it is not an LV that can be
/// backed up (a snapshot, or inactive).
pub fn origin(spec: &str) -> Result<Lv, LvmError> {
    let bad = |why: String| LvmError::Volume {
        spec: spec.to_string(),
        why,
    };
    let name = spec.trim_start_matches("/dev/");
    if name.split('/').count() != 2 {
        return Err(bad("name the origin as VG/LV".into()));
    }
    let found = lvm::lvs(&[name]).map_err(|e| match e {
        LvmError::Tool(ToolError::Failed { message, .. }) => {
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
    if !lv.is_active() {
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
pub fn owned(origin: &Lv, tag: &str) -> Result<Vec<Lv>, LvmError> {
    let mut found: Vec<Lv> = lvm::lvs(&[&origin.vg_name])?
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
pub fn new_name(origin: &Lv) -> String {
    let stamp = crate::time::compact(crate::time::now());
    let keep = 127 - NAME_MARK.len() - stamp.len();
    let mut base: String = origin.lv_name.chars().take(keep).collect();
    while base.len() > keep {
        base.pop();
    }
    format!("{base}{NAME_MARK}{stamp}")
}

/// Creates a snapshot of `origin` named `name`, tagged `tag`, and returns
/// it. A classic snapshot gets `size` of COW space; a thin one is made
/// active (thin snapshots are created with activation skipped).
pub fn create(origin: &Lv, name: &str, tag: &str, size: &SnapshotSize) -> Result<Lv, LvmError> {
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
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool::run_str("lvcreate", "lvm2", &args)?;
    let made = format!("{}/{name}", origin.vg_name);
    let lv = lvm::lvs(&[&made])?
        .into_iter()
        .next()
        .ok_or_else(|| ToolError::Failed {
            tool: "lvcreate".into(),
            message: format!("{made} was created but lvs does not show it"),
        })?;
    if !lv.is_active() {
        tool::run_str("lvchange", "lvm2", &["-ay", "-K", &made])?;
    }
    Ok(lv)
}

/// Removes `snap`, which must carry `tag`.
pub fn remove(snap: &Lv, tag: &str) -> Result<(), LvmError> {
    // Looked up again: only what carries the tag now is removed.
    let name = snap.full_name();
    let now = lvm::lvs(&[&name])?;
    match now.first() {
        Some(lv) if lv.has_tag(tag) && lv.lv_uuid == snap.lv_uuid => {
            tool::run_str("lvremove", "lvm2", &["-y", &name])?;
            Ok(())
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
        let lv = |name: &str| Lv {
            vg_name: "vg".into(),
            lv_name: name.into(),
            lv_attr: "owi-a-----".into(),
            lv_uuid: "u".into(),
            lv_tags: "a,lvmsync_rs_1".into(),
            lv_size: "4096".into(),
            segtype: "linear".into(),
            ..Lv::default()
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
