//! Applying a delta: replaying its records on the backup copy (a regular
//! file or a block device), each only after it has passed every check, and
//! optionally saving what they overwrite as a snapback delta first.
//!
//! A record is written only once its header, bounds and content checksum
//! hold, so a damaged or cut stream leaves the copy with the records before
//! the damage applied and nothing from it on. One thread reads and checks
//! the stream; a second one writes the records that passed, in order, so
//! that checking the next record overlaps writing this one; a third starts
//! writeback every [`WRITEBACK_BYTES`] and flushes the disk's cache every
//! [`FLUSH_BYTES`], so that the disk works meanwhile and the final sync
//! has little left to do. Records are idempotent (each
//! sets an extent to given bytes), so applying an intact copy of the whole
//! delta afterwards completes the job.
//!
//! With a snapback, the old contents of the ranges about to be written are
//! appended to the snapback and synced to disk before any of those ranges is
//! overwritten. Records are handled in batches ([`BATCH_BYTES`]) so that the
//! snapback is synced once per batch rather than once per record. The
//! snapback is itself a delta (its own header and END record): applying it
//! restores the copy's old bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use thiserror::Error;

use crate::blockdev::Destination;
use crate::files::{self, DeltaInput, DELTA_READ_BUF};
use crate::state::{self, State, StateError, Tracker};
use crate::stream::{
    Compression, Header, PointInTime, Reader, RecordKind, SourceInfo, SourceKind, StreamError,
    Totals, Writer, MAX_RECORD_LEN,
};
use crate::units::{counted, human, were};

/// The header property that asks for a regular-file destination of exactly
/// the origin's size: its value is `origin_size`, and a larger file is cut
/// to it once the whole delta was applied and checked (`verify --repair`
/// sets it). A reader that ignores it leaves the bytes past the origin's
/// end as they were.
pub const DEST_SIZE: &str = "dest-size";

/// Content held back per batch when a snapback is written.
const BATCH_BYTES: usize = 8 << 20;
/// Records held back per batch when a snapback is written.
const BATCH_RECORDS: usize = 4096;
/// Batches of verified records queued for the writing thread.
const WRITE_QUEUE: usize = 4;
/// A batch goes to the writing thread once it holds this many bytes, or
/// [`WRITE_BATCH_RECORDS`] records, so that small records do not cost a
/// hand-over between threads each. A record of [`OWN_BUFFER_MIN`] bytes or
/// more keeps the reader's buffer (no copy) and fills a batch alone.
const WRITE_BATCH_BYTES: usize = 512 << 10;
/// Records in a batch for the writing thread, at most.
const WRITE_BATCH_RECORDS: usize = 256;
/// Records this long or longer are handed over in a buffer of their own
/// instead of being copied into their batch's.
const OWN_BUFFER_MIN: u64 = 64 << 10;
/// Bytes written between two requests to start writeback, so that the disk
/// works while the stream is still being read. Small: a delta of scattered
/// small extents is often only a few MiB, and what is not written back by
/// its end waits for the final sync (the request goes to the writeback
/// thread, so the writer never waits for it).
const WRITEBACK_BYTES: u64 = 1 << 20;
/// The same for [`PieceWriter`], which starts writeback itself, in line.
const PIECES_WRITEBACK_BYTES: u64 = 32 << 20;
/// Bytes written between two flushes of the destination by the writeback
/// thread (written back and out of the device's cache), so that the final
/// sync waits for the last of them only. Unlike a confirmation, nothing
/// waits for them.
const FLUSH_BYTES: u64 = 128 << 20;
/// Bytes written between two confirmations in the destination's state (a
/// sync of the destination, then of the state), for a delta that can be
/// resumed.
pub const CONFIRM_BYTES: u64 = 256 << 20;

/// How far an apply got before it stopped.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub dest: String,
    /// Records written to the destination.
    pub records: u64,
    /// Bytes of extents written to the destination.
    pub bytes: u64,
    /// What the snapback holds, when one was asked for.
    pub snapback: Option<String>,
    /// What the destination's state confirms, for a delta that can resume.
    pub confirmed: Option<String>,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.records == 0 {
            write!(f, "nothing was written to {}", self.dest)?;
        } else {
            write!(
                f,
                "{} ({}) {} applied to {} before it, nothing from it on; records can be applied again, so applying an intact copy of the whole delta completes the job",
                counted(self.records, "record"),
                human(self.bytes),
                were(self.records),
                self.dest
            )?;
        }
        if let Some(s) = &self.snapback {
            write!(f, "; {s}")?;
        }
        if let Some(c) = &self.confirmed {
            write!(f, "; {c}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("{delta}: {source}; {progress}")]
    Stream {
        delta: String,
        source: StreamError,
        progress: Box<Progress>,
    },
    #[error("{path}: no such file; give --create to create it as a regular file{}", of_origin_size(.size))]
    DestMissing { path: String, size: Option<u64> },
    #[error("{path}: is a directory; name a regular file or a block device")]
    DestDirectory { path: String },
    #[error("{path}: not a regular file or a block device")]
    DestKind { path: String },
    #[error("{path}: the block device is {size} bytes, smaller than the origin ({origin_size} bytes); nothing was written")]
    DestTooSmall {
        path: String,
        size: u64,
        origin_size: u64,
    },
    #[error("{path}: cannot open: {source}")]
    DestOpen { path: String, source: io::Error },
    #[error("{path}: the device is in use ({users}): a copy is never written while something else uses it; unmount it, or name another device; nothing was written")]
    DestBusy { path: String, users: String },
    #[error(
        "{path}: another program is writing it ({holder}); wait for it to end; nothing was written"
    )]
    DestLocked { path: String, holder: String },
    #[error("{path}: the file is {size} bytes, shorter than the origin ({origin_size} bytes), and the delta only holds what changed since a snapshot: the rest of the copy is missing, and extending it with zeroes would make a copy that is mostly wrong; seed it first (sync --full), or apply to a copy of the whole origin; nothing was written")]
    DestTooShort {
        path: String,
        size: u64,
        origin_size: u64,
    },
    #[error("{path}: cannot extend it to the origin's size ({size} bytes): {source}; {progress}")]
    DestExtend {
        path: String,
        size: u64,
        source: io::Error,
        progress: Box<Progress>,
    },
    #[error("{path}: write error at byte {offset}: {source}; that record may be partly written; {progress}")]
    DestWrite {
        path: String,
        offset: u64,
        source: io::Error,
        progress: Box<Progress>,
    },
    #[error("{path}: read error at byte {offset} while saving its old contents to the snapback: {source}; {progress}")]
    DestRead {
        path: String,
        offset: u64,
        source: io::Error,
        progress: Box<Progress>,
    },
    #[error("{path}: cannot cut it to the origin's size ({size} bytes): {source}; every record was applied")]
    DestTruncate {
        path: String,
        size: u64,
        source: io::Error,
    },
    #[error("{path}: cannot sync it to disk: {source}; what was written may not be on disk: apply the delta again")]
    DestSync { path: String, source: io::Error },
    #[error("{delta} and {dest} are the same file")]
    SameFile { delta: String, dest: String },
    #[error("{path}: already exists; a snapback is never overwritten: name a new file")]
    SnapbackExists { path: String },
    #[error("{path}: cannot create the snapback: {source}")]
    SnapbackCreate { path: String, source: io::Error },
    #[error("{path}: writing the snapback: {source}; {progress}")]
    SnapbackWrite {
        path: String,
        source: io::Error,
        progress: Box<Progress>,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{source}; {progress}")]
    StateUpdate {
        source: StateError,
        progress: Box<Progress>,
    },
}

