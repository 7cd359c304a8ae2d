//! Sending: reading the data of each changed extent from the device or image
//! that holds the origin's new contents, and writing it as delta records.
//!
//! The data source is read piece by piece ([`READ_LEN`] at most), so memory
//! stays bounded whatever the size of the extents; pieces are read and
//! encoded on worker threads and written in order. Block devices are opened
//! with `O_DIRECT` (see [`crate::blockdev`]): each read covers the piece
//! rounded out to [`DIRECT_ALIGN`], into an aligned buffer, and the piece is
//! sliced out of it.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{mpsc, Mutex};

use thiserror::Error;

use crate::blockdev::{AlignedBuf, ReadAt, Source, DIRECT_ALIGN};
use crate::extents::Extent;
use crate::stream::{Encoded, Encoder, Writer, MAX_RECORD_LEN};

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
    /// Writing the delta failed (a closed pipe, a full disk).
    #[error("writing the delta: {0}")]
    Write(#[source] io::Error),
}

/// Refuses a data source smaller than the origin.
pub fn check_source_size(source: &Source, origin_size: u64) -> Result<(), SendError> {
    if source.size() < origin_size {
        return Err(SendError::SourceTooSmall {
            path: source.path().display().to_string(),
            size: source.size(),
            origin_size,
        });
    }
    Ok(())
}

/// Worker threads that read and encode, at most.
pub const MAX_WORKERS: usize = 4;

/// What to send: the extents whose new data is read from the data source,
/// and the extents known to read as zeroes now (a thin snapshot's blocks
/// that the compared device no longer maps), which become ZERO records
/// without a read. Each list is sorted and disjoint, and no extent of one
/// overlaps an extent of the other.
#[derive(Debug, Clone, Copy)]
pub struct Changes<'a> {
    pub read: &'a [Extent],
    pub zero: &'a [Extent],
}

impl<'a> Changes<'a> {
    /// Extents that are all read from the data source.
    pub fn read(extents: &'a [Extent]) -> Changes<'a> {
        Changes {
            read: extents,
            zero: &[],
        }
    }

    /// Bytes of the origin the changes cover.
    pub fn total_bytes(&self) -> u64 {
        self.read.iter().chain(self.zero).map(|e| e.length).sum()
    }

    /// Every extent with whether it is known zero, in offset order.
    pub fn in_order(&self) -> impl Iterator<Item = (Extent, bool)> + 'a {
        let (mut read, mut zero) = (self.read.iter().peekable(), self.zero.iter().peekable());
        std::iter::from_fn(move || match (read.peek(), zero.peek()) {
            (Some(r), Some(z)) if z.offset < r.offset => zero.next().map(|e| (*e, true)),
            (Some(_), _) => read.next().map(|e| (*e, false)),
            (None, _) => zero.next().map(|e| (*e, true)),
        })
    }
}

/// A piece of an extent, read and encoded as one job.
#[derive(Debug, Clone, Copy)]
struct Piece {
    seq: u64,
    offset: u64,
    length: u64,
    /// Known to read as zeroes: encoded as ZERO records without a read.
    zero: bool,
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

/// Writes the records of `extents` (sorted, disjoint), with their data read
/// from `source`.
///
/// Worker threads (one per core, at most [`MAX_WORKERS`]) each take a piece,
/// read it and encode its records (zero runs, checksums, compression); this
/// thread appends the encoded pieces to the stream in order. At most twice
/// as many pieces as workers are in flight, so memory stays bounded.
pub fn send_extents<W: Write>(
    source: &Source,
    extents: &[Extent],
    writer: &mut Writer<W>,
) -> Result<(), SendError> {
    send_changes(source, Changes::read(extents), writer, |_| {})
}

/// [`send_extents`], calling `progress` with the writer after each piece
/// is appended to the stream.
pub fn send_extents_with_progress<W: Write>(
    source: &Source,
    extents: &[Extent],
    writer: &mut Writer<W>,
    progress: impl FnMut(&Writer<W>),
) -> Result<(), SendError> {
    send_changes(source, Changes::read(extents), writer, progress)
}

/// Writes the records of `changes`: the extents to read with their data
/// from `source` (ZERO records where it reads as zeroes), and the extents
/// known to be zero as ZERO records, without reading them. Calls
/// `progress` with the writer after each piece is appended to the stream.
pub fn send_changes<W: Write>(
    source: &Source,
    changes: Changes<'_>,
    writer: &mut Writer<W>,
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
    let encoder = Encoder::new(writer.compression());
    let (job_tx, job_rx) = mpsc::channel::<(Piece, Encoded)>();
    let (done_tx, done_rx) = mpsc::channel::<(u64, Result<Encoded, SendError>)>();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (job_rx, done_tx) = (&job_rx, done_tx.clone());
            scope.spawn(move || {
                let mut buf = AlignedBuf::new(READ_LEN + 2 * DIRECT_ALIGN);
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((piece, mut out)) = job else { return };
                    out.clear();
                    let result = if piece.zero {
                        encoder
                            .zero(piece.offset, piece.length, &mut out)
                            .map_err(SendError::Write)
                            .map(|()| out)
                    } else {
                        read_piece(source, &mut buf, &piece).and_then(|content| {
                            encoder
                                .extent(piece.offset, content, &mut out)
                                .map_err(SendError::Write)
                                .map(|()| out)
                        })
                    };
                    if done_tx.send((piece.seq, result)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // Dropping job_tx on the way out, even on an error, ends the workers.
        let job_tx = job_tx;
        let mut todo = pieces(&changes)
            .enumerate()
            .map(|(seq, (offset, length, zero))| Piece {
                seq: seq as u64,
                offset,
                length,
                zero,
            });
        let mut spare: Vec<Encoded> = Vec::new();
        let mut ready: BTreeMap<u64, Encoded> = BTreeMap::new();
        let (mut sent, mut written) = (0u64, 0u64);
        loop {
            while sent < written + window {
                let Some(piece) = todo.next() else { break };
                let out = spare.pop().unwrap_or_default();
                if job_tx.send((piece, out)).is_err() {
                    break;
                }
                sent += 1;
            }
            if written == sent {
                return Ok(());
            }
            let Ok((seq, result)) = done_rx.recv() else {
                return Err(SendError::Write(io::Error::other(
                    "a worker thread stopped",
                )));
            };
            ready.insert(seq, result?);
            while let Some(out) = ready.remove(&written) {
                writer.append(&out).map_err(SendError::Write)?;
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
