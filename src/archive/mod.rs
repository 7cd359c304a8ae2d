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

use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufWriter, Read, Write};
use std::ops::Range;
use std::sync::{mpsc, Mutex};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::crypt::{self, CryptError, Envelope, Key, SealWriter, Secrets};
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
/// The format version of an encrypted archive: every object but the
/// marker is an encryption envelope (an older lvmsync-rs refuses it).
pub const ENCRYPTED_ARCHIVE_VERSION: u32 = 2;
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
    #[error(transparent)]
    Crypt(#[from] CryptError),
    #[error("{location}: {key}: {reason}")]
    Sealed {
        location: String,
        key: String,
        reason: String,
    },
    #[error("{location}: {reason}")]
    Exists { location: String, reason: String },
}

/// The archive marker's content.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    lvmsync_archive: u32,
    created: String,
    created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encryption: Option<MarkerEncryption>,
}

/// How an encrypted archive's objects are encrypted (docs/ARCHIVE.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MarkerEncryption {
    /// The envelope's version.
    envelope: u32,
    algorithm: String,
    /// 32 hex digits, random: binds each object to this archive.
    archive_id: String,
    /// The archive key's id (32 hex digits).
    key_id: String,
    /// The archive key, wrapped by a key made from a passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    passphrase: Option<WrappedKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WrappedKey {
    kdf: String,
    salt: String,
    m_kib: u32,
    t: u32,
    p: u32,
    nonce: String,
    /// The key sealed with AES-256-GCM, then its tag: 96 hex digits.
    wrapped: String,
}

/// What opens an encrypted archive's objects.
struct ArchiveKey {
    key: Key,
    archive_id: [u8; 16],
    /// Each object's stream and plaintext length, once read.
    streams: Mutex<HashMap<String, (crypt::Stream, u64)>>,
}

/// How a new archive's key is kept: in a new key file, wrapped by a
/// passphrase in the marker, or both.
pub struct NewKeys {
    pub key_file: Option<std::path::PathBuf>,
    pub passphrase: Option<zeroize::Zeroizing<Vec<u8>>>,
}

