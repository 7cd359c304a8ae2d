//! Sending: what a delta is made of (the changes, the data source they are
//! read from, and the header that names them: source, base and target
//! points in time), and writing it: reading the data of each changed
//! extent from the device or image that holds the origin's new contents,
//! as delta records, to a file, stdout or any writer.
//!
//! The data source is read piece by piece ([`READ_LEN`] at most), so memory
//! stays bounded whatever the size of the extents; pieces are read and
//! encoded on worker threads and written in order. Block devices are opened
//! with `O_DIRECT` (see [`crate::blockdev`]): each read covers the piece
//! rounded out to [`DIRECT_ALIGN`], into an aligned buffer, and the piece is
//! sliced out of it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use thiserror::Error;

use crate::adapt::{Auto, Compress};
use crate::blockdev::{AlignedBuf, ReadAt, Source, DIRECT_ALIGN};
use crate::changes::{self, ChangeSet, ChangeSource, Changes, Listing};
use crate::extents::{Extent, ExtentSet};
use crate::files::{self, NewFile};
use crate::lvm;
use crate::progress::{Progress, Style};
use crate::stream::{
    Compression, Encoded, Encoder, Header, PointInTime, SourceInfo, SourceKind, ThinSource, Totals,
    Writer, MAX_GROUP_LEN, MAX_RECORD_LEN, RECORD_HEADER_LEN,
};
use crate::Error;

/// Bytes of the data source read at a time.
pub const READ_LEN: usize = MAX_RECORD_LEN as usize;

#[derive(Debug, Error)]
pub enum SendError {
    #[error("{path}: the data source is {size} bytes, smaller than the origin ({origin_size} bytes); it must be the origin, a later snapshot of it, or an image of either")]
    SourceTooSmall {
        path: String,
        size: u64,
        origin_size: u64,
    },
    #[error("{path}: read error at byte {offset}: {source}")]
    Read {
        path: String,
        offset: u64,
        source: io::Error,
    },
    #[error("the change table lists bytes {offset} to {end}, past the end of the data source ({size} bytes)")]
    ExtentPastSource { offset: u64, end: u64, size: u64 },
    #[error("{}: writing to it would destroy what is being copied; nothing was written", dest_is_input(.dest, .input))]
    DestIsInput { dest: String, input: String },
    /// Writing the delta failed (a closed pipe, a full disk).
    #[error("writing the delta: {0}")]
    Write(#[source] io::Error),
}

/// What a delta is made of: its header, the data source its records are
/// read from, and the changes to send.
#[derive(Debug)]
pub struct Delta {
    pub header: Header,
    pub source: Arc<Source>,
    pub changes: ChangeSet,
    /// The snapshot, image or device the changes come from, as messages
    /// name it.
    pub name: String,
    /// Every device or file the delta is read from or describes: its data
    /// source, and the snapshot, origin, COW device or metadata its changes
    /// come from. None of them may be the destination.
    pub inputs: Vec<PathBuf>,
    /// With `--compress auto`: what picks the level of each piece, and
    /// says afterwards what it chose.
    pub auto: Option<Arc<Auto>>,
}

impl Delta {
    /// The changes that `source` lists, with their data read from
    /// `data_source` (for a snapshot, its origin when none is given).
    pub fn of_changes(
        source: &ChangeSource,
        data_source: Option<&Path>,
        compression: Compression,
    ) -> Result<Delta, Error> {
        let (listing, data) = read_inputs(source, data_source)?;
        let origin_size = listing.origin_size().unwrap_or(data.size());
        check_source_size(&data, origin_size)?;
        let source_info = source_info(&listing, &data);
        // The delta applies to a copy of the origin as it was when the
        // snapshot was taken.
        let base = point_in_time(&source_info);
        let (table_key, table_path) = match &listing {
            Listing::Cow(l) => ("cow", l.cow_path.display().to_string()),
            Listing::Thin(l) => ("thin-metadata", l.metadata.display().to_string()),
        };
        let header = Header {
            origin_size,
            chunk_size: listing.chunk_size(),
            target: target_point_in_time(&listing, &source_info)
                .or_else(|| data_source.and_then(|p| later_snapshot(&source_info, p))),
            source: source_info,
            compression,
            tool: crate::TOOL.to_string(),
            base,
            resume_from: 0,
            properties: BTreeMap::from([
                (table_key.to_string(), table_path),
                ("data-source".to_string(), data.path().display().to_string()),
            ]),
        };
        let name = listing.name();
        let mut inputs = inputs_of(&listing);
        inputs.push(data.path().to_path_buf());
        Ok(Delta {
            header,
            source: Arc::new(data),
            changes: listing.into_change_set(),
            name,
            inputs,
            auto: None,
        })
    }

