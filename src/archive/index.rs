//! The index of a delta object: where each of its records is, so that a
//! restore or a prune reads only the records it needs, by byte range.
//!
//! Layout (little-endian), written beside the delta as `….idx`:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `LVMSIDX\0` |
//! | 4 | version, 1 |
//! | 4 | zero |
//! | 8 | number of records N |
//! | 8 | the delta's length in bytes |
//! | 32 × N | per record, in stream order: extent offset (8), stream offset of its header (8), extent length (4), payload length (4), kind (1: `D` or `Z`), 7 zero bytes |
//! | 8 | xxh3-64 of everything before |
//!
//! An index only says where to look: every record read through it is
//! checked on its own (its header's and its content's checksums) before
//! it is used.

use byteorder::{ByteOrder, LittleEndian};
use xxhash_rust::xxh3::xxh3_64;

use crate::stream::{RecordLocation, KIND_DATA, KIND_ZERO, RECORD_HEADER_LEN};

pub const MAGIC: [u8; 8] = *b"LVMSIDX\0";
pub const VERSION: u32 = 1;
const HEAD_LEN: usize = 32;
const ENTRY_LEN: usize = 32;

/// The records of one delta object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// The delta's length in bytes.
    pub delta_len: u64,
    pub records: Vec<RecordLocation>,
}

impl Index {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEAD_LEN + ENTRY_LEN * self.records.len() + 8];
        b[..8].copy_from_slice(&MAGIC);
        LittleEndian::write_u32(&mut b[8..12], VERSION);
        LittleEndian::write_u64(&mut b[16..24], self.records.len() as u64);
        LittleEndian::write_u64(&mut b[24..32], self.delta_len);
        for (i, r) in self.records.iter().enumerate() {
            let e = &mut b[HEAD_LEN + i * ENTRY_LEN..][..ENTRY_LEN];
            LittleEndian::write_u64(&mut e[0..8], r.offset);
            LittleEndian::write_u64(&mut e[8..16], r.at);
            LittleEndian::write_u32(&mut e[16..20], r.length);
            LittleEndian::write_u32(&mut e[20..24], r.stored);
            e[24] = r.kind;
        }
        let end = b.len() - 8;
        let sum = xxh3_64(&b[..end]);
        LittleEndian::write_u64(&mut b[end..], sum);
        b
    }

    /// Reads an index back; what is wrong with it otherwise. The records
    /// must be in increasing, non-overlapping order, inside the delta.
    pub fn decode(b: &[u8]) -> Result<Index, String> {
        if b.len() < HEAD_LEN + 8 || b[..8] != MAGIC {
            return Err("not an index of an lvmsync-rs delta".into());
        }
        let end = b.len() - 8;
        if LittleEndian::read_u64(&b[end..]) != xxh3_64(&b[..end]) {
            return Err("checksum mismatch".into());
        }
        let version = LittleEndian::read_u32(&b[8..12]);
        if version != VERSION {
            return Err(format!(
                "index version {version}, this lvmsync-rs reads {VERSION}"
            ));
        }
        let count = LittleEndian::read_u64(&b[16..24]);
        let delta_len = LittleEndian::read_u64(&b[24..32]);
        if (end - HEAD_LEN) as u64 != count.saturating_mul(ENTRY_LEN as u64) {
            return Err(format!(
                "it says {}, but its length does not",
                crate::units::counted(count, "record")
            ));
        }
        let mut records = Vec::with_capacity(count as usize);
        let (mut prev_end, mut prev_at) = (0u64, 0u64);
        for e in b[HEAD_LEN..end].chunks_exact(ENTRY_LEN) {
            let r = RecordLocation {
                offset: LittleEndian::read_u64(&e[0..8]),
                at: LittleEndian::read_u64(&e[8..16]),
                length: LittleEndian::read_u32(&e[16..20]),
                stored: LittleEndian::read_u32(&e[20..24]),
                kind: e[24],
            };
            let i = records.len();
            if r.kind != KIND_DATA && r.kind != KIND_ZERO {
                return Err(format!("record {i}: unknown kind 0x{:02x}", r.kind));
            }
            if r.length == 0
                || r.offset < prev_end
                || r.at < prev_at
                || r.offset.checked_add(u64::from(r.length)).is_none()
                || r.at.saturating_add(r.size()) > delta_len
                || r.at < RECORD_HEADER_LEN as u64
            {
                return Err(format!(
                    "record {i} (offset {}, length {}, at byte {}) is out of order or outside the delta",
                    r.offset, r.length, r.at
                ));
            }
            prev_end = r.end();
            prev_at = r.at + r.size();
            records.push(r);
        }
        Ok(Index { delta_len, records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: u64, length: u32, at: u64, stored: u32, kind: u8) -> RecordLocation {
        RecordLocation {
            offset,
            length,
            stored,
            kind,
            at,
        }
    }

    #[test]
    fn an_index_reads_back_and_damage_is_found() {
        let i = Index {
            delta_len: 1000,
            records: vec![
                rec(0, 4096, 100, 50, KIND_DATA),
                rec(8192, 4096, 190, 0, KIND_ZERO),
                rec(65536, 100, 230, 100, KIND_DATA),
            ],
        };
        let b = i.encode();
        assert_eq!(Index::decode(&b).unwrap(), i);
        for at in [0, 9, 17, 40, b.len() - 1] {
            let mut bad = b.clone();
            bad[at] ^= 1;
            assert!(Index::decode(&bad).is_err(), "flip at {at}");
        }
        assert!(Index::decode(&b[..b.len() - 1]).is_err());
        // Out of order, or outside the delta, even with a good checksum.
        let mut bad = i.clone();
        bad.records.swap(0, 1);
        assert!(Index::decode(&bad.encode())
            .unwrap_err()
            .contains("out of order"));
        let mut bad = i.clone();
        bad.delta_len = 300;
        assert!(Index::decode(&bad.encode()).is_err());
    }
}
