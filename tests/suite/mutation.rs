//! The delta reader under thousands of mutants of a good delta, lz4 and zstd (a bounded
//! fuzz, the same mutants every run): bits flipped anywhere, the stream cut
//! anywhere and at every record boundary, records swapped, dropped,
//! duplicated or spliced in from another delta, and record headers forged
//! with their checksums made good again. Every mutant must be refused, and
//! the copy must then hold exactly the records the reader handed out
//! before the damage, applied to what it held: never a byte of a record
//! that failed its checks.

use std::fs;
use std::path::PathBuf;

use byteorder::{ByteOrder, LittleEndian};
use xxhash_rust::xxh3::xxh3_64;

use crate::common::images::{delta_bytes, image_header, random};
use crate::common::scratch;
use lvmsync::apply::{self, Options};
use lvmsync::cowgen::Rng;
use lvmsync::stream::{
    Compression, Encoded, Encoder, Reader, RecordKind, KIND_GROUP, RECORD_HEADER_LEN,
};

const SIZE: usize = 2 << 20;

/// A delta over a 2 MiB origin compressed with `compression`: DATA
/// records that it shrinks and ones it cannot, ZERO records, a record of
/// 64 KiB, in offset order.
fn good_delta(seed: u64, compression: Compression) -> Vec<u8> {
    delta_of(seed, compression, false)
}

/// The same records; with `grouped`, each four of them in a GROUP record
/// (zstd), as `send` groups small extents.
fn delta_of(seed: u64, compression: Compression, grouped: bool) -> Vec<u8> {
    let noise = random(SIZE, seed);
    let header = lvmsync::stream::Header {
        compression,
        ..image_header(SIZE as u64, 4096)
    };
    delta_bytes(&header, |w| {
        let mut plain = Encoder::new(Compression::None);
        let mut raw = Encoded::new();
        let mut out = Encoded::new();
        for i in 0..40u64 {
            let at = i * 24 * 1024 + (seed % 7) * 512;
            if grouped {
                match i % 4 {
                    0 => plain.zero(at, 4096, &mut raw).unwrap(),
                    1 => plain
                        .data(at, &noise[at as usize..at as usize + 4096], &mut raw)
                        .unwrap(),
                    2 => plain
                        .data(at, &[b'a' + (i % 26) as u8; 8192], &mut raw)
                        .unwrap(),
                    _ => plain.data(at, &noise[..2048], &mut raw).unwrap(),
                }
                if i % 4 == 3 {
                    out.clear();
                    Encoder::new(compression).group(&raw, &mut out).unwrap();
                    w.append(&out).unwrap();
                    raw.clear();
                }
                continue;
            }
            match i % 4 {
                0 => w.zero(at, 4096).unwrap(),
                1 => w.data(at, &noise[at as usize..at as usize + 4096]).unwrap(),
                2 => w.data(at, &[b'a' + (i % 26) as u8; 8192]).unwrap(),
                _ => w.data(at, &noise[..2048]).unwrap(),
            }
        }
        w.data(40 * 24 * 1024 + 8192, &noise[..65536]).unwrap();
    })
}

/// Where each record (and the END record) starts, and where the records
/// end.
fn boundaries(delta: &[u8]) -> (Vec<usize>, usize) {
    let mut r = Reader::open(delta).unwrap();
    let mut starts = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        starts.push(rec.at as usize);
    }
    // The records of a GROUP share its start: it is one record here.
    starts.dedup();
    let end = delta.len() - lvmsync::stream::END_LEN;
    (starts, end)
}

/// The copy after `delta` is applied to `base` as the reader hands its
/// records out: the bytes a correct apply leaves, whatever the damage.
fn expected(base: &[u8], delta: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    let Ok(mut r) = Reader::open(delta) else {
        return out;
    };
    while let Ok(Some(rec)) = r.next_record() {
        let (a, b) = (rec.offset as usize, (rec.offset + rec.length) as usize);
        match rec.kind {
            RecordKind::Zero => out[a..b].fill(0),
            RecordKind::Data { .. } => out[a..b].copy_from_slice(rec.content),
        }
    }
    out
}