    /// A full copy of `source` (a seed): one extent over all of it, all-zero
    /// blocks becoming ZERO records as they are read. No base (it applies to
    /// any content) and no target (the caller sets one when it knows it).
    pub fn full_copy(source: Source, compression: Compression) -> Delta {
        let size = source.size();
        let path = source.path().display().to_string();
        let header = Header {
            origin_size: size,
            chunk_size: READ_LEN as u64,
            source: SourceInfo {
                origin: Some(path.clone()),
                ..SourceInfo::of_kind(SourceKind::Full)
            },
            compression,
            tool: crate::TOOL.to_string(),
            base: None,
            target: None,
            resume_from: 0,
            properties: BTreeMap::from([("data-source".to_string(), path.clone())]),
        };
        let extents = if size > 0 {
            vec![Extent {
                offset: 0,
                length: size,
            }]
        } else {
            Vec::new()
        };
        Delta {
            header,
            inputs: vec![source.path().to_path_buf()],
            source: Arc::new(source),
            changes: ChangeSet::read(ExtentSet::from_extents(extents)),
            name: path,
            auto: None,
        }
    }

    /// Compresses as `how` says: the header's codec, and for auto, a
    /// controller that picks the level as the delta is written.
    pub fn compress(&mut self, how: Compress) {
        self.header.compression = how.header();
        self.auto = how.controller();
    }

    /// What `--compress` asked, as the summary names it.
    pub fn compression_name(&self) -> String {
        match self.auto {
            Some(_) => "auto".into(),
            None => self.header.compression.to_string(),
        }
    }