fn of_origin_size(size: &Option<u64>) -> String {
    match size {
        Some(n) => format!(" of the origin's size ({n} bytes)"),
        None => String::new(),
    }
}

/// What to do besides writing the records.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Create the destination as a regular file when it does not exist.
    pub create: bool,
    /// Save the old contents of every range written, as a delta, to this new file.
    pub snapback: Option<PathBuf>,
    /// Apply even when the destination's state names another base.
    pub force: bool,
    /// Set once the END record has been read and checked: what is left is
    /// to cut DEST if asked, complete the snapback, sync DEST and record
    /// its state.
    pub finishing: Option<Arc<AtomicBool>>,
    /// Told how many bytes of the delta have been read.
    pub progress: Option<crate::progress::Handle>,
}

/// What an apply did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub header: Header,
    pub totals: Totals,
    pub data_records: u64,
    pub zero_records: u64,
    /// Length of the delta, END record included.
    pub stream_len: u64,
    /// The stream digest the END record carried, and that was checked.
    pub digest: u128,
    pub dest: String,
    pub dest_is_block_device: bool,
    /// Size of the destination before, when it existed.
    pub dest_size_before: Option<u64>,
    /// Whether a regular file was extended to the origin's size.
    pub extended: bool,
    /// The size of a regular file that was cut to the origin's size (a
    /// delta with the [`DEST_SIZE`] property).
    pub truncated_from: Option<u64>,
    /// The snapback written: path, totals and length.
    pub snapback: Option<(PathBuf, Totals, u64)>,
}

/// Refuses `delta` and `dest` being one file: the delta would be overwritten
/// as it is read.
pub fn check_distinct(delta: &Path, dest: &Path) -> Result<(), ApplyError> {
    if let (Ok(a), Ok(b)) = (fs::metadata(delta), fs::metadata(dest)) {
        if a.dev() == b.dev() && a.ino() == b.ino() {
            return Err(ApplyError::SameFile {
                delta: delta.display().to_string(),
                dest: dest.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Whether a destination of `size` bytes can take a delta of an origin of
/// `origin_size` bytes: `Ok(true)` when it is a regular file to extend first,
/// `Ok(false)` when it is large enough as it is.
fn check_dest_size(
    path: &str,
    is_block_device: bool,
    size: u64,
    origin_size: u64,
) -> Result<bool, ApplyError> {
    match (size < origin_size, is_block_device) {
        (false, _) => Ok(false),
        (true, false) => Ok(true),
        (true, true) => Err(ApplyError::DestTooSmall {
            path: path.into(),
            size,
            origin_size,
        }),
    }
}

/// Whether a delta with `header` would be applied to the copy `status`
/// describes, as far as can be told without opening it: what a dry run
/// checks. The apply checks all of this again, and more (it reads every
/// record).
pub fn would_apply(
    status: &crate::status::DestStatus,
    header: &Header,
    create: bool,
    force: bool,
) -> Result<(), ApplyError> {
    let path = status.dest.clone();
    if !status.exists {
        return if create {
            Ok(())
        } else {
            Err(ApplyError::DestMissing {
                path,
                size: Some(header.origin_size),
            })
        };
    }
    let device = match status.kind.as_deref() {
        Some("device") => true,
        Some("file") => false,
        _ => return Err(ApplyError::DestKind { path }),
    };
    if device && !status.users.is_empty() {
        return Err(ApplyError::DestBusy {
            path,
            users: status.users.join(", "),
        });
    }
    if let Some(holder) = &status.writer {
        return Err(ApplyError::DestLocked {
            path,
            holder: holder.clone(),
        });
    }
    let size = status.size.unwrap_or(0);
    let extend = check_dest_size(&path, device, size, header.origin_size)?;
    let whole = matches!(header.source.kind, SourceKind::Full | SourceKind::Compare);
    if extend && !whole {
        return Err(ApplyError::DestTooShort {
            path,
            size,
            origin_size: header.origin_size,
        });
    }
    if let Some(e) = &status.state_error {
        if !force {
            return Err(ApplyError::State(StateError::Refused(e.clone())));
        }
    }
    if device && status.state_file.is_none() && header.target.is_some() {
        return Err(ApplyError::State(StateError::NoStableName { dest: path }));
    }
    if !force {
        state::check(&path, status.state().as_ref(), header)?;
    }
    Ok(())
}

fn open_dest(
    path: &Path,
    create: bool,
    origin_size: Option<u64>,
) -> Result<Destination, ApplyError> {
    let shown = path.display().to_string();
    let open_err = |source| ApplyError::DestOpen {
        path: shown.clone(),
        source,
    };
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if create {
                Destination::create(path).map_err(open_err)
            } else {
                Err(ApplyError::DestMissing {
                    path: shown.clone(),
                    size: origin_size,
                })
            }
        }
        Err(e) => Err(open_err(e)),
        Ok(m) if m.is_dir() => Err(ApplyError::DestDirectory { path: shown }),
        Ok(m) if m.is_file() || m.file_type().is_block_device() => {
            Destination::open(path).map_err(|e| {
                if m.file_type().is_block_device() && e.raw_os_error() == Some(nix::libc::EBUSY) {
                    let users = crate::blockdev::users_of(m.rdev());
                    ApplyError::DestBusy {
                        path: shown.clone(),
                        users: if users.is_empty() {
                            "opened exclusively by another program".into()
                        } else {
                            users.join(", ")
                        },
                    }
                } else {
                    open_err(e)
                }
            })
        }
        Ok(_) => Err(ApplyError::DestKind { path: shown }),
    }
}

/// The snapback being written.
struct Snapback {
    path: PathBuf,
    writer: Writer<BufWriter<File>>,
    old: Vec<u8>,
}

impl Snapback {
    fn create(path: &Path, dest: &Destination, delta: &Header) -> Result<Snapback, ApplyError> {
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    ApplyError::SnapbackExists {
                        path: shown.clone(),
                    }
                } else {
                    ApplyError::SnapbackCreate {
                        path: shown.clone(),
                        source,
                    }
                }
            })?;
        let mut properties = BTreeMap::new();
        properties.insert("snapback-of".to_string(), dest.path().display().to_string());
        properties.insert("snapback-dest-size".to_string(), dest.size().to_string());
        if let Some(name) = describe_source(&delta.source) {
            properties.insert("snapback-undoes".to_string(), name);
        }
        let header = Header {
            origin_size: delta.origin_size,
            chunk_size: delta.chunk_size,
            source: SourceInfo {
                origin: Some(dest.path().display().to_string()),
                ..SourceInfo::of_kind(SourceKind::Image)
            },
            compression: Compression::Lz4,
            tool: crate::TOOL.to_string(),
            // Undoing the delta takes the destination from the delta's
            // target back to its base (all of it only for a whole delta).
            base: delta.target.clone(),
            target: if delta.resume_from == 0 {
                delta.base.clone()
            } else {
                None
            },
            resume_from: 0,
            properties,
        };
        let create_err = |source| ApplyError::SnapbackCreate {
            path: shown.clone(),
            source,
        };
        let writer =
            Writer::new(BufWriter::with_capacity(256 << 10, file), &header).map_err(create_err)?;
        // The new name must survive a crash too.
        files::sync_parent(path).map_err(create_err)?;
        Ok(Snapback {
            path: path.to_path_buf(),
            writer,
            old: vec![0u8; MAX_RECORD_LEN as usize],
        })
    }

    /// Writes the END record and syncs; returns the totals and length.
    fn finish(self) -> io::Result<(Totals, u64)> {
        let (out, totals, len) = self.writer.finish()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((totals, len))
    }
}

