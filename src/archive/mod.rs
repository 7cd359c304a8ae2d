//! An archive: many points in time of many volumes, as delta objects on a
//! local directory or S3-compatible object storage (see [`crate::store`]).
//!
//! Per volume, a chain: a full copy (a seed), then deltas, each bringing
//! the point before it to the next; a later seed starts a new chain. Each
//! delta is stored exactly as `send` writes one, beside an index of where
//! its records are ([`index`]), and the volume's catalogue ([`catalog`])
//! says which points exist and which objects rebuild each.
//!
//! Layout (keys under the archive's root or prefix; see docs/ARCHIVE.md):
//!
//! ```text
//! lvmsync-archive.json                                 what this is (created once)
//! volumes/NAME/catalog/GGGGGGGGGGGGGGGG.json           the catalogue, one object per generation
//! volumes/NAME/deltas/NNNNNNNN-RRRRRRRRRRRRRRRR.lvd    a point's delta (N its number, R random)
//! volumes/NAME/deltas/NNNNNNNN-RRRRRRRRRRRRRRRR.idx    its index
//! ```
//!
//! A delta object is uploaded whole (a multipart upload that appears only
//! when complete), then its index, and only then a new catalogue
//! generation names them: an interrupted run leaves objects no catalogue
//! names, which the next prune removes, and never a point that cannot be
//! restored. Objects are never overwritten: every name is new.
//!
//! - [`restore`]: a point, onto a device or file, each needed byte read
//!   once ([`plan`]), every record checked before it is written;
//! - [`prune`]: retention, dropped points merged into the next kept one;
//! - [`check`]: every object there, every chain whole, with `--read-data`
//!   every checksum.

pub mod catalog;
pub mod check;
pub mod index;
pub mod plan;
pub mod prune;
pub mod restore;

use std::collections::BTreeSet;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::send::{Delta, SendError};
use crate::store::{Location, Store, StoreError, StoreOptions, Upload};
use crate::stream::{Header, Reader, RecordLocation, StreamError, Totals, Writer};
use crate::units::counted;

use catalog::{Catalog, DeltaRef, MAX_CATALOG_LEN};
use index::Index;

/// The object that marks the root of an archive.
pub const MARKER: &str = "lvmsync-archive.json";
/// The archive's own format version.
pub const ARCHIVE_VERSION: u32 = 1;
/// Ranged reads in flight at once when records are fetched.
pub const READS_IN_FLIGHT: usize = 4;
/// The largest ranged read.
pub const MAX_READ: u64 = 4 << 20;
/// Bytes of unneeded records a ranged read may span, rather than make two.
pub const READ_GAP: u64 = 64 << 10;
/// The largest index read: 32 bytes a record.
const MAX_INDEX_LEN: u64 = 1 << 30;

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{location}: not an lvmsync-rs archive (no {MARKER}); back up into it first, or name the archive's root")]
    NotAnArchive { location: String },
    #[error("{location}: {MARKER}: {reason}")]
    BadMarker { location: String, reason: String },
    #[error("{name:?}: not a volume name: {why}")]
    BadVolumeName { name: String, why: &'static str },
    #[error("{location}: no volume {volume}; it holds {volumes}")]
    NoSuchVolume {
        location: String,
        volume: String,
        volumes: String,
    },
    #[error("{volume}: no point {asked}; the archive holds {points}")]
    NoSuchPoint {
        volume: String,
        asked: String,
        points: String,
    },
    #[error("{location}: {key}: damaged catalogue: {reason}")]
    DamagedCatalog {
        location: String,
        key: String,
        reason: String,
    },
    #[error("{location}: {key}: damaged index: {reason}")]
    DamagedIndex {
        location: String,
        key: String,
        reason: String,
    },
    #[error("{location}: {key}: damaged delta: {source}")]
    DamagedDelta {
        location: String,
        key: String,
        source: StreamError,
    },
    #[error("{location}: {key}: {reason}")]
    Mismatch {
        location: String,
        key: String,
        reason: String,
    },
    #[error("{volume}: another run changed its catalogue at the same time (it wrote generation {generation}); nothing of this run is in the catalogue: run it again")]
    Concurrent { volume: String, generation: u64 },
    #[error("{volume}: the archive holds {has} (origin uuid {uuid}) under this name, not {this}; give another --name, or prune the volume's points away first")]
    OtherOrigin {
        volume: String,
        has: String,
        uuid: String,
        this: String,
    },
    #[error("{volume}: point {point} cannot be rebuilt: the catalogue's chain to it is broken ({why}); run lvmsync-rs archive check")]
    BrokenChain {
        volume: String,
        point: u64,
        why: String,
    },
    #[error("writing the delta to the archive: {0}")]
    Send(#[from] SendError),
}

/// The archive marker's content.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    lvmsync_archive: u32,
    created: String,
    created_by: String,
}

