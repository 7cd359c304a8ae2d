//! The delta stream: the changed extents of an origin and their data, in a
//! format that checks itself record by record, so that `apply` writes only
//! what has been verified and a damaged or cut stream is always noticed.
//!
//! `docs/FORMAT.md` specifies the format byte for byte; in short:
//!
//! ```text
//! magic (8) | version u32 | header length u32 | header (bincode) | header checksum u64
//! record header (40) | payload      DATA (raw, lz4 or zstd) or ZERO (no payload)
//! ...
//! END record header (40) | END payload (48): counts, byte totals, stream digest
//! ```
//!
//! Checksums are xxh3: xxh3-64 over each record's content and over each
//! header, xxh3-128 over the whole stream before the END record. They detect
//! corruption (a flipped bit, a cut, a lost or repeated piece) at several GB/s,
//! so checking costs little next to reading and writing the data. They are not
//! a MAC: anyone can write a stream that passes them. Authenticity belongs to
//! the transport (ssh).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use bincode::Options;
use byteorder::{ByteOrder, LittleEndian};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3Default};

/// The first 8 bytes of every delta. The high byte catches 7-bit channels,
/// `\r\n` catches line-ending conversion.
pub const MAGIC: [u8; 8] = [0x89, b'L', b'V', b'M', b'S', b'D', b'\r', b'\n'];
/// The newest format version, which this code reads and writes. A stream
/// is written in the oldest version that can carry it (see
/// [`Compression::version`]): version 3 added zstd and version 4 GROUP
/// records, which only zstd streams have, so a stream without zstd is
/// version 2 and readers that know only version 2 read it.
pub const VERSION: u32 = 4;
/// The oldest format version this code reads.
pub const OLDEST_VERSION: u32 = 2;

/// How far past [`VERSION`] a delta's version may be and still be taken
/// for one a newer lvmsync-rs wrote: a version further on (a flipped high
/// bit: 65538) is a damaged header.
pub const PLAUSIBLE_NEWER_VERSIONS: u32 = 64;
/// Largest encoded header accepted, in bytes.
pub const MAX_HEADER_LEN: u32 = 64 * 1024;
/// Largest extent one record covers. Bounds the memory a reader needs (one
/// record's content and payload) whatever the stream claims.
pub const MAX_RECORD_LEN: u32 = 1 << 20;
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 40;
/// Size of the END record's payload.
pub const END_PAYLOAD_LEN: usize = 48;
/// Size of the END record, header and payload.
pub const END_LEN: usize = RECORD_HEADER_LEN + END_PAYLOAD_LEN;
/// Zero runs are found in blocks of this size, aligned to the origin.
pub const ZERO_BLOCK: usize = 4096;
/// Bytes before the encoded header: magic, version, header length.
pub const PREAMBLE_LEN: usize = 16;

/// Record kinds, as the first byte of a record header.
pub const KIND_DATA: u8 = b'D';
pub const KIND_ZERO: u8 = b'Z';
pub const KIND_END: u8 = b'E';
/// GROUP (format version 4): its payload is one zstd frame holding whole
/// raw DATA and ZERO records, back to back, so that small records are
/// compressed together rather than each on its own.
pub const KIND_GROUP: u8 = b'G';
/// The most bytes the records in a GROUP take, decompressed: what a
/// reader holds of one twice (the frame and its records).
pub const MAX_GROUP_LEN: u32 = 4 << 20;
/// DATA flag: the payload is an lz4 block.
pub const FLAG_LZ4: u8 = 1;
/// DATA flag: the payload is one zstd frame (format version 3). Never set
/// together with [`FLAG_LZ4`].
pub const FLAG_ZSTD: u8 = 2;
/// The zstd levels a writer uses. Levels 20 to 22 take far more memory
/// and time for little gain on records of at most 1 MiB.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
/// The zstd level when none is given.
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// What the delta was made from. Any field may be unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub kind: SourceKind,
    /// The volume group, for an LVM snapshot.
    pub vg: Option<String>,
    /// The snapshot: its LV name, or the dm name or the COW image path.
    pub snapshot: Option<String>,
    pub snapshot_uuid: Option<String>,
    /// The snapshot's creation time as `lvs` reports it (`lv_time`).
    pub snapshot_time: Option<String>,
    /// The origin: its LV name, or the device or image the data came from.
    pub origin: Option<String>,
    pub origin_uuid: Option<String>,
    /// For a thin snapshot: the pool and the thin devices compared.
    pub thin: Option<ThinSource>,
}

impl SourceInfo {
    /// A source of `kind` of which nothing else is known (yet).
    pub fn of_kind(kind: SourceKind) -> SourceInfo {
        SourceInfo {
            kind,
            vg: None,
            snapshot: None,
            snapshot_uuid: None,
            snapshot_time: None,
            origin: None,
            origin_uuid: None,
            thin: None,
        }
    }
}

/// Where the changes of a thin snapshot came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThinSource {
    /// The thin pool, as `VG/POOL` when LVM knows it, else its dm name.
    pub pool: String,
    pub pool_uuid: Option<String>,
    /// The pool's data block size in bytes.
    pub block_size: u64,
    /// The thin device id of the snapshot (the base of the changes).
    pub snapshot_id: u64,
    /// The thin device id the snapshot was compared with: the origin, or
    /// the data source when it is a thin LV of the same pool.
    pub compared_id: u64,
}

/// A point in time of an origin: what a destination holds after a delta is
/// applied, and what a delta needs the destination to hold before.
/// Two points are the same when their `origin_uuid` and `snapshot_uuid` are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointInTime {
    /// The origin LV's UUID.
    pub origin_uuid: String,
    /// The UUID of the snapshot that froze this point in time.
    pub snapshot_uuid: String,
    /// For messages: `VG/LV` of the snapshot when it was made.
    pub snapshot: String,
    /// For messages: the snapshot's creation time (`lvs -o lv_time`).
    pub time: String,
}

impl PointInTime {
    /// Whether `self` and `other` name the same point in time.
    pub fn same(&self, other: &PointInTime) -> bool {
        self.origin_uuid == other.origin_uuid && self.snapshot_uuid == other.snapshot_uuid
    }
}

impl std::fmt::Display for PointInTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} taken {} (snapshot uuid {})",
            self.snapshot, self.time, self.snapshot_uuid
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A classic (dm-snapshot) snapshot.
    Classic,
    /// A COW image and a data source named by path, without LVM.
    Image,
    /// A thin snapshot: the changes come from the pool's metadata.
    Thin,
    /// Blocks found different by comparing two copies (`verify --repair`).
    Compare,
    /// Every block that is not all zeroes: a full copy (a seed).
    Full,
}

impl SourceKind {
    /// What the changes were read from, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            SourceKind::Classic => "a classic snapshot's change table",
            SourceKind::Image => "a COW image's change table",
            SourceKind::Thin => "a thin pool's metadata",
            SourceKind::Compare => "a comparison of two copies",
            SourceKind::Full => "a full copy",
        }
    }
}

/// How the DATA records of a stream may be compressed, as its header says.
/// Each record says whether it is; one whose codec does not make it
/// smaller is stored raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Lz4,
    /// zstd (format version 3), at `level`: what the writer used, for
    /// information (decoding does not need it).
    Zstd {
        level: i32,
    },
}

impl Compression {
    /// zstd at its default level.
    pub const ZSTD: Compression = Compression::Zstd {
        level: ZSTD_DEFAULT_LEVEL,
    };

    /// The format version of a stream written with this compression: the
    /// oldest that has all a writer may put in it (a zstd stream may have
    /// GROUP records: version 4).
    pub fn version(self) -> u32 {
        match self {
            Compression::None | Compression::Lz4 => 2,
            Compression::Zstd { .. } => 4,
        }
    }

    /// The format version that added it: a stream of an older version
    /// cannot say it.
    pub fn added_in(self) -> u32 {
        match self {
            Compression::None | Compression::Lz4 => 2,
            Compression::Zstd { .. } => 3,
        }
    }

    /// The codec's name: `none`, `lz4` or `zstd`.
    pub fn codec(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd { .. } => "zstd",
        }
    }

    /// The DATA flag of a record this compression compresses (0 for none).
    fn flag(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => FLAG_LZ4,
            Compression::Zstd { .. } => FLAG_ZSTD,
        }
    }
}

/// As options and configuration files name it: `none`, `lz4`, `zstd`, or
/// `zstd:LEVEL`.
impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
            other => f.write_str(other.codec()),
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    /// `none`, `lz4`, `zstd` (level [`ZSTD_DEFAULT_LEVEL`]) or
    /// `zstd:LEVEL` with LEVEL in [`ZSTD_LEVELS`].
    fn from_str(s: &str) -> Result<Compression, String> {
        let (min, max) = (ZSTD_LEVELS.start(), ZSTD_LEVELS.end());
        match s.split_once(':') {
            None if s == "none" => Ok(Compression::None),
            None if s == "lz4" => Ok(Compression::Lz4),
            None if s == "zstd" => Ok(Compression::ZSTD),
            Some(("zstd", level)) => match level.parse::<i32>() {
                Ok(level) if ZSTD_LEVELS.contains(&level) => Ok(Compression::Zstd { level }),
                _ => Err(format!(
                    "the zstd level must be a whole number from {min} to {max}"
                )),
            },
            _ => Err(format!(
                "give lz4, zstd, zstd:LEVEL (LEVEL {min} to {max}, {ZSTD_DEFAULT_LEVEL} by default) or none"
            )),
        }
    }
}

/// The stream header. Its encoding is fixed by the format version: adding,
/// removing or reordering a field, or a variant of an enum, makes a new
/// version. `properties` carries extra facts that a reader may ignore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Size of the origin in bytes: no record reaches past it.
    pub origin_size: u64,
    /// Chunk size of the change table, in bytes (informative).
    pub chunk_size: u64,
    pub source: SourceInfo,
    /// What the writer used; each DATA record says whether it is compressed.
    pub compression: Compression,
    /// The writing tool and its version: `lvmsync-rs 0.1.0`.
    pub tool: String,
    /// The point in time the destination must hold for the delta to apply;
    /// none when it applies to any content (a full copy, a repair).
    pub base: Option<PointInTime>,
    /// The point in time the destination holds once the delta is applied;
    /// none when the data was read from a live origin.
    pub target: Option<PointInTime>,
    /// Records start at this offset: a resumed transfer leaves out what the
    /// destination already confirmed. 0 for a whole delta.
    pub resume_from: u64,
    pub properties: BTreeMap<String, String>,
}

impl Header {
    /// A copy fit to be printed: every text in it with its control
    /// characters escaped (see [`crate::units::printable`]), since it comes
    /// from whoever made the delta.
    pub fn printable(&self) -> Header {
        let p = |s: &String| crate::units::printable(s).into_owned();
        let po = |s: &Option<String>| s.as_ref().map(p);
        let pit = |t: &Option<PointInTime>| {
            t.as_ref().map(|t| PointInTime {
                origin_uuid: p(&t.origin_uuid),
                snapshot_uuid: p(&t.snapshot_uuid),
                snapshot: p(&t.snapshot),
                time: p(&t.time),
            })
        };
        let s = &self.source;
        Header {
            source: SourceInfo {
                kind: s.kind,
                vg: po(&s.vg),
                snapshot: po(&s.snapshot),
                snapshot_uuid: po(&s.snapshot_uuid),
                snapshot_time: po(&s.snapshot_time),
                origin: po(&s.origin),
                origin_uuid: po(&s.origin_uuid),
                thin: s.thin.as_ref().map(|t| ThinSource {
                    pool: p(&t.pool),
                    pool_uuid: po(&t.pool_uuid),
                    ..t.clone()
                }),
            },
            tool: p(&self.tool),
            base: pit(&self.base),
            target: pit(&self.target),
            properties: self.properties.iter().map(|(k, v)| (p(k), p(v))).collect(),
            ..self.clone()
        }
    }
}

