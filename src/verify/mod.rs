//! Comparing two copies block by block, here or with DEST on another host,
//! and repairing the blocks that differ.
//!
//! - [`hash`]: one side, a copy read once sequentially and hashed block by
//!   block on several cores;
//! - [`compare`]: both sides at once, hash against hash as they come, the
//!   differing blocks joined into ranges;
//! - [`repair`]: exactly those ranges of SRC, as a delta applied to DEST
//!   with every check of `apply`;
//! - [`remote`]: the far side of a remote comparison (`verify
//!   --remote-side`), which hashes its copy and streams the hashes back.

pub mod compare;
pub mod hash;
pub mod remote;
pub mod repair;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::apply::DestLock;
use crate::blockdev::Source;
use crate::extents::Extent;
use crate::ship::Link;
use crate::stream::{Compression, PointInTime};
use crate::transport::Location;
use crate::Error;

pub use hash::{HashStream, Hashes, HASH_LEN};
pub use remote::PROTOCOL;

/// The block size when none is given.
pub const DEFAULT_BLOCK_SIZE: u64 = 1 << 20;
/// The smallest block size.
pub const MIN_BLOCK_SIZE: u64 = 4096;
/// The largest block size: each read buffer holds at least one block.
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error("{path}: read error at byte {offset}: {source}")]
    Read {
        path: String,
        offset: u64,
        source: io::Error,
    },
    #[error("{path}: a hashing thread stopped unexpectedly")]
    Stopped { path: String },
    #[error("{host}: the remote verify's hello line is not understood ({line:?}): install the same version on both hosts")]
    BadHello { host: String, line: String },
    #[error("{host}: the remote verify hashes blocks of {theirs} bytes, not {ours}: install the same version on both hosts")]
    BlockSizeMismatch {
        host: String,
        ours: u64,
        theirs: u64,
    },
    #[error("{dest}: the block device is {size} bytes, smaller than SRC ({src_size} bytes): --repair cannot make it a copy; extend it first (lvextend); nothing was written")]
    DeviceTooSmall {
        dest: String,
        size: u64,
        src_size: u64,
    },
    #[error("{src} and {dest} are the same device or file: there is nothing to repair; nothing was written")]
    SameCopy { src: String, dest: String },
    #[error("the local lvmsync-rs speaks verify protocol {theirs}, this one ({}) protocol {PROTOCOL}: install the same version on both hosts", crate::TOOL)]
    ProtocolMismatch { theirs: u32 },
}

/// Checks a block size: a power of two from [`MIN_BLOCK_SIZE`] to
/// [`MAX_BLOCK_SIZE`].
fn check_block_size(n: u64) -> Result<u64, String> {
    if !n.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&n) {
        return Err(format!(
            "{n} is not a power of two from {MIN_BLOCK_SIZE} (4k) to {MAX_BLOCK_SIZE} (64M)"
        ));
    }
    Ok(n)
}

/// Parses a block size as the command line gives it (`1M`, `65536`).
pub fn parse_block_size(text: &str) -> Result<u64, String> {
    crate::units::parse_size(text).and_then(check_block_size)
}

/// Adds the range at `offset` of `length` bytes to `ranges` (sorted,
/// disjoint), joined with the last one when they touch.
pub fn add_range(ranges: &mut Vec<Extent>, offset: u64, length: u64) {
    if length == 0 {
        return;
    }
    match ranges.last_mut() {
        Some(last) if last.offset + last.length == offset => last.length += length,
        _ => ranges.push(Extent { offset, length }),
    }
}

/// A comparison to make.
#[derive(Debug, Clone)]
pub struct Request {
    pub src: PathBuf,
    /// `[user@]host:PATH`, or a local path.
    pub dest: String,
    pub block_size: u64,
    pub repair: bool,
    /// How a remote DEST is reached (the hashing side, and the apply of a
    /// repair).
    pub link: Link,
    /// The point in time a repair brings DEST to (when `backup` repairs a
    /// copy against its new snapshot); its state then records it.
    pub target: Option<PointInTime>,
    /// How a repair compresses its DATA records.
    pub compression: Compression,
}

/// What a repair sent and what it did to DEST.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Repaired {
    pub records: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// The repair delta's length.
    pub delta_bytes: u64,
    pub dest_size_before: u64,
    pub dest_size_after: u64,
}

/// What a comparison found (and a repair did): what `verify --json`
/// prints.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Comparison {
    /// Whether the copies were identical when compared.
    pub identical: bool,
    pub src: String,
    pub dest: String,
    pub remote_host: Option<String>,
    pub src_size: u64,
    pub dest_size: u64,
    pub block_size: u64,
    pub hash: &'static str,
    pub differences: Vec<Extent>,
    /// Bytes in `differences`.
    pub differing_bytes: u64,
    /// Bytes read and hashed on each side, and both together.
    pub src_bytes_read: u64,
    pub dest_bytes_read: u64,
    pub bytes_read: u64,
    /// What the remote side sent back (hello line and hashes); null for a
    /// local DEST.
    pub bytes_on_wire: Option<u64>,
    /// The repair, when one was sent.
    pub repaired: Option<Repaired>,
    /// Whether SRC and DEST are identical at the end (after a repair).
    pub identical_now: bool,
    /// The comparison, and the whole run (with the repair).
    pub compare_seconds: f64,
    pub seconds: f64,
}

