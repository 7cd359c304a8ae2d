//! Hashing one copy: [`HashStream`] reads it in large sequential reads
//! ([`READ_LEN`] each for a file, [`READ_LEN_DIRECT`] with `O_DIRECT` for a
//! block device, see [`crate::blockdev`]) into a few buffers, one after the
//! other; worker threads hash the blocks of a filled buffer with XXH3-128
//! and hand it back; the hashes come out in order, one batch per buffer.
//! Memory is bounded: a fixed number of buffers, and a bounded queue of
//! finished batches. Hashes cross the wire as [`HASH_LEN`] bytes each,
//! little-endian.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{mpsc, Arc, Mutex};

use xxhash_rust::xxh3::xxh3_128;

use super::VerifyError;
use crate::blockdev::{AlignedBuf, ReadAt, Source, DIRECT_ALIGN};

/// Bytes of one block hash on the wire.
pub const HASH_LEN: usize = 16;
/// Bytes read at a time from a file (a whole number of blocks, at least
/// one): the page cache copies them into the buffer, and a buffer this
/// small is still in the CPU's caches when it is hashed. The kernel's
/// readahead keeps the disk busy between reads.
pub const READ_LEN: u64 = 1 << 20;
/// Bytes read at a time from a block device, with `O_DIRECT`: no copy and
/// no readahead, so large reads keep the device busy.
pub const READ_LEN_DIRECT: u64 = 8 << 20;
/// Hashing threads per side, at most.
pub const MAX_WORKERS: usize = 4;

/// The number of blocks of `block_size` in `length` bytes, the last one
/// perhaps partial.
pub fn blocks_in(length: u64, block_size: u64) -> u64 {
    length.div_ceil(block_size)
}

/// Bytes of one read buffer for `block_size`: a whole number of blocks.
fn chunk_len(block_size: u64, direct: bool) -> u64 {
    let read = if direct { READ_LEN_DIRECT } else { READ_LEN };
    block_size * (read / block_size).max(1)
}

/// The hashes of `blocks`, as they go on the wire.
pub fn encode_hashes(hashes: &[u128], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(hashes.len() * HASH_LEN);
    for h in hashes {
        out.extend_from_slice(&h.to_le_bytes());
    }
}

/// Hashes read off the wire.
pub fn decode_hashes(bytes: &[u8]) -> Vec<u128> {
    bytes
        .chunks_exact(HASH_LEN)
        .map(|c| u128::from_le_bytes(c.try_into().expect("HASH_LEN bytes")))
        .collect()
}

/// What the worker threads hand back: a batch number and its hashes.
type Done = (u64, Result<Vec<u128>, VerifyError>);

/// The block hashes of the first `length` bytes of a source, computed on
/// threads of their own, coming out in order one batch (one read buffer)
/// at a time. Dropping it stops the threads.
pub struct HashStream {
    done: mpsc::Receiver<Done>,
    ready: BTreeMap<u64, Result<Vec<u128>, VerifyError>>,
    next: u64,
    batches: u64,
    path: String,
}

impl HashStream {
    /// Starts reading and hashing `length` bytes of `source` (no more than
    /// its size) in blocks of `block_size`.
    pub fn spawn(source: Arc<Source>, length: u64, block_size: u64) -> HashStream {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_WORKERS);
        HashStream::spawn_with(source, length, block_size, workers)
    }

    /// [`HashStream::spawn`] with `workers` hashing threads.
    fn spawn_with(source: Arc<Source>, length: u64, block_size: u64, workers: usize) -> HashStream {
        let length = length.min(source.size());
        let chunk = chunk_len(block_size, source.is_block_device());
        let batches = length.div_ceil(chunk);
        let buffers = workers + 2;
        let path = source.path().display().to_string();
        let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
        for _ in 0..buffers.min(batches as usize) {
            let _ = free_tx.send(AlignedBuf::new(chunk as usize + DIRECT_ALIGN));
        }
        let (job_tx, job_rx) = mpsc::channel::<(u64, AlignedBuf, usize)>();
        let (done_tx, done) = mpsc::sync_channel::<Done>(buffers);
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..workers.min(batches.max(1) as usize) {
            let (job_rx, free_tx, done_tx) = (job_rx.clone(), free_tx.clone(), done_tx.clone());
            std::thread::spawn(move || loop {
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((seq, buf, len)) = job else { return };
                let hashes: Vec<u128> = buf[..len]
                    .chunks(block_size as usize)
                    .map(xxh3_128)
                    .collect();
                let _ = free_tx.send(buf);
                if done_tx.send((seq, Ok(hashes))).is_err() {
                    return;
                }
            });
        }
        drop(free_tx);
        let reader_path = path.clone();
        std::thread::spawn(move || {
            for seq in 0..batches {
                let Ok(mut buf) = free_rx.recv() else { return };
                let offset = seq * chunk;
                let len = (length - offset).min(chunk);
                // O_DIRECT wants whole aligned blocks: read up to the next
                // alignment (within the source) and hash what was asked.
                let want = len
                    .div_ceil(DIRECT_ALIGN as u64)
                    .saturating_mul(DIRECT_ALIGN as u64)
                    .min(source.size() - offset);
                if let Err(e) = source.read_exact_at(&mut buf[..want as usize], offset) {
                    let _ = done_tx.send((
                        seq,
                        Err(VerifyError::Read {
                            path: reader_path,
                            offset,
                            source: e,
                        }),
                    ));
                    return;
                }
                if job_tx.send((seq, buf, len as usize)).is_err() {
                    return;
                }
            }
        });
        HashStream {
            done,
            ready: BTreeMap::new(),
            next: 0,
            batches,
            path,
        }
    }
}