/// What can be wrong with a delta stream, found while reading it.
#[derive(Debug, Error)]
pub enum StreamError {
    #[error("empty input: not an lvmsync-rs delta")]
    Empty,
    #[error("not an lvmsync-rs delta: it starts with {found} (a delta starts with 89 4c 56 4d 53 44 0d 0a)")]
    NotADelta { found: String },
    #[error("a dm-snapshot COW image, not a delta: list or send it with --cow")]
    CowImage,
    #[error("delta format version {found}, but this lvmsync-rs reads versions {} to {known} only: it was written by {by} lvmsync-rs; use one that knows version {found}", OLDEST_VERSION)]
    UnknownVersion {
        found: u32,
        known: u32,
        by: &'static str,
    },
    #[error("truncated: the delta ends at byte {at}, {context}")]
    Truncated { at: u64, context: String },
    #[error("damaged header: {reason}")]
    DamagedHeader { reason: String },
    #[error("damaged record header at byte {at} (record {index}): checksum mismatch")]
    DamagedRecordHeader { index: u64, at: u64 },
    #[error("invalid record at byte {at} (record {index}): {reason}")]
    BadRecord { index: u64, at: u64, reason: String },
    #[error("damaged payload in record {index} at byte {at}: {reason}")]
    DamagedPayload { index: u64, at: u64, reason: String },
    #[error("damaged END record at byte {at}: {reason}")]
    DamagedEnd { at: u64, reason: String },
    #[error("the END record at byte {at} does not match the stream: its count of {what} is {claimed}, the stream holds {found}")]
    EndMismatch {
        at: u64,
        what: &'static str,
        claimed: u64,
        found: u64,
    },
    #[error("the END record at byte {at} does not match the stream: the digest of the bytes before it differs, so the stream was altered")]
    DigestMismatch { at: u64 },
    #[error("{} {} the END record, which ends at byte {at}: a delta ends with its END record (two deltas joined, or garbage appended?)", crate::units::counted(*.extra, "byte"), if *.extra == 1 { "follows" } else { "follow" })]
    TrailingData { at: u64, extra: u64 },
    #[error("read error at byte {at}: {source}")]
    Read { at: u64, source: io::Error },
}

impl StreamError {
    /// Where in the stream the problem is, when it is past the header.
    pub fn at(&self) -> Option<u64> {
        match self {
            StreamError::Truncated { at, .. }
            | StreamError::DamagedRecordHeader { at, .. }
            | StreamError::BadRecord { at, .. }
            | StreamError::DamagedPayload { at, .. }
            | StreamError::DamagedEnd { at, .. }
            | StreamError::EndMismatch { at, .. }
            | StreamError::DigestMismatch { at }
            | StreamError::TrailingData { at, .. }
            | StreamError::Read { at, .. } => Some(*at),
            _ => None,
        }
    }
}

/// Counts that the END record carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// DATA and ZERO records (END not counted).
    pub records: u64,
    /// Sum of the extent lengths of DATA records.
    pub data_bytes: u64,
    /// Sum of the extent lengths of ZERO records.
    pub zero_bytes: u64,
    /// Sum of the payload lengths of DATA records, as stored.
    pub payload_bytes: u64,
}

/// A record header, decoded. See docs/FORMAT.md for the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u8,
    pub flags: u8,
    /// Extent length in bytes (0 for END).
    pub length: u32,
    /// Extent offset in the origin (0 for END).
    pub offset: u64,
    /// Payload bytes after this header.
    pub stored: u32,
    /// xxh3-64 of the uncompressed content (of the payload for END, 0 for ZERO).
    pub checksum: u64,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0] = self.kind;
        b[1] = self.flags;
        LittleEndian::write_u32(&mut b[4..8], self.length);
        LittleEndian::write_u64(&mut b[8..16], self.offset);
        LittleEndian::write_u32(&mut b[16..20], self.stored);
        LittleEndian::write_u64(&mut b[24..32], self.checksum);
        let check = xxh3_64(&b[..32]);
        LittleEndian::write_u64(&mut b[32..40], check);
        b
    }

    /// Decodes `b` if its checksum holds and its reserved bytes are zero.
    pub fn decode(b: &[u8; RECORD_HEADER_LEN]) -> Option<RecordHeader> {
        if LittleEndian::read_u64(&b[32..40]) != xxh3_64(&b[..32]) {
            return None;
        }
        if b[2..4] != [0, 0] || b[20..24] != [0, 0, 0, 0] {
            return None;
        }
        Some(RecordHeader {
            kind: b[0],
            flags: b[1],
            length: LittleEndian::read_u32(&b[4..8]),
            offset: LittleEndian::read_u64(&b[8..16]),
            stored: LittleEndian::read_u32(&b[16..20]),
            checksum: LittleEndian::read_u64(&b[24..32]),
        })
    }
}

fn header_options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(u64::from(MAX_HEADER_LEN))
        .reject_trailing_bytes()
}

/// The stream's first bytes: magic, version, header length, header, checksum.
fn encode_header(header: &Header) -> io::Result<Vec<u8>> {
    let body = header_options().serialize(header).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the delta header cannot be encoded: {e}"),
        )
    })?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_HEADER_LEN)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the delta header is larger than 64 KiB",
            )
        })?;
    let mut out = Vec::with_capacity(PREAMBLE_LEN + body.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&header.compression.version().to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&body);
    let check = xxh3_64(&out);
    out.extend_from_slice(&check.to_le_bytes());
    Ok(out)
}

/// The END record for a stream whose bytes before it have digest `digest`.
pub fn encode_end(totals: &Totals, digest: u128) -> [u8; END_LEN] {
    let mut payload = [0u8; END_PAYLOAD_LEN];
    LittleEndian::write_u64(&mut payload[0..8], totals.records);
    LittleEndian::write_u64(&mut payload[8..16], totals.data_bytes);
    LittleEndian::write_u64(&mut payload[16..24], totals.zero_bytes);
    LittleEndian::write_u64(&mut payload[24..32], totals.payload_bytes);
    LittleEndian::write_u128(&mut payload[32..48], digest);
    let head = RecordHeader {
        kind: KIND_END,
        flags: 0,
        length: 0,
        offset: 0,
        stored: END_PAYLOAD_LEN as u32,
        checksum: xxh3_64(&payload),
    }
    .encode();
    let mut out = [0u8; END_LEN];
    out[..RECORD_HEADER_LEN].copy_from_slice(&head);
    out[RECORD_HEADER_LEN..].copy_from_slice(&payload);
    out
}

/// The digest the END record carries, of the stream bytes before it.
pub fn digest(bytes: &[u8]) -> u128 {
    xxh3_128(bytes)
}

/// Whether `b` is all zeroes.
fn is_zero(b: &[u8]) -> bool {
    // OR-folding fixed-size blocks vectorizes; the early exit is per block.
    b.chunks(256)
        .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// Writes a delta stream record by record, encoding each with an
/// [`Encoder`] (as the worker threads of `send` do) and appending it.
///
/// The writer trusts its caller: records must come in increasing offset
/// order, without overlap, within the header's origin size. A reader refuses
/// a stream that breaks these rules.
pub struct Writer<W: Write> {
    out: W,
    hasher: Xxh3Default,
    position: u64,
    totals: Totals,
    encoder: Encoder,
    /// Where records written one at a time are encoded.
    scratch: Encoded,
    /// Where each record went, when asked for ([`Writer::keep_locations`]).
    locations: Option<Vec<RecordLocation>>,
}

/// Where a record is in a stream, and what it covers: what an index of a
/// stream holds, so that single records can be read without the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLocation {
    /// Its extent in the origin.
    pub offset: u64,
    pub length: u32,
    /// Its payload's length.
    pub stored: u32,
    /// [`KIND_DATA`] or [`KIND_ZERO`].
    pub kind: u8,
    /// The stream offset of its header.
    pub at: u64,
}

impl RecordLocation {
    /// Its header and payload's length in the stream.
    pub fn size(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.stored)
    }

    /// The end of its extent.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.length)
    }
}

impl<W: Write> Writer<W> {
    /// Writes the magic, version and header.
    pub fn new(mut out: W, header: &Header) -> io::Result<Writer<W>> {
        let bytes = encode_header(header)?;
        out.write_all(&bytes)?;
        let mut hasher = Xxh3Default::new();
        hasher.update(&bytes);
        Ok(Writer {
            out,
            hasher,
            position: bytes.len() as u64,
            totals: Totals::default(),
            encoder: Encoder::new(header.compression),
            scratch: Encoded::default(),
            locations: None,
        })
    }

    /// Whether the records appended may come in GROUP records (see
    /// [`Encoder::group`]): in a zstd stream whose records are not located
    /// one by one ([`Writer::keep_locations`]: an archive's records are
    /// read alone, and a GROUP's only together).
    pub fn may_group(&self) -> bool {
        matches!(self.encoder.compression(), Compression::Zstd { .. }) && self.locations.is_none()
    }

    /// From now on, keeps where each record goes (see
    /// [`Writer::take_locations`]): memory grows by 32 bytes a record.
    pub fn keep_locations(&mut self) {
        self.locations.get_or_insert_with(Vec::new);
    }