/// An archive, opened.
pub struct Archive {
    store: Store,
}

/// Checks a volume's name: `/`-separated segments of letters, digits,
/// `.`, `_`, `+` and `-`, none of them `.` or `..` (`host/vg/lv`).
pub fn check_volume_name(name: &str) -> Result<(), ArchiveError> {
    let bad = |why| ArchiveError::BadVolumeName {
        name: name.to_string(),
        why,
    };
    if name.is_empty() || name.len() > 400 {
        return Err(bad("it must have 1 to 400 characters"));
    }
    for seg in name.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad("empty, '.' and '..' segments are not allowed"));
        }
        if !seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
        {
            return Err(bad(
                "only letters, digits, '.', '_', '+', '-' and '/' are allowed",
            ));
        }
    }
    if name
        .split('/')
        .any(|seg| seg == "catalog" || seg == "deltas")
    {
        return Err(bad("'catalog' and 'deltas' are the archive's own names"));
    }
    Ok(())
}

fn volume_prefix(volume: &str) -> String {
    format!("volumes/{volume}")
}

/// A 64-bit random number, for object names no other run picks.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::time::now() as u64);
    h.write_u32(std::process::id());
    h.finish()
}

impl Archive {
    /// Opens the archive at `location` (`/srv/archive`, `file:///srv/archive`,
    /// `s3://bucket/prefix`). With `create`, a new archive is made there
    /// (a local directory is created); otherwise it must be one.
    pub fn open(
        location: &str,
        options: &StoreOptions,
        create: bool,
    ) -> Result<Archive, ArchiveError> {
        let location = Location::parse(location)?;
        let options = StoreOptions {
            create,
            ..options.clone()
        };
        let store = Store::open(&location, &options)?;
        let archive = Archive { store };
        let shown = archive.location();
        match archive.store.get(MARKER, 64 << 10) {
            Ok(body) => {
                let marker: Marker =
                    serde_json::from_slice(&body).map_err(|e| ArchiveError::BadMarker {
                        location: shown.clone(),
                        reason: e.to_string(),
                    })?;
                if marker.lvmsync_archive != ARCHIVE_VERSION {
                    return Err(ArchiveError::BadMarker {
                        location: shown,
                        reason: format!(
                            "archive format {} is not {ARCHIVE_VERSION}, the one this lvmsync-rs knows",
                            marker.lvmsync_archive
                        ),
                    });
                }
            }
            Err(StoreError::NotFound { .. }) if create => {
                let marker = Marker {
                    lvmsync_archive: ARCHIVE_VERSION,
                    created: crate::time::rfc3339(crate::time::now()),
                    created_by: crate::TOOL.into(),
                };
                let body = serde_json::to_vec_pretty(&marker).expect("plain fields serialize");
                match archive.store.put_new(MARKER, body) {
                    Ok(_) | Err(StoreError::Exists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(StoreError::NotFound { .. }) => {
                return Err(ArchiveError::NotAnArchive { location: shown })
            }
            Err(e) => return Err(e.into()),
        }
        Ok(archive)
    }

    /// Where it is, as messages name it.
    pub fn location(&self) -> String {
        self.store.location().to_string()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The volumes that have a catalogue.
    pub fn volumes(&self) -> Result<Vec<String>, ArchiveError> {
        let mut names = BTreeSet::new();
        for meta in self.store.list("volumes")? {
            if let Some((volume, _)) = meta
                .key
                .strip_prefix("volumes/")
                .and_then(|rest| rest.split_once("/catalog/"))
            {
                names.insert(volume.to_string());
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The catalogue generations of `volume`, oldest first: (generation,
    /// key).
    pub fn generations(&self, volume: &str) -> Result<Vec<(u64, String)>, ArchiveError> {
        check_volume_name(volume)?;
        let prefix = format!("{}/catalog", volume_prefix(volume));
        let mut gens: Vec<(u64, String)> = self
            .store
            .list(&prefix)?
            .into_iter()
            .filter_map(|m| {
                let name = m.key.rsplit('/').next()?.strip_suffix(".json")?;
                let generation = u64::from_str_radix(name, 16).ok()?;
                (name.len() == 16).then_some((generation, m.key))
            })
            .collect();
        gens.sort();
        Ok(gens)
    }

    /// The catalogue of `volume`: its newest generation; none when the
    /// volume has none.
    pub fn catalog(&self, volume: &str) -> Result<Option<Catalog>, ArchiveError> {
        let Some((generation, key)) = self.generations(volume)?.pop() else {
            return Ok(None);
        };
        self.read_catalog(volume, generation, &key).map(Some)
    }

    fn read_catalog(
        &self,
        volume: &str,
        generation: u64,
        key: &str,
    ) -> Result<Catalog, ArchiveError> {
        let damaged = |reason: String| ArchiveError::DamagedCatalog {
            location: self.location(),
            key: key.to_string(),
            reason,
        };
        let body = self.store.get(key, MAX_CATALOG_LEN)?;
        let catalog: Catalog = serde_json::from_slice(&body).map_err(|e| damaged(e.to_string()))?;
        if catalog.generation != generation || catalog.volume != volume {
            return Err(damaged(format!(
                "it says it is generation {} of {}",
                catalog.generation, catalog.volume
            )));
        }
        let problems = catalog.problems();
        if !problems.is_empty() {
            return Err(damaged(problems.join("; ")));
        }
        Ok(catalog)
    }

    /// Writes `catalog` as the next generation of its volume, create-only:
    /// when another run wrote that generation first, nothing is written.
    pub fn commit(&self, catalog: &mut Catalog) -> Result<(), ArchiveError> {
        let current = self
            .generations(&catalog.volume)?
            .last()
            .map_or(0, |(g, _)| *g);
        if current != catalog.generation {
            return Err(ArchiveError::Concurrent {
                volume: catalog.volume.clone(),
                generation: current,
            });
        }
        catalog.generation = current + 1;
        catalog.written_by = crate::TOOL.into();
        catalog.written_at = crate::time::rfc3339(crate::time::now());
        let key = format!(
            "{}/catalog/{:016x}.json",
            volume_prefix(&catalog.volume),
            catalog.generation
        );
        let body = serde_json::to_vec_pretty(&catalog).expect("plain fields serialize");
        match self.store.put_new(&key, body) {
            Ok(_) => Ok(()),
            Err(StoreError::Exists { .. }) => Err(ArchiveError::Concurrent {
                volume: catalog.volume.clone(),
                generation: catalog.generation,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Fresh keys for the delta of point `number` of `volume` and its
    /// index.
    fn delta_keys(volume: &str, number: u64) -> (String, String) {
        let base = format!(
            "{}/deltas/{number:08}-{:016x}",
            volume_prefix(volume),
            random_u64()
        );
        (format!("{base}.lvd"), format!("{base}.idx"))
    }

    /// Stores `delta` as the delta of point `number` of `volume`: the delta
    /// object (uploaded whole, or not at all), then its index. `progress`
    /// hears the bytes of changed data sent so far.
    pub fn put_delta(
        &self,
        volume: &str,
        number: u64,
        base: Option<u64>,
        kind: &str,
        delta: &Delta,
        mut progress: impl FnMut(u64),
    ) -> Result<(DeltaRef, Totals), ArchiveError> {
        let (key, index_key) = Archive::delta_keys(volume, number);
        self.write_delta(&key, &index_key, base, kind, &delta.header, |w| {
            delta.send(w, |w| {
                let t = w.totals();
                progress(t.data_bytes + t.zero_bytes);
            })
        })
    }

    /// Uploads a delta with `header` whose records `records` writes, and
    /// its index.
    pub fn write_delta(
        &self,
        key: &str,
        index_key: &str,
        base: Option<u64>,
        kind: &str,
        header: &Header,
        records: impl FnOnce(&mut Writer<BufWriter<UploadWriter>>) -> Result<(), SendError>,
    ) -> Result<(DeltaRef, Totals), ArchiveError> {
        let upload = UploadWriter(self.store.upload(key)?);
        let out = BufWriter::with_capacity(1 << 20, upload);
        let mut w = Writer::new(out, header).map_err(|e| self.upload_error(key, e))?;
        w.keep_locations();
        records(&mut w).map_err(|e| match e {
            SendError::Write(e) => self.upload_error(key, e),
            other => other.into(),
        })?;
        let digest = w.digest();
        let locations = w.take_locations();
        let (out, totals, len) = w.finish().map_err(|e| self.upload_error(key, e))?;
        let upload = out
            .into_inner()
            .map_err(|e| self.upload_error(key, e.into_error()))?;
        upload.0.finish()?;
        let index = Index {
            delta_len: len,
            records: locations,
        };
        self.store.put_new(index_key, index.encode())?;
        Ok((
            DeltaRef {
                key: key.to_string(),
                index: index_key.to_string(),
                base,
                kind: kind.to_string(),
                bytes: len,
                digest: format!("{digest:032x}"),
                records: totals.records,
                data_bytes: totals.data_bytes,
                zero_bytes: totals.zero_bytes,
            },
            totals,
        ))
    }

    /// An error writing to an upload: the store's own error when it is
    /// one, else a generic one naming the object.
    fn upload_error(&self, key: &str, e: io::Error) -> ArchiveError {
        match e.into_inner() {
            Some(inner) => match inner.downcast::<StoreError>() {
                Ok(store) => ArchiveError::Store(*store),
                Err(other) => ArchiveError::Mismatch {
                    location: self.location(),
                    key: key.to_string(),
                    reason: format!("writing it: {other}"),
                },
            },
            None => ArchiveError::Mismatch {
                location: self.location(),
                key: key.to_string(),
                reason: "writing it failed".into(),
            },
        }
    }

    /// The index of `delta`, checked against what the catalogue says of it
    /// and against the object's size.
    pub fn index(&self, delta: &DeltaRef) -> Result<Index, ArchiveError> {
        let damaged = |reason: String| ArchiveError::DamagedIndex {
            location: self.location(),
            key: delta.index.clone(),
            reason,
        };
        let body = self.store.get(&delta.index, MAX_INDEX_LEN)?;
        let index = Index::decode(&body).map_err(damaged)?;
        if index.delta_len != delta.bytes || index.records.len() as u64 != delta.records {
            return Err(damaged(format!(
                "it lists {} in {}, the catalogue {} in {}",
                counted(index.records.len() as u64, "record"),
                counted(index.delta_len, "byte"),
                counted(delta.records, "record"),
                counted(delta.bytes, "byte")
            )));
        }
        let size = self
            .store
            .head(&delta.key)?
            .ok_or_else(|| StoreError::NotFound {
                location: self.location(),
                key: delta.key.clone(),
            })?
            .size;
        if size != delta.bytes {
            return Err(ArchiveError::Mismatch {
                location: self.location(),
                key: delta.key.clone(),
                reason: format!(
                    "the object is {size} bytes, the catalogue says {}: it was cut or replaced",
                    delta.bytes
                ),
            });
        }
        Ok(index)
    }

    /// The header of `delta`, read and checked (its own checksum).
    pub fn delta_header(&self, delta: &DeltaRef, index: &Index) -> Result<Header, ArchiveError> {
        let head_len = index.records.first().map_or(delta.bytes, |r| r.at);
        let bytes = self
            .store
            .get_range(&delta.key, 0..head_len.min(delta.bytes))?;
        let reader = Reader::open(&bytes[..]).map_err(|source| ArchiveError::DamagedDelta {
            location: self.location(),
            key: delta.key.clone(),
            source,
        });
        Ok(reader?.header().clone())
    }

    /// Fetches `ranges` of the object `key`, [`READS_IN_FLIGHT`] at a time,
    /// turns each into a `T` with `prepare` on the reading threads (where
    /// records are checked and decoded, in parallel), and hands them to
    /// `each` in order. It holds at most about twice [`READS_IN_FLIGHT`]
    /// ranges at once (one being fetched or prepared by each reader, one
    /// waiting, those that came early): with ranges of at most
    /// [`MAX_READ`], 32 MiB before `prepare` decodes them.
    pub fn fetch_in_order<T: Send>(
        &self,
        key: &str,
        ranges: &[Range<u64>],
        prepare: impl Fn(usize, Vec<u8>) -> Result<T, ArchiveError> + Sync,
        mut each: impl FnMut(usize, T) -> Result<(), ArchiveError>,
    ) -> Result<(), ArchiveError> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<T, ArchiveError>)>(1);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..READS_IN_FLIGHT.min(ranges.len()) {
                let (tx, next, stop, prepare) = (tx.clone(), &next, &stop, &prepare);
                scope.spawn(move || loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(range) = ranges.get(i) else { return };
                    let got = self
                        .store
                        .get_range(key, range.clone())
                        .map_err(ArchiveError::from)
                        .and_then(|bytes| prepare(i, bytes));
                    if tx.send((i, got)).is_err() {
                        return;
                    }
                });
            }
            drop(tx);
            let mut ready = std::collections::BTreeMap::new();
            let mut want = 0;
            let result = (|| {
                while want < ranges.len() {
                    let (i, got) = rx.recv().map_err(|_| ArchiveError::Mismatch {
                        location: self.location(),
                        key: key.to_string(),
                        reason: "a reading thread stopped".into(),
                    })?;
                    ready.insert(i, got);
                    while let Some(got) = ready.remove(&want) {
                        each(want, got?)?;
                        want += 1;
                    }
                }
                Ok(())
            })();
            stop.store(true, Ordering::SeqCst);
            // Let the readers see the closed channel.
            drop(rx);
            result
        })
    }

    /// Stores `delta` as a new point of `volume`, `point` (which the delta
    /// brings a copy to) taken at `time` (seconds since the epoch): a seed
    /// when the delta has no base, else a delta from the latest point,
    /// which must be its base. `catalog` is the volume's catalogue as read
    /// before the delta was made (none for a new volume); the point is in
    /// the archive once this returns. `progress` hears the bytes of
    /// changed data sent.
    pub fn store_point(
        &self,
        catalog: Option<Catalog>,
        new: NewVolume,
        delta: &Delta,
        point: crate::stream::PointInTime,
        time: i64,
        progress: impl FnMut(u64),
    ) -> Result<(u64, Totals, DeltaRef), ArchiveError> {
        check_volume_name(&new.volume)?;
        let mut catalog = catalog.unwrap_or_else(|| Catalog {
            lvmsync_catalog: catalog::CATALOG_VERSION,
            volume: new.volume.clone(),
            generation: 0,
            origin: new.origin.clone(),
            origin_size: delta.header.origin_size,
            written_by: String::new(),
            written_at: String::new(),
            points: Vec::new(),
        });
        let mismatch = |reason: String| ArchiveError::Mismatch {
            location: self.location(),
            key: format!("volumes/{}", catalog.volume),
            reason,
        };
        if delta.header.origin_size != catalog.origin_size {
            return Err(mismatch(format!(
                "its points are of a volume of {} bytes, the new one is {} bytes; give another name for the resized volume",
                catalog.origin_size, delta.header.origin_size
            )));
        }
        let base = match (&delta.header.base, catalog.latest()) {
            (None, _) => None,
            (Some(b), Some(latest)) if b.same(&latest.point) => Some(latest.number),
            (Some(b), _) => {
                return Err(mismatch(format!(
                    "the delta applies to {b}, which is not the latest point stored"
                )))
            }
        };
        if !delta.header.target.as_ref().is_some_and(|t| t.same(&point)) {
            return Err(mismatch(format!(
                "the delta does not bring a copy to {point}"
            )));
        }
        let number = catalog.next_number();
        let kind = if base.is_some() {
            "incremental"
        } else {
            "seed"
        };
        let (delta_ref, totals) =
            self.put_delta(&catalog.volume, number, base, kind, delta, progress)?;
        catalog.points.push(catalog::Point {
            number,
            point,
            time: crate::time::rfc3339(time),
            stored_at: crate::time::rfc3339(crate::time::now()),
            delta: delta_ref.clone(),
        });
        self.commit(&mut catalog)?;
        Ok((number, totals, delta_ref))
    }

    /// Removes objects, ignoring those already gone.
    pub fn delete(&self, keys: &[String]) -> Result<(), ArchiveError> {
        for key in keys {
            self.store.delete(key)?;
        }
        Ok(())
    }
}

/// What a volume that is new to the archive is.
#[derive(Debug, Clone)]
pub struct NewVolume {
    /// Its name in the archive.
    pub volume: String,
    pub origin: catalog::Origin,
}

/// An [`Upload`] as an [`io::Write`]; its errors are store errors inside
/// an `io::Error`.
pub struct UploadWriter(Upload);

impl Write for UploadWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The byte ranges of the object that hold `records`, read together.
pub fn range_of(records: &[RecordLocation]) -> Range<u64> {
    match (records.first(), records.last()) {
        (Some(a), Some(b)) => a.at..b.at + b.size(),
        _ => 0..0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_are_checked() {
        for good in ["host/vg/lv", "db1.example.org/vg0/root", "my-name", "a+b_c"] {
            assert!(check_volume_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a//b",
            "a/../b",
            "a/./b",
            "a b",
            "a/catalog",
            "x\u{1b}",
        ] {
            assert!(check_volume_name(bad).is_err(), "{bad}");
        }
    }
}
