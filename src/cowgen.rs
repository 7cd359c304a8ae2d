//! Builds persistent exception stores laid out as the kernel lays them out,
//! for tests and benchmarks: the header, metadata areas filled in commit
//! order, and the zeroed area that ends a table whose last area is full.
//!
//! Data chunks are left as holes (zeroes); only the table matters to a reader.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use byteorder::{ByteOrder, LittleEndian};

use crate::cow::{Header, Layout, SECTOR_SIZE, SNAPSHOT_DISK_VERSION, SNAP_MAGIC};

/// Where a generated store is written.
pub trait WriteAt {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the store exactly `len` bytes long.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl WriteAt for Vec<u8> {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = offset as usize;
        if self.len() < start + buf.len() {
            self.resize(start + buf.len(), 0);
        }
        self[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.resize(len as usize, 0);
        Ok(())
    }
}

impl WriteAt for File {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// Writes a store entry by entry, one metadata area at a time.
pub struct CowWriter<W: WriteAt> {
    out: W,
    layout: Layout,
    area: u64,
    entries: Vec<u8>,
    next_free: u64,
    /// Extra chunks of COW space after the last used one.
    pub spare_chunks: u64,
}

impl<W: WriteAt> CowWriter<W> {
    /// `chunk_size` in bytes, a power of two of at least 512.
    pub fn new(out: W, chunk_size: u64) -> CowWriter<W> {
        let layout = Layout::new(chunk_size);
        CowWriter {
            out,
            layout,
            area: 0,
            entries: Vec::with_capacity(chunk_size as usize),
            next_free: layout.area_chunk(0) + 1,
            spare_chunks: 0,
        }
    }

    /// Records that origin chunk `old_chunk` was copied to the next free COW chunk.
    pub fn push(&mut self, old_chunk: u64) -> io::Result<()> {
        let mut e = [0u8; 16];
        LittleEndian::write_u64(&mut e[0..8], old_chunk);
        LittleEndian::write_u64(&mut e[8..16], self.next_free);
        self.push_raw(&e)?;
        self.next_free += 1;
        if self.layout.is_metadata_chunk(self.next_free) {
            self.next_free += 1;
        }
        Ok(())
    }

    fn push_raw(&mut self, entry: &[u8; 16]) -> io::Result<()> {
        self.entries.extend_from_slice(entry);
        if self.entries.len() as u64 == self.layout.chunk_size {
            self.flush_area()?;
            self.area += 1;
        }
        Ok(())
    }

    fn flush_area(&mut self) -> io::Result<()> {
        let offset = self.layout.area_chunk(self.area) * self.layout.chunk_size;
        self.out.write_all_at(&self.entries, offset)?;
        self.entries.clear();
        Ok(())
    }

    /// Writes the header and the last area; returns the store.
    pub fn finish(mut self) -> io::Result<W> {
        let mut header = [0u8; 16];
        Header {
            magic: SNAP_MAGIC,
            valid: 1,
            version: SNAPSHOT_DISK_VERSION,
            chunk_sectors: (self.layout.chunk_size / SECTOR_SIZE) as u32,
        }
        .encode(&mut header);
        self.out.write_all_at(&header, 0)?;
        // The current area, possibly empty: its zeroes end the table.
        self.entries.resize(self.layout.chunk_size as usize, 0);
        self.flush_area()?;
        let end_chunk =
            self.next_free.max(self.layout.area_chunk(self.area) + 1) + self.spare_chunks;
        self.out.set_len(end_chunk * self.layout.chunk_size)?;
        Ok(self.out)
    }
}

/// An in-memory store, for tests.
pub struct CowImage {
    writer: CowWriter<Vec<u8>>,
}

impl CowImage {
    pub fn new(chunk_size: u64) -> CowImage {
        CowImage {
            writer: CowWriter::new(Vec::new(), chunk_size),
        }
    }

    pub fn push(&mut self, old_chunk: u64) {
        self.writer.push(old_chunk).expect("in-memory write");
    }

    pub fn to_vec(self) -> Vec<u8> {
        self.writer.finish().expect("in-memory write")
    }
}

/// A small, fast, reproducible pseudo-random generator (xorshift64) for test
/// data and benchmarks: the same seed always gives the same bytes.
pub struct Rng(pub u64);

impl Rng {
    /// The next value; the seed must not be 0.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `b` with pseudo-random bytes.
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}
