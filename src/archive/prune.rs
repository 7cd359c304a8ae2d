//! Retention: which points of a volume to keep (the borg and restic
//! vocabulary: `--keep-last`, `--keep-daily`, `--keep-weekly`,
//! `--keep-monthly`, each selecting on its own, the union kept, the latest
//! point always), and the pruning itself.
//!
//! A kept point whose predecessor in the catalogue is dropped gets a new
//! delta: the merge of the deltas from the previous kept point to it
//! (from its seed, when a seed is among the dropped, making it a seed), so
//! every kept point still restores exactly and the chains stay short. The
//! merged deltas are uploaded first, then a new catalogue generation names
//! the kept points and their deltas, and only then are the objects no
//! catalogue needs removed: a prune killed at any step loses no kept point.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::catalog::{Catalog, DeltaRef, Point};
use super::index::Index;
use super::plan::{plan_delta, reads, written, Planned, Remaining};
use super::restore::{catalog_of, describe_points};
use super::{range_of, Archive, ArchiveError};
use crate::extents::ExtentSet;
use crate::send::SendError;
use crate::stream::{self, Header, RecordKind, SourceKind, Writer, MAX_RECORD_LEN};
use crate::Error;

/// Objects no catalogue names are removed once they are this old: younger
/// ones may belong to a run that is storing a point right now.
pub const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Catalogue generations kept besides the newest.
pub const OLD_GENERATIONS: usize = 2;
/// The largest ranged read while merging (one per delta merged at once).
const MERGE_READ: u64 = 2 << 20;

/// The retention rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub last: Option<u64>,
    pub daily: Option<u64>,
    pub weekly: Option<u64>,
    pub monthly: Option<u64>,
}

impl Keep {
    pub fn is_empty(&self) -> bool {
        *self == Keep::default()
    }
}

/// The points to keep, by number, of `points` (number, time in seconds
/// since the epoch, oldest first): each rule on its own, the union, and
/// the latest point always.
pub fn select(points: &[(u64, i64)], keep: &Keep) -> BTreeSet<u64> {
    let mut kept = BTreeSet::new();
    if let Some(&(latest, _)) = points.last() {
        kept.insert(latest);
    }
    let newest_first: Vec<(u64, i64)> = points.iter().rev().copied().collect();
    if let Some(n) = keep.last {
        kept.extend(newest_first.iter().take(n as usize).map(|(p, _)| *p));
    }
    let day = |t: i64| t.div_euclid(86400);
    // Weeks start on Monday; the epoch was a Thursday.
    let week = |t: i64| (day(t) + 3).div_euclid(7);
    let month = |t: i64| {
        let (y, m, _) = crate::time::civil_from_days(day(t));
        y * 12 + i64::from(m)
    };
    for (n, period) in [
        (keep.daily, &day as &dyn Fn(i64) -> i64),
        (keep.weekly, &week),
        (keep.monthly, &month),
    ] {
        let Some(n) = n else { continue };
        let mut seen = BTreeSet::new();
        for &(number, time) in &newest_first {
            if seen.len() as u64 >= n {
                break;
            }
            // The newest point of each period.
            if seen.insert(period(time)) {
                kept.insert(number);
            }
        }
    }
    kept
}

/// What a prune of one volume did (or would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Pruned {
    pub volume: String,
    pub kept: Vec<u64>,
    pub dropped: Vec<u64>,
    /// Kept points whose delta was merged from several.
    pub merged: Vec<u64>,
    /// Objects removed.
    pub removed_objects: u64,
    /// Bytes of deltas before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Prunes `volume` by `keep`; with `dry_run`, only says what it would do.
pub fn prune(archive: &Archive, volume: &str, keep: &Keep, dry_run: bool) -> Result<Pruned, Error> {
    let catalog = catalog_of(archive, volume)?;
    let times: Vec<(u64, i64)> = catalog
        .points
        .iter()
        .map(|p| (p.number, crate::time::parse(&p.time).unwrap_or(0)))
        .collect();
    let kept = select(&times, keep);
    let mut pruned = Pruned {
        volume: volume.to_string(),
        kept: kept.iter().copied().collect(),
        dropped: times
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !kept.contains(n))
            .collect(),
        bytes_before: catalog.points.iter().map(|p| p.delta.bytes).sum(),
        ..Pruned::default()
    };
    // The new delta of each kept point whose predecessor goes.
    let mut points: Vec<Point> = Vec::new();
    let mut previous: Option<&Point> = None;
    for (i, p) in catalog.points.iter().enumerate() {
        if !kept.contains(&p.number) {
            continue;
        }
        let gap = match previous {
            Some(prev) => catalog.points[..i].last().map(|q| q.number) != Some(prev.number),
            None => i > 0,
        };
        let mut point = p.clone();
        if gap {
            pruned.merged.push(p.number);
            if !dry_run {
                point.delta = merge(archive, &catalog, previous, p)?;
            }
        }
        previous = Some(p);
        points.push(point);
    }
    pruned.bytes_after = points.iter().map(|p| p.delta.bytes).sum();
    if dry_run || pruned.dropped.is_empty() {
        if !dry_run {
            remove_unneeded(archive, &catalog, &mut pruned)?;
        }
        return Ok(pruned);
    }
    let mut next = Catalog {
        points,
        ..catalog.clone()
    };
    archive.commit(&mut next)?;
    remove_unneeded(archive, &next, &mut pruned)?;
    Ok(pruned)
}

