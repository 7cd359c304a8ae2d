//! Restoring a point of a volume from an archive onto a device or a file.
//!
//! First everything that can be checked without reading the data is: the
//! catalogue, the chain of points that rebuilds the point, each delta
//! object there with the size the catalogue says, each index whole and
//! agreeing with it, each delta's header (its own checksum, the volume's
//! size, the point it brings a copy to). Then the records are read, from
//! the newest delta to the oldest, only those that supply bytes no newer
//! delta wrote ([`super::plan`]), in ranged reads of neighbouring records;
//! each is checked on its own (its header's and its content's checksums)
//! before any byte of it is written.
//!
//! When DEST's state says it holds a point of the same chain, only the
//! extents written by the deltas between that point and the one restored
//! are read and written: going forward, the newer deltas' own data;
//! going back, the older data of those extents.

use std::path::PathBuf;

use serde::Serialize;

use super::catalog::{Catalog, Point};
use super::index::Index;
use super::plan::{plan_delta, reads, written, Planned, Remaining};
use super::{range_of, Archive, ArchiveError, MAX_READ, READ_GAP};
use crate::apply::{OpenDest, PieceWriter};
use crate::extents::ExtentSet;
use crate::progress::{Progress, Style};
use crate::stream::{self, Header, RecordKind, MAX_RECORD_LEN};
use crate::Error;

/// A restore to do.
#[derive(Debug, Clone)]
pub struct Request {
    pub volume: String,
    /// The point's number; the latest when none.
    pub point: Option<u64>,
    pub dest: PathBuf,
    /// Create DEST as a regular file when it does not exist.
    pub create: bool,
    /// Restore the whole volume, whatever DEST's state says it holds.
    pub full: bool,
    /// How progress is shown.
    pub progress: Style,
}

/// What a restore did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Restored {
    pub volume: String,
    pub point: u64,
    /// The snapshot the point is.
    pub snapshot: String,
    pub dest: String,
    /// The point DEST held that only the difference was restored from;
    /// none for a whole restore.
    pub from_point: Option<u64>,
    /// The deltas the point is rebuilt from.
    pub deltas: usize,
    /// Bytes read from the archive, and in how many ranged reads.
    pub bytes_read: u64,
    pub reads: u64,
    /// Records checked and used, pieces and bytes written.
    pub records: u64,
    pub pieces: u64,
    pub bytes_written: u64,
}

/// A delta of the chain, checked and ready to read from.
struct Ready<'a> {
    point: &'a Point,
    index: Index,
    header: Header,
}

/// Parses `VOLUME[@POINT]`: the point a number, or `latest`.
pub fn parse_spec(spec: &str) -> Result<(String, Option<u64>), String> {
    match spec.rsplit_once('@') {
        None => Ok((spec.to_string(), None)),
        Some((volume, "latest")) => Ok((volume.to_string(), None)),
        Some((volume, n)) => n
            .parse::<u64>()
            .map(|n| (volume.to_string(), Some(n)))
            .map_err(|_| format!("{spec:?}: the point after '@' is a number, or 'latest'")),
    }
}

/// Checks, before anything is read of their data, the deltas that rebuild
/// the points `chain` names.
fn prepare<'a>(
    archive: &Archive,
    catalog: &Catalog,
    chain: &[&'a Point],
) -> Result<Vec<Ready<'a>>, ArchiveError> {
    chain
        .iter()
        .map(|point| {
            let index = archive.index(&point.delta)?;
            let header = archive.delta_header(&point.delta, &index)?;
            let mismatch = |reason: String| ArchiveError::Mismatch {
                location: archive.location(),
                key: point.delta.key.clone(),
                reason,
            };
            if header.origin_size != catalog.origin_size {
                return Err(mismatch(format!(
                    "the delta is of a volume of {} bytes, the catalogue's is {}",
                    header.origin_size, catalog.origin_size
                )));
            }
            if !header.target.as_ref().is_some_and(|t| t.same(&point.point)) {
                return Err(mismatch(format!(
                    "the delta does not bring a copy to point {} ({})",
                    point.number, point.point
                )));
            }
            Ok(Ready {
                point,
                index,
                header,
            })
        })
        .collect()
}

/// The catalogue of `volume`, or an error naming the volumes there are.
pub fn catalog_of(archive: &Archive, volume: &str) -> Result<Catalog, ArchiveError> {
    match archive.catalog(volume)? {
        Some(c) => Ok(c),
        None => {
            let volumes = archive.volumes()?;
            Err(ArchiveError::NoSuchVolume {
                location: archive.location(),
                volume: volume.to_string(),
                volumes: if volumes.is_empty() {
                    "none".into()
                } else {
                    volumes.join(", ")
                },
            })
        }
    }
}

