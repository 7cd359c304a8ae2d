//! `send`, `apply` and `inspect` through the binary, on images made here: an
//! old image, a new one differing in known chunks, and a COW image whose
//! table lists those chunks. Round trips must reproduce the new image byte
//! for byte; damaged deltas must be refused with one line, and the copy must
//! hold exactly the records before the damage.

use std::fs;
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::images::{delta_bytes, image_header, Change, Fill};
use crate::common::*;
use lvmsync::stream::{self, Totals};

const CHUNK: u64 = 4096;

/// An old image, a new one, and the COW image listing the chunks that differ.
struct Fixture(Change);

impl Deref for Fixture {
    type Target = Change;
    fn deref(&self) -> &Change {
        &self.0
    }
}

impl Fixture {
    /// Origin of 4 MiB + 1536 bytes (its last chunk is partial); changes:
    /// scattered chunks of random data and of text, a run longer than a
    /// record, zeroed chunks inside and outside runs, and the last chunk.
    fn new(name: &str) -> Fixture {
        use Fill::{Random, Text, Zero};
        // Scattered single chunks, in write order, not sorted.
        let scattered = [(7, Random), (3, Text), (12, Zero), (40, Random), (41, Text)];
        // A run of 300 chunks (1.2 MiB, more than one record): text, then
        // 20 zeroed chunks, then random.
        let run = (100..400).map(|c| match c {
            100..=179 => (c, Text),
            180..=199 => (c, Zero),
            _ => (c, Random),
        });
        // 300 zeroed chunks in a row: ZERO records up to the record limit.
        let zeroes = (500..800).map(|c| (c, Zero));
        // A chunk written twice, and the last, partial chunk.
        let last = [(7, Random), (1024, Random)];
        let changes = scattered.into_iter().chain(run).chain(zeroes).chain(last);
        Fixture(Change::new(
            scratch(name),
            (4 << 20) + 1536,
            CHUNK,
            0x1234_5678_9abc_def1,
            changes,
        ))
    }

    /// `send --cow --data-source NEW -o FILE` plus `extra` options.
    fn send(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out = self.path(name);
        let mut args = vec![
            "send",
            "--cow",
            s(&self.cow_path),
            "--data-source",
            s(&self.new_path),
            "-o",
            s(&out),
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(
            o.status.success(),
            "send: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.stdout.is_empty());
        out
    }
}

/// A record as `inspect --json` lists it.
#[derive(Debug, Clone)]
struct Rec {
    at: u64,
    offset: u64,
    length: u64,
    kind: String,
    compressed: bool,
    stored: u64,
}

fn inspect(delta: &Path) -> (serde_json::Value, Vec<Rec>) {
    let doc = json(&run(&["inspect", "--json", s(delta)]));
    let recs = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Rec {
            at: r["at"].as_u64().unwrap(),
            offset: r["offset"].as_u64().unwrap(),
            length: r["length"].as_u64().unwrap(),
            kind: r["kind"].as_str().unwrap().to_string(),
            compressed: r["compressed"].as_bool().unwrap(),
            stored: r["stored"].as_u64().unwrap(),
        })
        .collect();
    (doc, recs)
}

/// The old image with the first `k` records applied.
fn expected(f: &Fixture, recs: &[Rec], k: usize) -> Vec<u8> {
    let mut e = f.old.clone();
    for r in &recs[..k] {
        let (a, b) = (r.offset as usize, (r.offset + r.length) as usize);
        e[a..b].copy_from_slice(&f.new[a..b]);
    }
    e
}

#[test]
fn a_delta_applied_to_a_copy_of_the_old_image_makes_the_new_one() {
    let f = Fixture::new("delta-roundtrip");
    let delta = f.send("d.lvd", &[]);
    let copy = f.copy_of_old("copy.img");
    let out = run(&["apply", s(&delta), s(&copy)]);
    assert_ok(&out);
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("lvmsync-rs apply: applied "), "{stderr}");
    assert!(stderr.contains("stream digest matched"), "{stderr}");
    assert_same(&copy, &f.new, "copy");

