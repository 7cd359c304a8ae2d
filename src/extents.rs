//! The set of changed byte ranges of an origin: sorted, disjoint, and with
//! adjacent ranges coalesced.
//!
//! Change tables list chunks in the order they were written, possibly more than
//! once and in any order. [`ChunkCollector`] takes chunk indices one at a time
//! and keeps its memory proportional to the number of coalesced runs it holds,
//! not to the number of chunks it was given: consecutive chunks are merged as
//! they arrive, and the runs are sorted and merged in batches.

use serde::Serialize;

/// A byte range of the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Sorted, disjoint, non-adjacent byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentSet {
    extents: Vec<Extent>,
}

impl ExtentSet {
    pub fn as_slice(&self) -> &[Extent] {
        &self.extents
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Extent> {
        self.extents.iter()
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Sum of the extents' lengths.
    pub fn total_bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.length).sum()
    }

    /// The set of `extents`, in any order: sorted, with overlapping and
    /// adjacent ones joined and empty ones dropped.
    pub fn from_extents(mut extents: Vec<Extent>) -> ExtentSet {
        extents.retain(|e| e.length > 0);
        extents.sort_unstable();
        let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
        for e in extents {
            match out.last_mut() {
                Some(last) if e.offset <= last.end() => {
                    let end = last.end().max(e.end());
                    last.length = end - last.offset;
                }
                _ => out.push(e),
            }
        }
        ExtentSet { extents: out }
    }

    /// The parts of the ranges at or after `from` (what is left to send
    /// when a transfer resumes there).
    pub fn from_offset(&self, from: u64) -> ExtentSet {
        let start = self.extents.partition_point(|e| e.end() <= from);
        let mut extents = self.extents[start..].to_vec();
        if let Some(first) = extents.first_mut() {
            if first.offset < from {
                first.length = first.end() - from;
                first.offset = from;
            }
        }
        ExtentSet { extents }
    }

    /// The ranges in `self` or in `other`.
    pub fn union(&self, other: &ExtentSet) -> ExtentSet {
        let mut all = Vec::with_capacity(self.len() + other.len());
        all.extend_from_slice(&self.extents);
        all.extend_from_slice(&other.extents);
        ExtentSet::from_extents(all)
    }
}

impl From<Vec<Extent>> for ExtentSet {
    fn from(extents: Vec<Extent>) -> ExtentSet {
        ExtentSet::from_extents(extents)
    }
}

/// A run of chunks: `start..end`, in chunk units, end exclusive.
type Run = (u64, u64);

/// Gathers chunk indices into coalesced runs.
#[derive(Debug)]
pub struct ChunkCollector {
    /// Sorted, disjoint, non-adjacent runs.
    merged: Vec<Run>,
    /// Runs not yet merged, in arrival order.
    pending: Vec<Run>,
    /// The run being extended by consecutive chunks.
    current: Option<Run>,
    /// The buffer the next merge writes into.
    spare: Vec<Run>,
}

/// Fewest pending runs before a merge is worth it.
const MIN_BATCH: usize = 1 << 16;

impl Default for ChunkCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkCollector {
    pub fn new() -> Self {
        ChunkCollector {
            merged: Vec::new(),
            pending: Vec::new(),
            current: None,
            spare: Vec::new(),
        }
    }

    /// Records that chunk `chunk` changed.
    #[inline]
    /// Chunk `u64::MAX` cannot be held (its run would end past `u64`):
    /// callers refuse it first.
    pub fn add(&mut self, chunk: u64) {
        let next = chunk.saturating_add(1);
        match &mut self.current {
            Some((_, end)) if *end == chunk => *end = next,
            Some(run) => {
                let done = *run;
                *run = (chunk, next);
                self.push(done);
            }
            None => self.current = Some((chunk, next)),
        }
    }

    fn push(&mut self, run: Run) {
        self.pending.push(run);
        // Merging costs a pass over `merged`; waiting until the batch is a
        // quarter of it keeps the total work linear and the peak memory
        // within a small multiple of the merged runs.
        if self.pending.len() >= MIN_BATCH.max(self.merged.len() / 4) {
            self.merge_pending();
        }
    }