/// `vg/snapshot (time)` or whatever is known of a delta's source.
pub fn describe_source(s: &SourceInfo) -> Option<String> {
    let name = match (&s.vg, &s.snapshot) {
        (Some(vg), Some(snap)) => format!("{vg}/{snap}"),
        (None, Some(snap)) => snap.clone(),
        _ => return None,
    };
    Some(match &s.snapshot_time {
        Some(t) => format!("{name} ({t})"),
        None => name,
    })
}

/// A verified record on its way to the destination.
struct Verified {
    offset: u64,
    length: u64,
    data: Content,
}

/// Where a verified record's content is.
enum Content {
    Zero,
    /// In its batch's `bytes`, from this position.
    InBatch(usize),
    /// At the start of a buffer of its own.
    Own(Vec<u8>),
}

/// Verified records handed to the writing thread together.
#[derive(Default)]
struct WriteBatch {
    records: Vec<Verified>,
    /// The content of the records that have no buffer of their own.
    bytes: Vec<u8>,
    /// Bytes of buffers it holds.
    weight: usize,
}

/// Buffers the writing thread is done with, for the reader to reuse.
enum Spent {
    Record(Vec<u8>),
    Batch(WriteBatch),
}

/// A verified record waiting for its batch to be saved to the snapback.
struct Pending {
    offset: u64,
    length: u64,
    /// Where its content is in the batch buffer; `None` for zeroes.
    data: Option<(usize, usize)>,
}

struct Applier {
    /// Set once anything was written to the destination.
    wrote: Arc<AtomicBool>,
    dest: Destination,
    shown: String,
    origin_size: u64,
    /// Set while a regular file still has to be extended to the origin's size.
    extend: bool,
    extended: bool,
    snapback: Option<Snapback>,
    pending: Vec<Pending>,
    batch: Vec<u8>,
    records: u64,
    bytes: u64,
    data_records: u64,
    zero_records: u64,
    /// Bytes written since writeback was last requested.
    unflushed: u64,
    /// Bytes of data written in all.
    written: u64,
    /// Asks the writeback thread to start writeback or to confirm.
    writeback: Option<mpsc::SyncSender<WritebackRequest>>,
    /// The confirmation waiting for the writeback thread.
    confirm_slot: Arc<ConfirmSlot>,
    /// Why the writeback thread could not confirm, once it could not.
    confirm_failed: Arc<Mutex<Option<ConfirmError>>>,
    /// What the state confirmed when the apply stopped.
    confirmed: Option<String>,
    /// Keeps the destination's state (shared with the writeback thread,
    /// which confirms).
    tracker: Arc<Mutex<Tracker>>,
}

/// What the writer asks of the writeback thread.
#[derive(Debug, Clone, Copy)]
enum WritebackRequest {
    /// This many bytes of data were written in all: start writeback, or
    /// flush when [`FLUSH_BYTES`] were written since the last flush.
    Written(u64),
    /// A confirmation waits in the slot (see [`ConfirmSlot`]).
    Confirm,
}

/// The latest confirmation the writer asked for: flush, then record in the
/// state that the bytes before `end` are applied (`written` bytes of data
/// were written in all). A newer one replaces an older one not yet done,
/// so none is lost when the writeback thread is busy and the writer then
/// waits for input.
type ConfirmSlot = Mutex<Option<(u64, u64)>>;

/// Why a confirmation failed in the writeback thread.
#[derive(Debug)]
enum ConfirmError {
    Sync(io::Error),
    State(StateError),
}

/// The writeback thread: serves `asked` until the writer hangs up. A
/// failed confirmation is left in `failed` and ends it.
fn writeback_thread(
    wb: crate::blockdev::Writeback,
    asked: mpsc::Receiver<WritebackRequest>,
    slot: &ConfirmSlot,
    tracker: &Mutex<Tracker>,
    failed: &Mutex<Option<ConfirmError>>,
) {
    let mut flushed = 0;
    for request in asked {
        match request {
            // Errors are left to the final sync, which reports them (this
            // is another open file: see Destination::writeback).
            WritebackRequest::Written(written) if written - flushed >= FLUSH_BYTES => {
                flushed = written;
                let _ = wb.flush();
            }
            WritebackRequest::Written(_) => {
                let _ = wb.start();
            }
            WritebackRequest::Confirm => {}
        }
        // Whatever woke the thread, a confirmation asked for meanwhile is
        // done now.
        let Some((end, written)) = lock(slot).take() else {
            continue;
        };
        flushed = written;
        let result = wb.flush().map_err(ConfirmError::Sync).and_then(|()| {
            lock(tracker)
                .confirm_at(end)
                .map(|_| ())
                .map_err(ConfirmError::State)
        });
        if let Err(e) = result {
            *lock(failed) = Some(e);
            return;
        }
    }
}