    // What the delta holds: ZERO records carry nothing, runs are split at
    // the record limit, the last partial chunk is there.
    let (doc, recs) = inspect(&delta);
    assert_eq!(doc["whole"], true);
    assert_eq!(doc["header"]["origin_size"], f.new.len() as u64);
    assert_eq!(doc["header"]["source"]["kind"], "image");
    assert_eq!(doc["header"]["compression"], "lz4");
    let zero: Vec<&Rec> = recs.iter().filter(|r| r.kind == "zero").collect();
    assert!(zero.iter().all(|r| r.stored == 0));
    assert_eq!(
        zero.iter().map(|r| r.length).sum::<u64>(),
        (1 + 20 + 300) * CHUNK
    );
    assert!(recs.iter().all(|r| r.length <= 1 << 20));
    assert!(recs.iter().any(|r| r.length == 1 << 20));
    assert!(recs.iter().any(|r| r.compressed), "text compresses");
    assert!(
        recs.iter().any(|r| r.kind == "data" && !r.compressed),
        "random data is stored raw"
    );
    let last = recs.last().unwrap();
    assert_eq!((last.offset, last.length), (4 << 20, 1536));
    assert!(recs
        .windows(2)
        .all(|w| w[0].offset + w[0].length <= w[1].offset));
    // The file is exactly its records: header, record headers, payloads, END.
    let payload: u64 = recs.iter().map(|r| 40 + r.stored).sum();
    assert_eq!(
        fs::metadata(&delta).unwrap().len(),
        recs[0].at + payload + stream::END_LEN as u64
    );
    let t = &doc["totals"];
    assert_eq!(t["records"], recs.len() as u64);
    assert_eq!(t["zero_bytes"], 321 * CHUNK);
    assert_eq!(
        t["data_bytes"].as_u64().unwrap() + t["zero_bytes"].as_u64().unwrap(),
        (5 + 300 + 300) * CHUNK + 1536
    );
    assert!(!fs::exists(f.path("d.lvd.partial")).unwrap());
}