/// The point `number` (the latest when none), or an error naming the
/// points there are.
pub fn point_of(catalog: &Catalog, number: Option<u64>) -> Result<&Point, ArchiveError> {
    let found = match number {
        Some(n) => catalog.point(n),
        None => catalog.latest(),
    };
    found.ok_or_else(|| ArchiveError::NoSuchPoint {
        volume: catalog.volume.clone(),
        asked: number.map_or("latest".into(), |n| n.to_string()),
        points: describe_points(catalog),
    })
}

/// `points 3 (2026-11-26T08:00:00Z), 5 (...)`, or `no points`.
pub fn describe_points(catalog: &Catalog) -> String {
    if catalog.points.is_empty() {
        return "no points".into();
    }
    let list: Vec<String> = catalog
        .points
        .iter()
        .map(|p| format!("{} ({})", p.number, p.time))
        .collect();
    format!("points {}", list.join(", "))
}

/// The chain that rebuilds `point`.
fn chain_of<'a>(catalog: &'a Catalog, point: &Point) -> Result<Vec<&'a Point>, ArchiveError> {
    catalog
        .chain(point.number)
        .ok_or_else(|| ArchiveError::BrokenChain {
            volume: catalog.volume.clone(),
            point: point.number,
            why: "a point it builds on is missing".into(),
        })
}

/// Restores a point onto DEST.
pub fn restore(archive: &Archive, req: &Request) -> Result<Restored, Error> {
    let catalog = catalog_of(archive, &req.volume)?;
    let point = point_of(&catalog, req.point)?;
    let chain = chain_of(&catalog, point)?;
    // Everything that can be checked before DEST is touched.
    let ready = prepare(archive, &catalog, &chain)?;
    let dest = OpenDest::open(&req.dest, req.create, Some(catalog.origin_size), false)?;
    // What DEST holds: a point of this volume, or a restore of this point
    // partway from one.
    let held = if req.full {
        None
    } else {
        dest.state.as_ref().and_then(|s| {
            let holds = match &s.applying {
                Some(a) if a.target.same(&point.point) => a.base.as_ref(),
                Some(_) => None,
                None => s.holds.as_ref(),
            };
            let holds = holds?;
            catalog.points.iter().find(|p| p.point.same(holds))
        })
    };
    // The extents to restore: all of them, or those the deltas between the
    // point DEST holds and this one wrote.
    let (wanted, from_point, extra) = match held {
        Some(q) if q.number == point.number => (Some(ExtentSet::default()), Some(q.number), vec![]),
        Some(q) if chain.iter().any(|p| p.number == q.number) => {
            let newer: Vec<_> = ready.iter().filter(|r| r.point.number > q.number).collect();
            let set = newer.iter().fold(ExtentSet::default(), |acc, r| {
                acc.union(&written(&r.index.records))
            });
            (Some(set), Some(q.number), vec![])
        }
        Some(q) => match catalog.chain(q.number) {
            // DEST holds a later point of the same chain: what its newer
            // deltas wrote goes back to this point's data.
            Some(later) if later.iter().any(|p| p.number == point.number) => {
                let newer: Vec<&Point> = later
                    .into_iter()
                    .filter(|p| p.number > point.number)
                    .collect();
                let extra = prepare(archive, &catalog, &newer)?;
                let set = extra.iter().fold(ExtentSet::default(), |acc, r| {
                    acc.union(&written(&r.index.records))
                });
                (Some(set), Some(q.number), extra)
            }
            _ => (None, None, vec![]),
        },
        None => (None, None, vec![]),
    };
    drop(extra);
    let whole = wanted.is_none();
    let base = from_point
        .and_then(|n| catalog.point(n))
        .map(|p| p.point.clone());
    let mut writer = dest.pieces(catalog.origin_size, base, point.point.clone(), whole, false)?;
    let mut remaining = match &wanted {
        Some(set) => Remaining::of(set),
        None => Remaining::all(catalog.origin_size),
    };
    let mut restored = Restored {
        volume: req.volume.clone(),
        point: point.number,
        snapshot: point.point.snapshot.clone(),
        dest: writer.name().to_string(),
        from_point,
        deltas: ready.len(),
        ..Restored::default()
    };
    let total = match &wanted {
        Some(set) => set.total_bytes(),
        None => catalog.origin_size,
    };
    let progress = Progress::new(req.progress, "restore", "restoring", total);
    let result = (|| {
        for r in ready.iter().rev() {
            if remaining.is_empty() {
                break;
            }
            let planned = plan_delta(&mut remaining, &r.index.records);
            copy_records(archive, r, &planned, &mut writer, &mut restored, &progress)?;
        }
        Ok::<(), Error>(())
    })();
    drop(progress);
    match result {
        Ok(()) => {
            restored.pieces = writer.pieces;
            restored.bytes_written = writer.bytes;
            writer.finish()?;
            Ok(restored)
        }
        Err(e) => {
            writer.abandon();
            Err(e)
        }
    }
}