    /// Refuses `dest` when it is one of the delta's inputs (the same file,
    /// or the same block device by another name).
    pub fn check_dest(&self, dest: &Path) -> Result<(), SendError> {
        let Ok(d) = fs::metadata(dest) else {
            // Not there yet: created by the apply.
            return Ok(());
        };
        for input in &self.inputs {
            if fs::metadata(input).is_ok_and(|i| same_file(&i, &d)) {
                return Err(SendError::DestIsInput {
                    dest: dest.display().to_string(),
                    input: input.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Makes the delta start at `offset`: the part of a transfer that the
    /// destination did not confirm.
    pub fn resume_from(&mut self, offset: u64) {
        self.header.resume_from = offset;
        self.changes = self.changes.from_offset(offset);
    }

    /// A stream writer on `out` that has written the delta's header.
    pub fn writer<W: Write>(&self, out: W) -> Result<Writer<W>, SendError> {
        Writer::new(out, &self.header).map_err(SendError::Write)
    }

    /// Writes the delta's records to `w` (made by [`Delta::writer`]),
    /// calling `progress` after each piece is appended; the caller ends
    /// the stream ([`Writer::finish`]).
    pub fn send<W: Write>(
        &self,
        w: &mut Writer<W>,
        progress: impl FnMut(&Writer<W>),
    ) -> Result<(), SendError> {
        send_changes(
            &self.source,
            self.changes.as_changes(),
            w,
            self.auto.as_deref(),
            progress,
        )
    }

    /// Writes the whole delta to `out`; returns the output, the totals and
    /// the delta's length.
    pub fn write_all<W: Write>(&self, out: W) -> Result<(W, Totals, u64), SendError> {
        self.write_all_shown(out, &Progress::hidden())
    }

    /// [`Delta::write_all`], telling `progress` the bytes of changed data
    /// written.
    pub fn write_all_shown<W: Write>(
        &self,
        out: W,
        progress: &Progress,
    ) -> Result<(W, Totals, u64), SendError> {
        progress.set_total(self.changes.as_changes().total_bytes());
        let mut w = self.writer(out)?;
        self.send(&mut w, |w| {
            let t = w.totals();
            progress.set(t.data_bytes + t.zero_bytes);
        })?;
        w.finish().map_err(SendError::Write)
    }
}

/// Whether two files are one: the same block device, or the same inode.
pub fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        a.file_type().is_block_device(),
        b.file_type().is_block_device(),
    ) {
        (true, true) => a.rdev() == b.rdev(),
        (false, false) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The devices and files a listing was read from or names.
fn inputs_of(listing: &Listing) -> Vec<PathBuf> {
    match listing {
        Listing::Cow(l) => {
            let mut paths = vec![l.cow_path.clone()];
            if let Some(snap) = &l.snapshot {
                paths.extend([
                    snap.device.path(),
                    snap.origin.path(),
                    lvm::origin_device(snap),
                ]);
            }
            paths
        }
        Listing::Thin(l) => {
            let mut paths = vec![l.metadata.clone()];
            if let Some(snap) = &l.snapshot {
                paths.extend([snap.snapshot.device.path(), snap.origin.device.path()]);
            }
            if let Some(c) = &l.compared {
                paths.push(c.device.path());
            }
            paths
        }
    }
}

/// The change table and the opened data source.
fn read_inputs(
    source: &ChangeSource,
    data_source: Option<&Path>,
) -> Result<(Listing, Source), Error> {
    if let ChangeSource::Snapshot(_) = source {
        let listing = changes::read(source, data_source)?;
        let path = match (data_source, &listing) {
            (Some(path), _) => path.to_path_buf(),
            (None, Listing::Cow(l)) => match &l.snapshot {
                Some(snap) => lvm::origin_device(snap),
                None => return Err(need_data_source()),
            },
            (None, Listing::Thin(l)) => match &l.snapshot {
                Some(snap) => snap.origin.device.path(),
                None => return Err(need_data_source()),
            },
        };
        let data = open_source(&path)?;
        return Ok((listing, data));
    }
    // An image of a table: the data source says how large the origin is.
    let Some(data_path) = data_source else {
        let what = match source {
            ChangeSource::ThinMetadata { .. } => "--thin-metadata",
            _ => "--cow",
        };
        return Err(Error::Usage(format!(
            "{what} needs --data-source PATH: the device or image holding the origin's new contents"
        )));
    };
    let data = open_source(data_path)?;
    let source = source.with_origin_size(data.size());
    if let Some(size) = match &source {
        ChangeSource::CowImage { origin_size, .. }
        | ChangeSource::ThinMetadata { origin_size, .. } => *origin_size,
        ChangeSource::Snapshot(_) => None,
    } {
        check_source_size(&data, size)?;
    }
    let listing = changes::read(&source, None)?;
    Ok((listing, data))
}

fn need_data_source() -> Error {
    Error::Usage(
        "give --data-source PATH: the device or image holding the origin's new contents".into(),
    )
}

fn open_source(path: &Path) -> Result<Source, Error> {
    Source::open(path).map_err(|source| Error::Open {
        path: path.display().to_string(),
        source,
    })
}

/// The point in time the data source froze, when it is a classic snapshot
/// of the same origin (a later one): applying the delta then brings a copy
/// to exactly that snapshot.
fn later_snapshot(s: &SourceInfo, data_source: &Path) -> Option<PointInTime> {
    if s.kind != SourceKind::Classic {
        return None;
    }
    let lv = lvm::lv_at(data_source)?;
    let same_origin = s.vg.as_deref() == Some(lv.vg_name.as_str())
        && s.origin.as_deref() == Some(lv.origin.as_str());
    (lv.is_classic_snapshot() && same_origin && !lv.lv_uuid.is_empty())
        .then(|| PointInTime {
            origin_uuid: s.origin_uuid.clone().unwrap_or_default(),
            snapshot_uuid: lv.lv_uuid.clone(),
            snapshot: lv.full_name(),
            time: lv.lv_time.clone(),
        })
        .filter(|p| !p.origin_uuid.is_empty())
}

/// The point in time a snapshot froze, when LVM names both volumes.
pub fn point_in_time(s: &SourceInfo) -> Option<PointInTime> {
    let vg = s.vg.as_deref()?;
    Some(PointInTime {
        origin_uuid: s.origin_uuid.clone()?,
        snapshot_uuid: s.snapshot_uuid.clone()?,
        snapshot: format!("{vg}/{}", s.snapshot.as_deref()?),
        time: s.snapshot_time.clone().unwrap_or_default(),
    })
}

/// The point in time the data source holds, when it is a later snapshot of
/// the same origin in the same thin pool (compared with the snapshot
/// directly): a copy holds exactly that snapshot once the delta is applied.
fn target_point_in_time(listing: &Listing, s: &SourceInfo) -> Option<PointInTime> {
    let Listing::Thin(l) = listing else {
        return None;
    };
    let later = l.compared.as_ref()?.lv.as_ref()?;
    let snap = l.snapshot.as_ref()?;
    // The origin itself is live, no point in time.
    if l.thin2 == snap.origin.thin_id || later.origin.is_empty() || later.lv_uuid.is_empty() {
        return None;
    }
    Some(PointInTime {
        origin_uuid: s.origin_uuid.clone()?,
        snapshot_uuid: later.lv_uuid.clone(),
        snapshot: later.full_name(),
        time: later.lv_time.clone(),
    })
}

/// What the header says of where the changes come from.
fn source_info(listing: &Listing, data: &Source) -> SourceInfo {
    let known = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match listing {
        Listing::Cow(l) => match &l.snapshot {
            Some(snap) => {
                let lv = snap.lv.as_ref();
                let origin_lv = lvm::origin_lv(snap);
                SourceInfo {
                    kind: SourceKind::Classic,
                    vg: lv.map(|lv| lv.vg_name.clone()),
                    snapshot: Some(
                        lv.map(|lv| lv.lv_name.clone())
                            .unwrap_or_else(|| snap.device.name.clone()),
                    ),
                    snapshot_uuid: lv.and_then(|lv| known(&lv.lv_uuid)),
                    snapshot_time: lv.and_then(|lv| known(&lv.lv_time)),
                    origin: lv
                        .and_then(|lv| known(&lv.origin))
                        .or_else(|| Some(snap.origin.name.clone())),
                    origin_uuid: origin_lv.and_then(|lv| known(&lv.lv_uuid)),
                    thin: None,
                }
            }
            None => SourceInfo {
                snapshot: Some(l.cow_path.display().to_string()),
                origin: Some(data.path().display().to_string()),
                ..SourceInfo::of_kind(SourceKind::Image)
            },
        },
        Listing::Thin(l) => {
            let snap = l.snapshot.as_ref();
            let lv = snap.and_then(|s| s.snapshot.lv.as_ref());
            let origin_lv = snap.and_then(|s| s.origin.lv.as_ref());
            let pool = snap.map(|s| &s.pool);
            SourceInfo {
                kind: SourceKind::Thin,
                vg: lv.map(|lv| lv.vg_name.clone()),
                snapshot: Some(match snap {
                    Some(s) => lv
                        .map(|lv| lv.lv_name.clone())
                        .unwrap_or_else(|| s.snapshot.device.name.clone()),
                    None => l.metadata.display().to_string(),
                }),
                snapshot_uuid: lv.and_then(|lv| known(&lv.lv_uuid)),
                snapshot_time: lv.and_then(|lv| known(&lv.lv_time)),
                origin: match snap {
                    Some(s) => Some(
                        origin_lv
                            .map(|lv| lv.lv_name.clone())
                            .unwrap_or_else(|| s.origin.device.name.clone()),
                    ),
                    None => Some(data.path().display().to_string()),
                },
                origin_uuid: origin_lv.and_then(|lv| known(&lv.lv_uuid)),
                thin: Some(ThinSource {
                    pool: pool
                        .map(|p| p.display_name())
                        .unwrap_or_else(|| l.metadata.display().to_string()),
                    pool_uuid: pool
                        .and_then(|p| p.lv.as_ref())
                        .and_then(|lv| known(&lv.lv_uuid)),
                    block_size: l.diff.block_size(),
                    snapshot_id: l.thin1,
                    compared_id: l.thin2,
                }),
            }
        }
    }
}

/// Where `send` writes a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub totals: Totals,
    /// The delta's length, END record included.
    pub length: u64,
    /// Where it went, as messages name it.
    pub to: String,
    /// With encryption: the envelope's length, which is what was written.
    pub sealed: Option<u64>,
}

/// Refuses to write a binary stream to a terminal.
pub fn refuse_terminal(stdout_is_terminal: bool) -> Result<(), Error> {
    if stdout_is_terminal {
        return Err(Error::Usage(
            "refusing to write a binary delta to a terminal: redirect it (-o - > FILE, or -o - | lvmsync-rs apply - DEST), or give -o FILE".into(),
        ));
    }
    Ok(())
}

/// Writes `delta` to `output`. A regular file is written under a
/// temporary name and renamed once complete and synced (see
/// [`files::NewFile`]), so FILE is never a partial delta; a FIFO or a
/// character device is written as it is.
///
/// With `seal`, the delta is written inside an encryption envelope
/// ([`crate::crypt`]).
pub fn write_delta(
    delta: &Delta,
    output: &Output,
    progress: Style,
    seal: Option<&crate::crypt::Stream>,
) -> Result<Written, Error> {
    let progress = Progress::new(progress, "send", "writing", 0);
    match output {
        Output::Stdout => {
            refuse_terminal(io::stdout().is_terminal())?;
            files::grow_pipe(io::stdout());
            let out = BufWriter::with_capacity(256 << 10, io::stdout().lock());
            let (_, totals, length, sealed) =
                write_sealed(delta, out, &progress, seal).map_err(|e| match e {
                    SendError::Write(source) => Error::Output(source),
                    other => other.into(),
                })?;
            Ok(Written {
                totals,
                length,
                to: "stdout".into(),
                sealed,
            })
        }
        Output::File(path) => {
            let shown = path.display().to_string();
            let write_err = |source| Error::Write {
                path: shown.clone(),
                source,
            };
            let create_err = |source| Error::Create {
                path: shown.clone(),
                source,
            };
            let (totals, length, sealed) = match fs::metadata(path) {
                Ok(m) if m.is_dir() => return Err(create_err(io::Error::other("is a directory"))),
                Ok(m) if m.file_type().is_block_device() => {
                    return Err(create_err(io::Error::other(
                        "is a block device; a delta is written to a file or a pipe (to write it onto a copy, use apply)",
                    )))
                }
                Ok(m) if !m.is_file() => {
                    let file = fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(create_err)?;
                    let (_, totals, length, sealed) = write_sealed(
                        delta,
                        BufWriter::with_capacity(256 << 10, file),
                        &progress,
                        seal,
                    )
                    .map_err(|e| file_error(e, &write_err))?;
                    (totals, length, sealed)
                }
                _ => {
                    let file = NewFile::create(path, 0o644).map_err(create_err)?;
                    let (out, totals, length, sealed) = write_sealed(
                        delta,
                        BufWriter::with_capacity(256 << 10, file),
                        &progress,
                        seal,
                    )
                    .map_err(|e| file_error(e, &write_err))?;
                    let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
                    file.commit().map_err(write_err)?;
                    (totals, length, sealed)
                }
            };
            Ok(Written {
                totals,
                length,
                to: shown,
                sealed,
            })
        }
    }
}

/// Writes the whole delta to `out`, sealed in an envelope of `seal`'s
/// stream when given: the output, the totals, the delta's length and the
/// envelope's.
fn write_sealed<W: Write>(
    delta: &Delta,
    out: W,
    progress: &Progress,
    seal: Option<&crate::crypt::Stream>,
) -> Result<(W, Totals, u64, Option<u64>), SendError> {
    let Some(stream) = seal else {
        let (out, totals, length) = delta.write_all_shown(out, progress)?;
        return Ok((out, totals, length, None));
    };
    let sealer = crate::crypt::SealWriter::new(out, stream.clone()).map_err(SendError::Write)?;
    let (sealer, totals, length) = delta.write_all_shown(sealer, progress)?;
    let (out, sealed) = sealer.finish().map_err(SendError::Write)?;
    Ok((out, totals, length, Some(sealed)))
}

fn file_error(e: SendError, write_err: &impl Fn(io::Error) -> Error) -> Error {
    match e {
        SendError::Write(source) => write_err(source),
        other => other.into(),
    }
}

/// `DEST is INPUT, which this delta reads ...`, without saying a name twice.
fn dest_is_input(dest: &str, input: &str) -> String {
    let what = "the snapshot, its origin, its COW device or metadata, or the data source";
    if dest == input {
        format!("{dest}: this delta is read from it ({what})")
    } else {
        format!("{dest} is {input}, which this delta is read from ({what})")
    }
}

/// Refuses a data source smaller than the origin.
fn check_source_size(source: &Source, origin_size: u64) -> Result<(), SendError> {
    if source.size() < origin_size {
        return Err(SendError::SourceTooSmall {
            path: source.path().display().to_string(),
            size: source.size(),
            origin_size,
        });
    }
    Ok(())
}

/// How much changed data past the pieces being read the kernel is asked
/// to read ahead, in bytes.
const READAHEAD: u64 = 16 << 20;

/// How a worker encoded a piece, for `--compress auto`: at which level,
/// how many bytes of data (0 for none: zeroes), in how many seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Encoding {
    level: Option<i32>,
    input: u64,
    secs: f64,
}

/// Worker threads that read and encode, at most.
pub const MAX_WORKERS: usize = 4;

/// A piece of an extent, read and encoded in one go.
#[derive(Debug, Clone, Copy)]
struct Piece {
    offset: u64,
    length: u64,
    /// Known to read as zeroes: encoded as ZERO records without a read.
    zero: bool,
}

/// Consecutive pieces handed to a worker as one job, so that small
/// extents do not cost a hand-over between threads each: at most
/// [`READ_LEN`] bytes of data to read and [`BATCH_PIECES`] pieces; with
/// groups, as many as one GROUP holds ([`MAX_GROUP_LEN`] bytes of raw
/// records), since the more records a frame holds, the more of what they
/// share it finds: 4 MiB write about 4% fewer bytes than 1 MiB on the
/// files' bytes of the codecs bench, at zstd:3 (7% at zstd:9).
#[derive(Debug, Default)]
struct Batch {
    seq: u64,
    pieces: Vec<Piece>,
}

/// Pieces in a batch, at most.
const BATCH_PIECES: usize = 256;

/// With groups, the raw records the batch numbered `seq` may hold: 256
/// KiB for the first, doubling up to [`MAX_GROUP_LEN`] from the fifth.
/// The first records go out after a few milliseconds rather than after
/// the 25 or so that compressing a whole GROUP takes, when a slow link
/// would wait for them; the first 4 MiB of data lose a little of what
/// the larger frames would find.
fn group_len(seq: u64) -> u64 {
    u64::from(MAX_GROUP_LEN) >> 4u64.saturating_sub(seq)
}

/// The pieces of `changes`, in offset order, none longer than [`READ_LEN`].
fn pieces<'a>(changes: &Changes<'a>) -> impl Iterator<Item = (u64, u64, bool)> + 'a {
    changes.in_order().flat_map(|(e, zero)| {
        let end = e.offset.saturating_add(e.length);
        (e.offset..end)
            .step_by(READ_LEN)
            .map(move |o| (o, (end - o).min(READ_LEN as u64), zero))
    })
}

/// Reads `piece` from `source` into `buf` (rounded out to [`DIRECT_ALIGN`]
/// for `O_DIRECT`) and returns its bytes.
fn read_piece<'a>(
    source: &Source,
    buf: &'a mut AlignedBuf,
    piece: &Piece,
) -> Result<&'a [u8], SendError> {
    let align = DIRECT_ALIGN as u64;
    let (offset, end) = (piece.offset, piece.offset + piece.length);
    let start = offset - offset % align;
    let stop = end.div_ceil(align).saturating_mul(align).min(source.size());
    let window = &mut buf[..(stop - start) as usize];
    source
        .read_exact_at(window, start)
        .map_err(|e| SendError::Read {
            path: source.path().display().to_string(),
            offset: start,
            source: e,
        })?;
    Ok(&window[(offset - start) as usize..(end - start) as usize])
}