/// SRC as typed: a path that exists is that path; otherwise `vg/lv` (one
/// `/`, not starting with `/` or `.`) names the LV `/dev/vg/lv` when that
/// exists.
pub fn src_path(spec: &Path) -> PathBuf {
    let text = spec.to_string_lossy();
    let lv_like = !text.starts_with('/')
        && !text.starts_with('.')
        && text.matches('/').count() == 1
        && !text.ends_with('/');
    if spec.exists() || !lv_like {
        return spec.to_path_buf();
    }
    let dev = Path::new("/dev").join(spec);
    if dev.exists() {
        dev
    } else {
        spec.to_path_buf()
    }
}

/// Opens a copy to hash: a block device or a regular file.
pub(crate) fn open_copy(path: &Path) -> Result<Source, Error> {
    if path.is_dir() {
        return Err(Error::Open {
            path: path.display().to_string(),
            source: io::Error::other("is a directory"),
        });
    }
    Source::open(path).map_err(|source| Error::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Compares SRC and DEST (and with `repair`, repairs DEST); `comparison`
/// says what was found and done, as far as it got.
pub fn verify(req: &Request, comparison: &mut Comparison) -> Result<(), Error> {
    let started = Instant::now();
    comparison.dest = req.dest.clone();
    comparison.block_size = req.block_size;
    comparison.hash = "xxh3-128";
    let result = run(req, comparison);
    comparison.seconds = started.elapsed().as_secs_f64();
    result
}

fn run(req: &Request, comparison: &mut Comparison) -> Result<(), Error> {
    let dest = Location::parse(&req.dest)?;
    // Local inputs first: a missing SRC needs no connection.
    let src = Arc::new(open_copy(&src_path(&req.src))?);
    src.advise_sequential();
    comparison.src = src.path().display().to_string();
    comparison.src_size = src.size();
    // A repair of SRC onto itself would read what it writes.
    if let (Location::Local(path), true) = (&dest, req.repair) {
        let same = (fs::metadata(src.path()), fs::metadata(path));
        if let (Ok(a), Ok(b)) = same {
            if crate::send::same_file(&a, &b) {
                return Err(VerifyError::SameCopy {
                    src: src.path().display().to_string(),
                    dest: path.clone(),
                }
                .into());
            }
        }
    }
    // A local DEST to repair is locked before it is read, and stays locked
    // until the repair is applied: no other writer comes in between.
    let lock = match (&dest, req.repair) {
        (Location::Local(path), true) => Some(DestLock::take(Path::new(path))?),
        _ => None,
    };
    let side = compare::DestSide::open(req, &dest, &src, comparison)?;
    let dest_is_device = side.is_device;
    if req.repair && dest_is_device && side.size < src.size() {
        return Err(VerifyError::DeviceTooSmall {
            dest: req.dest.clone(),
            size: side.size,
            src_size: src.size(),
        }
        .into());
    }
    compare::compare(&src, side, req.block_size, req.link.progress, comparison)?;
    // With a target, the repair also records in DEST's state that DEST
    // holds that point in time, so it is sent even when nothing differs.
    if req.repair && (!comparison.identical || req.target.is_some()) {
        let repaired = repair::repair(req, &dest, dest_is_device, &src, comparison, lock)?;
        // A block device larger than SRC keeps its tail.
        comparison.identical_now = repaired.dest_size_after == src.size();
        comparison.repaired = Some(repaired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_powers_of_two_in_range() {
        assert_eq!(parse_block_size("1M"), Ok(1 << 20));
        assert_eq!(parse_block_size("4k"), Ok(4096));
        assert_eq!(parse_block_size("64M"), Ok(64 << 20));
        assert!(parse_block_size("2k").is_err());
        assert!(parse_block_size("12k").is_err());
        assert!(parse_block_size("128M").is_err());
        assert!(parse_block_size("x").is_err());
    }

    #[test]
    fn ranges_join_when_they_touch() {
        let mut r = Vec::new();
        add_range(&mut r, 0, 10);
        add_range(&mut r, 10, 5);
        add_range(&mut r, 20, 1);
        add_range(&mut r, 21, 0);
        let e = |offset, length| Extent { offset, length };
        assert_eq!(r, [e(0, 15), e(20, 1)]);
    }

    #[test]
    fn src_is_a_path_or_an_lv() {
        // Paths that exist, or do not look like vg/lv, stay as they are.
        assert_eq!(src_path(Path::new("Cargo.toml")), Path::new("Cargo.toml"));
        assert_eq!(src_path(Path::new("src/lib.rs")), Path::new("src/lib.rs"));
        for p in ["./a/b", "/a/b", "a/b/c", "missing.img", "a/"] {
            assert_eq!(src_path(Path::new(p)), Path::new(p), "{p}");
        }
        // vg/lv is /dev/vg/lv when that exists.
        assert_eq!(
            src_path(Path::new("no-such-vg/lv")),
            Path::new("no-such-vg/lv")
        );
        if Path::new("/dev/fd/0").exists() && !Path::new("fd/0").exists() {
            assert_eq!(src_path(Path::new("fd/0")), Path::new("/dev/fd/0"));
        }
    }
}