/// Locks `m`, also after a thread panicked while holding it (what it
/// guards stays consistent: every change is a single assignment).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Applier {
    fn progress(&self) -> Progress {
        Progress {
            dest: self.shown.clone(),
            records: self.records,
            bytes: self.bytes,
            snapback: None,
            confirmed: None,
        }
    }

    fn add(&mut self, rec: &Verified, bytes: &[u8]) -> Result<(), ApplyError> {
        let len = rec.length as usize;
        let content = match &rec.data {
            Content::Zero => None,
            Content::InBatch(at) => Some(&bytes[*at..*at + len]),
            Content::Own(buf) => Some(&buf[..len]),
        };
        if self.snapback.is_none() {
            return self.write(rec.offset, rec.length, content);
        }
        let data = content.map(|c| {
            let start = self.batch.len();
            self.batch.extend_from_slice(c);
            (start, self.batch.len())
        });
        self.pending.push(Pending {
            offset: rec.offset,
            length: rec.length,
            data,
        });
        if self.batch.len() >= BATCH_BYTES || self.pending.len() >= BATCH_RECORDS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what arrives on `records` until it closes or a write fails;
    /// returns spent buffers on `spent`.
    fn run(
        &mut self,
        batches: mpsc::Receiver<WriteBatch>,
        spent: mpsc::Sender<Spent>,
    ) -> Result<(), ApplyError> {
        let result = (|| {
            for mut batch in batches {
                for rec in batch.records.drain(..) {
                    self.add(&rec, &batch.bytes)?;
                    if let Content::Own(buf) = rec.data {
                        let _ = spent.send(Spent::Record(buf));
                    }
                }
                let _ = spent.send(Spent::Batch(batch));
            }
            self.flush()
        })();
        // Ends the writeback thread.
        self.writeback = None;
        result
    }

    /// Saves the old contents of the pending records to the snapback, syncs
    /// it, then writes the records.
    fn flush(&mut self) -> Result<(), ApplyError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(mut snap) = self.snapback.take() else {
            return Ok(());
        };
        let saved = self.save_old(&mut snap);
        self.snapback = Some(snap);
        saved?;
        let pending = std::mem::take(&mut self.pending);
        let batch = std::mem::take(&mut self.batch);
        for p in &pending {
            let content = p.data.map(|(a, b)| &batch[a..b]);
            self.write(p.offset, p.length, content)?;
        }
        self.pending = pending;
        self.pending.clear();
        self.batch = batch;
        self.batch.clear();
        Ok(())
    }

    /// Appends the current contents of the pending records' ranges to the
    /// snapback and syncs it.
    fn save_old(&self, snap: &mut Snapback) -> Result<(), ApplyError> {
        let snapback_error = |source| ApplyError::SnapbackWrite {
            path: snap.path.display().to_string(),
            source,
            progress: Box::new(self.progress()),
        };
        for p in &self.pending {
            let old = &mut snap.old[..p.length as usize];
            if let Err(source) = self.dest.read_at_or_zero(old, p.offset) {
                return Err(ApplyError::DestRead {
                    path: self.shown.clone(),
                    offset: p.offset,
                    source,
                    progress: Box::new(self.progress()),
                });
            }
            if let Err(source) = snap.writer.extent(p.offset, old) {
                return Err(snapback_error(source));
            }
        }
        snap.writer
            .flush()
            .and_then(|()| snap.writer.get_ref().get_ref().sync_data())
            .map_err(snapback_error)
    }

    fn write(
        &mut self,
        offset: u64,
        length: u64,
        content: Option<&[u8]>,
    ) -> Result<(), ApplyError> {
        if let Some(e) = self.confirm_failure() {
            return Err(e);
        }
        if self.extend {
            self.extend_now()?;
        }
        self.wrote.store(true, Ordering::SeqCst);
        let result = match content {
            Some(c) if !c.is_empty() => self.dest.write_all_at(c, offset),
            _ => self.dest.write_zeroes(offset, length),
        };
        if let Err(source) = result {
            return Err(ApplyError::DestWrite {
                path: self.shown.clone(),
                offset,
                source,
                progress: Box::new(self.progress()),
            });
        }
        self.records += 1;
        self.bytes += length;
        match content {
            Some(c) if !c.is_empty() => {
                self.data_records += 1;
                self.unflushed += length;
                self.written += length;
            }
            _ => self.zero_records += 1,
        }
        let end = offset + length;
        let due = lock(&self.tracker).wrote(end, length);
        if due {
            self.confirm(end)?;
        } else if self.unflushed >= WRITEBACK_BYTES {
            self.unflushed = 0;
            // Only a head start for the final sync: when the writeback
            // thread is still busy, nothing is lost by skipping.
            if let Some(wb) = &self.writeback {
                let _ = wb.try_send(WritebackRequest::Written(self.written));
            }
        }
        Ok(())
    }

    /// Has the bytes before `end` confirmed in the state: by the writeback
    /// thread, without waiting for it, when there is one (the request waits
    /// in the slot; when the thread is busy, it takes it once done); else
    /// here and now.
    fn confirm(&mut self, end: u64) -> Result<(), ApplyError> {
        if let Some(wb) = &self.writeback {
            *lock(&self.confirm_slot) = Some((end, self.written));
            self.unflushed = 0;
            lock(&self.tracker).unconfirmed = 0;
            // A full queue means the thread has a request to serve, after
            // which it looks at the slot.
            let _ = wb.try_send(WritebackRequest::Confirm);
            return Ok(());
        }
        self.dest.sync().map_err(|source| ApplyError::DestSync {
            path: self.shown.clone(),
            source,
        })?;
        let confirmed = lock(&self.tracker).confirm();
        confirmed.map_err(|source| ApplyError::StateUpdate {
            source,
            progress: Box::new(self.progress()),
        })?;
        Ok(())
    }

    /// The error of a confirmation that failed in the writeback thread.
    fn confirm_failure(&self) -> Option<ApplyError> {
        let failed = lock(&self.confirm_failed).take()?;
        Some(match failed {
            ConfirmError::Sync(source) => ApplyError::DestSync {
                path: self.shown.clone(),
                source,
            },
            ConfirmError::State(source) => ApplyError::StateUpdate {
                source,
                progress: Box::new(self.progress()),
            },
        })
    }

    fn extend_now(&mut self) -> Result<(), ApplyError> {
        self.extend = false;
        self.dest
            .set_len(self.origin_size)
            .map_err(|source| ApplyError::DestExtend {
                path: self.shown.clone(),
                size: self.origin_size,
                source,
                progress: Box::new(self.progress()),
            })?;
        self.extended = true;
        Ok(())
    }

    /// After an error: completes the snapback with what it holds, syncs the
    /// destination, and says what the snapback now is.
    fn wind_down(&mut self) -> Option<String> {
        let note = self.snapback.take().map(|snap| {
            let path = snap.path.display().to_string();
            match snap.finish() {
                Ok(_) if self.records == 0 => format!(
                    "the snapback {path} is complete (with its END record) and restores nothing"
                ),
                Ok(_) => format!(
                    "the snapback {path} is complete (with its END record): applying it restores the old contents of what was written"
                ),
                Err(e) => format!(
                    "the snapback {path} could not be completed ({e}): it lacks its END record, but applying it restores every range it holds before it reports the truncation"
                ),
            }
        });
        if self.dest.sync().is_ok() {
            let confirmed = lock(&self.tracker).confirm();
            if let Ok(Some(at)) = confirmed {
                self.confirmed = Some(format!(
                    "the destination's state records that the bytes before {at} are applied, so the same sync or backup resumes from there"
                ));
            }
        }
        note
    }

    /// Stamps the error with how far the apply got.
    fn fail(&mut self, err: ApplyError) -> ApplyError {
        let note = self.wind_down();
        let progress = |p: Box<Progress>| {
            Box::new(Progress {
                records: self.records,
                bytes: self.bytes,
                snapback: note.clone(),
                confirmed: self.confirmed.clone(),
                ..*p
            })
        };
        match err {
            ApplyError::Stream {
                delta,
                source,
                progress: p,
            } => ApplyError::Stream {
                delta,
                source,
                progress: progress(p),
            },
            ApplyError::DestWrite {
                path,
                offset,
                source,
                progress: p,
            } => ApplyError::DestWrite {
                path,
                offset,
                source,
                progress: progress(p),
            },
            ApplyError::DestRead {
                path,
                offset,
                source,
                progress: p,
            } => ApplyError::DestRead {
                path,
                offset,
                source,
                progress: progress(p),
            },
            ApplyError::DestExtend {
                path,
                size,
                source,
                progress: p,
            } => ApplyError::DestExtend {
                path,
                size,
                source,
                progress: progress(p),
            },
            ApplyError::SnapbackWrite {
                path,
                source,
                progress: p,
            } => ApplyError::SnapbackWrite {
                path,
                source,
                progress: progress(p),
            },
            ApplyError::StateUpdate {
                source,
                progress: p,
            } => ApplyError::StateUpdate {
                source,
                progress: progress(p),
            },
            other => other,
        }
    }
}