/// What a worker encodes with.
struct WorkerEncoder {
    encoder: Encoder,
    /// With groups: the batch's records, raw, before they are grouped.
    grouping: Option<(Encoder, Encoded)>,
}

/// Reads and encodes the pieces of `batch` into `out`, in order; with
/// `timed` (`--compress auto`), adds to `how` the data encoded and the time
/// it took. With groups, a batch of several pieces is encoded raw and then
/// grouped (see [`Encoder::group`]).
fn encode_batch(
    source: &Source,
    batch: &Batch,
    with: &mut WorkerEncoder,
    buf: &mut AlignedBuf,
    out: &mut Encoded,
    timed: bool,
    how: &mut Encoding,
) -> Result<(), SendError> {
    let encoder = &mut with.encoder;
    if timed {
        encoder
            .set_zstd_level(how.level)
            .map_err(SendError::Write)?;
    }
    if let (Some((raw_encoder, raw)), true) = (&mut with.grouping, batch.pieces.len() > 1) {
        raw.clear();
        // Reads are not counted in the time (as below).
        let mut secs = 0.0;
        for piece in &batch.pieces {
            if piece.zero {
                raw_encoder
                    .zero(piece.offset, piece.length, raw)
                    .map_err(SendError::Write)?;
                continue;
            }
            let content = read_piece(source, buf, piece)?;
            let started = Instant::now();
            raw_encoder
                .extent(piece.offset, content, raw)
                .map_err(SendError::Write)?;
            secs += started.elapsed().as_secs_f64();
            how.input += content.len() as u64;
        }
        let started = Instant::now();
        encoder.group(raw, out).map_err(SendError::Write)?;
        how.secs += secs + started.elapsed().as_secs_f64();
        return Ok(());
    }
    for piece in &batch.pieces {
        if piece.zero {
            encoder
                .zero(piece.offset, piece.length, out)
                .map_err(SendError::Write)?;
            continue;
        }
        let content = read_piece(source, buf, piece)?;
        let started = timed.then(Instant::now);
        encoder
            .extent(piece.offset, content, out)
            .map_err(SendError::Write)?;
        if let Some(started) = started {
            how.input += content.len() as u64;
            how.secs += started.elapsed().as_secs_f64();
        }
    }
    Ok(())
}