    /// Where each record went, since [`Writer::keep_locations`].
    pub fn take_locations(&mut self) -> Vec<RecordLocation> {
        self.locations.take().unwrap_or_default()
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The compression the header announced.
    pub fn compression(&self) -> Compression {
        self.encoder.compression
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Encodes with `encode` into the scratch buffer, then appends.
    fn encode_and_append(
        &mut self,
        encode: impl FnOnce(&mut Encoder, &mut Encoded) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let result = encode(&mut self.encoder, &mut scratch).and_then(|()| self.append(&scratch));
        self.scratch = scratch;
        result
    }

    /// One DATA record of `content` (1 to [`MAX_RECORD_LEN`] bytes) at
    /// `offset`, compressed when that makes it smaller.
    pub fn data(&mut self, offset: u64, content: &[u8]) -> io::Result<()> {
        self.encode_and_append(|e, out| e.data(offset, content, out))
    }

    /// One ZERO record: `length` (1 to [`MAX_RECORD_LEN`]) zero bytes at `offset`.
    pub fn zero(&mut self, offset: u64, length: u64) -> io::Result<()> {
        self.encode_and_append(|e, out| e.zero(offset, length, out))
    }

    /// The records for `content` at `offset`, of any length: all-zero runs
    /// of [`ZERO_BLOCK`]s (aligned to the origin) become ZERO records, the
    /// rest DATA records, none longer than [`MAX_RECORD_LEN`].
    pub fn extent(&mut self, offset: u64, content: &[u8]) -> io::Result<()> {
        self.encode_and_append(|e, out| e.extent(offset, content, out))
    }

    /// Appends records encoded apart (see [`Encoder`]); they must follow
    /// the records written so far in offset order.
    pub fn append(&mut self, records: &Encoded) -> io::Result<()> {
        let bytes = records.as_bytes();
        if let Some(locations) = &mut self.locations {
            let mut pos = 0;
            while pos + RECORD_HEADER_LEN <= bytes.len() {
                let raw: &[u8; RECORD_HEADER_LEN] = bytes[pos..pos + RECORD_HEADER_LEN]
                    .try_into()
                    .expect("RECORD_HEADER_LEN bytes");
                let Some(head) = RecordHeader::decode(raw) else {
                    break;
                };
                locations.push(RecordLocation {
                    offset: head.offset,
                    length: head.length,
                    stored: head.stored,
                    kind: head.kind,
                    at: self.position + pos as u64,
                });
                pos += RECORD_HEADER_LEN + head.stored as usize;
            }
        }
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.position += bytes.len() as u64;
        let t = &records.totals;
        self.totals.records += t.records;
        self.totals.data_bytes += t.data_bytes;
        self.totals.zero_bytes += t.zero_bytes;
        self.totals.payload_bytes += t.payload_bytes;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The digest of the stream so far: what the END record will carry if
    /// [`Writer::finish`] is called now.
    pub fn digest(&self) -> u128 {
        self.hasher.digest128()
    }

    /// Writes the END record and flushes; returns the output, the totals and
    /// the stream's length.
    pub fn finish(mut self) -> io::Result<(W, Totals, u64)> {
        let end = encode_end(&self.totals, self.hasher.digest128());
        self.out.write_all(&end)?;
        self.out.flush()?;
        self.position += end.len() as u64;
        Ok((self.out, self.totals, self.position))
    }
}

/// Calls `f(offset, run, is_zero)` for the maximal all-zero and non-zero
/// runs of `content`, cut at [`ZERO_BLOCK`] boundaries of the origin and at
/// [`MAX_RECORD_LEN`].
fn for_each_run(
    offset: u64,
    content: &[u8],
    mut f: impl FnMut(u64, &[u8], bool) -> io::Result<()>,
) -> io::Result<()> {
    let max = MAX_RECORD_LEN as usize;
    let mut pos = 0usize;
    while pos < content.len() {
        // The first block may be partial, to align the rest to the origin.
        let misalign = ((offset + pos as u64) % ZERO_BLOCK as u64) as usize;
        let mut end = (pos + ZERO_BLOCK - misalign).min(content.len());
        let zero = is_zero(&content[pos..end]);
        let limit = (pos + max).min(content.len());
        while end < limit {
            let next = (end + ZERO_BLOCK).min(limit);
            if is_zero(&content[end..next]) != zero {
                break;
            }
            end = next;
        }
        f(offset + pos as u64, &content[pos..end], zero)?;
        pos = end;
    }
    Ok(())
}

/// Encoded records, ready for [`Writer::append`]: their bytes and counts.
/// Buffers are meant to be reused.
pub struct Encoded {
    /// Always full length; `used` bytes of it are records.
    buf: Vec<u8>,
    used: usize,
    totals: Totals,
}

impl Default for Encoded {
    fn default() -> Self {
        Encoded::new()
    }
}

impl Encoded {
    /// Room for the records of [`MAX_RECORD_LEN`] bytes of content; grows
    /// if more is encoded into it.
    pub fn new() -> Encoded {
        let headers = (MAX_RECORD_LEN as usize / ZERO_BLOCK + 2) * RECORD_HEADER_LEN;
        Encoded {
            buf: vec![
                0u8;
                lz4_flex::block::get_maximum_output_size(MAX_RECORD_LEN as usize) + headers
            ],
            used: 0,
            totals: Totals::default(),
        }
    }

    pub fn clear(&mut self) {
        self.used = 0;
        self.totals = Totals::default();
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.used]
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// `len` more bytes of room after what is used.
    fn room(&mut self, len: usize) -> &mut [u8] {
        let need = self.used + len;
        // Only up to what is needed: Vec grows its capacity by doubling,
        // and the pages past its length are not touched.
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.used..need]
    }
}

/// Encodes records into [`Encoded`] buffers, so that the costly part of
/// writing a stream (zero detection, checksums, compression) can run on
/// several threads, each with an encoder of its own, while one [`Writer`]
/// appends the results in order. A zstd encoder keeps its compression
/// context from record to record.
pub struct Encoder {
    compression: Compression,
    /// Made at the first record zstd compresses.
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// With zstd: the level set by [`Encoder::set_zstd_level`] (`--compress
    /// auto`), or records stored raw (`None`), instead of the header's.
    level: Option<Option<i32>>,
    /// A GROUP's frame, before it goes out after its header: only the
    /// frame's bytes of it are touched, so that a worker's output holds
    /// what a GROUP takes compressed, not what it holds.
    frame: Vec<u8>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new(compression: Compression) -> Encoder {
        Encoder {
            compression,
            zstd: None,
            level: None,
            frame: Vec::new(),
        }
    }

    /// With zstd, compresses the next records at `level` (any level zstd
    /// has, its fast negative ones too), or stores them raw (`None`).
    /// Readers need no level: the stream stays what its header says.
    pub fn set_zstd_level(&mut self, level: Option<i32>) -> io::Result<()> {
        if let (Some(l), Some(z)) = (level, self.zstd.as_mut()) {
            if self.level != Some(level) {
                z.set_compression_level(l)?;
            }
        }
        self.level = Some(level);
        Ok(())
    }

    /// The compression it uses.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The records for `content` at `offset`, of any length, into `out`
    /// (see [`Writer::extent`]).
    pub fn extent(&mut self, offset: u64, content: &[u8], out: &mut Encoded) -> io::Result<()> {
        for_each_run(offset, content, |at, run, zero| {
            if zero {
                self.zero(at, run.len() as u64, out)
            } else {
                self.data(at, run, out)
            }
        })
    }

    /// One DATA record of `content` (1 to [`MAX_RECORD_LEN`] bytes) at
    /// `offset`, compressed when asked and when that makes it smaller,
    /// into `out`.
    pub fn data(&mut self, offset: u64, content: &[u8], out: &mut Encoded) -> io::Result<()> {
        let length = record_length(content.len())?;
        let checksum = xxh3_64(content);
        let bound = match self.compression {
            Compression::Lz4 => lz4_flex::block::get_maximum_output_size(content.len()),
            _ => content.len(),
        };
        let room = out.room(RECORD_HEADER_LEN + bound.max(content.len()));
        let payload = &mut room[RECORD_HEADER_LEN..];
        let compressed = match self.compression {
            Compression::Lz4 => match lz4_flex::block::compress_into(content, payload) {
                Ok(n) if n < content.len() => Some(n),
                _ => None,
            },
            // Into less room than the content: a frame that does not fit
            // would not make the record smaller, and fails.
            Compression::Zstd { .. } if self.level == Some(None) => None,
            Compression::Zstd { level } => {
                if self.zstd.is_none() {
                    let level = match self.level {
                        Some(Some(l)) => l,
                        _ => level.clamp(*ZSTD_LEVELS.start(), *ZSTD_LEVELS.end()),
                    };
                    self.zstd = Some(zstd::bulk::Compressor::new(level)?);
                }
                self.zstd.as_mut().and_then(|z| {
                    z.compress_to_buffer(content, &mut payload[..content.len() - 1])
                        .ok()
                })
            }
            Compression::None => None,
        };
        let (flags, stored) = match compressed {
            Some(n) => (self.compression.flag(), n),
            None => {
                payload[..content.len()].copy_from_slice(content);
                (0, content.len())
            }
        };
        let head = RecordHeader {
            kind: KIND_DATA,
            flags,
            length,
            offset,
            stored: stored as u32,
            checksum,
        }
        .encode();
        room[..RECORD_HEADER_LEN].copy_from_slice(&head);
        out.used += RECORD_HEADER_LEN + stored;
        out.totals.records += 1;
        out.totals.data_bytes += u64::from(length);
        out.totals.payload_bytes += stored as u64;
        Ok(())
    }

    /// One ZERO record of `length` (1 to [`MAX_RECORD_LEN`]) bytes at
    /// `offset`, into `out`.
    pub fn zero(&self, offset: u64, length: u64, out: &mut Encoded) -> io::Result<()> {
        let length = record_length(usize::try_from(length).unwrap_or(usize::MAX))?;
        let head = RecordHeader {
            kind: KIND_ZERO,
            flags: 0,
            length,
            offset,
            stored: 0,
            checksum: 0,
        }
        .encode();
        out.room(RECORD_HEADER_LEN).copy_from_slice(&head);
        out.used += RECORD_HEADER_LEN;
        out.totals.records += 1;
        out.totals.zero_bytes += u64::from(length);
        Ok(())
    }

    /// The records of `raw` (encoded without compression, in order) into
    /// `out`: as one GROUP record when the stream is zstd, they are two or
    /// more, and its frame is smaller than they are; as they are when the
    /// frame of them all is not smaller (no frame of one of them would be);
    /// else one by one, each compressed as [`Encoder::data`] does.
    pub fn group(&mut self, raw: &Encoded, out: &mut Encoded) -> io::Result<()> {
        match self.try_group(raw, out)? {
            Some(true) => return Ok(()),
            Some(false) => {
                let bytes = raw.as_bytes();
                out.room(bytes.len()).copy_from_slice(bytes);
                out.used += bytes.len();
                let (t, r) = (&mut out.totals, &raw.totals);
                t.records += r.records;
                t.data_bytes += r.data_bytes;
                t.zero_bytes += r.zero_bytes;
                t.payload_bytes += r.payload_bytes;
                return Ok(());
            }
            None => {}
        }
        let bytes = raw.as_bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            let head = bytes
                .get(pos..pos + RECORD_HEADER_LEN)
                .and_then(|b| RecordHeader::decode(b.try_into().ok()?))
                .ok_or_else(|| io::Error::other("a record to group is not a whole record"))?;
            let stored = head.stored as usize;
            let start = pos + RECORD_HEADER_LEN;
            match head.kind {
                KIND_ZERO => self.zero(head.offset, u64::from(head.length), out)?,
                _ => self.data(head.offset, &bytes[start..start + stored], out)?,
            }
            pos = start + stored;
        }
        Ok(())
    }

    /// [`Encoder::group`]'s GROUP record: whether it made one, or `None`
    /// when it does not try (not zstd, stored raw by auto, one record, too
    /// long).
    fn try_group(&mut self, raw: &Encoded, out: &mut Encoded) -> io::Result<Option<bool>> {
        let bytes = raw.as_bytes();
        let Compression::Zstd { level } = self.compression else {
            return Ok(None);
        };
        if self.level == Some(None)
            || raw.totals.records < 2
            || bytes.len() > MAX_GROUP_LEN as usize
        {
            return Ok(None);
        }
        if self.zstd.is_none() {
            let level = match self.level {
                Some(Some(l)) => l,
                _ => level.clamp(*ZSTD_LEVELS.start(), *ZSTD_LEVELS.end()),
            };
            self.zstd = Some(zstd::bulk::Compressor::new(level)?);
        }
        let first = RecordHeader::decode(
            bytes[..RECORD_HEADER_LEN]
                .try_into()
                .expect("RECORD_HEADER_LEN bytes"),
        )
        .ok_or_else(|| io::Error::other("a record to group is not a whole record"))?;
        let Some(z) = self.zstd.as_mut() else {
            return Ok(None);
        };
        // Into less room than the records (a frame that does not fit would
        // not be smaller, and fails), or about that: the room may be more.
        let frame = &mut self.frame;
        frame.clear();
        frame.reserve(bytes.len() - 1);
        let stored = match z.compress_to_buffer(bytes, frame) {
            Ok(stored) if stored < bytes.len() => stored,
            _ => return Ok(Some(false)),
        };
        let room = out.room(RECORD_HEADER_LEN + stored);
        room[RECORD_HEADER_LEN..].copy_from_slice(&frame[..stored]);
        let head = RecordHeader {
            kind: KIND_GROUP,
            flags: FLAG_ZSTD,
            length: bytes.len() as u32,
            offset: first.offset,
            stored: stored as u32,
            checksum: xxh3_64(bytes),
        }
        .encode();
        room[..RECORD_HEADER_LEN].copy_from_slice(&head);
        out.used += RECORD_HEADER_LEN + stored;
        let t = &raw.totals;
        out.totals.records += t.records;
        out.totals.data_bytes += t.data_bytes;
        out.totals.zero_bytes += t.zero_bytes;
        out.totals.payload_bytes += stored as u64;
        Ok(Some(true))
    }
}

fn record_length(len: usize) -> io::Result<u32> {
    u32::try_from(len)
        .ok()
        .filter(|&l| (1..=MAX_RECORD_LEN).contains(&l))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("record length {len} is not within 1 to {MAX_RECORD_LEN} bytes"),
            )
        })
}

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Data { compressed: bool },
    Zero,
}