/// An exclusive lock on a destination: `flock` on the file or device
/// itself, taken before its state is read and held until the transfer
/// ends, so that a second writer (an apply, the far end of a sync or a
/// backup, a repair) is refused at once instead of mixing its records with
/// this one's.
#[derive(Debug)]
pub struct DestLock {
    _lock: nix::fcntl::Flock<File>,
    /// The locked file or device node: device and inode.
    id: (u64, u64),
}

impl DestLock {
    /// Locks `path` (following symlinks, as opening it to write does).
    pub fn take(path: &Path) -> Result<DestLock, ApplyError> {
        let file = File::open(path).map_err(|source| ApplyError::DestOpen {
            path: path.display().to_string(),
            source,
        })?;
        DestLock::on(file, path)
    }

    /// Locks the file `file` (an open `path`).
    fn on(file: File, path: &Path) -> Result<DestLock, ApplyError> {
        let meta = file.metadata().map_err(|source| ApplyError::DestOpen {
            path: path.display().to_string(),
            source,
        })?;
        let id = (meta.dev(), meta.ino());
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(DestLock { _lock: lock, id }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(ApplyError::DestLocked {
                path: path.display().to_string(),
                holder: lock_holder(id).unwrap_or_else(|| "another process".into()),
            }),
            Err((_, e)) => Err(ApplyError::DestOpen {
                path: path.display().to_string(),
                source: e.into(),
            }),
        }
    }
}

/// Who holds the lock of the copy at `path` now, if anyone, as the
/// kernel's lock table says (nothing is locked to find out).
pub fn writer_of(path: &Path) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    lock_holder((meta.dev(), meta.ino()))
}

/// The device and inode of an open file.
fn file_id(file: &File) -> Option<(u64, u64)> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Who holds a `flock` on the file with `id` (device, inode), from
/// `/proc/locks`: `process PID (COMMAND LINE)`.
fn lock_holder(id: (u64, u64)) -> Option<String> {
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let want = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(id.0),
        nix::sys::stat::minor(id.0),
        id.1
    );
    // N: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE START END
    let pid = locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&want.as_str()))
            .then(|| fields.get(4).map(|p| p.to_string()))
            .flatten()
    })?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let words: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    Some(if words.is_empty() {
        format!("process {pid}")
    } else {
        format!("process {pid}: {}", words.join(" "))
    })
}

/// The destination, opened (or created), locked and checked before any
/// record is read.
#[derive(Debug)]
pub struct OpenDest {
    path: PathBuf,
    destination: Destination,
    /// Whether this apply created it (with `--create`).
    created: bool,
    /// Where the destination's state is kept, and what it says.
    state_path: Option<PathBuf>,
    pub state: Option<State>,
    _lock: DestLock,
}

impl OpenDest {
    /// Opens `path` for writing: an existing regular file or block device,
    /// or, with `create`, a new regular file; and locks it (see
    /// [`DestLock`]). `origin_size`, when known, makes the refusal of a
    /// missing file say how large it would be.
    ///
    /// The destination's state is read too, once it is locked: a damaged
    /// state file is an error, unless `force` (then it is ignored, and
    /// replaced).
    pub fn open(
        path: &Path,
        create: bool,
        origin_size: Option<u64>,
        force: bool,
    ) -> Result<OpenDest, ApplyError> {
        OpenDest::open_locked(path, create, origin_size, force, None)
    }

    /// [`OpenDest::open`] with the lock already taken (by a caller that
    /// holds it for longer, such as a comparison and its repair).
    pub fn open_locked(
        path: &Path,
        create: bool,
        origin_size: Option<u64>,
        force: bool,
        lock: Option<DestLock>,
    ) -> Result<OpenDest, ApplyError> {
        let existed = fs::symlink_metadata(path).is_ok();
        let destination = open_dest(path, create, origin_size)?;
        let mut dest = OpenDest {
            path: path.to_path_buf(),
            created: !existed,
            state_path: None,
            state: None,
            _lock: match lock.filter(|l| Some(l.id) == file_id(destination.file())) {
                Some(lock) => lock,
                None => {
                    let file =
                        destination
                            .file()
                            .try_clone()
                            .map_err(|source| ApplyError::DestOpen {
                                path: path.display().to_string(),
                                source,
                            });
                    match file.and_then(|f| DestLock::on(f, path)) {
                        Ok(lock) => lock,
                        Err(e) => {
                            if !existed {
                                remove_created(path, destination.file(), None);
                            }
                            return Err(e);
                        }
                    }
                }
            },
            destination,
        };
        let read = state::location(path)
            .map_err(|source| ApplyError::DestOpen {
                path: path.display().to_string(),
                source,
            })
            .and_then(|state_path| {
                dest.state_path = state_path;
                let Some(state_path) = &dest.state_path else {
                    return Ok(None);
                };
                match state::load(state_path) {
                    Ok(s) => Ok(s),
                    Err(StateError::Damaged { .. } | StateError::Read { .. }) if force => Ok(None),
                    Err(e) => Err(e.into()),
                }
            });
        match read {
            Ok(state) => {
                dest.state = state;
                Ok(dest)
            }
            Err(e) => {
                dest.discard();
                Err(e)
            }
        }
    }

