//! The kernel's persistent exception store: the COW device of a classic
//! (dm-snapshot) snapshot, and the table of chunks it records as changed.
//!
//! Layout (Linux `drivers/md/dm-snap-persistent.c`), all little-endian:
//!
//! ```text
//! chunk 0        header: le32 magic 0x70416e53 ("SnAp"), le32 valid (1, or 0
//!                once the kernel invalidated the snapshot), le32 version (1),
//!                le32 chunk_size in 512-byte sectors. The rest is zero.
//! chunk 1        metadata area 0: exceptions_per_area = chunk_size / 16
//!                entries of { le64 old_chunk, le64 new_chunk }
//! chunks 2..     the data chunks of area 0's exceptions
//! chunk 1+(epa+1)*a   metadata area a, and so on
//! ```
//!
//! `old_chunk` is the chunk index on the origin, `new_chunk` the COW chunk
//! holding the data as it was when the snapshot was taken. The table ends at
//! the first entry whose `new_chunk` is 0; a full area continues in the next
//! one. Entries are in the order they were committed: neither `old_chunk` nor
//! (after a crash) `new_chunk` is ordered, and a chunk may appear twice.
//! Entries cover writes to the origin and writes to the snapshot itself.

use std::io;

use byteorder::{ByteOrder, LittleEndian};
use thiserror::Error;

use crate::blockdev::{AlignedBuf, ReadAt};
use crate::extents::{ChunkCollector, ExtentSet};

/// `SnAp`, read as a little-endian u32.
pub const SNAP_MAGIC: u32 = 0x7041_6e53;
/// The only on-disk version the kernel has ever written.
pub const SNAPSHOT_DISK_VERSION: u32 = 1;
pub const SECTOR_SIZE: u64 = 512;
/// Bytes per table entry.
pub const EXCEPTION_SIZE: u64 = 16;
/// Chunk sizes accepted from a header, in bytes. lvm2 makes 4 KiB to 512 KiB;
/// the kernel accepts any power of two from one sector.
pub const MIN_CHUNK_SIZE: u64 = SECTOR_SIZE;
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// What can be wrong with a COW device or image.
#[derive(Debug, Error)]
pub enum CowError {
    #[error(
        "not a snapshot exception store: bad magic 0x{found:08x} (expected 0x70416e53, \"SnAp\")"
    )]
    BadMagic { found: u32 },
    #[error("unsupported exception store version {0} (only version 1 is known)")]
    UnsupportedVersion(u32),
    #[error("the snapshot is invalid: the kernel invalidated it (its COW space ran out, or an I/O error), so its changes can no longer be listed; take a new snapshot and copy the whole volume")]
    Invalidated,
    #[error("bad chunk size in header: {sectors} sectors (must be a power of two from 1 to 2097152 sectors)")]
    BadChunkSize { sectors: u32 },
    #[error("truncated: the store is {size} bytes but its {what} needs bytes up to {needed}")]
    Truncated {
        what: String,
        needed: u64,
        size: u64,
    },
    #[error("corrupt table: metadata area {area} entry {index} points at COW chunk {new_chunk}, past the end of the COW device ({})", crate::units::counted(*.cow_chunks, "chunk"))]
    EntryPastCow {
        area: u64,
        index: u64,
        new_chunk: u64,
        cow_chunks: u64,
    },
    #[error("corrupt table: metadata area {area} entry {index} points at COW chunk {new_chunk}, which holds metadata, not data")]
    EntryOnMetadata {
        area: u64,
        index: u64,
        new_chunk: u64,
    },
    #[error("table entry out of range: metadata area {area} entry {index} names origin chunk {old_chunk} (byte {offset}), past the end of the origin ({origin_size} bytes)")]
    EntryPastOrigin {
        area: u64,
        index: u64,
        old_chunk: u64,
        offset: u128,
        origin_size: u64,
    },
    #[error("table entry out of range: metadata area {area} entry {index} names origin chunk {old_chunk}, whose bytes would lie past 2^64: no device is that large")]
    EntryPastAnyDevice {
        area: u64,
        index: u64,
        old_chunk: u64,
    },
    #[error("read error at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
}

/// The header in chunk 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u32,
    pub valid: u32,
    pub version: u32,
    pub chunk_sectors: u32,
}

impl Header {
    pub const SIZE: usize = 16;