/// A record that has passed every check.
#[derive(Debug)]
pub struct Record<'a> {
    /// Its index in the stream, from 0.
    pub index: u64,
    /// Stream offset of its header.
    pub at: u64,
    pub offset: u64,
    pub length: u64,
    pub kind: RecordKind,
    /// Payload bytes it took in the stream (0 in a GROUP, whose payload
    /// holds it).
    pub stored: u64,
    /// It came in a GROUP record (then `at` is the GROUP's).
    pub grouped: bool,
    /// The extent's new content (empty for ZERO).
    pub content: &'a [u8],
}

/// What the END record confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub totals: Totals,
    /// Length of the whole stream, END included.
    pub stream_len: u64,
    /// The digest of everything before the END record, as the END record
    /// carries it and as it was found.
    pub digest: u128,
}

/// Reads a delta stream record by record, checking everything before it
/// hands a record out. Memory is bounded by [`MAX_RECORD_LEN`].
pub struct Reader<R: Read> {
    input: R,
    version: u32,
    header: Header,
    header_len: u64,
    position: u64,
    hasher: Xxh3Default,
    totals: Totals,
    prev_end: u64,
    payload: Vec<u8>,
    content: Vec<u8>,
    decoder: Decoder,
    end: Option<End>,
    /// The GROUP whose records are being handed out, and its records
    /// (decompressed and checked as a whole).
    group: Option<Group>,
    group_body: Vec<u8>,
}

/// Where a [`Reader`] is in a GROUP record.
#[derive(Debug, Clone, Copy)]
struct Group {
    /// The stream offset of its header.
    at: u64,
    /// Its first record's offset, as its header says.
    offset: u64,
    /// Bytes of its records, and how far they have been handed out.
    len: usize,
    pos: usize,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the magic, the version and the header.
    pub fn open(mut input: R) -> Result<Reader<R>, StreamError> {
        let mut pre = [0u8; PREAMBLE_LEN];
        let n = read_full(&mut input, &mut pre, 0)?;
        let magic_len = n.min(MAGIC.len());
        if n == 0 {
            return Err(StreamError::Empty);
        }
        if n >= 4 && LittleEndian::read_u32(&pre[..4]) == crate::cow::SNAP_MAGIC {
            return Err(StreamError::CowImage);
        }
        if pre[..magic_len] != MAGIC[..magic_len] {
            return Err(StreamError::NotADelta {
                found: hex(&pre[..magic_len]),
            });
        }
        if n < 12 {
            return Err(StreamError::Truncated {
                at: n as u64,
                context: "inside its magic and version".into(),
            });
        }
        let version = LittleEndian::read_u32(&pre[8..12]);
        if version == 0 || version > VERSION + PLAUSIBLE_NEWER_VERSIONS {
            return Err(StreamError::DamagedHeader {
                reason: format!(
                    "its format version field reads {version}, which no lvmsync-rs writes (this one writes version {VERSION})"
                ),
            });
        }
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(StreamError::UnknownVersion {
                found: version,
                known: VERSION,
                by: if version > VERSION {
                    "a newer"
                } else {
                    "an older"
                },
            });
        }
        if n < PREAMBLE_LEN {
            return Err(StreamError::Truncated {
                at: n as u64,
                context: "inside its header".into(),
            });
        }
        let len = LittleEndian::read_u32(&pre[12..16]);
        if len == 0 || len > MAX_HEADER_LEN {
            return Err(StreamError::DamagedHeader {
                reason: format!("its length {len} is not within 1 to {MAX_HEADER_LEN} bytes"),
            });
        }
        let mut frame = vec![0u8; PREAMBLE_LEN + len as usize + 8];
        frame[..PREAMBLE_LEN].copy_from_slice(&pre);
        let n = read_full(&mut input, &mut frame[PREAMBLE_LEN..], PREAMBLE_LEN as u64)?;
        if PREAMBLE_LEN + n < frame.len() {
            return Err(StreamError::Truncated {
                at: (PREAMBLE_LEN + n) as u64,
                context: "inside its header".into(),
            });
        }
        let body_end = PREAMBLE_LEN + len as usize;
        if LittleEndian::read_u64(&frame[body_end..]) != xxh3_64(&frame[..body_end]) {
            return Err(StreamError::DamagedHeader {
                reason: "checksum mismatch".into(),
            });
        }
        let header: Header = header_options()
            .deserialize(&frame[PREAMBLE_LEN..body_end])
            .map_err(|e| StreamError::DamagedHeader {
                reason: format!("its checksum holds but it cannot be decoded ({e})"),
            })?;
        if header.compression.added_in() > version {
            return Err(StreamError::DamagedHeader {
                reason: format!(
                    "it says {} compression, which format version {version} does not have (version {} added it)",
                    header.compression.codec(),
                    header.compression.added_in()
                ),
            });
        }
        if header.resume_from > header.origin_size {
            return Err(StreamError::DamagedHeader {
                reason: format!(
                    "it resumes at offset {}, past the end of the origin ({} bytes)",
                    header.resume_from, header.origin_size
                ),
            });
        }
        let resume_from = header.resume_from;
        let mut hasher = Xxh3Default::new();
        hasher.update(&frame);
        let payload = match header.compression {
            Compression::Lz4 | Compression::Zstd { .. } => vec![0u8; MAX_RECORD_LEN as usize],
            Compression::None => Vec::new(),
        };
        Ok(Reader {
            input,
            version,
            header,
            header_len: frame.len() as u64,
            position: frame.len() as u64,
            hasher,
            totals: Totals::default(),
            prev_end: resume_from,
            payload,
            content: vec![0u8; MAX_RECORD_LEN as usize],
            decoder: Decoder::new(),
            end: None,
            group: None,
            group_body: Vec::new(),
        })
    }

    /// The stream's format version.
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes of the magic and header.
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Stream bytes read and checked so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Counts of the records handed out so far.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The END record, once it has been read and has matched the stream.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// Takes the last record's content without copying it: exchanges the
    /// reader's content buffer, which holds it at its start, with `spare`.
    /// `spare` is resized to [`MAX_RECORD_LEN`] if it is shorter.
    pub fn swap_content(&mut self, spare: &mut Vec<u8>) {
        if spare.len() < MAX_RECORD_LEN as usize {
            spare.resize(MAX_RECORD_LEN as usize, 0);
        }
        std::mem::swap(&mut self.content, spare);
    }

    /// The next record, checked; `None` once the END record has been read,
    /// has matched the stream, and nothing follows it. After an error the
    /// reader must not be used again.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, StreamError> {
        if self.end.is_some() {
            return Ok(None);
        }
        if self.group.is_some() {
            return self.next_in_group().map(Some);
        }
        let at = self.position;
        let index = self.totals.records;
        let mut raw = [0u8; RECORD_HEADER_LEN];
        let n = read_full(&mut self.input, &mut raw, at)?;
        if n == 0 {
            return Err(StreamError::Truncated {
                at,
                context: format!("after record {index}, where the next record or the END record should start; the stream is incomplete"),
            });
        }
        if n < RECORD_HEADER_LEN {
            return Err(StreamError::Truncated {
                at: at + n as u64,
                context: format!(
                    "inside the header of the record that starts at byte {at} (record {index})"
                ),
            });
        }
        self.position += RECORD_HEADER_LEN as u64;
        let head =
            RecordHeader::decode(&raw).ok_or(StreamError::DamagedRecordHeader { index, at })?;
        if head.kind == KIND_END {
            return self.read_end(at, &head).map(|()| None);
        }
        if head.kind == KIND_GROUP {
            self.read_group(at, index, &head, &raw)?;
            return self.next_in_group().map(Some);
        }
        let bad = |reason: String| StreamError::BadRecord { index, at, reason };
        check_head(&head, self.header.compression, self.header.origin_size).map_err(bad)?;
        self.hasher.update(&raw);
        let length = u64::from(head.length);
        if head.offset < self.prev_end {
            return Err(bad(format!(
                "it starts at offset {}, before the end of the previous record or the offset the delta resumes at ({}); records must be in increasing order without overlap",
                head.offset, self.prev_end
            )));
        }
        let compressed = head.kind == KIND_DATA && head.flags != 0;
        let len = head.length as usize;
        let stored = head.stored as usize;
        let kind = if head.kind == KIND_ZERO {
            RecordKind::Zero
        } else {
            let buf = if compressed {
                &mut self.payload[..stored]
            } else {
                &mut self.content[..len]
            };
            let what = ("record", at, index);
            read_payload(
                &mut self.input,
                &mut self.hasher,
                &mut self.position,
                buf,
                what,
            )?;
            let (payload, content) = (&self.payload[..], &mut self.content[..]);
            let payload = if compressed {
                &payload[..stored]
            } else {
                &[][..]
            };
            self.decoder
                .decode(&head, payload, content)
                .map_err(|reason| StreamError::DamagedPayload { index, at, reason })?;
            RecordKind::Data { compressed }
        };
        self.prev_end = head.offset + length;
        self.totals.records += 1;
        match kind {
            RecordKind::Zero => self.totals.zero_bytes += length,
            RecordKind::Data { .. } => {
                self.totals.data_bytes += length;
                self.totals.payload_bytes += stored as u64;
            }
        }
        Ok(Some(Record {
            index,
            at,
            offset: head.offset,
            length,
            kind,
            stored: stored as u64,
            grouped: false,
            content: match kind {
                RecordKind::Zero => &[],
                RecordKind::Data { .. } => &self.content[..len],
            },
        }))
    }

    /// Reads and checks the GROUP record at `at` whose header is `head`
    /// (`raw`): its frame, decompressed, must be its `length` bytes and
    /// match its checksum. Its records are then checked one by one as
    /// they are handed out.
    fn read_group(
        &mut self,
        at: u64,
        index: u64,
        head: &RecordHeader,
        raw: &[u8; RECORD_HEADER_LEN],
    ) -> Result<(), StreamError> {
        let bad = |reason: String| StreamError::BadRecord { index, at, reason };
        if self.version < 4 {
            return Err(bad(format!(
                "a GROUP record, which format version {} does not have (version 4 added it)",
                self.version
            )));
        }
        check_group_head(head, self.header.compression, self.header.origin_size).map_err(bad)?;
        if head.offset < self.prev_end {
            return Err(bad(format!(
                "it starts at offset {}, before the end of the previous record or the offset the delta resumes at ({}); records must be in increasing order without overlap",
                head.offset, self.prev_end
            )));
        }
        self.hasher.update(raw);
        let (len, stored) = (head.length as usize, head.stored as usize);
        if self.payload.len() < stored {
            self.payload.resize(stored, 0);
        }
        let buf = &mut self.payload[..stored];
        let what = ("GROUP record", at, index);
        read_payload(
            &mut self.input,
            &mut self.hasher,
            &mut self.position,
            buf,
            what,
        )?;
        if self.group_body.len() < len {
            self.group_body.resize(len, 0);
        }
        self.decoder
            .decode(head, &self.payload[..stored], &mut self.group_body[..len])
            .map_err(|reason| StreamError::DamagedPayload { index, at, reason })?;
        self.totals.payload_bytes += stored as u64;
        self.group = Some(Group {
            at,
            offset: head.offset,
            len,
            pos: 0,
        });
        Ok(())
    }

    /// The next record of the current GROUP, checked as any record is: a
    /// raw DATA or a ZERO record, in order, within the origin.
    fn next_in_group(&mut self) -> Result<Record<'_>, StreamError> {
        let Some(mut g) = self.group else {
            return Err(StreamError::BadRecord {
                index: self.totals.records,
                at: self.position,
                reason: "no GROUP record is being read".into(),
            });
        };
        let index = self.totals.records;
        let at = g.at;
        let bad = |reason: String| StreamError::BadRecord {
            index,
            at,
            reason: format!("in the GROUP record at byte {at}: {reason}"),
        };
        let body = &self.group_body[..g.len];
        let raw: &[u8; RECORD_HEADER_LEN] = body
            .get(g.pos..g.pos + RECORD_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                bad(format!(
                    "its records end with {} bytes that are not a whole record header",
                    g.len - g.pos
                ))
            })?;
        let head = RecordHeader::decode(raw)
            .ok_or_else(|| bad(format!("the header of record {index} in it is damaged")))?;
        if !matches!((head.kind, head.flags), (KIND_DATA, 0) | (KIND_ZERO, 0)) {
            return Err(bad(format!(
                "a record of kind 0x{:02x} with flags 0x{:02x}: a GROUP holds raw DATA and ZERO records only",
                head.kind, head.flags
            )));
        }
        check_head(&head, Compression::None, self.header.origin_size).map_err(bad)?;
        if g.pos == 0 && head.offset != g.offset {
            return Err(bad(format!(
                "its first record starts at offset {}, not at the GROUP's offset {}",
                head.offset, g.offset
            )));
        }
        if head.offset < self.prev_end {
            return Err(bad(format!(
                "a record starts at offset {}, before the end of the previous record ({}); records must be in increasing order without overlap",
                head.offset, self.prev_end
            )));
        }
        let (len, stored) = (head.length as usize, head.stored as usize);
        let start = g.pos + RECORD_HEADER_LEN;
        let Some(content) = body.get(start..start + stored) else {
            return Err(bad(format!(
                "record {index} in it ends past the end of its records"
            )));
        };
        let kind = if head.kind == KIND_ZERO {
            RecordKind::Zero
        } else {
            if xxh3_64(content) != head.checksum {
                return Err(StreamError::DamagedPayload {
                    index,
                    at,
                    reason: "content checksum mismatch (a record in a GROUP)".into(),
                });
            }
            self.content[..len].copy_from_slice(content);
            RecordKind::Data { compressed: true }
        };
        g.pos = start + stored;
        self.group = (g.pos < g.len).then_some(g);
        let length = u64::from(head.length);
        self.prev_end = head.offset + length;
        self.totals.records += 1;
        match kind {
            RecordKind::Zero => self.totals.zero_bytes += length,
            RecordKind::Data { .. } => self.totals.data_bytes += length,
        }
        Ok(Record {
            index,
            at,
            offset: head.offset,
            length,
            kind,
            stored: 0,
            grouped: true,
            content: match kind {
                RecordKind::Zero => &[],
                RecordKind::Data { .. } => &self.content[..len],
            },
        })
    }

    fn read_end(&mut self, at: u64, head: &RecordHeader) -> Result<(), StreamError> {
        let damaged = |reason: &str| StreamError::DamagedEnd {
            at,
            reason: reason.into(),
        };
        if head.flags != 0
            || head.length != 0
            || head.offset != 0
            || head.stored as usize != END_PAYLOAD_LEN
        {
            return Err(damaged("unexpected fields in its header"));
        }
        let digest = self.hasher.digest128();
        let mut payload = [0u8; END_PAYLOAD_LEN];
        let n = read_full(&mut self.input, &mut payload, self.position)?;
        if n < END_PAYLOAD_LEN {
            return Err(StreamError::Truncated {
                at: self.position + n as u64,
                context: format!("inside the END record that starts at byte {at}"),
            });
        }
        self.position += END_PAYLOAD_LEN as u64;
        if xxh3_64(&payload) != head.checksum {
            return Err(damaged("checksum mismatch"));
        }
        let claimed = Totals {
            records: LittleEndian::read_u64(&payload[0..8]),
            data_bytes: LittleEndian::read_u64(&payload[8..16]),
            zero_bytes: LittleEndian::read_u64(&payload[16..24]),
            payload_bytes: LittleEndian::read_u64(&payload[24..32]),
        };
        let found = self.totals;
        for (what, c, f) in [
            ("records", claimed.records, found.records),
            ("DATA bytes", claimed.data_bytes, found.data_bytes),
            ("ZERO bytes", claimed.zero_bytes, found.zero_bytes),
            ("payload bytes", claimed.payload_bytes, found.payload_bytes),
        ] {
            if c != f {
                return Err(StreamError::EndMismatch {
                    at,
                    what,
                    claimed: c,
                    found: f,
                });
            }
        }
        if LittleEndian::read_u128(&payload[32..48]) != digest {
            return Err(StreamError::DigestMismatch { at });
        }
        // Nothing may follow.
        let mut extra = 0u64;
        let mut scratch = [0u8; 4096];
        loop {
            match self.input.read(&mut scratch) {
                Ok(0) => break,
                Ok(n) => {
                    extra += n as u64;
                    if extra >= 1 << 20 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(StreamError::Read {
                        at: self.position + extra,
                        source,
                    })
                }
            }
        }
        if extra > 0 {
            return Err(StreamError::TrailingData {
                at: self.position,
                extra,
            });
        }
        self.end = Some(End {
            totals: found,
            stream_len: self.position,
            digest,
        });
        Ok(())
    }
}