impl Iterator for HashStream {
    type Item = Result<Vec<u128>, VerifyError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.batches {
            return None;
        }
        loop {
            if let Some(batch) = self.ready.remove(&self.next) {
                self.next += 1;
                if batch.is_err() {
                    // Nothing comes after an error.
                    self.batches = self.next;
                }
                return Some(batch);
            }
            match self.done.recv() {
                Ok((seq, batch)) => {
                    self.ready.insert(seq, batch);
                }
                Err(_) => {
                    self.batches = self.next;
                    return Some(Err(VerifyError::Stopped {
                        path: self.path.clone(),
                    }));
                }
            }
        }
    }
}

/// A [`HashStream`] read a given number of hashes at a time, whatever its
/// batches: the two sides of a comparison may read in buffers of different
/// sizes (a file and a block device).
pub struct Hashes {
    stream: HashStream,
    pending: VecDeque<u128>,
}

impl Hashes {
    pub fn new(stream: HashStream) -> Hashes {
        Hashes {
            stream,
            pending: VecDeque::new(),
        }
    }

    /// The source's path, for messages.
    pub fn path(&self) -> &str {
        &self.stream.path
    }

    /// The next `n` hashes; an error when the stream fails or ends first.
    pub fn take(&mut self, n: usize) -> Result<Vec<u128>, VerifyError> {
        while self.pending.len() < n {
            match self.stream.next() {
                Some(batch) => self.pending.extend(batch?),
                None => {
                    return Err(VerifyError::Stopped {
                        path: self.stream.path.clone(),
                    })
                }
            }
        }
        Ok(self.pending.drain(..n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_read_back() {
        let h = [1u128, u128::MAX, 0x0123_4567_89ab_cdef_0011_2233_4455_6677];
        let mut out = Vec::new();
        encode_hashes(&h, &mut out);
        assert_eq!(out.len(), 3 * HASH_LEN);
        assert_eq!(decode_hashes(&out), h);
    }

    #[test]
    fn a_stream_hashes_every_block_in_order() {
        let dir = std::env::temp_dir().join(format!("lvmsync-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.img");
        // Several read buffers, and a partial last block.
        let len = 3 * READ_LEN_DIRECT as usize + 5000;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 / 4096) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let source = Arc::new(Source::open(&path).unwrap());
        for (length, bs, workers) in [(len as u64, 1 << 20, 3), (len as u64 - 7000, 4096, 1)] {
            let got: Vec<u128> = HashStream::spawn_with(source.clone(), length, bs, workers)
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
                .concat();
            let want: Vec<u128> = data[..length as usize]
                .chunks(bs as usize)
                .map(xxh3_128)
                .collect();
            assert_eq!(got.len() as u64, blocks_in(length, bs));
            assert!(got == want, "hashes of {length} bytes in blocks of {bs}");
        }
        // Taken in counts that cut across its batches.
        let mut h = Hashes::new(HashStream::spawn(source.clone(), len as u64, 4096));
        let mut got = Vec::new();
        for n in [1, 300, 255, 1000] {
            got.extend(h.take(n).unwrap());
        }
        let want: Vec<u128> = data.chunks(4096).take(got.len()).map(xxh3_128).collect();
        assert!(got == want);
        assert!(matches!(
            h.take(blocks_in(len as u64, 4096) as usize),
            Err(VerifyError::Stopped { .. })
        ));
        assert_eq!(HashStream::spawn(source, 0, 4096).count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
