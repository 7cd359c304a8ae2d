//! A volume's catalogue: which points in time the archive holds for it,
//! and the delta object that brings the point before each one to it.
//!
//! Catalogues are never changed in place. Each change writes a new
//! generation, `volumes/NAME/catalog/GGGGGGGGGGGGGGGG.json` (the generation
//! in 16 hex digits), with a create-only put: of two runs that change one
//! volume at once, one gets its generation written and the other is told
//! to run again, and neither overwrites the other. The catalogue is the
//! newest generation; the two before it are kept a while, the rest
//! removed by the next prune.

use serde::{Deserialize, Serialize};

use crate::stream::PointInTime;

/// The catalogue's own format version.
pub const CATALOG_VERSION: u32 = 1;
/// The largest catalogue read.
pub const MAX_CATALOG_LEN: u64 = 64 << 20;

/// A volume's catalogue, one generation of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub lvmsync_catalog: u32,
    /// The volume's name in the archive.
    pub volume: String,
    pub generation: u64,
    /// The origin LV backed up: `VG/LV` on `host`, and its UUID.
    pub origin: Origin,
    /// The origin's size in bytes, as the points hold it.
    pub origin_size: u64,
    pub written_by: String,
    /// RFC 3339, UTC.
    pub written_at: String,
    /// Oldest first, by number.
    pub points: Vec<Point>,
}

/// The volume backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub host: String,
    /// `VG/LV`.
    pub name: String,
    pub uuid: String,
}

/// One point in time the archive holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Numbered from 1 in the order they were stored; a number is never
    /// given twice, and a point keeps its number when others are pruned.
    pub number: u64,
    /// The snapshot that froze it.
    pub point: PointInTime,
    /// The snapshot's time, RFC 3339 UTC: what retention counts by.
    pub time: String,
    /// When it was stored, RFC 3339 UTC.
    pub stored_at: String,
    pub delta: DeltaRef,
}

/// The delta object that brings the point before a point to it (or, with
/// no base, holds the whole volume: a seed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRef {
    /// The delta, as `send` writes one.
    pub key: String,
    /// Where each of its records is (see [`super::index`]).
    pub index: String,
    /// The number of the point it applies to; none for a seed.
    pub base: Option<u64>,
    /// `seed`, `incremental`, or `merged` (made by a prune from several).
    pub kind: String,
    /// The delta's length in bytes.
    pub bytes: u64,
    /// Its END record's digest, 32 hex digits.
    pub digest: String,
    pub records: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
}

impl Catalog {
    /// The point numbered `number`.
    pub fn point(&self, number: u64) -> Option<&Point> {
        self.points.iter().find(|p| p.number == number)
    }

    pub fn latest(&self) -> Option<&Point> {
        self.points.last()
    }

    /// The number the next point gets.
    pub fn next_number(&self) -> u64 {
        self.points.last().map_or(1, |p| p.number + 1)
    }

    /// The points whose deltas rebuild point `number`, oldest (a seed)
    /// first; `None` when the chain is broken.
    pub fn chain(&self, number: u64) -> Option<Vec<&Point>> {
        let mut chain = Vec::new();
        let mut at = self.point(number)?;
        loop {
            chain.push(at);
            match at.delta.base {
                None => break,
                Some(base) if base < at.number => at = self.point(base)?,
                Some(_) => return None,
            }
        }
        chain.reverse();
        Some(chain)
    }

    /// What is wrong with the catalogue as a whole, if anything: points out
    /// of order, a base that is not the point before, a first point that
    /// is not a seed.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.lvmsync_catalog != CATALOG_VERSION {
            problems.push(format!(
                "catalogue format {} is not {CATALOG_VERSION}, the one this lvmsync-rs reads",
                self.lvmsync_catalog
            ));
        }
        let mut previous: Option<&Point> = None;
        for p in &self.points {
            match (previous, p.delta.base) {
                (Some(before), _) if p.number <= before.number => problems.push(format!(
                    "point {} comes after point {}: points must be in increasing order",
                    p.number, before.number
                )),
                (None, Some(base)) => problems.push(format!(
                    "point {} is the first, but its delta applies to point {base}, which is not here",
                    p.number
                )),
                (Some(before), Some(base)) if base != before.number => problems.push(format!(
                    "point {}'s delta applies to point {base}, but the point before it is {}",
                    p.number, before.number
                )),
                _ => {}
            }
            previous = Some(p);
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn point(number: u64, base: Option<u64>) -> Point {
        Point {
            number,
            point: PointInTime {
                origin_uuid: "O".into(),
                snapshot_uuid: format!("S{number}"),
                snapshot: format!("vg/root-lvmsync-{number}"),
                time: "2026-11-26 08:00:00 +0000".into(),
            },
            time: "2026-11-26T08:00:00Z".into(),
            stored_at: "2026-11-26T08:00:00Z".into(),
            delta: DeltaRef {
                key: format!("d{number}"),
                index: format!("i{number}"),
                base,
                kind: if base.is_some() {
                    "incremental"
                } else {
                    "seed"
                }
                .into(),
                bytes: 1,
                digest: "0".repeat(32),
                records: 1,
                data_bytes: 1,
                zero_bytes: 0,
            },
        }
    }

    pub fn catalog(points: Vec<Point>) -> Catalog {
        Catalog {
            lvmsync_catalog: CATALOG_VERSION,
            volume: "h/vg/root".into(),
            generation: 1,
            origin: Origin {
                host: "h".into(),
                name: "vg/root".into(),
                uuid: "O".into(),
            },
            origin_size: 1 << 20,
            written_by: "test".into(),
            written_at: "2026-11-26T08:00:00Z".into(),
            points,
        }
    }

    #[test]
    fn a_chain_goes_back_to_the_last_seed() {
        let c = catalog(vec![
            point(1, None),
            point(2, Some(1)),
            point(4, Some(2)),
            point(5, None),
            point(6, Some(5)),
        ]);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        let numbers = |n| {
            c.chain(n)
                .unwrap()
                .iter()
                .map(|p| p.number)
                .collect::<Vec<_>>()
        };
        assert_eq!(numbers(4), [1, 2, 4]);
        assert_eq!(numbers(6), [5, 6]);
        assert_eq!(numbers(1), [1]);
        assert!(c.chain(3).is_none());
        assert_eq!(c.next_number(), 7);
    }

    #[test]
    fn broken_catalogues_say_what_is_wrong() {
        let c = catalog(vec![point(2, Some(1)), point(3, Some(2))]);
        assert!(c.problems()[0].contains("is the first"));
        let c = catalog(vec![point(1, None), point(3, Some(2))]);
        assert!(c.problems()[0].contains("the point before it is 1"));
        assert!(c.chain(3).is_none());
        let c = catalog(vec![point(2, None), point(1, None)]);
        assert!(c.problems()[0].contains("increasing order"));
    }
}