    pub fn decode(b: &[u8]) -> Header {
        Header {
            magic: LittleEndian::read_u32(&b[0..4]),
            valid: LittleEndian::read_u32(&b[4..8]),
            version: LittleEndian::read_u32(&b[8..12]),
            chunk_sectors: LittleEndian::read_u32(&b[12..16]),
        }
    }

    pub fn encode(&self, b: &mut [u8]) {
        LittleEndian::write_u32(&mut b[0..4], self.magic);
        LittleEndian::write_u32(&mut b[4..8], self.valid);
        LittleEndian::write_u32(&mut b[8..12], self.version);
        LittleEndian::write_u32(&mut b[12..16], self.chunk_sectors);
    }

    /// Checks magic, version, validity and chunk size, in that order; returns
    /// the chunk size in bytes.
    pub fn check(&self) -> Result<u64, CowError> {
        if self.magic != SNAP_MAGIC {
            return Err(CowError::BadMagic { found: self.magic });
        }
        if self.version != SNAPSHOT_DISK_VERSION {
            return Err(CowError::UnsupportedVersion(self.version));
        }
        if self.valid == 0 {
            return Err(CowError::Invalidated);
        }
        let bytes = u64::from(self.chunk_sectors) * SECTOR_SIZE;
        if !bytes.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&bytes) {
            return Err(CowError::BadChunkSize {
                sectors: self.chunk_sectors,
            });
        }
        Ok(bytes)
    }
}

/// The geometry that follows from a chunk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Chunk size in bytes.
    pub chunk_size: u64,
    pub exceptions_per_area: u64,
}

impl Layout {
    pub fn new(chunk_size: u64) -> Layout {
        Layout {
            chunk_size,
            exceptions_per_area: chunk_size / EXCEPTION_SIZE,
        }
    }

    /// The chunk index of metadata area `area`.
    pub fn area_chunk(&self, area: u64) -> u64 {
        1 + (self.exceptions_per_area + 1) * area
    }

    /// Whether COW chunk `chunk` holds the header or a metadata area.
    pub fn is_metadata_chunk(&self, chunk: u64) -> bool {
        chunk % (self.exceptions_per_area + 1) == 1 || chunk == 0
    }
}

/// What a COW table says.
#[derive(Debug)]
pub struct CowTable {
    /// Chunk size in bytes, from the header.
    pub chunk_size: u64,
    /// Size of the COW device or image in bytes.
    pub cow_size: u64,
    /// Table entries read (a chunk written more than once counts each time).
    pub exceptions: u64,
    /// Metadata areas read, the terminating one included.
    pub areas: u64,
    /// The changed byte ranges of the origin.
    pub extents: ExtentSet,
}

/// Reads the header and the whole exception table of a COW store of
/// `cow_size` bytes. With `origin_size`, an entry naming a chunk that starts
/// at or beyond it is refused, and the last extent is clipped to it.
pub fn read_table<R: ReadAt + ?Sized>(
    dev: &R,
    cow_size: u64,
    origin_size: Option<u64>,
) -> Result<CowTable, CowError> {
    let header = read_header(dev, cow_size)?;
    let chunk_size = header.check()?;
    let layout = Layout::new(chunk_size);
    let cow_chunks = cow_size / chunk_size;
    if cow_chunks <= layout.area_chunk(0) {
        return Err(CowError::Truncated {
            what: "first metadata area".to_string(),
            needed: 2 * chunk_size,
            size: cow_size,
        });
    }
    let mut buf = AlignedBuf::new(chunk_size as usize);
    let mut collector = ChunkCollector::new();
    let mut exceptions = 0u64;
    let mut area = 0u64;
    loop {
        let chunk = layout.area_chunk(area);
        let offset = chunk.saturating_mul(chunk_size);
        if chunk >= cow_chunks {
            return Err(CowError::Truncated {
                what: format!("metadata area {area} (the area before it is full)"),
                needed: offset.saturating_add(chunk_size),
                size: cow_size,
            });
        }
        read_at(dev, &mut buf, offset, cow_size, || {
            format!("metadata area {area}")
        })?;
        let mut full = true;
        for (index, entry) in buf.chunks_exact(EXCEPTION_SIZE as usize).enumerate() {
            let old_chunk = LittleEndian::read_u64(&entry[0..8]);
            let new_chunk = LittleEndian::read_u64(&entry[8..16]);
            if new_chunk == 0 {
                full = false;
                break;
            }
            let index = index as u64;
            if new_chunk >= cow_chunks {
                return Err(CowError::EntryPastCow {
                    area,
                    index,
                    new_chunk,
                    cow_chunks,
                });
            }
            if layout.is_metadata_chunk(new_chunk) {
                return Err(CowError::EntryOnMetadata {
                    area,
                    index,
                    new_chunk,
                });
            }
            // The chunk's last byte must have an offset, whatever the origin.
            let end = (u128::from(old_chunk) + 1) * u128::from(chunk_size);
            if end > u128::from(u64::MAX) {
                return Err(CowError::EntryPastAnyDevice {
                    area,
                    index,
                    old_chunk,
                });
            }
            if let Some(origin_size) = origin_size {
                let start = u128::from(old_chunk) * u128::from(chunk_size);
                if start >= u128::from(origin_size) {
                    return Err(CowError::EntryPastOrigin {
                        area,
                        index,
                        old_chunk,
                        offset: start,
                        origin_size,
                    });
                }
            }
            collector.add(old_chunk);
            exceptions += 1;
        }
        area += 1;
        if !full {
            break;
        }
    }
    Ok(CowTable {
        chunk_size,
        cow_size,
        exceptions,
        areas: area,
        extents: collector.finish(chunk_size, origin_size),
    })
}

