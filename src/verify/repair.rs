//! Repairing DEST after a comparison: the ranges of SRC that differ become
//! the extents of a delta of kind `compare` (no base: it applies to any
//! content; the `dest-size` property cuts a longer DEST file to SRC's
//! size), applied to DEST with every check of `apply`: through a pipe in
//! this process for a local DEST, through `apply --remote` on its host for
//! a remote one (see [`crate::ship`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::Path;
use std::sync::Arc;

use super::{Comparison, Repaired, Request};
use crate::apply::{self, DestLock, OpenDest, DEST_SIZE};
use crate::blockdev::Source;
use crate::changes::ChangeSet;
use crate::extents::{Extent, ExtentSet};
use crate::files::DELTA_READ_BUF;
use crate::send::{Delta, SendError};
use crate::ship::{Link, Session, Transfer};
use crate::stream::{Header, SourceInfo, SourceKind};
use crate::transport::Location;
use crate::Error;

/// The header of a repair delta: the differing blocks of SRC, for DEST.
pub fn header(req: &Request, src: &Source) -> Header {
    let src_path = src.path().display().to_string();
    Header {
        origin_size: src.size(),
        chunk_size: req.block_size,
        source: SourceInfo {
            origin: Some(src_path.clone()),
            ..SourceInfo::of_kind(SourceKind::Compare)
        },
        compression: req.compression,
        tool: crate::TOOL.to_string(),
        base: None,
        target: req.target.clone(),
        resume_from: 0,
        properties: BTreeMap::from([
            ("compare-src".to_string(), src_path),
            ("compare-dest".to_string(), req.dest.clone()),
            ("block-size".to_string(), req.block_size.to_string()),
            (DEST_SIZE.to_string(), src.size().to_string()),
        ]),
    }
}

/// Sends the differing ranges of SRC to DEST and applies them there.
pub fn repair(
    req: &Request,
    dest: &Location,
    dest_is_device: bool,
    src: &Arc<Source>,
    comparison: &Comparison,
    lock: Option<DestLock>,
) -> Result<Repaired, Error> {
    // What SRC has: the tail of a longer DEST is cut by the apply.
    let extents: Vec<Extent> = comparison
        .differences
        .iter()
        .filter(|r| r.offset < src.size())
        .map(|r| Extent {
            offset: r.offset,
            length: r.length.min(src.size() - r.offset),
        })
        .collect();
    let delta = Delta {
        header: header(req, src),
        source: src.clone(),
        changes: ChangeSet::read(ExtentSet::from_extents(extents)),
        name: src.path().display().to_string(),
        inputs: vec![src.path().to_path_buf()],
        auto: None,
    };
    let mut repaired = Repaired {
        dest_size_before: comparison.dest_size,
        ..Repaired::default()
    };
    match dest {
        Location::Local(path) => {
            let (applied, delta_bytes) = apply_here(&delta, Path::new(path), lock)?;
            repaired.records = applied.totals.records;
            repaired.data_bytes = applied.totals.data_bytes;
            repaired.zero_bytes = applied.totals.zero_bytes;
            repaired.delta_bytes = delta_bytes;
        }
        Location::Remote { .. } => {
            let link = Link {
                create: false,
                force: false,
                progress: crate::progress::Style::Hidden,
                command: "verify",
                ..req.link.clone()
            };
            let mut shipped = Transfer::default();
            let format = delta.header.compression.version();
            let session = Session::connect(dest, &link, format, &mut shipped)?;
            session.ship(&delta, &mut shipped)?;
            repaired.records = shipped.records;
            repaired.data_bytes = shipped.data_bytes;
            repaired.zero_bytes = shipped.zero_bytes;
            repaired.delta_bytes = shipped.bytes_on_wire;
        }
    }
    // The apply extends a shorter file and cuts a longer one; a block
    // device keeps its size.
    repaired.dest_size_after = if dest_is_device {
        comparison.dest_size
    } else {
        src.size()
    };
    Ok(repaired)
}

/// Writes `delta` into a pipe on one thread and applies it from the pipe
/// on this one, with every check of `apply`.
fn apply_here(
    delta: &Delta,
    dest: &Path,
    lock: Option<DestLock>,
) -> Result<(apply::Applied, u64), Error> {
    let (r, w) = nix::unistd::pipe().map_err(|e| Error::Output(e.into()))?;
    let (read_end, write_end) = (File::from(r), File::from(w));
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<u64, SendError> {
            let out = BufWriter::with_capacity(1 << 20, write_end);
            let (out, _, len) = delta.write_all(out)?;
            out.into_inner()
                .map_err(|e| SendError::Write(e.into_error()))?;
            Ok(len)
        });
        let input = BufReader::with_capacity(DELTA_READ_BUF, read_end);
        let name = "the repair delta";
        let applied = apply::open_stream(input, name, dest).and_then(|reader| {
            let target = OpenDest::open_locked(dest, false, None, false, lock)?;
            apply::apply_to(reader, name, target, &apply::Options::default())
        });
        let written = writer.join().unwrap_or_else(|_| {
            Err(SendError::Write(io::Error::other(
                "the thread writing the repair delta stopped unexpectedly",
            )))
        });
        match (written, applied) {
            (Ok(len), Ok(applied)) => Ok((applied, len)),
            // A read error of SRC explains the truncated delta.
            (Err(e @ (SendError::Read { .. } | SendError::ExtentPastSource { .. })), _) => {
                Err(e.into())
            }
            (_, Err(e)) => Err(e.into()),
            (Err(e), Ok(_)) => Err(e.into()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Compression;

    #[test]
    fn a_repair_delta_is_a_comparison_for_any_content_of_srcs_size() {
        let dir = std::env::temp_dir().join(format!("lvmsync-repair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("src.img");
        std::fs::write(&path, vec![5u8; 10_000]).unwrap();
        let src = Source::open(&path).unwrap();
        let req = Request {
            src: path.clone(),
            dest: "host:/copy img".into(),
            block_size: 4096,
            repair: true,
            link: Link::default(),
            target: None,
            compression: Compression::ZSTD,
        };
        let h = header(&req, &src);
        assert_eq!(h.source.kind, SourceKind::Compare);
        assert_eq!((h.base, h.target, h.resume_from), (None, None, 0));
        assert_eq!(h.origin_size, 10_000);
        assert_eq!(h.chunk_size, 4096);
        assert_eq!(h.compression, Compression::ZSTD);
        assert_eq!(h.source.origin.as_deref(), Some(path.to_str().unwrap()));
        assert_eq!(h.properties[DEST_SIZE], "10000");
        assert_eq!(h.properties["compare-dest"], "host:/copy img");
        assert_eq!(h.properties["compare-src"], path.to_str().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