    /// Its size now, in bytes.
    pub fn size(&self) -> u64 {
        self.destination.size()
    }

    /// Removes the destination when this apply created it (nothing was
    /// written to it): what an apply that stops before its first record
    /// leaves behind.
    pub fn discard(self) {
        if self.created {
            remove_created(&self.path, self.destination.file(), None);
        }
    }
}

/// A destination written piece by piece in any order, by a caller that
/// checked each piece before handing it over (a restore from an archive):
/// the state says a transfer from `base` to `target` is under way until
/// [`PieceWriter::finish`] has synced the destination.
pub struct PieceWriter {
    dest: Destination,
    shown: String,
    path: PathBuf,
    created: bool,
    state_path: Option<PathBuf>,
    tracker: Tracker,
    origin_size: u64,
    /// Whether the pieces cover the whole volume (a file longer than it is
    /// then cut to it).
    whole: bool,
    writeback: Option<crate::blockdev::Writeback>,
    unflushed: u64,
    /// Where a regular file this run extended was a hole: zeroes there
    /// need no write (pieces never overlap).
    holes_from: u64,
    /// Pieces and bytes written.
    pub pieces: u64,
    pub bytes: u64,
    _lock: DestLock,
}

impl OpenDest {
    /// Starts writing a volume of `origin_size` bytes onto the destination
    /// piece by piece: `whole` when the pieces will cover all of it (a
    /// shorter file is then extended), else only what differs from what it
    /// holds. Unless `force`, a state that names another transfer partway,
    /// or a point in time other than `base`, is refused.
    pub fn pieces(
        self,
        origin_size: u64,
        base: Option<PointInTime>,
        target: PointInTime,
        whole: bool,
        force: bool,
    ) -> Result<PieceWriter, ApplyError> {
        let shown = self.path.display().to_string();
        let size = self.destination.size();
        let extend = check_dest_size(
            &shown,
            self.destination.is_block_device(),
            size,
            origin_size,
        )?;
        if extend && !whole && !self.created {
            return Err(ApplyError::DestTooShort {
                path: shown,
                size,
                origin_size,
            });
        }
        let header = Header {
            origin_size,
            chunk_size: 0,
            source: SourceInfo::of_kind(SourceKind::Full),
            compression: Compression::None,
            tool: crate::TOOL.into(),
            base,
            target: Some(target),
            resume_from: 0,
            properties: BTreeMap::new(),
        };
        if !force && !whole {
            state::check(&shown, self.state.as_ref(), &header)?;
        }
        let tracker = Tracker::begin(
            self.state_path.clone(),
            &self.path,
            self.state.is_some(),
            &header,
        )?;
        let mut dest = self.destination;
        let holes_from = if extend { size } else { u64::MAX };
        if extend {
            dest.set_len(origin_size)
                .map_err(|source| ApplyError::DestExtend {
                    path: shown.clone(),
                    size: origin_size,
                    source,
                    progress: Box::default(),
                })?;
        }
        Ok(PieceWriter {
            writeback: dest.writeback().ok(),
            dest,
            shown,
            path: self.path,
            created: self.created,
            state_path: self.state_path,
            tracker,
            origin_size,
            whole,
            unflushed: 0,
            holes_from,
            pieces: 0,
            bytes: 0,
            _lock: self._lock,
        })
    }
}

impl PieceWriter {
    fn progress(&self) -> Box<Progress> {
        Box::new(Progress {
            dest: self.shown.clone(),
            records: self.pieces,
            bytes: self.bytes,
            snapback: None,
            confirmed: None,
        })
    }

    /// Writes `data` at `offset` (`None`: zeroes of `len` bytes).
    pub fn write(&mut self, offset: u64, len: u64, data: Option<&[u8]>) -> Result<(), ApplyError> {
        let result = match data {
            Some(d) => self.dest.write_all_at(d, offset),
            None if offset >= self.holes_from => Ok(()),
            None => self.dest.write_zeroes(offset, len),
        };
        result.map_err(|source| ApplyError::DestWrite {
            path: self.shown.clone(),
            offset,
            source,
            progress: self.progress(),
        })?;
        self.pieces += 1;
        self.bytes += len;
        if data.is_some() {
            self.unflushed += len;
            if self.unflushed >= PIECES_WRITEBACK_BYTES {
                self.unflushed = 0;
                if let Some(wb) = &self.writeback {
                    let _ = wb.start();
                }
            }
        }
        Ok(())
    }

    /// Cuts a longer file to the volume's size (when the pieces covered
    /// all of it), syncs, and records that the destination holds the
    /// target.
    pub fn finish(mut self) -> Result<(), ApplyError> {
        if self.whole && !self.dest.is_block_device() && self.dest.size() > self.origin_size {
            self.dest
                .set_len(self.origin_size)
                .map_err(|source| ApplyError::DestTruncate {
                    path: self.shown.clone(),
                    size: self.origin_size,
                    source,
                })?;
        }
        self.dest.sync().map_err(|source| ApplyError::DestSync {
            path: self.shown.clone(),
            source,
        })?;
        if self.created {
            let _ = files::sync_parent(&self.path);
        }
        Ok(self.tracker.finish()?)
    }

    /// After an error: syncs what was written (the state still says the
    /// transfer is partway), or removes a destination this run created
    /// and wrote nothing to.
    pub fn abandon(self) {
        if self.created && self.pieces == 0 {
            remove_created(&self.path, self.dest.file(), self.state_path.as_deref());
        } else {
            let _ = self.dest.sync();
        }
    }

    /// How it is named in messages.
    pub fn name(&self) -> &str {
        &self.shown
    }
}