#[test]
fn send_piped_into_apply() {
    let f = Fixture::new("delta-pipe");
    let copy = f.copy_of_old("copy.img");
    let mut sender = command()
        .args([
            "send",
            "--cow",
            s(&f.cow_path),
            "--data-source",
            s(&f.new_path),
            "-o",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let applier = command()
        .args(["apply", "-", s(&copy)])
        .stdin(sender.stdout.take().unwrap())
        .output()
        .unwrap();
    let sent = sender.wait_with_output().unwrap();
    assert_ok(&sent);
    assert!(
        String::from_utf8_lossy(&sent.stderr).starts_with("lvmsync-rs send: "),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert_ok(&applier);
    assert!(String::from_utf8_lossy(&applier.stderr).contains("applied stdin to "));
    assert_same(&copy, &f.new, "copy");
}

#[test]
fn without_compression_every_data_record_is_raw() {
    let f = Fixture::new("delta-raw");
    let delta = f.send("d.lvd", &["--compress", "none"]);
    let (doc, recs) = inspect(&delta);
    assert_eq!(doc["header"]["compression"], "none");
    assert!(recs.iter().all(|r| !r.compressed));
    assert!(recs
        .iter()
        .all(|r| r.stored == if r.kind == "zero" { 0 } else { r.length }));
    let copy = f.copy_of_old("copy.img");
    assert_ok(&run(&["apply", s(&delta), s(&copy)]));
    assert_same(&copy, &f.new, "copy");
    // Compression made the other delta smaller.
    let lz4 = f.send("lz4.lvd", &[]);
    assert!(fs::metadata(&lz4).unwrap().len() < fs::metadata(&delta).unwrap().len());
}

#[test]
fn a_snapback_restores_the_old_copy() {
    let f = Fixture::new("delta-snapback");
    let delta = f.send("d.lvd", &[]);
    let copy = f.copy_of_old("copy.img");
    let snapback = f.path("undo.lvd");
    let out = run(&["apply", "--snapback", s(&snapback), s(&delta), s(&copy)]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Snapback: "));
    assert_same(&copy, &f.new, "copy after the delta");
    let (doc, _) = inspect(&snapback);
    assert_eq!(doc["whole"], true);
    assert_eq!(doc["header"]["properties"]["snapback-of"], s(&copy));
    // Never overwritten.
    let again = run(&["apply", "--snapback", s(&snapback), s(&delta), s(&copy)]);
    assert_clean_failure(&again, "already exists; a snapback is never overwritten");
    let out = run(&["apply", s(&snapback), s(&copy)]);
    assert_ok(&out);
    assert_same(&copy, &f.old, "copy after the snapback");
}

#[test]
fn a_missing_destination_needs_create_and_a_short_file_is_extended_only_by_a_whole_copy() {
    let f = Fixture::new("delta-create");
    let delta = f.send("d.lvd", &[]);
    let dest = f.path("new-copy.img");
    assert_clean_failure(
        &run(&["apply", s(&delta), s(&dest)]),
        "new-copy.img: no such file; give --create to create it",
    );
    assert!(!dest.exists());
    let out = run(&["apply", "--create", s(&delta), s(&dest)]);
    assert_ok(&out);
    // Unchanged ranges of a new file are zeroes.
    let (_, recs) = inspect(&delta);
    let mut want = vec![0u8; f.new.len()];
    for r in &recs {
        let (a, b) = (r.offset as usize, (r.offset + r.length) as usize);
        want[a..b].copy_from_slice(&f.new[a..b]);
    }
    assert_same(&dest, &want, "created copy");

    // A file shorter than the origin is not a copy of it: a delta of
    // changes is refused there (extending it with zeroes would make a
    // wrong copy), nothing is written, no snapback is made.
    let short = f.path("short.img");
    fs::write(&short, &f.old[..1 << 20]).unwrap();
    let snapback = f.path("short-undo.lvd");
    assert_clean_failure(
        &run(&["apply", "--snapback", s(&snapback), s(&delta), s(&short)]),
        "shorter than the origin",
    );
    assert_same(&short, &f.old[..1 << 20], "refused short copy");
    assert!(!snapback.exists());
    // A whole copy (a seed) extends it.
    assert_ok(&run(&["sync", "--full", s(&f.new_path), s(&short)]));
    assert_same(&short, &f.new, "seeded copy");
}

/// Applies `bytes` as a delta to a fresh copy of the old image; it must fail
/// with one line containing `needle` and leave the first `k` records applied.
fn check_damaged(f: &Fixture, recs: &[Rec], name: &str, bytes: &[u8], needle: &str, k: usize) {
    let delta = f.path(&format!("{name}.lvd"));
    fs::write(&delta, bytes).unwrap();
    let copy = f.copy_of_old(&format!("{name}.img"));
    let out = run(&["apply", s(&delta), s(&copy)]);
    if let Err(why) = clean_failure(&out, needle) {
        panic!("{name}: {why}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if k == 0 {
        assert!(
            stderr.contains("nothing was written to"),
            "{name}: {stderr}"
        );
    } else {
        assert!(
            stderr.contains(&format!("{k} record{} (", if k == 1 { "" } else { "s" }))
                && stderr.contains(&format!(
                    ") {} applied to",
                    if k == 1 { "was" } else { "were" }
                ))
                && stderr.contains("applying an intact copy of the whole delta completes the job"),
            "{name}: {stderr}"
        );
    }
    assert_same(&copy, &expected(f, recs, k), name);
    // The same through stdin.
    let copy2 = f.copy_of_old(&format!("{name}-stdin.img"));
    let mut child = command()
        .args(["apply", "-", s(&copy2)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(bytes);
    let out = child.wait_with_output().unwrap();
    if let Err(why) = clean_failure(&out, needle) {
        panic!("{name}, from stdin: {why}");
    }
    assert_same(&copy2, &expected(f, recs, k), name);
    fs::remove_file(&copy).unwrap();
    fs::remove_file(&copy2).unwrap();
}

#[test]
fn damaged_deltas_are_refused_and_nothing_from_the_damage_on_is_written() {
    let f = Fixture::new("delta-damaged");
    let delta = f.send("good.lvd", &[]);
    let good = fs::read(&delta).unwrap();
    let (doc, recs) = inspect(&delta);
    let n = recs.len();
    assert!(n >= 10, "{n} records");
    let header_len = recs[0].at as usize;
    let end_at = good.len() - stream::END_LEN;
    let flip = |i: usize, bit: u8| {
        let mut b = good.clone();
        b[i] ^= 1 << bit;
        b
    };

    check_damaged(
        &f,
        &recs,
        "magic",
        &flip(1, 0),
        "not an lvmsync-rs delta",
        0,
    );
    // A newer version, and one no lvmsync-rs writes: a flipped bit of
    // the version field is a damaged header, not a call for an upgrade.
    let mut other = good.clone();
    other[8] = stream::VERSION as u8 + 1;
    check_damaged(
        &f,
        &recs,
        "version",
        &other,
        &format!(
            "delta format version {}, but this lvmsync-rs reads versions {} to {} only: it was written by a newer lvmsync-rs",
            stream::VERSION + 1,
            stream::OLDEST_VERSION,
            stream::VERSION
        ),
        0,
    );
    let mut flipped = good.clone();
    flipped[10] ^= 1;
    check_damaged(
        &f,
        &recs,
        "version-bit",
        &flipped,
        "damaged header: its format version field reads 65538, which no lvmsync-rs writes",
        0,
    );
    for (bytes, code) in [(&other, 4), (&flipped, 5)] {
        let path = f.path("version-status.lvd");
        fs::write(&path, bytes).unwrap();
        let copy = f.copy_of_old("version-status.img");
        for args in [vec!["apply", s(&path), s(&copy)], vec!["inspect", s(&path)]] {
            let out = run(&args);
            assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        }
    }
    check_damaged(
        &f,
        &recs,
        "header-bit",
        &flip(20, 3),
        "damaged header: checksum mismatch",
        0,
    );
    check_damaged(
        &f,
        &recs,
        "header-len",
        &flip(14, 7),
        "damaged header: its length",
        0,
    );
    // A record header: its offset, length, kind, checksum fields.
    let r = &recs[3];
    for (field, byte) in [("kind", 0), ("length", 5), ("offset", 9), ("check", 35)] {
        check_damaged(
            &f,
            &recs,
            &format!("rechead-{field}"),
            &flip(r.at as usize + byte, 2),
            &format!(
                "damaged record header at byte {} (record 3): checksum mismatch",
                r.at
            ),
            3,
        );
    }
    // Payloads, compressed and raw.
    let lz4 = recs.iter().position(|r| r.compressed).unwrap();
    let raw = recs
        .iter()
        .position(|r| r.kind == "data" && !r.compressed)
        .unwrap();
    for (name, i) in [("payload-lz4", lz4), ("payload-raw", raw)] {
        let r = &recs[i];
        for pos in [0, r.stored / 2, r.stored - 1] {
            check_damaged(
                &f,
                &recs,
                &format!("{name}-{pos}"),
                &flip((r.at + 40 + pos) as usize, 5),
                &format!("damaged payload in record {i} at byte {}", r.at),
                i,
            );
        }
    }
    // Truncation at every record boundary, inside every record header and
    // payload, and inside the header and the END record.
    for (i, r) in recs.iter().enumerate() {
        let at = r.at as usize;
        check_damaged(&f, &recs, &format!("cut-{i}"), &good[..at], "truncated", i);
        check_damaged(
            &f,
            &recs,
            &format!("cut-{i}-head"),
            &good[..at + 17],
            "truncated",
            i,
        );
        if r.stored > 1 {
            let mid = at + 40 + r.stored as usize / 2;
            check_damaged(
                &f,
                &recs,
                &format!("cut-{i}-payload"),
                &good[..mid],
                "truncated",
                i,
            );
        }
    }
    check_damaged(
        &f,
        &recs,
        "cut-end",
        &good[..end_at],
        &format!("truncated: the delta ends at byte {end_at}, after record {n}"),
        n,
    );
    check_damaged(
        &f,
        &recs,
        "cut-in-end",
        &good[..good.len() - 1],
        "truncated",
        n,
    );
    for cut in [0, 5, 12, header_len / 2, header_len - 1] {
        let needle = if cut == 0 { "empty input" } else { "truncated" };
        check_damaged(
            &f,
            &recs,
            &format!("cut-header-{cut}"),
            &good[..cut],
            needle,
            0,
        );
    }
    // The END record: damaged, lying about the count, wrong digest, and
    // something after it.
    check_damaged(
        &f,
        &recs,
        "end-bit",
        &flip(end_at + 60, 1),
        &format!("damaged END record at byte {end_at}: checksum mismatch"),
        n,
    );
    let t = &doc["totals"];
    let totals = Totals {
        records: n as u64,
        data_bytes: t["data_bytes"].as_u64().unwrap(),
        zero_bytes: t["zero_bytes"].as_u64().unwrap(),
        payload_bytes: t["payload_bytes"].as_u64().unwrap(),
    };
    let body = &good[..end_at];
    assert_eq!(
        stream::encode_end(&totals, stream::digest(body)).as_slice(),
        &good[end_at..],
        "the END record is as specified"
    );
    let with_end = |totals: &Totals, digest: u128| {
        let mut b = body.to_vec();
        b.extend_from_slice(&stream::encode_end(totals, digest));
        b
    };
    let miscount = Totals {
        records: n as u64 + 1,
        ..totals
    };
    check_damaged(
        &f,
        &recs,
        "end-count",
        &with_end(&miscount, stream::digest(body)),
        &format!("its count of records is {}, the stream holds {n}", n + 1),
        n,
    );
    check_damaged(
        &f,
        &recs,
        "end-digest",
        &with_end(&totals, stream::digest(body) ^ 1),
        "the digest of the bytes before it differs",
        n,
    );
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"more");
    check_damaged(
        &f,
        &recs,
        "trailing",
        &trailing,
        "4 bytes follow the END record",
        n,
    );
    let mut one_more = good.clone();
    one_more.push(0);
    check_damaged(
        &f,
        &recs,
        "trailing-byte",
        &one_more,
        "1 byte follows the END record",
        n,
    );

    // A record with good checksums but of an unknown kind.
    let mut odd = good[..recs[2].at as usize].to_vec();
    odd.extend_from_slice(
        &stream::RecordHeader {
            kind: b'Q',
            flags: 0,
            length: 4096,
            offset: recs[2].offset,
            stored: 0,
            checksum: 0,
        }
        .encode(),
    );
    check_damaged(&f, &recs, "kind", &odd, "unknown record kind 0x51", 2);
}

#[test]
fn records_outside_the_origin_or_out_of_order_are_refused() {
    let f = Fixture::new("delta-crafted");
    let size = f.new.len() as u64;
    let recs = |list: &[(u64, u64)]| -> Vec<Rec> {
        list.iter()
            .map(|&(offset, length)| Rec {
                at: 0,
                offset,
                length,
                kind: "data".into(),
                compressed: false,
                stored: 0,
            })
            .collect()
    };
    // Past the end of the origin: the second record.
    let bytes = delta_bytes(&image_header(size, CHUNK), |w| {
        w.data(8192, &f.new[8192..16384]).unwrap();
        w.data(size - 4096, &[0xaa; 8192]).unwrap();
    });
    check_damaged(
        &f,
        &recs(&[(8192, 8192)]),
        "past-origin",
        &bytes,
        &format!("(record 1): its extent (offset {}, length 8192) ends past the end of the origin ({size} bytes)", size - 4096),
        1,
    );
    // Overlapping the previous record.
    let bytes = delta_bytes(&image_header(size, CHUNK), |w| {
        w.data(65536, &f.new[65536..73728]).unwrap();
        w.data(69632, &[0xbb; 4096]).unwrap();
    });
    check_damaged(
        &f,
        &recs(&[(65536, 8192)]),
        "overlap",
        &bytes,
        "records must be in increasing order without overlap",
        1,
    );
}

#[test]
fn a_failed_apply_leaves_a_complete_snapback() {
    let f = Fixture::new("delta-snapback-damaged");
    let delta = f.send("good.lvd", &[]);
    let good = fs::read(&delta).unwrap();
    let (_, recs) = inspect(&delta);
    let k = recs.iter().rposition(|r| r.stored > 0).unwrap();
    assert!(k > 5);
    let r = &recs[k];
    let mut bad = good.clone();
    bad[(r.at + 40) as usize + r.stored as usize / 2] ^= 0x10;
    let bad_path = f.path("bad.lvd");
    fs::write(&bad_path, &bad).unwrap();
    let copy = f.copy_of_old("copy.img");
    let snapback = f.path("undo.lvd");
    let out = run(&["apply", "--snapback", s(&snapback), s(&bad_path), s(&copy)]);
    assert_clean_failure(&out, "damaged payload");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is complete (with its END record)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&copy, &expected(&f, &recs, k), "partly applied copy");
    let (doc, _) = inspect(&snapback);
    assert_eq!(doc["whole"], true);
    assert_ok(&run(&["apply", s(&snapback), s(&copy)]));
    assert_same(&copy, &f.old, "restored copy");
}

#[test]
fn inspect_shows_a_good_delta_and_stops_at_damage() {
    let f = Fixture::new("delta-inspect");
    let delta = f.send("d.lvd", &[]);
    let out = run(&["inspect", s(&delta)]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        // Without zstd, the oldest version that has lz4.
        &format!(
            "format:       version {}, written by lvmsync-rs ",
            stream::Compression::Lz4.version()
        ),
        "source:       image ",
        "origin size:  4195840 (4.0 MiB)",
        "compression:  lz4",
        "zero",
        "data lz4",
        "check:        whole: every checksum holds",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
    // From stdin too.
    let mut child = command()
        .args(["inspect", "--json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(&delta).unwrap())
        .unwrap();
    let doc = json(&child.wait_with_output().unwrap());
    assert_eq!(doc["whole"], true);
    assert_eq!(doc["delta"], "stdin");
    assert!(doc["compression_ratio"].as_f64().unwrap() > 1.0);

    // Damaged: what could be read, then the error, exit 1.
    let (_, recs) = inspect(&delta);
    let mut bad = fs::read(&delta).unwrap();
    bad[recs[4].at as usize + 10] ^= 1;
    let bad_path = f.path("bad.lvd");
    fs::write(&bad_path, &bad).unwrap();
    let out = run(&["inspect", s(&bad_path)]);
    assert_eq!(out.status.code(), Some(5), "damaged: exit 5");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("damaged record header at byte"), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("records:      4: "), "{text}");
    assert!(
        text.contains("check:        FAILED: damaged record header"),
        "{text}"
    );
    let out = run(&["inspect", "--json", s(&bad_path)]);
    assert_eq!(out.status.code(), Some(5));
    let doc = strict_json(&stdout(&out)).unwrap();
    assert_eq!(doc["whole"], false);
    assert_eq!(doc["records"].as_array().unwrap().len(), 4);
    assert!(doc["error"]
        .as_str()
        .unwrap()
        .contains("damaged record header"));
}

#[test]
fn bad_arguments_are_refused() {
    let f = Fixture::new("delta-args");
    let delta = f.send("d.lvd", &[]);
    let missing = f.path("missing");
    let small = f.path("small.img");
    fs::write(&small, &f.new[..1 << 20]).unwrap();
    let out_dir = f.path("out-dir");
    fs::create_dir(&out_dir).unwrap();
    let copy = f.copy_of_old("copy.img");
    let (delta, missing, small, out_dir) = (s(&delta), s(&missing), s(&small), s(&out_dir));
    let (cow, new, dir, copy_arg) = (s(&f.cow_path), s(&f.new_path), s(&f.dir), s(&copy));
    let no_such_file = "missing: cannot open: No such file or directory";
    assert_refusals(&[
        // send
        (
            &["send", "--cow", missing, "--data-source", new, "-o", "-"],
            no_such_file,
        ),
        (
            &["send", "--cow", cow, "--data-source", missing, "-o", "-"],
            no_such_file,
        ),
        (
            &[
                "send",
                "--cow",
                cow,
                "--data-source",
                new,
                "--origin-size",
                "8M",
                "-o",
                "-",
            ],
            "the data source is 4195840 bytes, smaller than the origin (8388608 bytes)",
        ),
        (
            &[
                "send",
                "--cow",
                cow,
                "--data-source",
                small,
                "--origin-size",
                "4195840",
                "-o",
                "-",
            ],
            "small.img: the data source is 1048576 bytes, smaller than the origin",
        ),
        // A table naming chunks past the end of a small data source.
        (
            &["send", "--cow", cow, "--data-source", small, "-o", "-"],
            "past the end of the origin",
        ),
        (
            &["send", "--cow", cow, "--data-source", new, "-o", out_dir],
            "out-dir: cannot create: is a directory",
        ),
        (
            &["send", "vg-that-is-not/there", "-o", "-"],
            "no such device",
        ),
        // apply
        (&["apply", missing, copy_arg], no_such_file),
        (
            &["apply", delta, dir],
            "is a directory; name a regular file or a block device",
        ),
        (&["apply", dir, copy_arg], "cannot open: is a directory"),
        (&["apply", delta, delta], "are the same file"),
        (
            &["apply", cow, copy_arg],
            "a dm-snapshot COW image, not a delta: list or send it with --cow; nothing was written",
        ),
        (
            &["apply", delta, "/dev/null"],
            "not a regular file or a block device",
        ),
        // inspect
        (&["inspect", missing], no_such_file),
        (&["inspect", new], "not an lvmsync-rs delta"),
        (&["inspect", cow], "a dm-snapshot COW image, not a delta"),
    ]);
    assert_usage_errors(&[
        (&["send", "--cow", cow, "--data-source", new], ""),
        (&["send", "--cow", cow, "-o", "-"], ""),
        (
            &[
                "send",
                "--cow",
                cow,
                "--data-source",
                new,
                "-o",
                "-",
                "--compress",
                "zstd:20",
            ],
            "",
        ),
        (&["send", "vg/lv", "--origin-size", "1G", "-o", "-"], ""),
        (&["send", "-o", "-"], ""),
        (&["apply", delta], ""),
        (&["inspect"], ""),
    ]);
    assert_same(&copy, &f.old, "untouched copy");
    assert!(!fs::exists(f.path("d.lvd.partial")).unwrap());
}

#[test]
fn a_failed_send_leaves_no_file() {
    let f = Fixture::new("delta-send-fail");
    let small = f.path("small.img");
    fs::write(&small, &f.new[..1 << 20]).unwrap();
    let out_path = f.path("d.lvd");
    fs::write(&out_path, b"an older delta").unwrap();
    let out = run(&[
        "send",
        "--cow",
        s(&f.cow_path),
        "--data-source",
        s(&small),
        "-o",
        s(&out_path),
    ]);
    // A data source too small for the table: the source's fault, exit 8.
    assert_eq!(out.status.code(), Some(8));
    assert_eq!(fs::read(&out_path).unwrap(), b"an older delta");
    assert!(!fs::exists(f.path("d.lvd.partial")).unwrap());
}

#[test]
fn binary_deltas_stay_off_terminals() {
    let f = Fixture::new("delta-tty");
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: script(1) is not installed");
        return;
    }
    let cmd = format!(
        "{} send --cow {} --data-source {} -o -",
        bin().display(),
        s(&f.cow_path),
        s(&f.new_path)
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refusing to write a binary delta to a terminal"),
        "{text}"
    );
    assert!(!text.contains("LVMSD"), "no delta bytes on the terminal");
    // Nor waits for a delta typed on one.
    let copy = f.copy_of_old("copy.img");
    for cmd in [
        format!("{} apply - {}", bin().display(), s(&copy)),
        format!("{} inspect -", bin().display()),
    ] {
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("refusing to read a binary delta from a terminal"),
            "{cmd}: {text}"
        );
    }
    assert_same(&copy, &f.old, "untouched copy");
}