/// What is wrong with a GROUP record's header, in a stream with this
/// `compression` and origin size.
fn check_group_head(
    head: &RecordHeader,
    compression: Compression,
    origin_size: u64,
) -> Result<(), String> {
    if head.flags != FLAG_ZSTD {
        return Err(format!(
            "a GROUP record with flags 0x{:02x}: its payload is a zstd frame (flags 02)",
            head.flags
        ));
    }
    if !matches!(compression, Compression::Zstd { .. }) {
        return Err(format!(
            "a GROUP record in a stream whose header says {}",
            match compression {
                Compression::None => "no compression",
                other => other.codec(),
            }
        ));
    }
    if head.length < 2 * RECORD_HEADER_LEN as u32 || head.length > MAX_GROUP_LEN {
        return Err(format!(
            "a GROUP record of {} bytes of records (must be {} to {MAX_GROUP_LEN})",
            head.length,
            2 * RECORD_HEADER_LEN
        ));
    }
    if head.stored == 0 || head.stored >= head.length {
        return Err(format!(
            "zstd payload of {} bytes for {} bytes of records (must be smaller)",
            head.stored, head.length
        ));
    }
    if head.offset >= origin_size {
        return Err(format!(
            "it starts at offset {}, past the end of the origin ({origin_size} bytes)",
            head.offset
        ));
    }
    Ok(())
}

/// What is wrong with a DATA or ZERO record's header, in a stream with
/// this `compression` and origin size: everything [`Reader`] checks of a
/// record on its own (not its place among the others).
fn check_head(
    head: &RecordHeader,
    compression: Compression,
    origin_size: u64,
) -> Result<(), String> {
    match head.kind {
        KIND_DATA if head.flags & !(FLAG_LZ4 | FLAG_ZSTD) != 0 => {
            return Err(format!("unknown flags 0x{:02x}", head.flags))
        }
        KIND_DATA if head.flags == FLAG_LZ4 | FLAG_ZSTD => {
            return Err(format!("flags 0x{:02x} say both lz4 and zstd", head.flags))
        }
        KIND_ZERO if head.flags != 0 => return Err(format!("unknown flags 0x{:02x}", head.flags)),
        KIND_DATA | KIND_ZERO => {}
        other => return Err(format!("unknown record kind 0x{other:02x}")),
    }
    let length = u64::from(head.length);
    if head.length == 0 || head.length > MAX_RECORD_LEN {
        return Err(format!(
            "its length {length} is not within 1 to {MAX_RECORD_LEN} bytes"
        ));
    }
    let end = head.offset.checked_add(length);
    if end.is_none_or(|end| end > origin_size) {
        return Err(format!(
            "its extent (offset {}, length {length}) ends past the end of the origin ({origin_size} bytes)",
            head.offset
        ));
    }
    // The codec of a compressed DATA record, and how a message names one
    // of its records.
    let codec = match head.flags {
        FLAG_LZ4 => Some(("lz4", "an lz4")),
        FLAG_ZSTD => Some(("zstd", "a zstd")),
        _ => None,
    };
    match (head.kind, codec) {
        (KIND_ZERO, _) if head.stored != 0 || head.checksum != 0 => {
            Err("a ZERO record with a payload or a content checksum".into())
        }
        (KIND_DATA, Some((_, a_record))) if head.flags != compression.flag() => Err(format!(
            "{a_record} record in a stream whose header says {}",
            match compression {
                Compression::None => "no compression",
                other => other.codec(),
            }
        )),
        (KIND_DATA, Some((name, _))) if head.stored == 0 || head.stored >= head.length => {
            Err(format!(
                "{name} payload of {} bytes for {length} bytes of content (must be smaller)",
                head.stored
            ))
        }
        (KIND_DATA, None) if head.stored != head.length => Err(format!(
            "raw payload of {} bytes for {length} bytes of content",
            head.stored
        )),
        _ => Ok(()),
    }
}

/// Decodes DATA payloads. It keeps a zstd context, made at the first zstd
/// record, for the records after it: a thread that decodes many records
/// keeps one decoder.
#[derive(Default)]
pub struct Decoder {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Decompresses a DATA record's compressed `payload` into `content`
    /// (a raw payload is already there), exactly `head.length` bytes, and
    /// checks the content's checksum. The record's header has passed
    /// [`check_head`].
    fn decode(
        &mut self,
        head: &RecordHeader,
        payload: &[u8],
        content: &mut [u8],
    ) -> Result<(), String> {
        let len = head.length as usize;
        let out = &mut content[..len];
        if head.flags == FLAG_LZ4 {
            match lz4_flex::block::decompress_into(payload, out) {
                Ok(n) if n == len => {}
                Ok(n) => {
                    return Err(format!(
                        "its lz4 data decompresses to {n} bytes instead of {len}"
                    ))
                }
                Err(e) => return Err(format!("its lz4 data cannot be decompressed ({e})")),
            }
        } else if head.flags == FLAG_ZSTD {
            // One frame, exactly the payload; decompressed into the
            // record's room, whatever size its frame header claims.
            match zstd::zstd_safe::find_frame_compressed_size(payload) {
                Ok(n) if n == payload.len() => {}
                Ok(n) => {
                    return Err(format!(
                        "its zstd data is not one frame: a frame ends after {n} of its {} bytes",
                        payload.len()
                    ))
                }
                Err(code) => {
                    return Err(format!(
                        "its zstd data is not a zstd frame ({})",
                        zstd::zstd_safe::get_error_name(code)
                    ))
                }
            }
            if self.zstd.is_none() {
                let z = zstd::bulk::Decompressor::new()
                    .map_err(|e| format!("no zstd decompression context ({e})"))?;
                self.zstd = Some(z);
            }
            match self
                .zstd
                .as_mut()
                .map(|z| z.decompress_to_buffer(payload, out))
            {
                Some(Ok(n)) if n == len => {}
                Some(Ok(n)) => {
                    return Err(format!(
                        "its zstd data decompresses to {n} bytes instead of {len}"
                    ))
                }
                None => return Err("no zstd decompression context".into()),
                Some(Err(e)) => {
                    return Err(format!(
                        "its zstd data cannot be decompressed into {len} bytes ({e})"
                    ))
                }
            }
        }
        if xxh3_64(&content[..len]) != head.checksum {
            return Err("content checksum mismatch".into());
        }
        Ok(())
    }
}