/// Removes `path`, a file this apply created as `dest`, when it still is
/// that file; and the state file it wrote for it.
fn remove_created(path: &Path, file: &File, state_path: Option<&Path>) {
    let ours = match (fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if ours {
        let _ = fs::remove_file(path);
        if let Some(state) = state_path {
            let _ = fs::remove_file(state);
        }
        let _ = files::sync_parent(path);
    }
}

/// Applies the delta that `input` names (a file, or stdin) to `dest`.
///
/// An encrypted delta ([`crate::crypt`]) is opened with `secrets`: a
/// missing or wrong key is refused before DEST is opened.
pub fn apply_delta(
    input: &DeltaInput,
    dest: &Path,
    options: &Options,
    secrets: &crate::crypt::Secrets,
) -> Result<Applied, crate::Error> {
    if let DeltaInput::File(path) = input {
        check_distinct(path, dest)?;
    }
    let opened = crate::crypt::open_input(input.open()?, &input.name(), secrets)?;
    let reader = BufReader::with_capacity(DELTA_READ_BUF, opened.into_read());
    Ok(apply(reader, &input.name(), dest, options)?)
}

/// Reads the delta from `input` (shown as `delta` in messages) and applies
/// it to `dest`.
pub fn apply<R: Read>(
    input: R,
    delta: &str,
    dest: &Path,
    options: &Options,
) -> Result<Applied, ApplyError> {
    let reader = open_stream(input, delta, dest)?;
    let target = OpenDest::open(
        dest,
        options.create,
        Some(reader.header().origin_size),
        options.force,
    )?;
    apply_to(reader, delta, target, options)
}

/// Reads and checks the delta's header.
pub fn open_stream<R: Read>(input: R, delta: &str, dest: &Path) -> Result<Reader<R>, ApplyError> {
    Reader::open(input).map_err(|source| ApplyError::Stream {
        delta: delta.into(),
        source,
        progress: Box::new(Progress {
            dest: dest.display().to_string(),
            ..Progress::default()
        }),
    })
}

/// Applies the delta whose header `reader` has read to `target`, opened
/// beforehand (so that a refusal comes before anything is read). A
/// destination this apply created is removed again when the apply stops
/// before it wrote anything.
pub fn apply_to<R: Read>(
    reader: Reader<R>,
    delta: &str,
    target: OpenDest,
    options: &Options,
) -> Result<Applied, ApplyError> {
    let wrote = Arc::new(AtomicBool::new(false));
    let (created, path, state_path) = (
        target.created,
        target.path.clone(),
        target.state_path.clone(),
    );
    let identity = created
        .then(|| target.destination.file().try_clone().ok())
        .flatten();
    let result = apply_opened(reader, delta, target, options, wrote.clone());
    if let (Err(_), Some(file)) = (&result, identity) {
        if !wrote.load(Ordering::SeqCst) {
            remove_created(&path, &file, state_path.as_deref());
        }
    }
    result
}

fn apply_opened<R: Read>(
    mut reader: Reader<R>,
    delta: &str,
    target: OpenDest,
    options: &Options,
    wrote: Arc<AtomicBool>,
) -> Result<Applied, ApplyError> {
    let OpenDest {
        path,
        destination,
        created,
        state_path,
        state: dest_state,
        _lock,
    } = target;
    let dest = path.as_path();
    let shown = dest.display().to_string();
    let header = reader.header().clone();
    let extend = check_dest_size(
        &shown,
        destination.is_block_device(),
        destination.size(),
        header.origin_size,
    )?;
    // Only a copy of a whole volume (a seed, a repair), or a file made for
    // this delta, may be extended with zeroes to the origin's size.
    let whole = matches!(header.source.kind, SourceKind::Full | SourceKind::Compare);
    if extend && !whole && !created {
        return Err(ApplyError::DestTooShort {
            path: shown,
            size: destination.size(),
            origin_size: header.origin_size,
        });
    }
    let dest_size_before = (!created).then(|| destination.size());
    if !options.force {
        state::check(&shown, dest_state.as_ref(), &header)?;
    }
    // Every local precondition before DEST's state changes.
    let snapback = match &options.snapback {
        Some(path) => Some(Snapback::create(path, &destination, &header)?),
        None => None,
    };
    let tracker = match Tracker::begin(state_path, dest, dest_state.is_some(), &header) {
        Ok(t) => t,
        Err(e) => {
            if let Some(snap) = snapback {
                let _ = fs::remove_file(&snap.path);
            }
            return Err(e.into());
        }
    };
    let mut a = Applier {
        wrote,
        dest: destination,
        shown: shown.clone(),
        origin_size: header.origin_size,
        extend,
        extended: false,
        snapback,
        pending: Vec::new(),
        batch: Vec::new(),
        records: 0,
        bytes: 0,
        data_records: 0,
        zero_records: 0,
        unflushed: 0,
        written: 0,
        writeback: None,
        confirm_slot: Arc::default(),
        confirm_failed: Arc::default(),
        confirmed: None,
        tracker: Arc::new(Mutex::new(tracker)),
    };
    // This thread reads and checks; a writer thread writes what passed.
    let (to_writer, records) = mpsc::sync_channel::<WriteBatch>(WRITE_QUEUE);
    let (spent, from_writer) = mpsc::channel::<Spent>();
    let writeback = a.dest.writeback().ok();
    let (ask_writeback, writeback_asked) = mpsc::sync_channel::<WritebackRequest>(1);
    a.writeback = writeback.as_ref().map(|_| ask_writeback);
    let (slot, tracker, confirm_failed) = (
        a.confirm_slot.clone(),
        a.tracker.clone(),
        a.confirm_failed.clone(),
    );
    let (read_result, write_result) = std::thread::scope(|scope| {
        if let Some(wb) = writeback {
            scope.spawn(move || {
                writeback_thread(wb, writeback_asked, &slot, &tracker, &confirm_failed)
            });
        }
        let writer = scope.spawn(|| a.run(records, spent));
        let (mut buffers, mut batches) = (Vec::new(), Vec::new());
        let mut batch = WriteBatch::default();
        let read_result = loop {
            if let Some(p) = &options.progress {
                p.set(reader.position());
            }
            while let Ok(s) = from_writer.try_recv() {
                match s {
                    Spent::Record(buf) => buffers.push(buf),
                    Spent::Batch(b) => batches.push(b),
                }
            }
            let (offset, length, data) = match reader.next_record() {
                Ok(Some(rec)) => match rec.kind {
                    RecordKind::Zero => (rec.offset, rec.length, Content::Zero),
                    RecordKind::Data { .. } if rec.length < OWN_BUFFER_MIN => {
                        let at = batch.bytes.len();
                        batch.bytes.extend_from_slice(rec.content);
                        (rec.offset, rec.length, Content::InBatch(at))
                    }
                    RecordKind::Data { .. } => (rec.offset, rec.length, Content::Own(Vec::new())),
                },
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let data = match data {
                Content::Own(_) => {
                    let mut buf = buffers.pop().unwrap_or_default();
                    reader.swap_content(&mut buf);
                    batch.weight += buf.len();
                    Content::Own(buf)
                }
                other => other,
            };
            batch.records.push(Verified {
                offset,
                length,
                data,
            });
            if batch.weight + batch.bytes.len() >= WRITE_BATCH_BYTES
                || batch.records.len() >= WRITE_BATCH_RECORDS
            {
                let mut next = batches.pop().unwrap_or_default();
                next.bytes.clear();
                next.weight = 0;
                if to_writer.send(std::mem::replace(&mut batch, next)).is_err() {
                    // The writer stopped on an error; it tells which.
                    break Ok(());
                }
            }
        };
        // The records verified before the end, or before damage, are
        // written.
        if !batch.records.is_empty() {
            let _ = to_writer.send(batch);
        }
        drop(to_writer);
        let write_result = writer.join().unwrap_or_else(|_| {
            Err(ApplyError::DestWrite {
                path: shown.clone(),
                offset: 0,
                source: io::Error::other("the writing thread stopped unexpectedly"),
                progress: Box::default(),
            })
        });
        (read_result, write_result)
    });
    // A write error comes first: it stopped the reading.
    if let Err(e) = write_result {
        return Err(a.fail(e));
    }
    if let Some(e) = a.confirm_failure() {
        return Err(a.fail(e));
    }
    if let Err(source) = read_result {
        // The records before the damage have been written.
        let err = ApplyError::Stream {
            delta: delta.into(),
            source,
            progress: Box::new(a.progress()),
        };
        return Err(a.fail(err));
    }
    if a.extend {
        if let Err(e) = a.extend_now() {
            return Err(a.fail(e));
        }
    }
    let Some(end) = reader.end().copied() else {
        // The reader ends without error only after the END record.
        return Err(a.fail(ApplyError::Stream {
            delta: delta.into(),
            source: StreamError::Truncated {
                at: reader.position(),
                context: "before its END record".into(),
            },
            progress: Box::new(a.progress()),
        }));
    };
    if let Some(f) = &options.finishing {
        f.store(true, Ordering::SeqCst);
    }
    // Cut only once the END record has been checked: a damaged delta
    // never shortens the copy.
    let mut truncated_from = None;
    let exact = header.properties.get(DEST_SIZE) == Some(&header.origin_size.to_string());
    if exact && !a.dest.is_block_device() && a.dest.size() > header.origin_size {
        let before = a.dest.size();
        a.dest
            .set_len(header.origin_size)
            .map_err(|source| ApplyError::DestTruncate {
                path: shown.clone(),
                size: header.origin_size,
                source,
            })?;
        truncated_from = Some(before);
    }
    // The snapback is complete and on disk before the copy is synced.
    let snapback = match a.snapback.take() {
        Some(snap) => {
            let path = snap.path.clone();
            match snap.finish() {
                Ok((totals, len)) => Some((path, totals, len)),
                Err(source) => {
                    let _ = a.dest.sync();
                    return Err(ApplyError::SnapbackWrite {
                        path: path.display().to_string(),
                        source,
                        progress: Box::new(Progress {
                            snapback: Some(format!("the snapback {} lacks its END record, but applying it restores every range it holds before it reports the truncation", path.display())),
                            ..a.progress()
                        }),
                    });
                }
            }
        }
        None => None,
    };
    a.dest.sync().map_err(|source| ApplyError::DestSync {
        path: shown.clone(),
        source,
    })?;
    if created {
        let _ = files::sync_parent(dest);
    }
    lock(&a.tracker).finish()?;
    Ok(Applied {
        header,
        totals: end.totals,
        data_records: a.data_records,
        zero_records: a.zero_records,
        stream_len: end.stream_len,
        digest: end.digest,
        dest: shown,
        dest_is_block_device: a.dest.is_block_device(),
        dest_size_before,
        extended: a.extended,
        truncated_from,
        snapback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_block_device_is_refused_and_a_small_file_extended() {
        let err = check_dest_size("/dev/vg/copy", true, 1 << 20, 2 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/vg/copy: the block device is 1048576 bytes, smaller than the origin (2097152 bytes); nothing was written"
        );
        assert!(!check_dest_size("/dev/vg/copy", true, 2 << 20, 2 << 20).unwrap());
        assert!(!check_dest_size("/dev/vg/copy", true, 3 << 20, 2 << 20).unwrap());
        assert!(check_dest_size("copy.img", false, 1 << 20, 2 << 20).unwrap());
        assert!(!check_dest_size("copy.img", false, 2 << 20, 2 << 20).unwrap());
    }

    /// A delta of an origin of `size` bytes whose first 4 KiB are 7s, with
    /// `properties`.
    fn small_delta(size: u64, properties: &[(&str, String)]) -> Vec<u8> {
        let header = Header {
            origin_size: size,
            chunk_size: 4096,
            source: SourceInfo {
                origin: Some("src.img".into()),
                ..SourceInfo::of_kind(SourceKind::Compare)
            },
            compression: Compression::None,
            tool: crate::TOOL.into(),
            base: None,
            target: None,
            resume_from: 0,
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        let mut w = Writer::new(Vec::new(), &header).unwrap();
        w.data(0, &[7u8; 4096]).unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn a_delta_with_the_dest_size_property_cuts_a_longer_file() {
        let dir = std::env::temp_dir().join(format!("lvmsync-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("copy.img");
        let size = 3 * 4096;
        for (props, want_len) in [
            (vec![(DEST_SIZE, size.to_string())], size),
            // Another value, or none: the tail stays.
            (vec![(DEST_SIZE, "5".to_string())], 5 * 4096),
            (vec![], 5 * 4096),
        ] {
            std::fs::write(&dest, vec![1u8; 5 * 4096]).unwrap();
            let delta = small_delta(size, &props);
            let s = apply(&delta[..], "delta", &dest, &Options::default()).unwrap();
            let got = std::fs::read(&dest).unwrap();
            assert_eq!(got.len() as u64, want_len, "{props:?}");
            assert!(got[..4096].iter().all(|&b| b == 7));
            assert!(got[4096..].iter().all(|&b| b == 1));
            assert_eq!(s.truncated_from.is_some(), want_len == size);
        }
        // A damaged delta cuts nothing.
        std::fs::write(&dest, vec![1u8; 5 * 4096]).unwrap();
        let mut delta = small_delta(size, &[(DEST_SIZE, size.to_string())]);
        let n = delta.len();
        delta[n - 10] ^= 1;
        assert!(apply(&delta[..], "delta", &dest, &Options::default()).is_err());
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), 5 * 4096);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn progress_says_how_far_it_got() {
        let mut p = Progress {
            dest: "copy.img".into(),
            ..Progress::default()
        };
        assert_eq!(p.to_string(), "nothing was written to copy.img");
        p.records = 3;
        p.bytes = 12288;
        assert!(p.to_string().starts_with(
            "3 records (12 KiB) were applied to copy.img before it, nothing from it on;"
        ));
    }
}