/// A record header at `at` rewritten by `change`, its checksum made good.
fn forge(delta: &mut [u8], at: usize, change: impl FnOnce(&mut [u8])) {
    let h = &mut delta[at..at + RECORD_HEADER_LEN];
    change(h);
    let sum = xxh3_64(&h[..32]);
    LittleEndian::write_u64(&mut h[32..40], sum);
}

/// A change to a record header's 40 bytes.
type Forgery = Box<dyn Fn(&mut [u8])>;

/// The mutants of `good`: every byte flipped up to `flips` (the header and
/// the first records when `None`), and the rest as below.
fn mutants(good: &[u8], other: &[u8], flips: Option<usize>) -> Vec<(String, Vec<u8>)> {
    let (starts, end) = boundaries(good);
    let (o_starts, o_end) = boundaries(other);
    let record = |d: &[u8], s: &[usize], e: usize, i: usize| {
        let stop = s.get(i + 1).copied().unwrap_or(e);
        d[s[i]..stop].to_vec()
    };
    let mut out = Vec::new();
    let mut rng = Rng(0x5eed_1234);
    // Bits flipped: every byte of the header and the first records, then
    // random ones everywhere.
    for i in 0..flips.unwrap_or(starts[2]) {
        let mut m = good.to_vec();
        m[i] ^= 1 << (i % 8);
        out.push((format!("flip byte {i}"), m));
    }
    for _ in 0..1500 {
        let i = rng.below(good.len() as u64) as usize;
        let mut m = good.to_vec();
        m[i] ^= 1 << rng.below(8);
        out.push((format!("flip byte {i}"), m));
    }
    // Cut at every record boundary, inside every record, and at random.
    for (i, &at) in starts.iter().enumerate() {
        out.push((format!("cut before record {i}"), good[..at].to_vec()));
        out.push((format!("cut inside record {i}"), good[..at + 17].to_vec()));
    }
    out.push(("cut before END".into(), good[..end].to_vec()));
    out.push(("cut inside END".into(), good[..good.len() - 3].to_vec()));
    for _ in 0..200 {
        let n = rng.below(good.len() as u64) as usize;
        out.push((format!("cut at {n}"), good[..n].to_vec()));
    }
    // Records swapped, dropped, duplicated, spliced from another delta.
    for i in 0..starts.len() - 1 {
        let (a, b) = (
            record(good, &starts, end, i),
            record(good, &starts, end, i + 1),
        );
        let mut m = good[..starts[i]].to_vec();
        m.extend_from_slice(&b);
        m.extend_from_slice(&a);
        m.extend_from_slice(&good[starts.get(i + 2).copied().unwrap_or(end)..]);
        out.push((format!("records {i} and {} swapped", i + 1), m));
        let mut m = good[..starts[i]].to_vec();
        m.extend_from_slice(&good[starts[i + 1]..]);
        out.push((format!("record {i} dropped"), m));
        let mut m = good[..starts[i + 1]].to_vec();
        m.extend_from_slice(&a);
        m.extend_from_slice(&good[starts[i + 1]..]);
        out.push((format!("record {i} twice"), m));
        let j = i.min(o_starts.len() - 1);
        let mut m = good[..starts[i]].to_vec();
        m.extend_from_slice(&record(other, &o_starts, o_end, j));
        m.extend_from_slice(&good[starts[i + 1]..]);
        out.push((format!("record {i} from another delta"), m));
    }
    // Headers forged, their checksums good: another offset, another
    // length, another payload length, another kind, another flag.
    for (i, &at) in starts.iter().enumerate() {
        let cases: [(&str, Forgery); 8] = [
            (
                "offset + 4096",
                Box::new(|h| {
                    let o = LittleEndian::read_u64(&h[8..16]);
                    LittleEndian::write_u64(&mut h[8..16], o + 4096)
                }),
            ),
            (
                "offset past the origin",
                Box::new(|h| LittleEndian::write_u64(&mut h[8..16], u64::MAX - 10)),
            ),
            (
                "length + 1",
                Box::new(|h| {
                    let l = LittleEndian::read_u32(&h[4..8]);
                    LittleEndian::write_u32(&mut h[4..8], l + 1)
                }),
            ),
            (
                "stored - 1",
                Box::new(|h| {
                    let l = LittleEndian::read_u32(&h[16..20]);
                    LittleEndian::write_u32(&mut h[16..20], l.saturating_sub(1))
                }),
            ),
            (
                "kind swapped",
                Box::new(|h| h[0] = if h[0] == b'D' { b'Z' } else { b'D' }),
            ),
            ("lz4 flag flipped", Box::new(|h| h[1] ^= 1)),
            ("zstd flag flipped", Box::new(|h| h[1] ^= 2)),
            ("an unknown flag set", Box::new(|h| h[1] |= 0x10)),
        ];
        for (what, change) in cases {
            let mut m = good.to_vec();
            forge(&mut m, at, change);
            out.push((format!("record {i}: {what}"), m));
        }
    }
    out.retain(|(_, m)| m != good);
    out
}