/// Removes what no catalogue needs: the old generations but the last few,
/// and delta objects the newest names nowhere that are older than
/// [`ORPHAN_AGE`] or were named by an older generation.
fn remove_unneeded(archive: &Archive, current: &Catalog, pruned: &mut Pruned) -> Result<(), Error> {
    let volume = &current.volume;
    let generations = archive.generations(volume)?;
    let mut named: BTreeSet<String> = BTreeSet::new();
    for p in &current.points {
        named.insert(p.delta.key.clone());
        named.insert(p.delta.index.clone());
    }
    // Named by an older generation, not by the newest: gone for good.
    let mut doomed: BTreeSet<String> = BTreeSet::new();
    for (g, key) in &generations {
        if *g >= current.generation {
            continue;
        }
        if let Ok(body) = archive.get_object(key, super::catalog::MAX_CATALOG_LEN) {
            if let Ok(old) = serde_json::from_slice::<Catalog>(&body) {
                for p in &old.points {
                    for k in [&p.delta.key, &p.delta.index] {
                        if !named.contains(k) {
                            doomed.insert(k.clone());
                        }
                    }
                }
            }
        }
    }
    let now = std::time::SystemTime::now();
    for meta in archive.store().list(&format!("volumes/{volume}/deltas"))? {
        let old = now
            .duration_since(meta.last_modified)
            .is_ok_and(|age| age > ORPHAN_AGE);
        if !named.contains(&meta.key) && old {
            doomed.insert(meta.key);
        }
    }
    let keep_from = generations.len().saturating_sub(OLD_GENERATIONS + 1);
    let old_generations: Vec<String> = generations[..keep_from]
        .iter()
        .filter(|(g, _)| *g < current.generation)
        .map(|(_, k)| k.clone())
        .collect();
    let doomed: Vec<String> = doomed.into_iter().collect();
    archive.delete(&doomed)?;
    archive.delete(&old_generations)?;
    pruned.removed_objects += (doomed.len() + old_generations.len()) as u64;
    Ok(())
}

/// A delta of a chain, checked, with the records it supplies to a merge.
struct Source<'a> {
    point: &'a Point,
    header: Header,
    planned: Vec<Planned>,
    runs: Vec<std::ops::Range<usize>>,
    /// The run read, its first byte's offset in the object, its bytes.
    run: usize,
    buf_start: u64,
    buf: Vec<u8>,
    /// The next planned record, and its next piece.
    at: usize,
    piece: usize,
    /// The content of the record being taken apart, checked.
    content: Vec<u8>,
    decoder: stream::Decoder,
    decoded: Option<(usize, RecordKind)>,
}

impl Source<'_> {
    /// The offset of its next piece.
    fn next_offset(&self) -> Option<u64> {
        Some(self.planned.get(self.at)?.pieces[self.piece].offset)
    }

    /// Writes its next piece to `w`, reading and checking its record first.
    fn write_next<W: std::io::Write>(
        &mut self,
        archive: &Archive,
        w: &mut Writer<W>,
    ) -> Result<(), ArchiveError> {
        let key = self.point.delta.key.clone();
        let p = &self.planned[self.at];
        let r = p.record;
        if self.decoded.map(|(i, _)| i) != Some(self.at) {
            // The run that holds the record.
            while !self.runs[self.run].contains(&self.at) {
                self.run += 1;
                self.buf.clear();
            }
            if self.buf.is_empty() {
                let records: Vec<_> = self.planned[self.runs[self.run].clone()]
                    .iter()
                    .map(|p| p.record)
                    .collect();
                let range = range_of(&records);
                self.buf_start = range.start;
                self.buf = archive.get_object_range(&key, range)?;
            }
            let from = (r.at - self.buf_start) as usize;
            let slice = self
                .buf
                .get(from..from + r.size() as usize)
                .ok_or_else(|| ArchiveError::Mismatch {
                    location: archive.location(),
                    key: key.clone(),
                    reason: "a ranged read came back short".into(),
                })?;
            let (_, kind) = stream::check_record(
                slice,
                self.header.compression,
                self.header.origin_size,
                p.number,
                r.at,
                &mut self.content,
                &mut self.decoder,
            )
            .map_err(|source| ArchiveError::DamagedDelta {
                location: archive.location(),
                key: key.clone(),
                source,
            })?;
            self.decoded = Some((self.at, kind));
        }
        let piece = p.pieces[self.piece];
        let kind = self.decoded.map(|(_, k)| k).unwrap_or(RecordKind::Zero);
        let written = match kind {
            RecordKind::Zero => w.zero(piece.offset, piece.length),
            RecordKind::Data { .. } => {
                let at = (piece.offset - r.offset) as usize;
                w.extent(piece.offset, &self.content[at..at + piece.length as usize])
            }
        };
        written.map_err(|e| ArchiveError::Send(SendError::Write(e)))?;
        self.piece += 1;
        if self.piece == p.pieces.len() {
            self.piece = 0;
            self.at += 1;
        }
        Ok(())
    }
}

