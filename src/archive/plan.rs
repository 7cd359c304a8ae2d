//! Which records of which deltas rebuild a point, each byte read once:
//! going from the newest delta of a chain to the oldest (a seed), each
//! delta supplies the parts of its records that no newer delta wrote, and
//! what it wrote is then taken; the seed, which covers the whole volume,
//! supplies the rest. Restoring and merging (pruning) both plan this way.
//!
//! Memory follows the number of ranges still to find (at most the number
//! of distinct changed extents of the chain) plus one delta's records at a
//! time, whatever the chain's length.

use std::collections::BTreeMap;

use crate::extents::{Extent, ExtentSet};
use crate::stream::RecordLocation;

/// Byte ranges still to find: disjoint, keyed by start, valued by end.
#[derive(Debug, Clone, Default)]
pub struct Remaining(BTreeMap<u64, u64>);

impl Remaining {
    /// All of `[0, size)`.
    pub fn all(size: u64) -> Remaining {
        Remaining::of(&ExtentSet::from_extents(vec![Extent {
            offset: 0,
            length: size,
        }]))
    }

    pub fn of(set: &ExtentSet) -> Remaining {
        Remaining(set.iter().map(|e| (e.offset, e.end())).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes still to find.
    pub fn total_bytes(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    /// Takes the parts of `[start, end)` still to find, in order.
    pub fn take(&mut self, start: u64, end: u64) -> Vec<Extent> {
        let mut hits: Vec<(u64, u64)> = self
            .0
            .range(..end)
            .rev()
            .take_while(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        hits.reverse();
        let mut out = Vec::with_capacity(hits.len());
        for (s, e) in hits {
            self.0.remove(&s);
            if s < start {
                self.0.insert(s, start);
            }
            if e > end {
                self.0.insert(end, e);
            }
            let (a, b) = (s.max(start), e.min(end));
            out.push(Extent {
                offset: a,
                length: b - a,
            });
        }
        out
    }
}

/// A record to read, and the parts of its extent to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// Its number in its delta, from 0.
    pub number: u64,
    pub record: RecordLocation,
    pub pieces: Vec<Extent>,
}

/// The records of a delta (in stream order) that supply something still
/// to find, with the parts they supply; those parts are taken.
pub fn plan_delta(remaining: &mut Remaining, records: &[RecordLocation]) -> Vec<Planned> {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let pieces = remaining.take(r.offset, r.end());
            if pieces.is_empty() {
                return None;
            }
            Some(Planned {
                number: i as u64,
                record: *r,
                pieces,
            })
        })
        .collect()
}

/// Every extent the records write.
pub fn written(records: &[RecordLocation]) -> ExtentSet {
    ExtentSet::from_extents(
        records
            .iter()
            .map(|r| Extent {
                offset: r.offset,
                length: u64::from(r.length),
            })
            .collect(),
    )
}

/// Runs of planned records that lie next to each other in their delta
/// (with gaps of at most `gap` bytes between them), at most `max` bytes
/// each: what one ranged read fetches.
pub fn reads(planned: &[Planned], gap: u64, max: u64) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=planned.len() {
        let split = i == planned.len() || {
            let (first, prev, next) = (
                &planned[start].record,
                &planned[i - 1].record,
                &planned[i].record,
            );
            let prev_end = prev.at + prev.size();
            next.at > prev_end + gap || next.at + next.size() - first.at > max
        };
        if split {
            if start < i {
                runs.push(start..i);
            }
            start = i;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{KIND_DATA, KIND_ZERO};

    fn e(offset: u64, length: u64) -> Extent {
        Extent { offset, length }
    }

    fn rec(offset: u64, length: u32, at: u64) -> RecordLocation {
        RecordLocation {
            offset,
            length,
            stored: length,
            kind: KIND_DATA,
            at,
        }
    }

    #[test]
    fn taking_splits_what_remains() {
        let mut r = Remaining::all(100);
        assert_eq!(r.take(10, 20), [e(10, 10)]);
        assert_eq!(r.take(15, 30), [e(20, 10)]);
        assert_eq!(r.take(0, 100), [e(0, 10), e(30, 70)]);
        assert!(r.is_empty());
        let mut r = Remaining::of(&ExtentSet::from_extents(vec![
            e(0, 10),
            e(20, 10),
            e(40, 10),
        ]));
        assert_eq!(r.take(5, 45), [e(5, 5), e(20, 10), e(40, 5)]);
        assert_eq!(r.total_bytes(), 10);
        assert_eq!(r.take(100, 200), []);
    }

    /// A chain of deltas, newest first, planned over a volume of `size`
    /// bytes, gives for each byte the newest delta that wrote it; checked
    /// against a byte map built the slow way.
    #[test]
    fn each_byte_comes_from_the_newest_delta_that_wrote_it() {
        let size = 1000u64;
        let seed: Vec<RecordLocation> = (0..10).map(|i| rec(i * 100, 100, 40 + i * 140)).collect();
        let d1 = vec![rec(50, 100, 40), rec(400, 20, 180), rec(990, 10, 240)];
        let d2 = vec![rec(0, 60, 40), rec(405, 5, 140), rec(500, 300, 200)];
        let mut z = rec(700, 50, 600);
        z.kind = KIND_ZERO;
        z.stored = 0;
        let d3 = vec![rec(120, 10, 40), z];
        let chain = [&d3, &d2, &d1, &seed]; // newest first
        let mut owner = vec![usize::MAX; size as usize];
        for (i, d) in chain.iter().enumerate().rev() {
            for r in d.iter() {
                for b in r.offset..r.end() {
                    owner[b as usize] = i;
                }
            }
        }
        let mut remaining = Remaining::all(size);
        let mut got = vec![usize::MAX; size as usize];
        for (i, d) in chain.iter().enumerate() {
            for p in plan_delta(&mut remaining, d) {
                for piece in &p.pieces {
                    assert!(piece.offset >= p.record.offset && piece.end() <= p.record.end());
                    for b in piece.offset..piece.end() {
                        assert_eq!(got[b as usize], usize::MAX, "byte {b} read twice");
                        got[b as usize] = i;
                    }
                }
            }
        }
        assert!(remaining.is_empty());
        assert_eq!(got, owner);
        // Only what changed between two points: the extents of the newer
        // deltas, from the newest that wrote them.
        let mut remaining = Remaining::of(&written(&d3).union(&written(&d2)));
        let from_d3 = plan_delta(&mut remaining, &d3);
        let from_d2 = plan_delta(&mut remaining, &d2);
        assert!(remaining.is_empty());
        assert_eq!(from_d3.len(), 2);
        // 0..60, 405..410, and 500..800 but for what d3 wrote (700..750).
        assert_eq!(from_d2.iter().map(|p| p.pieces.len()).sum::<usize>(), 4);
    }

    #[test]
    fn neighbouring_records_are_read_together() {
        let p = |at: u64, stored: u32| Planned {
            number: 0,
            record: RecordLocation {
                offset: at * 10,
                length: stored,
                stored,
                kind: KIND_DATA,
                at,
            },
            pieces: vec![],
        };
        // Record sizes are 40 (header) + stored.
        let planned = vec![p(100, 60), p(200, 60), p(350, 10), p(400, 60), p(10_000, 1)];
        // Records that touch are read together; a gap splits.
        assert_eq!(reads(&planned, 0, 1 << 20), [0..2, 2..4, 4..5]);
        assert_eq!(reads(&planned, 50, 1 << 20), [0..4, 4..5]);
        assert_eq!(reads(&planned, 50, 250), [0..2, 2..4, 4..5]);
        assert_eq!(reads(&[], 0, 10), Vec::<std::ops::Range<usize>>::new());
    }
}