#[test]
fn every_mutant_of_an_lz4_delta_is_refused_and_only_checked_records_are_written() {
    every_mutant_is_refused("mutation-lz4", Compression::Lz4);
}

#[test]
fn every_mutant_of_a_zstd_delta_is_refused_and_only_checked_records_are_written() {
    every_mutant_is_refused("mutation-zstd", Compression::ZSTD);
}

#[test]
fn every_mutant_of_a_zstd_delta_in_groups_is_refused_and_only_checked_records_are_written() {
    let good = delta_of(1, Compression::ZSTD, true);
    // Groups, each a record of the stream.
    let (starts, _) = boundaries(&good);
    assert_eq!(starts.len(), 11, "10 GROUP records and one DATA record");
    assert!(starts[..10].iter().all(|&at| good[at] == KIND_GROUP));
    // Every byte of the header, of the first GROUP's header and of the
    // start of its frame flipped (the stream unit tests flip every byte of
    // a GROUP as the reader reads it).
    let flips = starts[0] + RECORD_HEADER_LEN + 1000;
    mutants_are_refused(
        "mutation-zstd-groups",
        Compression::ZSTD,
        good,
        delta_of(2, Compression::ZSTD, true),
        Some(flips),
    );
}

fn every_mutant_is_refused(name: &str, compression: Compression) {
    mutants_are_refused(
        name,
        compression,
        good_delta(1, compression),
        good_delta(2, compression),
        None,
    );
}

fn mutants_are_refused(
    name: &str,
    compression: Compression,
    good: Vec<u8>,
    other: Vec<u8>,
    flips: Option<usize>,
) {
    // Both codecs' deltas have records it compresses and ones it stores
    // raw.
    let mut r = Reader::open(&good[..]).unwrap();
    let mut kinds = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        kinds.push(rec.kind);
    }
    assert!(kinds.contains(&RecordKind::Data { compressed: true }));
    assert!(kinds.contains(&RecordKind::Data { compressed: false }));
    assert_eq!(r.header().compression, compression);
    let base = random(SIZE, 99);
    // A tmpfs keeps thousands of applies (each synced) fast.
    let dir = scratch(name);
    let place: PathBuf = if fs::metadata("/dev/shm").is_ok_and(|m| m.is_dir()) {
        let p = PathBuf::from(format!("/dev/shm/lvmsync-{name}-{}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        p
    } else {
        dir.to_path_buf()
    };
    let dest = place.join("copy.img");
    // The good delta applies.
    fs::write(&dest, &base).unwrap();
    apply::apply(&good[..], "good", &dest, &Options::default()).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), expected(&base, &good));
    let all = mutants(&good, &other, flips);
    let least = if flips.is_some() { 2000 } else { 3000 };
    assert!(all.len() > least, "only {} mutants", all.len());
    let mut failures = Vec::new();
    for (what, m) in &all {
        fs::write(&dest, &base).unwrap();
        let result = apply::apply(&m[..], what, &dest, &Options::default());
        let got = fs::read(&dest).unwrap();
        if result.is_ok() {
            failures.push(format!("{what}: accepted"));
        } else if got != expected(&base, m) {
            failures.push(format!(
                "{what}: the copy holds more or less than the records that passed"
            ));
        }
        if failures.len() > 20 {
            break;
        }
    }
    if place != *dir {
        let _ = fs::remove_dir_all(&place);
    }
    assert!(
        failures.is_empty(),
        "{name}: {} mutants: {failures:#?}",
        all.len()
    );
}