/// Reads and decodes the header without checking it.
fn read_header<R: ReadAt + ?Sized>(dev: &R, cow_size: u64) -> Result<Header, CowError> {
    // One aligned block, so that O_DIRECT reads work on any logical block size.
    let len = if cow_size >= 4096 { 4096 } else { SECTOR_SIZE };
    let mut buf = AlignedBuf::new(len as usize);
    read_at(dev, &mut buf, 0, cow_size, || "header".to_string())?;
    Ok(Header::decode(&buf[..Header::SIZE]))
}

fn read_at<R: ReadAt + ?Sized>(
    dev: &R,
    buf: &mut [u8],
    offset: u64,
    size: u64,
    what: impl Fn() -> String,
) -> Result<(), CowError> {
    let needed = offset.saturating_add(buf.len() as u64);
    dev.read_exact_at(buf, offset).map_err(|source| {
        if source.kind() == io::ErrorKind::UnexpectedEof || needed > size {
            CowError::Truncated {
                what: what(),
                needed,
                size,
            }
        } else {
            CowError::Io { offset, source }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cowgen::CowImage;
    use crate::extents::Extent;

    fn ext(offset: u64, length: u64) -> Extent {
        Extent { offset, length }
    }

    #[test]
    fn reads_the_example_from_the_kernel() {
        // A write of 3 chunks at origin chunk 10 and one at 1000 gave entries
        // (10,2) (11,3) (12,4) (1000,5) on a real kernel.
        let mut img = CowImage::new(4096);
        for old in [10, 11, 12, 1000] {
            img.push(old);
        }
        let bytes = img.to_vec();
        assert_eq!(&bytes[4096..4096 + 32], &{
            let mut e = [0u8; 32];
            LittleEndian::write_u64(&mut e[0..], 10);
            LittleEndian::write_u64(&mut e[8..], 2);
            LittleEndian::write_u64(&mut e[16..], 11);
            LittleEndian::write_u64(&mut e[24..], 3);
            e
        });
        let t = read_table(&bytes, bytes.len() as u64, Some(1 << 30)).unwrap();
        assert_eq!(t.chunk_size, 4096);
        assert_eq!(t.exceptions, 4);
        assert_eq!(t.areas, 1);
        assert_eq!(
            t.extents.as_slice(),
            &[ext(10 * 4096, 3 * 4096), ext(1000 * 4096, 4096)]
        );
    }

    #[test]
    fn old_chunk_zero_is_an_entry_not_the_end() {
        let mut img = CowImage::new(4096);
        img.push(0);
        img.push(7);
        let bytes = img.to_vec();
        let t = read_table(&bytes, bytes.len() as u64, None).unwrap();
        assert_eq!(t.extents.as_slice(), &[ext(0, 4096), ext(7 * 4096, 4096)]);
    }

    #[test]
    fn table_spans_areas_for_every_chunk_size() {
        // Over two areas of 512 KiB chunks is a 32 GiB store: write it to a
        // sparse file rather than to memory.
        let path = std::env::temp_dir().join(format!("lvmsync-areas-{}.img", std::process::id()));
        for cs in [512u64, 4096, 65536, 524288] {
            let epa = cs / 16;
            let file = std::fs::File::create(&path).unwrap();
            let mut w = crate::cowgen::CowWriter::new(file, cs);
            let n = epa * 2 + 3;
            let mut expected = std::collections::BTreeSet::new();
            for i in 0..n {
                let old = (i * 7919) % (n * 2);
                expected.insert(old);
                w.push(old).unwrap();
            }
            w.finish().unwrap();
            let src = crate::blockdev::Source::open(&path).unwrap();
            let t = read_table(&src, src.size(), Some(n * 2 * cs)).unwrap();
            assert_eq!(t.exceptions, n, "chunk size {cs}");
            assert_eq!(t.areas, 3, "chunk size {cs}");
            let chunks: u64 = t.extents.iter().map(|e| e.length / cs).sum();
            assert_eq!(chunks, expected.len() as u64, "chunk size {cs}");
            for e in t.extents.iter() {
                for c in e.offset / cs..e.end() / cs {
                    assert!(
                        expected.contains(&c),
                        "chunk {c} not written, chunk size {cs}"
                    );
                }
            }
        }
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn a_full_last_area_needs_the_next_area() {
        let mut img = CowImage::new(4096);
        for i in 0..256 {
            img.push(i * 2);
        }
        let bytes = img.to_vec();
        let t = read_table(&bytes, bytes.len() as u64, None).unwrap();
        assert_eq!(t.exceptions, 256);
        assert_eq!(t.areas, 2);
        // Cut the zeroed area that ends the table: truncated.
        let cut = &bytes[..(1 + 257) * 4096];
        let err = read_table(cut, cut.len() as u64, None).unwrap_err();
        assert!(matches!(err, CowError::Truncated { .. }), "{err}");
    }

    #[test]
    fn refusals() {
        let mut img = CowImage::new(4096);
        img.push(3);
        let good = img.to_vec();
        let check = |bytes: &[u8], origin: Option<u64>| {
            read_table(bytes, bytes.len() as u64, origin)
                .unwrap_err()
                .to_string()
        };

        let mut b = good.clone();
        b[0] ^= 1;
        assert!(check(&b, None).contains("bad magic"));
        let mut b = good.clone();
        b[8] = 2;
        assert!(check(&b, None).contains("version 2"));
        let mut b = good.clone();
        b[4] = 0;
        assert!(check(&b, None).contains("invalid"));
        let mut b = good.clone();
        b[12] = 3;
        assert!(check(&b, None).contains("chunk size"));
        assert!(check(&good[..100], None).contains("truncated"));
        assert!(check(&good[..4096 + 100], None).contains("truncated"));
        assert!(check(&good, Some(3 * 4096)).contains("past the end of the origin"));

        let mut b = good.clone();
        LittleEndian::write_u64(&mut b[4096 + 8..], 1_000_000);
        assert!(check(&b, None).contains("past the end of the COW"));
        let mut b = good.clone();
        LittleEndian::write_u64(&mut b[4096 + 8..], 1);
        assert!(check(&b, None).contains("holds metadata"));
    }

    #[test]
    fn huge_old_chunk_does_not_overflow() {
        for (chunk, cs) in [(u64::MAX, 4096), (u64::MAX / 4096, 4096), (1 << 45, 524288)] {
            let mut img = CowImage::new(cs);
            img.push(chunk);
            let bytes = img.to_vec();
            // Past any device, whether the origin's size is known or not.
            for origin_size in [None, Some(1 << 40)] {
                let err = read_table(&bytes, bytes.len() as u64, origin_size).unwrap_err();
                assert!(
                    matches!(err, CowError::EntryPastAnyDevice { .. }),
                    "chunk {chunk}: {err}"
                );
            }
        }
        // The last chunk that fits is an ordinary entry.
        let mut img = CowImage::new(4096);
        img.push(u64::MAX / 4096 - 1);
        let bytes = img.to_vec();
        let t = read_table(&bytes, bytes.len() as u64, None).unwrap();
        assert_eq!(t.extents.as_slice()[0].offset, (u64::MAX / 4096 - 1) * 4096);
    }
}