/// Writes the records of `changes`: the extents to read with their data
/// from `source` (ZERO records where it reads as zeroes), and the extents
/// known to be zero as ZERO records, without reading them. Calls
/// `progress` with the writer after each piece is appended to the stream.
fn send_changes<W: Write>(
    source: &Source,
    changes: Changes<'_>,
    writer: &mut Writer<W>,
    auto: Option<&Auto>,
    mut progress: impl FnMut(&Writer<W>),
) -> Result<(), SendError> {
    for e in changes.read.iter().chain(changes.zero) {
        let end = e.offset.saturating_add(e.length);
        if end > source.size() {
            return Err(SendError::ExtentPastSource {
                offset: e.offset,
                end,
                size: source.size(),
            });
        }
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WORKERS);
    let window = 2 * workers as u64;
    let compression = writer.compression();
    let group = writer.may_group();
    let (job_tx, job_rx) = mpsc::channel::<(Batch, Encoded)>();
    let (done_tx, done_rx) = mpsc::channel::<(u64, Result<Encoded, SendError>, Encoding)>();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (job_rx, done_tx) = (&job_rx, done_tx.clone());
            scope.spawn(move || {
                let mut buf = AlignedBuf::new(READ_LEN + 2 * DIRECT_ALIGN);
                // One per thread: a zstd context serves all its pieces.
                let mut with = WorkerEncoder {
                    encoder: Encoder::new(compression),
                    grouping: group.then(|| (Encoder::new(Compression::None), Encoded::new())),
                };
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((batch, mut out)) = job else { return };
                    out.clear();
                    let mut how = Encoding::default();
                    if let Some(auto) = auto {
                        how.level = auto.level();
                    }
                    let result = encode_batch(
                        source,
                        &batch,
                        &mut with,
                        &mut buf,
                        &mut out,
                        auto.is_some(),
                        &mut how,
                    )
                    .map(|()| out);
                    if done_tx.send((batch.seq, result, how)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // Dropping job_tx on the way out, even on an error, ends the workers.
        let job_tx = job_tx;
        let mut todo = pieces(&changes)
            .map(|(offset, length, zero)| Piece {
                offset,
                length,
                zero,
            })
            .peekable();
        // Readahead across extents: the kernel is told of the pieces whose
        // data comes up to READAHEAD bytes after the pieces handed to the
        // workers, so that the disk has many reads queued instead of one
        // per worker.
        let mut hints = pieces(&changes).filter(|&(_, _, zero)| !zero);
        let (mut handed, mut hinted) = (0u64, 0u64);
        let mut hint_ahead = |length: u64| {
            handed += length;
            while hinted < handed.saturating_add(READAHEAD) {
                let Some((offset, length, _)) = hints.next() else {
                    hinted = u64::MAX;
                    break;
                };
                source.advise_willneed(offset, length);
                hinted += length;
            }
        };
        let mut spare: Vec<Encoded> = Vec::new();
        let mut ready: BTreeMap<u64, (Encoded, Encoding)> = BTreeMap::new();
        let (mut sent, mut written) = (0u64, 0u64);
        // Seconds spent flushing the output since the last records.
        let mut flushing = 0.0;
        loop {
            while sent < written + window {
                let mut batch = Batch {
                    seq: sent,
                    pieces: Vec::new(),
                };
                let (mut data, mut records) = (0u64, 0u64);
                let group_len = group_len(sent);
                while let Some(piece) = todo.next_if(|p| {
                    batch.pieces.is_empty()
                        || if group {
                            records + RECORD_HEADER_LEN as u64 + if p.zero { 0 } else { p.length }
                                <= group_len
                        } else {
                            batch.pieces.len() < BATCH_PIECES
                                && (p.zero || data + p.length <= READ_LEN as u64)
                        }
                }) {
                    if !piece.zero {
                        data += piece.length;
                    }
                    records += RECORD_HEADER_LEN as u64 + if piece.zero { 0 } else { piece.length };
                    batch.pieces.push(piece);
                }
                if batch.pieces.is_empty() {
                    break;
                }
                let out = spare.pop().unwrap_or_default();
                if job_tx.send((batch, out)).is_err() {
                    break;
                }
                // Once the batch is out: the first hints are many.
                hint_ahead(data);
                sent += 1;
            }
            if written == sent {
                return Ok(());
            }
            // Before waiting for the workers, what is buffered goes out:
            // a slow link would otherwise wait for it too, at the start
            // (the first records fill no buffer) and whenever the
            // encoders are behind.
            let done = match done_rx.try_recv() {
                Err(mpsc::TryRecvError::Empty) => {
                    let started = Instant::now();
                    writer.flush().map_err(SendError::Write)?;
                    // The sink's time, counted with the next records.
                    flushing += started.elapsed().as_secs_f64();
                    done_rx.recv().ok()
                }
                done => done.ok(),
            };
            let Some((seq, result, how)) = done else {
                return Err(SendError::Write(io::Error::other(
                    "a worker thread stopped",
                )));
            };
            ready.insert(seq, (result?, how));
            while let Some((out, how)) = ready.remove(&written) {
                let started = Instant::now();
                writer.append(&out).map_err(SendError::Write)?;
                if let (Some(auto), true) = (auto, how.input > 0) {
                    let sink = started.elapsed().as_secs_f64() + std::mem::take(&mut flushing);
                    let bytes = out.as_bytes().len() as u64;
                    auto.piece(how.level, how.input, bytes, how.secs, sink, workers);
                }
                progress(writer);
                spare.push(out);
                written += 1;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{Compression, Header, Reader, RecordKind, SourceInfo, SourceKind};

    fn e(offset: u64, length: u64) -> Extent {
        Extent { offset, length }
    }

    #[test]
    fn groups_start_small_and_grow_to_the_most_a_group_holds() {
        assert_eq!(group_len(0), 256 << 10);
        assert_eq!(group_len(1), 512 << 10);
        assert_eq!(group_len(4), u64::from(MAX_GROUP_LEN));
        assert_eq!(group_len(40), u64::from(MAX_GROUP_LEN));
        // 24 MiB of words, changed in extents of 8 KiB every 16 KiB.
        let size = 24u64 << 20;
        let path = std::env::temp_dir().join(format!("lvmsync-send-ramp-{}", std::process::id()));
        let words: Vec<u8> = (0..size)
            .map(|i| {
                b"the quick brown fox jumps over a lazy dog "[(i % 41) as usize] ^ (i / 4096) as u8
            })
            .collect();
        std::fs::write(&path, &words).unwrap();
        let source = Source::open(&path).unwrap();
        let header = Header {
            origin_size: size,
            chunk_size: 8192,
            source: SourceInfo::of_kind(SourceKind::Thin),
            compression: Compression::ZSTD,
            tool: crate::TOOL.into(),
            base: None,
            target: None,
            resume_from: 0,
            properties: Default::default(),
        };
        let read: Vec<Extent> = (0..size / 16384).map(|i| e(i * 16384, 8192)).collect();
        let mut w = Writer::new(Vec::new(), &header).unwrap();
        send_changes(
            &source,
            Changes {
                read: &read,
                zero: &[],
            },
            &mut w,
            None,
            |_| {},
        )
        .unwrap();
        let (bytes, _, _) = w.finish().unwrap();
        std::fs::remove_file(&path).unwrap();
        // The raw bytes of each GROUP's records, in order.
        let mut r = Reader::open(&bytes[..]).unwrap();
        let mut groups: Vec<(u64, u64)> = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            assert!(rec.grouped, "record at {} is not in a GROUP", rec.offset);
            let raw = RECORD_HEADER_LEN as u64 + rec.length;
            match groups.last_mut() {
                Some((at, len)) if *at == rec.at => *len += raw,
                _ => groups.push((rec.at, raw)),
            }
        }
        let lens: Vec<u64> = groups.iter().map(|g| g.1).collect();
        for (i, len) in lens.iter().enumerate() {
            assert!(*len <= group_len(i as u64), "GROUP {i}: {lens:?}");
        }
        assert!(lens[0] > group_len(0) / 2, "{lens:?}");
        assert!(lens[5] > u64::from(MAX_GROUP_LEN) / 2, "{lens:?}");
    }

    #[test]
    fn known_zero_extents_become_zero_records_without_a_read() {
        // A data source with no zero byte: any ZERO record comes from the
        // known-zero list, not from the data read.
        let size = 4u64 << 20;
        let path = std::env::temp_dir().join(format!("lvmsync-send-zero-{}", std::process::id()));
        std::fs::write(&path, vec![0xa5u8; size as usize]).unwrap();
        let source = Source::open(&path).unwrap();
        let header = Header {
            origin_size: size,
            chunk_size: 65536,
            source: SourceInfo::of_kind(SourceKind::Thin),
            compression: Compression::None,
            tool: crate::TOOL.into(),
            base: None,
            target: None,
            resume_from: 0,
            properties: Default::default(),
        };
        let read = [e(0, 65536), e(3 << 20, 1 << 20)];
        let zero = [e(65536, 65536), e(1 << 20, (3 << 20) / 2)];
        let mut w = Writer::new(Vec::new(), &header).unwrap();
        send_changes(
            &source,
            Changes {
                read: &read,
                zero: &zero,
            },
            &mut w,
            None,
            |_| {},
        )
        .unwrap();
        let (bytes, totals, _) = w.finish().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(totals.zero_bytes, 65536 + (3 << 20) / 2);
        assert_eq!(totals.data_bytes, 65536 + (1 << 20));
        let mut r = Reader::open(&bytes[..]).unwrap();
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push((rec.offset, rec.length, rec.kind == RecordKind::Zero));
        }
        assert_eq!(
            got,
            vec![
                (0, 65536, false),
                (65536, 65536, true),
                (1 << 20, 1 << 20, true),
                (2 << 20, (1 << 20) / 2, true),
                (3 << 20, 1 << 20, false),
            ]
        );
    }
}