/// The delta that brings a copy from `from` (none: from nothing, a seed)
/// to `to`, merged from the deltas of the chain between them, uploaded
/// under new keys.
fn merge(
    archive: &Archive,
    catalog: &Catalog,
    from: Option<&Point>,
    to: &Point,
) -> Result<DeltaRef, Error> {
    let chain = catalog
        .chain(to.number)
        .ok_or_else(|| ArchiveError::BrokenChain {
            volume: catalog.volume.clone(),
            point: to.number,
            why: format!("the chain is broken ({})", describe_points(catalog)),
        })?;
    // From the previous kept point when it is on the chain, else from the
    // seed: the merged delta is then a seed.
    let start = match from {
        Some(f) if chain.iter().any(|p| p.number == f.number) => Some(f.number),
        _ => None,
    };
    let members: Vec<&Point> = chain
        .into_iter()
        .filter(|p| start.is_none_or(|s| p.number > s))
        .collect();
    let mut ready: Vec<(&Point, Index, Header)> = Vec::new();
    for p in &members {
        let index = archive.index(&p.delta)?;
        let header = archive.delta_header(&p.delta, &index)?;
        ready.push((p, index, header));
    }
    let mut remaining = match start {
        None => Remaining::all(catalog.origin_size),
        Some(_) => Remaining::of(&ready.iter().fold(ExtentSet::default(), |acc, (_, i, _)| {
            acc.union(&written(&i.records))
        })),
    };
    // Newest first: each delta supplies what no newer one wrote.
    let mut sources: Vec<Source> = Vec::new();
    for (p, index, header) in ready.into_iter().rev() {
        let planned = plan_delta(&mut remaining, &index.records);
        if planned.is_empty() {
            continue;
        }
        let runs = reads(&planned, 0, MERGE_READ);
        sources.push(Source {
            point: p,
            header,
            planned,
            runs,
            run: 0,
            buf_start: 0,
            buf: Vec::new(),
            at: 0,
            piece: 0,
            content: vec![0u8; MAX_RECORD_LEN as usize],
            decoder: stream::Decoder::new(),
            decoded: None,
        });
    }
    // The header: the newest delta's, from `from` (or from nothing).
    let newest = archive.index(&to.delta)?;
    let mut header = archive.delta_header(&to.delta, &newest)?;
    header.base = start
        .and_then(|s| catalog.point(s))
        .map(|p| p.point.clone());
    header.resume_from = 0;
    if start.is_none() {
        header.source.kind = SourceKind::Full;
    }
    let numbers: Vec<String> = members.iter().map(|p| p.number.to_string()).collect();
    header
        .properties
        .insert("merged-points".into(), numbers.join(","));
    let (key, index_key) = Archive::delta_keys(&catalog.volume, to.number);
    let (delta, _) = archive.write_delta(&key, &index_key, start, "merged", &header, |w| {
        // The pieces of all sources in offset order: each source's are
        // in order already.
        let mut heads: BTreeMap<(u64, usize), ()> = BTreeMap::new();
        for (i, s) in sources.iter().enumerate() {
            if let Some(o) = s.next_offset() {
                heads.insert((o, i), ());
            }
        }
        while let Some(((_, i), ())) = heads.pop_first() {
            sources[i]
                .write_next(archive, w)
                .map_err(|e| SendError::Write(std::io::Error::other(e)))?;
            if let Some(o) = sources[i].next_offset() {
                heads.insert((o, i), ());
            }
        }
        Ok(())
    })?;
    Ok(delta)
}