/// An archive, opened.
pub struct Archive {
    store: Store,
    crypt: Option<ArchiveKey>,
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
        let mut archive = Archive { store, crypt: None };
        let shown = archive.location();
        match archive.store.get(MARKER, 64 << 10) {
            Ok(body) => {
                let marker: Marker =
                    serde_json::from_slice(&body).map_err(|e| ArchiveError::BadMarker {
                        location: shown.clone(),
                        reason: e.to_string(),
                    })?;
                let bad = |reason: String| ArchiveError::BadMarker {
                    location: shown.clone(),
                    reason,
                };
                match (marker.lvmsync_archive, &marker.encryption) {
                    (ARCHIVE_VERSION, None) => refuse_keys(&shown, &options.secrets, false)?,
                    (ENCRYPTED_ARCHIVE_VERSION, Some(enc)) => {
                        archive.crypt = Some(unlock(&shown, enc, &options.secrets)?);
                    }
                    (ARCHIVE_VERSION | ENCRYPTED_ARCHIVE_VERSION, _) => {
                        return Err(bad(format!(
                            "archive format {} with{} encryption settings",
                            marker.lvmsync_archive,
                            if marker.encryption.is_some() { "" } else { "out" }
                        )))
                    }
                    (other, _) => {
                        return Err(bad(format!(
                            "archive format {other} is not {ARCHIVE_VERSION} or {ENCRYPTED_ARCHIVE_VERSION}, the ones this lvmsync-rs knows"
                        )))
                    }
                }
            }
            Err(StoreError::NotFound { .. }) if create => {
                refuse_keys(&shown, &options.secrets, true)?;
                let marker = Marker {
                    lvmsync_archive: ARCHIVE_VERSION,
                    created: crate::time::rfc3339(crate::time::now()),
                    created_by: crate::TOOL.into(),
                    encryption: None,
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

    /// Makes a new archive at `location`; with `keys`, an encrypted one
    /// with a new random key, kept as `keys` says. Refused where an
    /// archive is already.
    pub fn init(
        location: &str,
        options: &StoreOptions,
        keys: Option<&NewKeys>,
    ) -> Result<(String, Option<String>), ArchiveError> {
        let parsed = Location::parse(location)?;
        let options = StoreOptions {
            create: true,
            ..options.clone()
        };
        let store = Store::open(&parsed, &options)?;
        let shown = store.location().to_string();
        let exists = || ArchiveError::Exists {
            location: shown.clone(),
            reason: format!("already an archive ({MARKER} is there); nothing was changed"),
        };
        if store.head(MARKER)?.is_some() {
            return Err(exists());
        }
        let mut marker = Marker {
            lvmsync_archive: ARCHIVE_VERSION,
            created: crate::time::rfc3339(crate::time::now()),
            created_by: crate::TOOL.into(),
            encryption: None,
        };
        let mut key_id = None;
        let mut written_key_file = None;
        if let Some(keys) = keys {
            let key = Key::random()?;
            let archive_id: [u8; 16] = crypt::random()?;
            let passphrase = match &keys.passphrase {
                Some(pass) => Some(wrap_key(&key, &archive_id, pass)?),
                None => None,
            };
            if let Some(path) = &keys.key_file {
                crypt::write_key_file(path, &key)?;
                written_key_file = Some(path.clone());
            }
            key_id = Some(crypt::hex(&key.id()));
            marker.lvmsync_archive = ENCRYPTED_ARCHIVE_VERSION;
            marker.encryption = Some(MarkerEncryption {
                envelope: crypt::VERSION,
                algorithm: "aes-256-gcm".into(),
                archive_id: crypt::hex(&archive_id),
                key_id: crypt::hex(&key.id()),
                passphrase,
            });
        }
        let body = serde_json::to_vec_pretty(&marker).expect("plain fields serialize");
        let put = store.put_new(MARKER, body);
        if put.is_err() {
            if let Some(path) = &written_key_file {
                let _ = std::fs::remove_file(path);
            }
        }
        match put {
            Ok(_) => Ok((shown, key_id)),
            Err(StoreError::Exists { .. }) => Err(exists()),
            Err(e) => Err(e.into()),
        }
    }

    /// The archive's key, when it is encrypted.
    pub fn key(&self) -> Option<&Key> {
        self.crypt.as_ref().map(|c| &c.key)
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
        let body = self.get_object(key, MAX_CATALOG_LEN)?;
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
        match self.put_object(&key, body) {
            Ok(()) => Ok(()),
            Err(ArchiveError::Store(StoreError::Exists { .. })) => Err(ArchiveError::Concurrent {
                volume: catalog.volume.clone(),
                generation: catalog.generation,
            }),
            Err(e) => Err(e),
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
        let upload = self.upload(key)?;
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
        upload.finish(self, key)?;
        let index = Index {
            delta_len: len,
            records: locations,
        };
        self.put_object(index_key, index.encode())?;
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
        let body = self.get_object(&delta.index, MAX_INDEX_LEN)?;
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
        let want = match self.crypt {
            Some(_) => crypt::sealed_len(delta.bytes),
            None => delta.bytes,
        };
        if size != want {
            return Err(ArchiveError::Mismatch {
                location: self.location(),
                key: delta.key.clone(),
                reason: format!(
                    "the object is {size} bytes, the catalogue says {want}: it was cut or replaced"
                ),
            });
        }
        Ok(index)
    }

    /// The header of `delta`, read and checked (its own checksum).
    pub fn delta_header(&self, delta: &DeltaRef, index: &Index) -> Result<Header, ArchiveError> {
        let head_len = index.records.first().map_or(delta.bytes, |r| r.at);
        let bytes = self.get_object_range(&delta.key, 0..head_len.min(delta.bytes))?;
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
                        .get_object_range(key, range.clone())
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
pub struct RawUpload(Upload);

impl Write for RawUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An object being uploaded: as it is written, or sealed in an
/// encryption envelope in an encrypted archive.
pub enum UploadWriter {
    Plain(RawUpload),
    Sealed(Box<SealWriter<RawUpload>>),
}

impl UploadWriter {
    /// Completes the upload: the object appears.
    fn finish(self, archive: &Archive, key: &str) -> Result<(), ArchiveError> {
        let raw = match self {
            UploadWriter::Plain(raw) => raw,
            UploadWriter::Sealed(w) => w.finish().map_err(|e| archive.upload_error(key, e))?.0,
        };
        raw.0.finish()?;
        Ok(())
    }
}

impl Write for UploadWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            UploadWriter::Plain(w) => w.write(buf),
            UploadWriter::Sealed(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Refuses a key file or a passphrase named for an archive that is not
/// encrypted (or, `new`, about to be made unencrypted by a backup): the
/// user meant an encrypted one. LVMSYNC_PASSPHRASE alone is not a refusal,
/// since it may be set for other archives.
fn refuse_keys(shown: &str, secrets: &Secrets, new: bool) -> Result<(), ArchiveError> {
    let named = secrets.key_file.is_some()
        || matches!(
            secrets.passphrase,
            crypt::PassphraseFrom::File(_) | crypt::PassphraseFrom::Fd(_)
        );
    if !named {
        return Ok(());
    }
    let why = if new {
        "no archive there yet, and a backup makes an unencrypted one: make an encrypted one first with lvmsync-rs archive init --encryption"
    } else {
        "not an encrypted archive: it needs no key file or passphrase"
    };
    Err(CryptError::Usage(format!("{shown}: {why}")).into())
}

/// The archive key of an encrypted archive's marker, from the key file or
/// the passphrase in `secrets`.
fn unlock(
    shown: &str,
    enc: &MarkerEncryption,
    secrets: &Secrets,
) -> Result<ArchiveKey, ArchiveError> {
    let bad = |reason: &str| ArchiveError::BadMarker {
        location: shown.to_string(),
        reason: reason.to_string(),
    };
    let key_id = crypt::unhex::<16>(&enc.key_id).ok_or_else(|| bad("a damaged key_id"))?;
    let archive_id =
        crypt::unhex::<16>(&enc.archive_id).ok_or_else(|| bad("a damaged archive_id"))?;
    if enc.envelope != crypt::VERSION || enc.algorithm != "aes-256-gcm" {
        return Err(bad(&format!(
            "encryption envelope {} with {}, which this lvmsync-rs does not know",
            enc.envelope, enc.algorithm
        )));
    }
    let keeping = |key: Key| ArchiveKey {
        key,
        archive_id,
        streams: Mutex::new(HashMap::new()),
    };
    if let Some(key) = secrets.key()? {
        if key.id() != key_id {
            return Err(CryptError::WrongKey {
                name: shown.to_string(),
                found: enc.key_id.clone(),
                given: crypt::hex(&key.id()),
            }
            .into());
        }
        return Ok(keeping(key));
    }
    let Some(pass) = secrets.passphrase()? else {
        return Err(CryptError::NoKey {
            name: shown.to_string(),
            with: "a key of its own",
            how: "its key file with --key-file FILE, or its passphrase with --passphrase-file FILE, --passphrase-fd N or LVMSYNC_PASSPHRASE",
        }
        .into());
    };
    let Some(w) = &enc.passphrase else {
        return Err(CryptError::Usage(format!(
            "{shown}: its key is not kept in the archive under a passphrase: give its key file with --key-file FILE"
        ))
        .into());
    };
    let salt = crypt::unhex::<16>(&w.salt).ok_or_else(|| bad("a damaged salt"))?;
    let nonce = crypt::unhex::<12>(&w.nonce).ok_or_else(|| bad("a damaged nonce"))?;
    let mut wrapped = zeroize::Zeroizing::new(
        crypt::unhex::<48>(&w.wrapped).ok_or_else(|| bad("a damaged wrapped key"))?,
    );
    if w.kdf != "argon2id" {
        return Err(bad(&format!("key derivation {}, not argon2id", w.kdf)));
    }
    let kek = Key::from_passphrase(&pass, &salt, w.m_kib, w.t, w.p).map_err(|e| bad(&e))?;
    let opened =
        kek.wrap_cipher(&archive_id)
            .open(nonce, b"lvmsync-rs archive key", &mut wrapped[..]);
    let body = &wrapped[..32];
    if !opened {
        return Err(CryptError::WrongPassphrase {
            name: shown.to_string(),
        }
        .into());
    }
    let key = Key::from_bytes(body.try_into().expect("32 bytes"));
    if key.id() != key_id {
        return Err(bad("the key the passphrase unwraps is not the archive's"));
    }
    Ok(keeping(key))
}

/// `key` wrapped by a key made from `passphrase`, for the marker.
fn wrap_key(
    key: &Key,
    archive_id: &[u8; 16],
    passphrase: &[u8],
) -> Result<WrappedKey, ArchiveError> {
    let salt: [u8; 16] = crypt::random()?;
    let nonce: [u8; 12] = crypt::random()?;
    let kek = Key::from_passphrase(
        passphrase,
        &salt,
        crypt::ARGON2_M_KIB,
        crypt::ARGON2_T,
        crypt::ARGON2_P,
    )
    .map_err(CryptError::Passphrase)?;
    let mut body = zeroize::Zeroizing::new(*key.bytes());
    let tag = kek
        .wrap_cipher(archive_id)
        .seal(nonce, b"lvmsync-rs archive key", &mut body[..]);
    let mut wrapped = body.to_vec();
    wrapped.extend_from_slice(&tag);
    Ok(WrappedKey {
        kdf: "argon2id".into(),
        salt: crypt::hex(&salt),
        m_kib: crypt::ARGON2_M_KIB,
        t: crypt::ARGON2_T,
        p: crypt::ARGON2_P,
        nonce: crypt::hex(&nonce),
        wrapped: crypt::hex(&wrapped),
    })
}

impl Archive {
    /// What binds an object's envelope to its name and this archive.
    fn context(c: &ArchiveKey, key: &str) -> Vec<u8> {
        format!("lvmsync-rs archive {} {key}", crypt::hex(&c.archive_id)).into_bytes()
    }

    fn sealed_error(&self, key: &str, reason: String) -> ArchiveError {
        ArchiveError::Sealed {
            location: self.location(),
            key: key.to_string(),
            reason,
        }
    }

    /// Writes a new object (create-only), sealed in an encrypted archive.
    pub fn put_object(&self, key: &str, body: Vec<u8>) -> Result<(), ArchiveError> {
        let Some(c) = &self.crypt else {
            self.store.put_new(key, body)?;
            return Ok(());
        };
        let envelope = Envelope::for_key(&c.key)?;
        let stream = crypt::Stream::new(&envelope, &c.key, &Archive::context(c, key));
        let sealed = Vec::with_capacity(crypt::sealed_len(body.len() as u64) as usize);
        let mut w = SealWriter::new(sealed, stream).expect("a Vec takes any write");
        w.write_all(&body).expect("a Vec takes any write");
        let (sealed, _) = w.finish().expect("a Vec takes any write");
        self.store.put_new(key, sealed)?;
        Ok(())
    }

    /// Starts the upload of an object, sealed in an encrypted archive.
    pub fn upload(&self, key: &str) -> Result<UploadWriter, ArchiveError> {
        let raw = RawUpload(self.store.upload(key)?);
        let Some(c) = &self.crypt else {
            return Ok(UploadWriter::Plain(raw));
        };
        let envelope = Envelope::for_key(&c.key)?;
        let stream = crypt::Stream::new(&envelope, &c.key, &Archive::context(c, key));
        let w = SealWriter::new(raw, stream).map_err(|e| self.upload_error(key, e))?;
        Ok(UploadWriter::Sealed(Box::new(w)))
    }

    /// Checks an object's envelope header: this archive's key.
    fn open_header(
        &self,
        c: &ArchiveKey,
        key: &str,
        head: &[u8],
    ) -> Result<crypt::Stream, ArchiveError> {
        if head.len() < crypt::MAGIC.len() || head[..crypt::MAGIC.len()] != crypt::MAGIC {
            return Err(self.sealed_error(
                key,
                "not encrypted, in an encrypted archive: it was replaced".into(),
            ));
        }
        let envelope =
            Envelope::decode(key, head).map_err(|e| self.sealed_error(key, e.to_string()))?;
        if envelope.kind != crypt::KIND_KEY || envelope.key_id != c.key.id() {
            return Err(self.sealed_error(
                key,
                "encrypted with another key than the archive's: it was replaced".into(),
            ));
        }
        Ok(crypt::Stream::new(
            &envelope,
            &c.key,
            &Archive::context(c, key),
        ))
    }

    /// Reads a whole object of at most `max_len` bytes (of plaintext),
    /// opened and authenticated in an encrypted archive.
    pub fn get_object(&self, key: &str, max_len: u64) -> Result<Vec<u8>, ArchiveError> {
        let Some(c) = &self.crypt else {
            return Ok(self.store.get(key, max_len)?);
        };
        let body = self.store.get(key, crypt::sealed_len(max_len))?;
        let stream = self.open_header(c, key, &body)?;
        let total = crypt::plain_len(body.len() as u64)
            .ok_or_else(|| self.sealed_error(key, format!("{} bytes: cut short", body.len())))?;
        let (chunks, _) = crypt::sealed_range(&(0..total), total);
        crypt::open_chunks(&stream, chunks, body[crypt::HEADER_LEN..].to_vec(), total)
            .map_err(|reason| self.sealed_error(key, reason))
    }

    /// An object's stream and plaintext length, read once.
    fn stream_of(&self, c: &ArchiveKey, key: &str) -> Result<(crypt::Stream, u64), ArchiveError> {
        if let Some(known) = c.streams.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(known.clone());
        }
        let size = self
            .store
            .head(key)?
            .ok_or_else(|| StoreError::NotFound {
                location: self.location(),
                key: key.to_string(),
            })?
            .size;
        let total = crypt::plain_len(size)
            .ok_or_else(|| self.sealed_error(key, format!("{size} bytes: cut short")))?;
        let head = self.store.get_range(key, 0..crypt::HEADER_LEN as u64)?;
        let stream = self.open_header(c, key, &head)?;
        c.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), (stream.clone(), total));
        Ok((stream, total))
    }

    /// Bytes `range` of an object (of its plaintext, in an encrypted
    /// archive: the chunks that hold them are read and authenticated).
    pub fn get_object_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, ArchiveError> {
        let Some(c) = &self.crypt else {
            return Ok(self.store.get_range(key, range)?);
        };
        let (stream, total) = self.stream_of(c, key)?;
        if range.end > total || range.start > range.end {
            return Err(StoreError::OutOfRange {
                location: self.location(),
                key: key.to_string(),
                start: range.start,
                end: range.end,
                size: total,
            }
            .into());
        }
        let (chunks, bytes) = crypt::sealed_range(&range, total);
        let first = chunks.start * crypt::CHUNK as u64;
        let sealed = self.store.get_range(key, bytes)?;
        let plain = crypt::open_chunks(&stream, chunks, sealed, total)
            .map_err(|reason| self.sealed_error(key, reason))?;
        Ok(plain[(range.start - first) as usize..(range.end - first) as usize].to_vec())
    }

    /// A reader of a whole object (of its plaintext, each chunk
    /// authenticated before it is read, in an encrypted archive).
    pub fn object_reader(&self, key: &str) -> Result<Box<dyn Read>, ArchiveError> {
        let mut r = self.store.reader(key)?;
        let Some(c) = &self.crypt else {
            return Ok(Box::new(r));
        };
        let mut head = [0u8; crypt::HEADER_LEN];
        let (n, result) = crate::files::read_full(&mut r, &mut head);
        result.map_err(|e| self.sealed_error(key, format!("read error: {e}")))?;
        let stream = self.open_header(c, key, &head[..n])?;
        Ok(Box::new(crypt::OpenReader::new(r, stream, key)))
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
