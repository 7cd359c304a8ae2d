//! Checking an archive: every volume's catalogue readable and whole, every
//! point's chain complete, every delta and index there with the sizes and
//! counts the catalogue gives, every delta's header checked; with
//! `read_data`, every delta read through and checked as `apply` checks
//! one (every record's checksums, the END record, the digest the
//! catalogue recorded) and its index compared with where its records
//! really are. Objects no catalogue names are counted, not errors (a run
//! may be storing them now; prune removes old ones).

use std::collections::BTreeSet;

use serde::Serialize;

use super::catalog::Point;
use super::{Archive, ArchiveError};
use crate::files::DELTA_READ_BUF;
use crate::stream::Reader;

/// What a check found in one volume.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Checked {
    pub volume: String,
    pub points: u64,
    pub deltas_read: u64,
    pub bytes_read: u64,
    /// Objects under the volume that its catalogue does not name.
    pub unnamed_objects: u64,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
}

/// Checks `volume`.
pub fn check(archive: &Archive, volume: &str, read_data: bool) -> Result<Checked, ArchiveError> {
    let mut checked = Checked {
        volume: volume.to_string(),
        ..Checked::default()
    };
    let catalog = match archive.catalog(volume) {
        Ok(Some(c)) => c,
        Ok(None) => {
            checked.problems.push(format!("{volume}: no catalogue"));
            return Ok(checked);
        }
        Err(e @ (ArchiveError::DamagedCatalog { .. } | ArchiveError::Store(_))) => {
            checked.problems.push(e.to_string());
            return Ok(checked);
        }
        Err(e) => return Err(e),
    };
    checked.points = catalog.points.len() as u64;
    for p in &catalog.points {
        if catalog.chain(p.number).is_none() {
            checked.problems.push(format!(
                "{volume}: point {} cannot be rebuilt: a point its chain builds on is missing",
                p.number
            ));
        }
        if let Err(e) = check_point(archive, p, catalog.origin_size, read_data, &mut checked) {
            checked.problems.push(e.to_string());
        }
    }
    let named: BTreeSet<&str> = catalog
        .points
        .iter()
        .flat_map(|p| [p.delta.key.as_str(), p.delta.index.as_str()])
        .collect();
    checked.unnamed_objects = archive
        .store()
        .list(&format!("volumes/{volume}/deltas"))?
        .iter()
        .filter(|m| !named.contains(m.key.as_str()))
        .count() as u64;
    Ok(checked)
}

fn check_point(
    archive: &Archive,
    p: &Point,
    origin_size: u64,
    read_data: bool,
    checked: &mut Checked,
) -> Result<(), ArchiveError> {
    let index = archive.index(&p.delta)?;
    let header = archive.delta_header(&p.delta, &index)?;
    let mismatch = |reason: String| ArchiveError::Mismatch {
        location: archive.location(),
        key: p.delta.key.clone(),
        reason,
    };
    if header.origin_size != origin_size {
        return Err(mismatch(format!(
            "a delta of a volume of {} bytes in a catalogue of {origin_size}",
            header.origin_size
        )));
    }
    if !header.target.as_ref().is_some_and(|t| t.same(&p.point)) {
        return Err(mismatch(format!(
            "it does not bring a copy to point {}",
            p.number
        )));
    }
    if !read_data {
        return Ok(());
    }
    let damaged = |source| ArchiveError::DamagedDelta {
        location: archive.location(),
        key: p.delta.key.clone(),
        source,
    };
    let input =
        std::io::BufReader::with_capacity(DELTA_READ_BUF, archive.object_reader(&p.delta.key)?);
    let mut reader = Reader::open(input).map_err(damaged)?;
    let mut at = 0usize;
    while let Some(rec) = reader.next_record().map_err(damaged)? {
        let listed = index.records.get(at);
        if listed.is_none_or(|l| {
            l.at != rec.at || l.offset != rec.offset || u64::from(l.length) != rec.length
        }) {
            return Err(ArchiveError::Mismatch {
                location: archive.location(),
                key: p.delta.index.clone(),
                reason: format!(
                    "record {at} of the delta (at byte {}, offset {}) is not where the index says",
                    rec.at, rec.offset
                ),
            });
        }
        at += 1;
    }
    let end = reader
        .end()
        .copied()
        .ok_or_else(|| mismatch("no END record".into()))?;
    checked.deltas_read += 1;
    checked.bytes_read += end.stream_len;
    if format!("{:032x}", end.digest) != p.delta.digest {
        return Err(mismatch(format!(
            "its digest is {:032x}, the catalogue recorded {}",
            end.digest, p.delta.digest
        )));
    }
    Ok(())
}