    fn merge_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_unstable_by_key(|r| r.0);
        // Merge into the buffer of the previous round, so that its pages are
        // reused rather than faulted in again.
        let mut out = std::mem::take(&mut self.spare);
        out.clear();
        out.reserve(self.merged.len() + self.pending.len());
        let (a, b) = (&self.merged, &self.pending);
        let (mut i, mut j) = (0, 0);
        while j < b.len() {
            let run = if i < a.len() && a[i].0 <= b[j].0 {
                i += 1;
                a[i - 1]
            } else {
                j += 1;
                b[j - 1]
            };
            push_coalesced(&mut out, run);
        }
        // The rest of `a` is already coalesced: only its first run can touch
        // what `out` holds.
        if i < a.len() {
            push_coalesced(&mut out, a[i]);
            out.extend_from_slice(&a[i + 1..]);
        }
        self.pending.clear();
        self.spare = std::mem::replace(&mut self.merged, out);
    }

    /// The changed byte ranges, for chunks of `chunk_size` bytes, clipped to
    /// `limit` bytes when given (the last chunk of an origin may be partial).
    pub fn finish(mut self, chunk_size: u64, limit: Option<u64>) -> ExtentSet {
        if let Some(run) = self.current.take() {
            self.pending.push(run);
        }
        self.merge_pending();
        self.spare = Vec::new();
        let limit = limit.unwrap_or(u64::MAX);
        let extents = self
            .merged
            .iter()
            .filter_map(|&(s, e)| {
                let offset = s.saturating_mul(chunk_size);
                let end = e.saturating_mul(chunk_size).min(limit);
                (end > offset).then(|| Extent {
                    offset,
                    length: end - offset,
                })
            })
            .collect();
        ExtentSet { extents }
    }
}

/// Appends `run` to sorted runs, merging it with the last one when they
/// overlap or touch.
#[inline]
fn push_coalesced(out: &mut Vec<Run>, run: Run) {
    match out.last_mut() {
        Some(last) if run.0 <= last.1 => last.1 = last.1.max(run.1),
        _ => out.push(run),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn naive(chunks: &[u64], cs: u64) -> Vec<Extent> {
        let set: BTreeSet<u64> = chunks.iter().copied().collect();
        let mut out: Vec<Extent> = Vec::new();
        for c in set {
            match out.last_mut() {
                Some(e) if e.end() == c * cs => e.length += cs,
                _ => out.push(Extent {
                    offset: c * cs,
                    length: cs,
                }),
            }
        }
        out
    }

    #[test]
    fn a_set_cut_at_an_offset_keeps_what_lies_after_it() {
        let e = |offset, length| Extent { offset, length };
        let set = ExtentSet::from_extents(vec![e(0, 10), e(20, 10), e(40, 5)]);
        assert_eq!(set.from_offset(0), set);
        assert_eq!(
            set.from_offset(5).as_slice(),
            [e(5, 5), e(20, 10), e(40, 5)]
        );
        assert_eq!(set.from_offset(10).as_slice(), [e(20, 10), e(40, 5)]);
        assert_eq!(set.from_offset(25).as_slice(), [e(25, 5), e(40, 5)]);
        assert!(set.from_offset(45).is_empty());
    }

    fn collect(chunks: &[u64], cs: u64) -> Vec<Extent> {
        let mut c = ChunkCollector::new();
        for &x in chunks {
            c.add(x);
        }
        c.finish(cs, None).as_slice().to_vec()
    }

    #[test]
    fn empty_gives_no_extents() {
        assert!(collect(&[], 4096).is_empty());
    }

    #[test]
    fn coalesces_runs_duplicates_and_disorder() {
        let chunks = [10, 11, 12, 1000, 5, 11, 4, 13, 0, 999, 3];
        let got = collect(&chunks, 4096);
        assert_eq!(got, naive(&chunks, 4096));
        assert_eq!(
            got,
            vec![
                Extent {
                    offset: 0,
                    length: 4096
                },
                Extent {
                    offset: 3 * 4096,
                    length: 3 * 4096
                },
                Extent {
                    offset: 10 * 4096,
                    length: 4 * 4096
                },
                Extent {
                    offset: 999 * 4096,
                    length: 2 * 4096
                },
            ]
        );
    }

    #[test]
    fn many_batches_match_naive() {
        // A pseudo-random mix of runs and scattered chunks, large enough to
        // go through several batch merges.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut chunks = Vec::new();
        while chunks.len() < 600_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let start = x % 2_000_000;
            let len = if x & 3 == 0 { 1 + (x >> 40) % 50 } else { 1 };
            chunks.extend(start..start + len);
        }
        assert_eq!(collect(&chunks, 65536), naive(&chunks, 65536));
    }

    #[test]
    fn from_extents_sorts_joins_and_drops_empty_ones() {
        let e = |offset, length| Extent { offset, length };
        let set =
            ExtentSet::from_extents(vec![e(100, 10), e(0, 10), e(10, 5), e(50, 0), e(105, 20)]);
        assert_eq!(set.as_slice(), &[e(0, 15), e(100, 25)]);
        let other = ExtentSet::from_extents(vec![e(15, 5), e(200, 1)]);
        assert_eq!(
            set.union(&other).as_slice(),
            &[e(0, 20), e(100, 25), e(200, 1)]
        );
    }

    #[test]
    fn last_chunk_is_clipped_to_limit() {
        let mut c = ChunkCollector::new();
        c.add(2);
        let set = c.finish(4096, Some(2 * 4096 + 100));
        assert_eq!(
            set.as_slice(),
            &[Extent {
                offset: 8192,
                length: 100
            }]
        );
        assert_eq!(set.total_bytes(), 100);
    }
}