/// One DATA or ZERO record on its own, as `bytes` (its header and payload,
/// cut out of a stream at byte `at`, where it is record `index`): checked
/// as [`Reader`] checks it, its content decoded into `content` (at least
/// [`MAX_RECORD_LEN`] bytes) with `decoder`. A reader of only some records
/// of a stream (the archive's restore) checks each of them so before
/// writing it.
pub fn check_record(
    bytes: &[u8],
    compression: Compression,
    origin_size: u64,
    index: u64,
    at: u64,
    content: &mut [u8],
    decoder: &mut Decoder,
) -> Result<(RecordHeader, RecordKind), StreamError> {
    let truncated = || StreamError::Truncated {
        at: at + bytes.len() as u64,
        context: format!("inside the record that starts at byte {at} (record {index})"),
    };
    let raw: &[u8; RECORD_HEADER_LEN] = bytes
        .get(..RECORD_HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(truncated)?;
    let head = RecordHeader::decode(raw).ok_or(StreamError::DamagedRecordHeader { index, at })?;
    let bad = |reason: String| StreamError::BadRecord { index, at, reason };
    if head.kind == KIND_END {
        return Err(bad(
            "an END record where a DATA or ZERO record was expected".into(),
        ));
    }
    check_head(&head, compression, origin_size).map_err(bad)?;
    let payload = &bytes[RECORD_HEADER_LEN..];
    if payload.len() != head.stored as usize {
        return Err(if payload.len() < head.stored as usize {
            truncated()
        } else {
            bad(format!(
                "{} {} its header, its payload is {}",
                crate::units::counted(payload.len() as u64, "byte"),
                if payload.len() == 1 {
                    "follows"
                } else {
                    "follow"
                },
                head.stored
            ))
        });
    }
    let kind = if head.kind == KIND_ZERO {
        RecordKind::Zero
    } else {
        let compressed = head.flags != 0;
        if !compressed {
            content[..payload.len()].copy_from_slice(payload);
        }
        decoder
            .decode(&head, if compressed { payload } else { &[] }, content)
            .map_err(|reason| StreamError::DamagedPayload { index, at, reason })?;
        RecordKind::Data { compressed }
    };
    Ok((head, kind))
}

/// Fills `buf` as far as the input goes; returns the bytes read. A read
/// error is reported at the stream offset `at` plus what was read.
/// Reads the payload of a record into all of `buf`, at stream offset
/// `position`, which it advances, and hashes it into the digest; `what`
/// names the record for the error when the stream ends first: its kind
/// (`record`, `GROUP record`), the offset of its header and its index.
fn read_payload<R: Read>(
    input: &mut R,
    hasher: &mut Xxh3Default,
    position: &mut u64,
    buf: &mut [u8],
    what: (&str, u64, u64),
) -> Result<(), StreamError> {
    let n = read_full(input, buf, *position)?;
    if n < buf.len() {
        let (kind, at, index) = what;
        return Err(StreamError::Truncated {
            at: *position + n as u64,
            context: format!(
                "inside the payload of the {kind} that starts at byte {at} (record {index})"
            ),
        });
    }
    hasher.update(buf);
    *position += buf.len() as u64;
    Ok(())
}

fn read_full<R: Read>(input: &mut R, buf: &mut [u8], at: u64) -> Result<usize, StreamError> {
    match crate::files::read_full(input, buf) {
        (n, Ok(())) => Ok(n),
        (n, Err(source)) => Err(StreamError::Read {
            at: at + n as u64,
            source,
        }),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(origin_size: u64, compression: Compression) -> Header {
        Header {
            origin_size,
            chunk_size: 4096,
            source: SourceInfo {
                snapshot: Some("a.cow".into()),
                origin: Some("new.img".into()),
                ..SourceInfo::of_kind(SourceKind::Image)
            },
            compression,
            tool: "lvmsync-rs test".into(),
            base: None,
            target: None,
            resume_from: 0,
            properties: BTreeMap::new(),
        }
    }

    /// offset, length, kind, content
    type ReadBack = (u64, u64, RecordKind, Vec<u8>);

    fn read_all(bytes: &[u8]) -> Result<Vec<ReadBack>, StreamError> {
        let mut r = Reader::open(bytes)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push((rec.offset, rec.length, rec.kind, rec.content.to_vec()));
        }
        assert!(r.end().is_some());
        Ok(out)
    }

    #[test]
    fn a_stream_reads_back_as_written() {
        let mut w = Writer::new(Vec::new(), &header(1 << 24, Compression::Lz4)).unwrap();
        let text = b"hello, delta ".repeat(1000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        w.data(0, &text).unwrap();
        w.data(65536, &noise).unwrap();
        w.zero(1 << 20, 4096).unwrap();
        let (bytes, totals, len) = w.finish().unwrap();
        assert_eq!(len, bytes.len() as u64);
        assert_eq!(totals.records, 3);
        let recs = read_all(&bytes).unwrap();
        assert_eq!(recs[0].2, RecordKind::Data { compressed: true });
        assert_eq!(recs[0].3, text);
        assert_eq!(recs[1].2, RecordKind::Data { compressed: false });
        assert_eq!(recs[1].3, noise);
        assert_eq!(
            (recs[2].0, recs[2].1, recs[2].2),
            (1 << 20, 4096, RecordKind::Zero)
        );
    }

    #[test]
    fn extents_split_into_zero_and_data_runs_at_the_record_limit() {
        let mut w = Writer::new(Vec::new(), &header(1 << 30, Compression::None)).unwrap();
        // 512 bytes before a block boundary, then 3 MiB: data, zeroes, data.
        let mut content = vec![0u8; 512 + (3 << 20)];
        content[..512].fill(7);
        content[512 + (2 << 20)..].fill(9);
        let offset = 4096 - 512;
        w.extent(offset, &content).unwrap();
        let (bytes, _, _) = w.finish().unwrap();
        let recs: Vec<(u64, u64, RecordKind)> = read_all(&bytes)
            .unwrap()
            .into_iter()
            .map(|r| (r.0, r.1, r.2))
            .collect();
        let data = RecordKind::Data { compressed: false };
        assert_eq!(
            recs,
            vec![
                (3584, 512, data),
                (4096, 1 << 20, RecordKind::Zero),
                (4096 + (1 << 20), 1 << 20, RecordKind::Zero),
                (4096 + (2 << 20), 1 << 20, data),
            ]
        );
    }

    #[test]
    fn encoded_records_are_the_records_a_writer_writes() {
        let mut content = b"some text, some text, some text ".repeat(4000);
        content[40000..50000].fill(0);
        let mut x = 7u64;
        for b in content[70000..].iter_mut() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (x >> 56) as u8;
        }
        for compression in [Compression::Lz4, Compression::None, Compression::ZSTD] {
            let h = header(1 << 30, compression);
            let mut direct = Writer::new(Vec::new(), &h).unwrap();
            direct.extent(4096, &content).unwrap();
            direct.extent(1 << 20, &content[..5000]).unwrap();
            let direct = direct.finish().unwrap();
            let mut appended = Writer::new(Vec::new(), &h).unwrap();
            let mut enc = Encoder::new(compression);
            let mut e = Encoded::new();
            enc.extent(4096, &content, &mut e).unwrap();
            appended.append(&e).unwrap();
            e.clear();
            enc.extent(1 << 20, &content[..5000], &mut e).unwrap();
            appended.append(&e).unwrap();
            assert_eq!(appended.finish().unwrap(), direct);
        }
    }

    #[test]
    fn records_past_the_origin_or_out_of_order_are_refused() {
        let mut w = Writer::new(Vec::new(), &header(8192, Compression::None)).unwrap();
        w.data(4096, &[1u8; 8192]).unwrap();
        let (bytes, _, _) = w.finish().unwrap();
        let err = read_all(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("ends past the end of the origin"),
            "{err}"
        );

        let mut w = Writer::new(Vec::new(), &header(1 << 20, Compression::None)).unwrap();
        w.data(8192, &[1u8; 4096]).unwrap();
        w.data(4096, &[1u8; 8192]).unwrap();
        let (bytes, _, _) = w.finish().unwrap();
        let err = read_all(&bytes).unwrap_err();
        assert!(err.to_string().contains("increasing order"), "{err}");
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        for compression in [Compression::Lz4, Compression::ZSTD] {
            let mut w = Writer::new(Vec::new(), &header(1 << 20, compression)).unwrap();
            w.data(0, &b"abcd".repeat(300)).unwrap();
            w.data(8192, &[5u8, 6, 7]).unwrap();
            w.zero(16384, 4096).unwrap();
            let (bytes, _, _) = w.finish().unwrap();
            assert_eq!(
                read_all(&bytes).unwrap()[0].2,
                RecordKind::Data { compressed: true }
            );
            for i in 0..bytes.len() {
                for bit in [0, 3, 7] {
                    let mut b = bytes.clone();
                    b[i] ^= 1 << bit;
                    assert!(
                        read_all(&b).is_err(),
                        "{compression}: bit {bit} of byte {i}"
                    );
                }
            }
            for cut in 0..bytes.len() {
                assert!(
                    read_all(&bytes[..cut]).is_err(),
                    "{compression}: cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn versions_and_magic_are_checked_first() {
        let w = Writer::new(Vec::new(), &header(4096, Compression::Lz4)).unwrap();
        let (mut bytes, _, _) = w.finish().unwrap();
        bytes[8] = 9;
        let err = read_all(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("delta format version 9, but this lvmsync-rs reads versions {OLDEST_VERSION} to {VERSION} only: it was written by a newer lvmsync-rs; use one that knows version 9")
        );
        for version in [1, 5] {
            bytes[8] = version;
            assert!(
                matches!(read_all(&bytes), Err(StreamError::UnknownVersion { found, .. }) if found == u32::from(version))
            );
        }
        bytes[8] = 1;
        let err = read_all(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("written by an older lvmsync-rs"),
            "{err}"
        );
        // A version no lvmsync-rs writes: a bit of the header flipped.
        for version in [0, VERSION + PLAUSIBLE_NEWER_VERSIONS + 1, VERSION | 1 << 16] {
            bytes[8..12].copy_from_slice(&version.to_le_bytes());
            let err = read_all(&bytes).unwrap_err();
            assert!(
                matches!(err, StreamError::DamagedHeader { .. }),
                "{version}: {err}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("its format version field reads {version}")),
                "{err}"
            );
        }
        let err = read_all(b"SnAp\x01\0\0\0\x01\0\0\0\x08\0\0\0").unwrap_err();
        assert!(matches!(err, StreamError::CowImage), "{err}");
        let err = read_all(b"#!/bin/sh\n").unwrap_err();
        assert!(err.to_string().contains("not an lvmsync-rs delta"), "{err}");
        assert!(matches!(read_all(b""), Err(StreamError::Empty)));
        assert!(matches!(
            read_all(&MAGIC[..5]),
            Err(StreamError::Truncated { .. })
        ));
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0u8; 10000]));
        let mut b = vec![0u8; 10000];
        b[9999] = 1;
        assert!(!is_zero(&b));
    }

    /// `len` bytes of text: words in an order that varies, as in logs.
    fn text(len: usize) -> Vec<u8> {
        const WORDS: [&str; 12] = [
            "backup", "volume", "snapshot", "extent", "the", "of", "chunk", "copy", "a", "delta",
            "record", "origin",
        ];
        let mut out = Vec::with_capacity(len + 16);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(WORDS[(x % 12) as usize].as_bytes());
            out.push(if x.is_multiple_of(9) { b'\n' } else { b' ' });
        }
        out.truncate(len);
        out
    }

    /// `len` bytes that do not compress.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    /// A stream of header `h` with one record, `head` and `payload` as
    /// they are, and a good END record.
    fn stream_with(h: &Header, head: &RecordHeader, payload: &[u8]) -> Vec<u8> {
        let mut bytes = head.encode().to_vec();
        bytes.extend_from_slice(payload);
        let records = Encoded {
            used: bytes.len(),
            buf: bytes,
            totals: Totals {
                records: 1,
                data_bytes: u64::from(head.length),
                zero_bytes: 0,
                payload_bytes: u64::from(head.stored),
            },
        };
        let mut w = Writer::new(Vec::new(), h).unwrap();
        w.append(&records).unwrap();
        w.finish().unwrap().0
    }

    /// The header of a zstd DATA record at 0 of `length` bytes whose
    /// content is `content` and payload `payload`.
    fn zstd_head(length: usize, content: &[u8], payload: &[u8]) -> RecordHeader {
        RecordHeader {
            kind: KIND_DATA,
            flags: FLAG_ZSTD,
            length: length as u32,
            offset: 0,
            stored: payload.len() as u32,
            checksum: xxh3_64(content),
        }
    }

    #[test]
    fn zstd_records_read_back_at_every_level() {
        let size = MAX_RECORD_LEN as usize;
        let text = text(size);
        let noise = noise(size, 5);
        let mut mixed = text[..size / 2].to_vec();
        mixed.extend_from_slice(&noise[..size / 2]);
        let small = &text[..100];
        for level in [1, 3, 9, 19] {
            let c = Compression::Zstd { level };
            let mut w = Writer::new(Vec::new(), &header(8 << 20, c)).unwrap();
            w.data(0, &text).unwrap();
            w.data(1 << 20, &noise).unwrap();
            w.data(2 << 20, &mixed).unwrap();
            w.data(3 << 20, &text[..1]).unwrap();
            w.data(4 << 20, small).unwrap();
            let (bytes, totals, _) = w.finish().unwrap();
            assert_eq!(LittleEndian::read_u32(&bytes[8..12]), 4, "level {level}");
            let r = Reader::open(&bytes[..]).unwrap();
            assert_eq!((r.version(), r.header().compression), (4, c));
            let recs = read_all(&bytes).unwrap();
            let zstd = RecordKind::Data { compressed: true };
            let raw = RecordKind::Data { compressed: false };
            let want: [(&[u8], RecordKind); 5] = [
                (&text, zstd),
                (&noise, raw),
                (&mixed, zstd),
                (&text[..1], raw),
                (small, zstd),
            ];
            for (i, (content, kind)) in want.iter().enumerate() {
                assert_eq!(recs[i].2, *kind, "level {level}, record {i}");
                assert!(recs[i].3 == *content, "level {level}, record {i}");
            }
            // Random data (a record and a half) is stored as it is, the
            // text (a record and a half) in less than a third of its size.
            let noise_bytes = size as u64 + size as u64 / 2;
            assert!(totals.payload_bytes > noise_bytes);
            assert!(
                totals.payload_bytes - noise_bytes < noise_bytes / 3,
                "level {level}: {totals:?}"
            );
        }
    }

    #[test]
    fn zstd_stores_text_smaller_than_lz4() {
        let text = text(MAX_RECORD_LEN as usize);
        let stored = |c: Compression| {
            let mut e = Encoded::new();
            Encoder::new(c).data(0, &text, &mut e).unwrap();
            e.totals().payload_bytes
        };
        let (lz4, zstd1, zstd3) = (
            stored(Compression::Lz4),
            stored(Compression::Zstd { level: 1 }),
            stored(Compression::ZSTD),
        );
        assert!(
            zstd1 < lz4 && zstd3 < lz4,
            "lz4 {lz4}, zstd:1 {zstd1}, zstd:3 {zstd3}"
        );
    }

    #[test]
    fn a_reused_zstd_encoder_gives_each_record_the_bytes_a_fresh_one_gives() {
        let a = text(300_000);
        let mut b = noise(200_000, 9);
        b.extend_from_slice(&a[..100_000]);
        let c = Compression::Zstd { level: 5 };
        let fresh = |content: &[u8]| {
            let mut e = Encoded::new();
            Encoder::new(c).data(4096, content, &mut e).unwrap();
            e.as_bytes().to_vec()
        };
        let mut reused = Encoder::new(c);
        let mut e = Encoded::new();
        for content in [&a, &b, &a, &b] {
            e.clear();
            reused.data(4096, content, &mut e).unwrap();
            assert!(e.as_bytes() == fresh(content));
            assert_eq!(e.as_bytes()[1], FLAG_ZSTD);
        }
    }

    #[test]
    fn records_of_another_codec_than_the_header_says_are_refused() {
        let content = text(20000);
        let size = 1 << 20;
        let encoded = |c: Compression| {
            let mut e = Encoded::new();
            Encoder::new(c).data(4096, &content, &mut e).unwrap();
            e
        };
        let cases = [
            (
                Compression::ZSTD,
                Compression::Lz4,
                "a zstd record in a stream whose header says lz4",
            ),
            (
                Compression::ZSTD,
                Compression::None,
                "a zstd record in a stream whose header says no compression",
            ),
            (
                Compression::Lz4,
                Compression::ZSTD,
                "an lz4 record in a stream whose header says zstd",
            ),
        ];
        for (codec, says, want) in cases {
            let e = encoded(codec);
            assert_eq!(e.as_bytes()[1], codec.flag());
            let mut w = Writer::new(Vec::new(), &header(size, says)).unwrap();
            w.append(&e).unwrap();
            let (bytes, _, _) = w.finish().unwrap();
            let err = read_all(&bytes).unwrap_err();
            assert!(matches!(err, StreamError::BadRecord { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err}");
            let mut buf = vec![0u8; MAX_RECORD_LEN as usize];
            let err = check_record(
                e.as_bytes(),
                says,
                size,
                0,
                99,
                &mut buf,
                &mut Decoder::new(),
            )
            .unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
            // The same record where the header says its codec reads.
            check_record(
                e.as_bytes(),
                codec,
                size,
                0,
                99,
                &mut buf,
                &mut Decoder::new(),
            )
            .unwrap();
            assert!(buf[..content.len()] == content[..]);
        }
        // Both flags, or one nobody knows.
        let zstd = encoded(Compression::ZSTD);
        let head =
            RecordHeader::decode(zstd.as_bytes()[..RECORD_HEADER_LEN].try_into().unwrap()).unwrap();
        let payload = &zstd.as_bytes()[RECORD_HEADER_LEN..];
        for (flags, want) in [
            (FLAG_LZ4 | FLAG_ZSTD, "flags 0x03 say both lz4 and zstd"),
            (4, "unknown flags 0x04"),
            (FLAG_ZSTD | 8, "unknown flags 0x0a"),
        ] {
            let h = header(size, Compression::ZSTD);
            let bytes = stream_with(&h, &RecordHeader { flags, ..head }, payload);
            let err = read_all(&bytes).unwrap_err();
            assert!(matches!(err, StreamError::BadRecord { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn a_version_2_stream_cannot_say_zstd() {
        let w = Writer::new(Vec::new(), &header(4096, Compression::ZSTD)).unwrap();
        let (mut bytes, _, _) = w.finish().unwrap();
        assert_eq!(read_all(&bytes).unwrap().len(), 0);
        bytes[8] = 2;
        let n = LittleEndian::read_u32(&bytes[12..16]) as usize;
        let sum = xxh3_64(&bytes[..16 + n]);
        LittleEndian::write_u64(&mut bytes[16 + n..24 + n], sum);
        let err = read_all(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "damaged header: it says zstd compression, which format version 2 does not have (version 3 added it)"
        );
        // Without zstd, version 2 is what is written, and version 3 reads.
        for c in [Compression::None, Compression::Lz4] {
            let w = Writer::new(Vec::new(), &header(4096, c)).unwrap();
            let (mut bytes, _, _) = w.finish().unwrap();
            assert_eq!(LittleEndian::read_u32(&bytes[8..12]), 2);
            bytes[8] = 3;
            let n = LittleEndian::read_u32(&bytes[12..16]) as usize;
            let sum = xxh3_64(&bytes[..16 + n]);
            LittleEndian::write_u64(&mut bytes[16 + n..24 + n], sum);
            // The END record's digest covers the version: fix it too.
            let end = bytes.len() - END_LEN;
            let totals = Totals::default();
            let fixed = encode_end(&totals, digest(&bytes[..end]));
            bytes[end..].copy_from_slice(&fixed);
            assert_eq!(Reader::open(&bytes[..]).unwrap().version(), 3);
            assert_eq!(read_all(&bytes).unwrap().len(), 0);
        }
    }

    /// A zstd stream (version 4, origin of 64 MiB) of `records` (each
    /// `(offset, content, zero)`), grouped by [`Encoder::group`].
    fn grouped(records: &[(u64, Vec<u8>, bool)]) -> (Vec<u8>, Totals) {
        let mut raw = Encoded::new();
        let mut plain = Encoder::new(Compression::None);
        for (offset, content, zero) in records {
            if *zero {
                plain.zero(*offset, content.len() as u64, &mut raw).unwrap();
            } else {
                plain.data(*offset, content, &mut raw).unwrap();
            }
        }
        let mut out = Encoded::new();
        Encoder::new(Compression::ZSTD)
            .group(&raw, &mut out)
            .unwrap();
        let mut w = Writer::new(Vec::new(), &header(64 << 20, Compression::ZSTD)).unwrap();
        assert!(w.may_group());
        w.append(&out).unwrap();
        let (bytes, totals, _) = w.finish().unwrap();
        (bytes, totals)
    }

    /// The stream offset of the first record.
    fn first_record(bytes: &[u8]) -> usize {
        24 + LittleEndian::read_u32(&bytes[12..16]) as usize
    }

    /// A GROUP record at `offset` whose records are `body`, as bytes.
    fn group_record(offset: u64, body: &[u8]) -> Vec<u8> {
        let frame = zstd::bulk::compress(body, 3).unwrap();
        let mut out = RecordHeader {
            kind: KIND_GROUP,
            flags: FLAG_ZSTD,
            length: body.len() as u32,
            offset,
            stored: frame.len() as u32,
            checksum: xxh3_64(body),
        }
        .encode()
        .to_vec();
        out.extend_from_slice(&frame);
        out
    }

    /// A stream of `version` (its header and END fixed to match) holding
    /// `records` as they are.
    fn stream_of(
        version: u8,
        compression: Compression,
        records: &[u8],
        totals: &Totals,
    ) -> Vec<u8> {
        let w = Writer::new(Vec::new(), &header(64 << 20, compression)).unwrap();
        let (empty, _, _) = w.finish().unwrap();
        let mut bytes = empty[..empty.len() - END_LEN].to_vec();
        bytes[8] = version;
        let n = LittleEndian::read_u32(&bytes[12..16]) as usize;
        let sum = xxh3_64(&bytes[..16 + n]);
        LittleEndian::write_u64(&mut bytes[16 + n..24 + n], sum);
        bytes.extend_from_slice(records);
        let end = encode_end(totals, digest(&bytes));
        bytes.extend_from_slice(&end);
        bytes
    }

    /// Raw records as a GROUP holds them.
    fn raw_records(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut raw = Encoded::new();
        let mut plain = Encoder::new(Compression::None);
        for (offset, content) in records {
            plain.data(*offset, content, &mut raw).unwrap();
        }
        raw.as_bytes().to_vec()
    }

    #[test]
    fn small_records_travel_in_a_group_and_read_back_as_written() {
        let records = vec![
            (4096, text(4096), false),
            (3 * 4096, vec![0u8; 8192], true),
            (10 * 4096, text(12288), false),
            (20 * 4096, text(100), false),
        ];
        let (bytes, totals) = grouped(&records);
        let at = first_record(&bytes);
        assert_eq!(bytes[at], KIND_GROUP, "one GROUP record");
        let head = RecordHeader::decode(bytes[at..at + 40].try_into().unwrap()).unwrap();
        assert_eq!(at + 40 + head.stored as usize + END_LEN, bytes.len());
        assert_eq!(Reader::open(&bytes[..]).unwrap().version(), 4);
        let back = read_all(&bytes).unwrap();
        assert_eq!(back.len(), 4);
        for ((offset, content, zero), (o, l, kind, c)) in records.iter().zip(&back) {
            assert_eq!((*o, *l), (*offset, content.len() as u64));
            if *zero {
                assert_eq!(*kind, RecordKind::Zero);
            } else {
                assert_eq!(*kind, RecordKind::Data { compressed: true });
                assert_eq!(c, content);
            }
        }
        // The END counts the records in the group, and the GROUP's payload.
        assert_eq!((totals.records, totals.zero_bytes), (4, 8192));
        assert_eq!(totals.data_bytes, 4096 + 12288 + 100);
        assert_eq!(totals.payload_bytes, u64::from(head.stored));
        // A stream whose records are located one by one has no groups.
        let mut w = Writer::new(Vec::new(), &header(1 << 20, Compression::ZSTD)).unwrap();
        w.keep_locations();
        assert!(!w.may_group());
        let w = Writer::new(Vec::new(), &header(1 << 20, Compression::Lz4)).unwrap();
        assert!(!w.may_group());
    }

    #[test]
    fn records_that_do_not_shrink_together_are_not_grouped() {
        let mut noise = vec![0u8; 8192];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let (bytes, _) = grouped(&[
            (0, noise[..4096].to_vec(), false),
            (8192, noise[4096..].to_vec(), false),
        ]);
        let at = first_record(&bytes);
        assert_eq!((bytes[at], bytes[at + 1]), (KIND_DATA, 0), "raw DATA");
        assert_eq!(read_all(&bytes).unwrap().len(), 2);
        // One record alone is not grouped either.
        let (bytes, _) = grouped(&[(0, text(4096), false)]);
        assert_eq!(bytes[first_record(&bytes)], KIND_DATA);
    }

    #[test]
    fn a_version_3_stream_reads_and_cannot_hold_a_group() {
        // zstd records one by one, as version 3 wrote them.
        let mut raw = Encoded::new();
        Encoder::new(Compression::ZSTD)
            .data(0, &text(8192), &mut raw)
            .unwrap();
        let t = raw.totals;
        let v3 = stream_of(3, Compression::ZSTD, raw.as_bytes(), &t);
        assert_eq!(Reader::open(&v3[..]).unwrap().version(), 3);
        assert_eq!(read_all(&v3).unwrap()[0].3, text(8192));
        // A GROUP in it is refused.
        let body = raw_records(&[(0, text(4096)), (8192, text(4096))]);
        let group = group_record(0, &body);
        let totals = Totals {
            records: 2,
            data_bytes: 8192,
            zero_bytes: 0,
            payload_bytes: group.len() as u64 - 40,
        };
        let err = read_all(&stream_of(3, Compression::ZSTD, &group, &totals)).unwrap_err();
        assert!(
            err.to_string().contains(
                "a GROUP record, which format version 3 does not have (version 4 added it)"
            ),
            "{err}"
        );
        // The same in version 4 reads.
        let back = read_all(&stream_of(4, Compression::ZSTD, &group, &totals)).unwrap();
        assert_eq!(back.len(), 2);
        // A GROUP in a stream whose header says lz4 is refused.
        let err = read_all(&stream_of(4, Compression::Lz4, &group, &totals)).unwrap_err();
        assert!(
            err.to_string()
                .contains("a GROUP record in a stream whose header says lz4"),
            "{err}"
        );
    }

    #[test]
    fn what_a_group_holds_is_checked_record_by_record() {
        let a = (4096u64, text(4096));
        let b = (4 * 4096u64, text(8192));
        let check = |body: &[u8], offset: u64, needle: &str| {
            let group = group_record(offset, body);
            let totals = Totals {
                records: 2,
                data_bytes: 4096 + 8192,
                zero_bytes: 0,
                payload_bytes: group.len() as u64 - 40,
            };
            let err = read_all(&stream_of(4, Compression::ZSTD, &group, &totals)).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
            assert!(!err.to_string().contains('\n'));
        };
        // Out of order.
        check(
            &raw_records(&[b.clone(), a.clone()]),
            b.0,
            "increasing order",
        );
        // Overlapping.
        check(
            &raw_records(&[a.clone(), (a.0 + 100, text(4096))]),
            a.0,
            "increasing order",
        );
        // The GROUP's offset is not its first record's.
        check(
            &raw_records(&[a.clone(), b.clone()]),
            0,
            "not at the GROUP's offset 0",
        );
        // Bytes after the last record.
        let mut tail = raw_records(&[a.clone(), b.clone()]);
        tail.extend_from_slice(&[1, 2, 3]);
        check(&tail, a.0, "3 bytes that are not a whole record header");
        // A compressed record in it.
        let mut lz = Encoded::new();
        let mut e = Encoder::new(Compression::Lz4);
        e.data(a.0, &a.1, &mut lz).unwrap();
        e.data(b.0, &b.1, &mut lz).unwrap();
        check(
            lz.as_bytes(),
            a.0,
            "a GROUP holds raw DATA and ZERO records only",
        );
        // A record past the origin's end.
        check(
            &raw_records(&[a.clone(), (64 << 20, text(4096))]),
            a.0,
            "past the end of the origin",
        );
        // A record whose content does not match its checksum: the GROUP's
        // own checksum is made to match, so the record's check must fail.
        let mut body = raw_records(&[a.clone(), b.clone()]);
        body[50] ^= 1;
        check(&body, a.0, "content checksum mismatch");
        // A GROUP whose frame does not decompress to its length.
        let good = raw_records(&[a.clone(), b.clone()]);
        let mut group = group_record(a.0, &good);
        LittleEndian::write_u32(&mut group[4..8], good.len() as u32 + 1);
        let sum = xxh3_64(&group[..32]);
        LittleEndian::write_u64(&mut group[32..40], sum);
        let totals = Totals {
            records: 2,
            data_bytes: 12288,
            zero_bytes: 0,
            payload_bytes: group.len() as u64 - 40,
        };
        let err = read_all(&stream_of(4, Compression::ZSTD, &group, &totals)).unwrap_err();
        assert!(err.to_string().contains("damaged payload"), "{err}");
        // A GROUP that says it holds more than a GROUP may: refused from
        // its header, before its payload is read.
        LittleEndian::write_u32(&mut group[4..8], MAX_GROUP_LEN + 1);
        let sum = xxh3_64(&group[..32]);
        LittleEndian::write_u64(&mut group[32..40], sum);
        let err = read_all(&stream_of(4, Compression::ZSTD, &group, &totals)).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "{} bytes of records (must be 80 to 4194304)",
                MAX_GROUP_LEN + 1
            )),
            "{err}"
        );
    }

    #[test]
    fn every_flipped_bit_of_a_group_is_caught() {
        let records = vec![
            (4096, text(4096), false),
            (3 * 4096, vec![0u8; 4096], true),
            (10 * 4096, text(8192), false),
        ];
        let (bytes, _) = grouped(&records);
        let good = read_all(&bytes).unwrap();
        let start = first_record(&bytes);
        for i in start..bytes.len() {
            for bit in [0, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                match read_all(&b) {
                    Err(_) => {}
                    Ok(back) => panic!(
                        "byte {i} bit {bit} flipped, and it read back ({} records, same: {})",
                        back.len(),
                        back == good
                    ),
                }
            }
        }
    }

    #[test]
    fn damaged_zstd_payloads_are_refused_in_one_line() {
        let content = text(100_000);
        let frame = zstd::bulk::compress(&content, 3).unwrap();
        let h = header(1 << 20, Compression::ZSTD);
        let mut buf = vec![0u8; MAX_RECORD_LEN as usize];
        let mut decoder = Decoder::new();
        // The reader's and check_record's error for `head` and `payload`.
        let mut refused = |head: RecordHeader, payload: &[u8]| -> String {
            let err = read_all(&stream_with(&h, &head, payload)).unwrap_err();
            let mut record = head.encode().to_vec();
            record.extend_from_slice(payload);
            let alone = check_record(
                &record,
                h.compression,
                h.origin_size,
                0,
                0,
                &mut buf,
                &mut decoder,
            )
            .unwrap_err();
            let text = err.to_string();
            assert_eq!(
                alone.to_string().split(": ").last(),
                text.split(": ").last()
            );
            assert!(!text.contains('\n'), "{text}");
            text
        };
        // Intact, it reads.
        let head = zstd_head(content.len(), &content, &frame);
        let good = read_all(&stream_with(&h, &head, &frame)).unwrap();
        assert!(good[0].3 == content);
        // Every byte flipped (one bit each): refused, or (a bit the decoder
        // does not use, a handful of the frame's) the very same content.
        // Such a flip in a real stream is caught by its digest (see
        // every_flipped_bit_is_caught); never is other content let through.
        let mut same = 0;
        for i in 0..frame.len() {
            let mut p = frame.clone();
            p[i] ^= 1 << (i % 8);
            let head = zstd_head(content.len(), &content, &p);
            if let Ok(recs) = read_all(&stream_with(&h, &head, &p)) {
                assert!(recs[0].3 == content, "byte {i}");
                same += 1;
                continue;
            }
            let text = refused(head, &p);
            assert!(
                text.starts_with("damaged payload in record 0"),
                "byte {i}: {text}"
            );
        }
        assert!(
            same < frame.len() / 100,
            "{same} of {} flips read",
            frame.len()
        );
        for cut in 1..frame.len() {
            let p = &frame[..cut];
            let text = refused(zstd_head(content.len(), &content, p), p);
            assert!(text.contains("its zstd data"), "cut at {cut}: {text}");
        }
        // A frame of fewer bytes than the record's length.
        let text = refused(zstd_head(content.len() + 1, &content, &frame), &frame);
        assert!(
            text.ends_with("its zstd data decompresses to 100000 bytes instead of 100001"),
            "{text}"
        );
        // Of more: it does not fit.
        let text = refused(zstd_head(content.len() - 1, &content, &frame), &frame);
        assert!(
            text.contains("its zstd data cannot be decompressed into 99999 bytes"),
            "{text}"
        );
        // A frame of 64 MiB of zeroes for a record of 1 MiB: refused, and
        // never given more room than the record's.
        let huge = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
        let text = refused(zstd_head(MAX_RECORD_LEN as usize, &[], &huge), &huge);
        assert!(
            text.contains("its zstd data cannot be decompressed into 1048576 bytes"),
            "{text}"
        );
        // Two frames, of the two halves: the content, but not one frame.
        let mut two = zstd::bulk::compress(&content[..50_000], 3).unwrap();
        two.extend(zstd::bulk::compress(&content[50_000..], 3).unwrap());
        let text = refused(zstd_head(content.len(), &content, &two), &two);
        assert!(text.contains("its zstd data is not one frame"), "{text}");
        // A skippable frame: no content.
        let mut skip = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0];
        skip.extend_from_slice(b"junk");
        let text = refused(zstd_head(content.len(), &content, &skip), &skip);
        assert!(
            text.ends_with("decompresses to 0 bytes instead of 100000"),
            "{text}"
        );
        // Not zstd at all.
        let junk = noise(500, 3);
        let text = refused(zstd_head(content.len(), &content, &junk), &junk);
        assert!(text.contains("its zstd data is not a zstd frame"), "{text}");
        // The right length, the wrong content.
        let other = zstd::bulk::compress(&text_other(content.len()), 3).unwrap();
        let text = refused(zstd_head(content.len(), &content, &other), &other);
        assert!(text.ends_with("content checksum mismatch"), "{text}");
    }

    fn text_other(len: usize) -> Vec<u8> {
        b"something else entirely "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    #[test]
    fn compressions_are_named_as_options_name_them() {
        for (name, c) in [
            ("none", Compression::None),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd { level: 3 }),
            ("zstd:1", Compression::Zstd { level: 1 }),
            ("zstd:19", Compression::Zstd { level: 19 }),
        ] {
            assert_eq!(name.parse::<Compression>(), Ok(c));
            assert_eq!(c.to_string().parse::<Compression>(), Ok(c));
        }
        assert_eq!(Compression::Zstd { level: 7 }.to_string(), "zstd:7");
        for bad in [
            "zstd:0", "zstd:20", "zstd:-1", "zstd:", "zstd:3x", "zstd: 3",
        ] {
            let err = bad.parse::<Compression>().unwrap_err();
            assert_eq!(
                err, "the zstd level must be a whole number from 1 to 19",
                "{bad}"
            );
        }
        for bad in ["gzip", "", "ZSTD", "lz4:1", "zstd3", "none:"] {
            let err = bad.parse::<Compression>().unwrap_err();
            assert!(
                err.starts_with("give lz4, zstd, zstd:LEVEL"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            [Compression::None, Compression::Lz4, Compression::ZSTD].map(Compression::version),
            [2, 2, 4]
        );
        assert_eq!(
            [Compression::None, Compression::Lz4, Compression::ZSTD].map(Compression::added_in),
            [2, 2, 3]
        );
    }
}