/// A piece ready to be written: its offset and length, and its bytes
/// (none for zeroes).
type Piece = (u64, u64, Option<Vec<u8>>);

thread_local! {
    /// Each reading thread's decoder: its zstd context serves every record
    /// the thread checks.
    static DECODER: std::cell::RefCell<stream::Decoder> = std::cell::RefCell::new(stream::Decoder::new());
}

/// Reads the `planned` records of one delta, checks each (on the reading
/// threads), and writes its pieces.
fn copy_records(
    archive: &Archive,
    delta: &Ready<'_>,
    planned: &[Planned],
    writer: &mut PieceWriter,
    restored: &mut Restored,
    progress: &Progress,
) -> Result<(), Error> {
    let runs = reads(planned, READ_GAP, MAX_READ);
    let ranges: Vec<_> = runs
        .iter()
        .map(|run| {
            let records: Vec<_> = planned[run.clone()].iter().map(|p| p.record).collect();
            range_of(&records)
        })
        .collect();
    let key = &delta.point.delta.key;
    // On the reading threads: every record of the range checked, and the
    // pieces it supplies cut out of its content.
    let prepare = |i: usize, bytes: Vec<u8>| -> Result<(u64, u64, Vec<Piece>), ArchiveError> {
        let start = ranges[i].start;
        let mut content = vec![0u8; MAX_RECORD_LEN as usize];
        let mut pieces = Vec::new();
        let mut records = 0;
        for p in &planned[runs[i].clone()] {
            let r = &p.record;
            let from = (r.at - start) as usize;
            let slice = bytes.get(from..from + r.size() as usize).ok_or_else(|| {
                ArchiveError::Mismatch {
                    location: archive.location(),
                    key: key.clone(),
                    reason: format!("a read of bytes {:?} came back short", ranges[i]),
                }
            })?;
            let (head, kind) = DECODER
                .with_borrow_mut(|decoder| {
                    stream::check_record(
                        slice,
                        delta.header.compression,
                        delta.header.origin_size,
                        p.number,
                        r.at,
                        &mut content,
                        decoder,
                    )
                })
                .map_err(|source| ArchiveError::DamagedDelta {
                    location: archive.location(),
                    key: key.clone(),
                    source,
                })?;
            if head.offset != r.offset || head.length != r.length || head.kind != r.kind {
                return Err(ArchiveError::Mismatch {
                    location: archive.location(),
                    key: delta.point.delta.index.clone(),
                    reason: format!(
                        "the index says the record at byte {} covers {}+{}, the record itself {}+{}",
                        r.at, r.offset, r.length, head.offset, head.length
                    ),
                });
            }
            records += 1;
            for piece in &p.pieces {
                let at = (piece.offset - r.offset) as usize;
                let data = match kind {
                    RecordKind::Zero => None,
                    RecordKind::Data { .. } => {
                        Some(content[at..at + piece.length as usize].to_vec())
                    }
                };
                pieces.push((piece.offset, piece.length, data));
            }
        }
        Ok((bytes.len() as u64, records, pieces))
    };
    let mut failed: Option<Error> = None;
    let fetched = archive.fetch_in_order(key, &ranges, prepare, |_, (read, records, pieces)| {
        restored.reads += 1;
        restored.bytes_read += read;
        restored.records += records;
        for (offset, length, data) in pieces {
            if let Err(e) = writer.write(offset, length, data.as_deref()) {
                failed = Some(e.into());
                return Err(ArchiveError::Mismatch {
                    location: archive.location(),
                    key: key.clone(),
                    reason: "stopped: the destination could not be written".into(),
                });
            }
        }
        progress.set(writer.bytes);
        Ok(())
    });
    match (failed, fetched) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(e.into()),
        (None, Ok(())) => Ok(()),
    }
}
