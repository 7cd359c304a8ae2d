//! The codecs of DATA records, `--compress none|lz4|zstd[:LEVEL]`, through
//! the binary: every round trip (send piped into apply, sync over OpenSSH,
//! verify --repair here and over ssh) makes the copy equal; what each codec
//! writes (the format version, which records are compressed, how many
//! bytes); version 2 deltas (lz4 ones, and the walk-through of
//! docs/FORMAT.md) still apply; a record whose flags name no codec, or
//! another codec than the header's, is refused with one line and nothing
//! from it on written.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use byteorder::{ByteOrder, LittleEndian};
use xxhash_rust::xxh3::xxh3_64;

use crate::common::images::{words, Change, Fill};
use crate::common::sshd::{Sshd, HOST};
use crate::common::*;
use lvmsync::cowgen::Rng;
use lvmsync::stream;

const CHUNK: u64 = 4096;
/// Where the run of random chunks starts: its records are stored raw
/// whatever the codec.
const RANDOM_RUN: u64 = 1100;

/// A 6 MiB origin: runs of 10 changed chunks (words, random, text and a
/// zeroed one) every 16 chunks, a run of 60 random chunks, then zeroes.
fn change(name: &str) -> Change {
    let runs = (0..1024u64).filter_map(|c| match c % 16 {
        0..=5 => Some((c, Fill::Words)),
        6 | 7 => Some((c, Fill::Random)),
        8 => Some((c, Fill::Text)),
        9 => Some((c, Fill::Zero)),
        _ => None,
    });
    let random = (RANDOM_RUN..RANDOM_RUN + 60).map(|c| (c, Fill::Random));
    let zero = (1200..1210).map(|c| (c, Fill::Zero));
    Change::new(
        scratch(name),
        6 << 20,
        CHUNK,
        0x0dd5_eed5_1234_5679,
        runs.chain(random).chain(zero),
    )
}

/// `send --cow --data-source -o OUT --compress HOW`.
fn send(c: &Change, how: &str, out: &Path) {
    let o = run(&[
        "send",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "--compress",
        how,
        "-o",
        s(out),
    ]);
    assert_ok(&o);
}

/// A record as `inspect --json` lists it: where it is in the delta, its
/// offset and length in the origin, whether it is compressed, and whether
/// it came in a GROUP record (then `at` is the GROUP's).
struct Rec {
    at: usize,
    offset: u64,
    length: u64,
    compressed: bool,
    grouped: bool,
}

fn inspect(delta: &Path) -> (serde_json::Value, Vec<Rec>) {
    let doc = json(&run(&["inspect", "--json", s(delta)]));
    let recs = doc["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Rec {
            at: r["at"].as_u64().unwrap() as usize,
            offset: r["offset"].as_u64().unwrap(),
            length: r["length"].as_u64().unwrap(),
            compressed: r["compressed"].as_bool().unwrap(),
            grouped: r["grouped"].as_bool().unwrap(),
        })
        .collect();
    (doc, recs)
}

#[test]
fn each_codec_round_trips_through_send_piped_into_apply() {
    let c = change("codecs-send");
    // (codec, format version, header's compression, level)
    let cases: [(&str, u64, &str, Option<i64>); 5] = [
        ("none", 2, "none", None),
        ("lz4", 2, "lz4", None),
        ("zstd:1", 4, "zstd", Some(1)),
        ("zstd", 4, "zstd", Some(3)),
        ("zstd:19", 4, "zstd", Some(19)),
    ];
    let mut sizes = Vec::new();
    for (how, version, codec, level) in cases {
        // Piped.
        let copy = c.copy_of_old("piped.img");
        let mut sender = command()
            .args(["send", "--cow", s(&c.cow_path), "--data-source"])
            .arg(&c.new_path)
            .args(["--compress", how, "-o", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let applied = command()
            .args(["apply", "-", s(&copy)])
            .stdin(sender.stdout.take().unwrap())
            .output()
            .unwrap();
        assert_ok(&sender.wait_with_output().unwrap());
        assert_ok(&applied);
        assert_same(&copy, &c.new, &format!("{how}: piped"));

        // To a file: what it holds, and applied from there.
        let delta = c.path(&format!("{}.lvd", how.replace(':', "-")));
        send(&c, how, &delta);
        let bytes = fs::read(&delta).unwrap();
        assert_eq!(
            u64::from(LittleEndian::read_u32(&bytes[8..12])),
            version,
            "{how}"
        );
        let (doc, recs) = inspect(&delta);
        assert_eq!(doc["whole"], true, "{how}");
        assert_eq!(doc["format_version"], version, "{how}");
        assert_eq!(doc["header"]["compression"], codec, "{how}");
        assert_eq!(
            doc["header"]["compression_level"],
            serde_json::Value::from(level),
            "{how}"
        );
        let random = recs
            .iter()
            .find(|r| r.offset == RANDOM_RUN * CHUNK)
            .expect("the random run's record");
        assert_eq!(random.length, 60 * CHUNK);
        // Raw, or in a GROUP (whose frame stores it raw within).
        assert!(
            !random.compressed || random.grouped,
            "{how}: random data is stored raw"
        );
        assert_eq!(recs.iter().any(|r| r.compressed), how != "none", "{how}");
        // zstd sends the small extents in GROUP records; the others never.
        assert_eq!(recs.iter().any(|r| r.grouped), codec == "zstd", "{how}");
        let copy = c.copy_of_old("file.img");
        assert_ok(&run(&["apply", s(&delta), s(&copy)]));
        assert_same(&copy, &c.new, &format!("{how}: from a file"));
        sizes.push((how, bytes.len()));
    }
    // Each codec writes fewer bytes than the one before it: none, lz4,
    // zstd:1, zstd:3; level 19 no more than level 3.
    for w in sizes[..4].windows(2) {
        assert!(w[1].1 < w[0].1, "{sizes:?}");
    }
    assert!(sizes[4].1 <= sizes[3].1, "{sizes:?}");

    // What inspect says of a zstd delta.
    let o = run(&["inspect", s(&c.path("zstd.lvd"))]);
    assert_ok(&o);
    let text = stdout(&o);
    for needle in [
        "format:       version 4, written by lvmsync-rs ",
        "compression:  zstd, level 3",
        "data zstd",
        "in group",
        "check:        whole: every checksum holds",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
}

/// The delta of docs/FORMAT.md's walk-through, from its hex dump.
fn walk_through() -> Vec<u8> {
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md")).unwrap();
    let start = doc.find("## A walk through a tiny delta").unwrap();
    let dump = doc[start..].split("```").nth(1).unwrap();
    let mut bytes = Vec::new();
    for line in dump.lines().filter(|l| !l.trim().is_empty()) {
        let (at, rest) = line.split_once(": ").unwrap();
        assert_eq!(
            usize::from_str_radix(at, 16).unwrap(),
            bytes.len(),
            "{line}"
        );
        // The hex columns end at the first two spaces.
        let hex = rest.split("  ").next().unwrap().replace(' ', "");
        for i in (0..hex.len()).step_by(2) {
            bytes.push(u8::from_str_radix(&hex[i..i + 2], 16).unwrap());
        }
    }
    bytes
}

#[test]
fn version_2_deltas_still_apply() {
    let dir = scratch("codecs-version-2");
    // The walk-through's delta, written by version 2 of the format.
    let tiny = walk_through();
    assert_eq!(tiny.len(), 391);
    assert_eq!(LittleEndian::read_u32(&tiny[8..12]), 2);
    let delta = dir.join("tiny.lvd");
    fs::write(&delta, &tiny).unwrap();
    let (doc, _) = inspect(&delta);
    assert_eq!(doc["whole"], true);
    assert_eq!(doc["format_version"], 2);
    assert_eq!(doc["header"]["compression"], "lz4");
    let copy = dir.join("copy.img");
    fs::write(&copy, random(8192, 3)).unwrap();
    assert_ok(&run(&["apply", s(&delta), s(&copy)]));
    let mut want = b"lvmsync ".repeat(512);
    want.extend_from_slice(&[0u8; 4096]);
    assert_same(&copy, &want, "the walk-through applied");

    // An lz4 delta of this build is version 2, and applies: covered with
    // the other codecs above; one from stdin with a version 2 header that
    // says none as well.
    let c = change("codecs-version-2-none");
    let none = c.path("none.lvd");
    send(&c, "none", &none);
    let bytes = fs::read(&none).unwrap();
    assert_eq!(LittleEndian::read_u32(&bytes[8..12]), 2);
    let copy = c.copy_of_old("copy.img");
    let mut child = command()
        .args(["apply", "-", s(&copy)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &bytes).unwrap();
    assert_ok(&child.wait_with_output().unwrap());
    assert_same(&copy, &c.new, "version 2, no compression");
}

/// The old image with the records before `k` applied.
fn expected(c: &Change, recs: &[Rec], k: usize) -> Vec<u8> {
    let mut e = c.old.clone();
    for r in &recs[..k] {
        let (a, b) = (r.offset as usize, (r.offset + r.length) as usize);
        e[a..b].copy_from_slice(&c.new[a..b]);
    }
    e
}

/// `bytes` with the flags of the record header at `at` set to `flags`,
/// the header's checksum made good again.
fn with_flags(bytes: &[u8], at: usize, flags: u8) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at + 1] = flags;
    let sum = xxh3_64(&b[at..at + 32]);
    LittleEndian::write_u64(&mut b[at + 32..at + 40], sum);
    b
}

/// Applies `bytes` to a copy of the old image: it must fail with exit
/// status `code` and one line holding `needle`, the copy holding the
/// records before `k` and nothing else.
fn refused(
    c: &Change,
    recs: &[Rec],
    name: &str,
    bytes: &[u8],
    needle: &str,
    code: i32,
    k: usize,
) -> String {
    let delta = c.path(&format!("{name}.lvd"));
    fs::write(&delta, bytes).unwrap();
    let copy = c.copy_of_old(&format!("{name}.img"));
    let o = run(&["apply", s(&delta), s(&copy)]);
    if let Err(why) = clean_failure(&o, needle) {
        panic!("{name}: {why}");
    }
    assert_eq!(o.status.code(), Some(code), "{name}: {}", stderr(&o));
    if k == 0 {
        assert!(stderr(&o).contains("nothing was written to"), "{name}");
    }
    assert_same(&copy, &expected(c, recs, k), name);
    stderr(&o)
}

#[test]
fn a_codec_flag_that_is_unknown_or_not_the_headers_is_refused() {
    // The small extents of `change` (512 KiB), and one of 4 MiB of words
    // after them: a GROUP holds at most 4 MiB of records, so the small
    // ones and three pieces of 1 MiB fill the first, and the last piece
    // is a zstd DATA record of its own, not in a GROUP.
    let small = (0..256u64).filter_map(|c| match c % 16 {
        0..=5 => Some((c, Fill::Words)),
        6 => Some((c, Fill::Random)),
        9 => Some((c, Fill::Zero)),
        _ => None,
    });
    let big = (512..1536).map(|c| (c, Fill::Words));
    let c = Change::new(
        scratch("codecs-flags"),
        6 << 20,
        CHUNK,
        0x0dd5_eed5_1234_5679,
        small.chain(big),
    );
    let zstd_delta = c.path("zstd.lvd");
    let lz4_delta = c.path("lz4.lvd");
    send(&c, "zstd", &zstd_delta);
    send(&c, "lz4", &lz4_delta);
    let zstd = fs::read(&zstd_delta).unwrap();
    let lz4 = fs::read(&lz4_delta).unwrap();
    let (_, zrecs) = inspect(&zstd_delta);
    let (_, lrecs) = inspect(&lz4_delta);
    // A compressed record past the first, so that the ones before it are
    // written and it is not.
    let k = zrecs
        .iter()
        .skip(1)
        .position(|r| r.compressed && !r.grouped)
        .unwrap()
        + 1;
    let at = zrecs[k].at;
    assert_eq!(zstd[at + 1], stream::FLAG_ZSTD);
    let invalid = format!("invalid record at byte {at} (record {k}): ");
    for (flags, needle) in [
        (stream::FLAG_ZSTD | 4, "unknown flags 0x06"),
        (0x80, "unknown flags 0x80"),
        (
            stream::FLAG_LZ4 | stream::FLAG_ZSTD,
            "flags 0x03 say both lz4 and zstd",
        ),
        (
            stream::FLAG_LZ4,
            "an lz4 record in a stream whose header says zstd",
        ),
    ] {
        let name = format!("zstd-flags-{flags:02x}");
        let bytes = with_flags(&zstd, at, flags);
        let err = refused(&c, &zrecs, &name, &bytes, needle, 5, k);
        assert!(err.contains(&invalid), "{name}: {err}");
    }
    // A GROUP record's flags: 02 only.
    let k = zrecs.iter().position(|r| r.grouped).unwrap();
    let at = zrecs[k].at;
    assert_eq!(zstd[at], stream::KIND_GROUP);
    for flags in [0, stream::FLAG_LZ4, stream::FLAG_ZSTD | 4] {
        let name = format!("group-flags-{flags:02x}");
        let bytes = with_flags(&zstd, at, flags);
        let err = refused(
            &c,
            &zrecs,
            &name,
            &bytes,
            &format!(
                "a GROUP record with flags 0x{flags:02x}: its payload is a zstd frame (flags 02)"
            ),
            5,
            k,
        );
        assert!(
            err.contains(&format!("invalid record at byte {at} (record {k}): ")),
            "{name}: {err}"
        );
    }
    // A zstd flag in a version 2 (lz4) delta.
    let k = lrecs.iter().skip(1).position(|r| r.compressed).unwrap() + 1;
    let bytes = with_flags(&lz4, lrecs[k].at, stream::FLAG_ZSTD);
    refused(
        &c,
        &lrecs,
        "lz4-with-zstd",
        &bytes,
        "a zstd record in a stream whose header says lz4",
        5,
        k,
    );

    // A newer version is refused (exit 4), before anything is written.
    let mut newer = zstd.clone();
    newer[8] = 5;
    refused(
        &c,
        &zrecs,
        "version-5",
        &newer,
        "delta format version 5, but this lvmsync-rs reads versions 2 to 4 only: it was written by a newer lvmsync-rs",
        4,
        0,
    );
    // A zstd header under version 2 (its checksum made good): damaged.
    let mut v2 = zstd.clone();
    v2[8] = 2;
    let n = LittleEndian::read_u32(&v2[12..16]) as usize;
    let sum = xxh3_64(&v2[..16 + n]);
    LittleEndian::write_u64(&mut v2[16 + n..24 + n], sum);
    refused(
        &c,
        &zrecs,
        "zstd-in-version-2",
        &v2,
        "damaged header: it says zstd compression, which format version 2 does not have (version 3 added it)",
        5,
        0,
    );
}

/// `sync --json` of a change to DEST (`args` before it: how to reach it),
/// compressed `how`: its summary.
fn sync_json(c: &Change, how: &str, args: &[&str], dest: &str) -> serde_json::Value {
    let mut argv = vec![
        "sync",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "--compress",
        how,
        "--json",
        "-q",
    ];
    argv.extend_from_slice(args);
    argv.push(dest);
    let o = run(&argv);
    assert_ok(&o);
    strict_json(&stdout(&o)).unwrap()
}

/// An sshd and a change.
fn sync(sshd: &Sshd, c: &Change, how: &str, dest: &Path) -> serde_json::Value {
    let (rsh, remote) = (sshd.rsh(), bin());
    let link = ["-e", &rsh, "--remote-path", s(&remote)];
    sync_json(c, how, &link, &format!("{HOST}:{}", s(dest)))
}

#[test]
fn each_codec_round_trips_through_sync_over_ssh() {
    let c = change("codecs-sync");
    let sshd = Sshd::start(&c.path("sshd"));
    let mut wire = Vec::new();
    for how in ["none", "lz4", "zstd:1", "zstd"] {
        let copy = c.copy_of_old("copy.img");
        let doc = sync(&sshd, &c, how, &copy);
        assert_eq!(doc["result"], "ok", "{how}: {doc}");
        assert_same(&copy, &c.new, &format!("{how}: synced"));
        wire.push((how, doc["bytes_on_wire"].as_u64().unwrap()));
    }
    for w in wire.windows(2) {
        assert!(w[1].1 < w[0].1, "{wire:?}");
    }
    // auto through the remote shell starts at zstd:6, and this change is
    // too short for it to move: all of it goes at that level.
    let copy = c.copy_of_old("copy.img");
    let doc = sync(&sshd, &c, "auto", &copy);
    assert_same(&copy, &c.new, "auto: synced over ssh");
    assert_eq!(doc["auto"]["chose"], "zstd:6", "{doc}");
    assert_eq!(doc["auto"]["share"], 1.0, "{doc}");
    // Locally it starts at zstd:3.
    let doc = sync_json(&c, "auto", &[], s(&c.copy_of_old("copy2.img")));
    assert_eq!(doc["auto"]["chose"], "zstd:3", "{doc}");
}

/// SRC: 3 MiB of words; DEST: SRC with every other 64 KiB block zeroed.
fn repair_pair(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let mut data = vec![0u8; 3 << 20];
    words(&mut data, &mut Rng(77));
    let src = dir.join("src.img");
    fs::write(&src, &data).unwrap();
    let dest = dir.join("dest.img");
    (src, dest, data)
}

fn damage(dest: &Path, data: &[u8]) {
    let mut copy = data.to_vec();
    for block in copy.chunks_mut(64 << 10).step_by(2) {
        block.fill(0);
    }
    fs::write(dest, copy).unwrap();
}

/// `verify --repair --json --compress HOW` plus `extra`: the repair
/// delta's bytes.
fn repair(extra: &[&str], how: &str, src: &Path, dest: &str) -> u64 {
    let mut args = vec!["verify", "--repair", "--json", "--compress", how];
    args.extend_from_slice(extra);
    args.extend([s(src), dest]);
    let o = run(&args);
    assert_ok(&o);
    let doc = strict_json(&stdout(&o)).unwrap();
    doc["repaired"]["delta_bytes"].as_u64().unwrap()
}

#[test]
fn verify_repairs_with_the_codec_asked_here_and_over_ssh() {
    let dir = scratch("codecs-repair");
    let (src, dest, data) = repair_pair(&dir);
    let mut sent = Vec::new();
    for how in ["none", "lz4", "zstd"] {
        damage(&dest, &data);
        sent.push((how, repair(&[], how, &src, s(&dest))));
        assert_same(&dest, &data, &format!("{how}: repaired"));
    }
    for w in sent.windows(2) {
        assert!(w[1].1 < w[0].1, "{sent:?}");
    }
    // Over ssh: zstd sends what it sends here, give or take the header.
    let sshd = Sshd::start(&dir.join("sshd"));
    damage(&dest, &data);
    let (rsh, remote) = (sshd.rsh(), bin());
    let over_ssh = repair(
        &["-e", &rsh, "--remote-path", s(&remote)],
        "zstd",
        &src,
        &format!("{HOST}:{}", s(&dest)),
    );
    assert_same(&dest, &data, "zstd: repaired over ssh");
    assert!(over_ssh < sent[1].1, "{over_ssh} over ssh, {sent:?} here");
}

#[test]
fn auto_says_what_it_chose_and_its_delta_applies() {
    let c = change("codecs-auto");
    let delta = c.path("auto.lvd");
    let o = run(&[
        "send",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "--compress",
        "auto",
        "--json",
        "-o",
        s(&delta),
    ]);
    assert_ok(&o);
    let doc = strict_json(&stdout(&o)).unwrap();
    assert_eq!(doc["compression"], "auto", "{doc}");
    let auto = &doc["auto"];
    assert!(auto["chose"].as_str().unwrap().starts_with("zstd:") || auto["chose"] == "raw");
    assert!(!auto["why"].as_str().unwrap().is_empty(), "{doc}");
    // A zstd stream (version 4) whatever the levels.
    let (doc, _) = inspect(&delta);
    assert_eq!(doc["format_version"], 4);
    assert_eq!(doc["header"]["compression"], "zstd");
    let copy = c.copy_of_old("copy.img");
    assert_ok(&run(&["apply", s(&delta), s(&copy)]));
    assert_same(&copy, &c.new, "auto");
    // The summary line says it too.
    let o = run(&[
        "sync",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "--compress",
        "auto",
        s(&c.copy_of_old("copy2.img")),
    ]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("lvmsync-rs sync: --compress auto: "),
        "{}",
        stderr(&o)
    );
    assert_same(&c.path("copy2.img"), &c.new, "auto, synced");
    // Not where it has no meaning.
    assert_eq!(
        run(&["verify", "--repair", "--compress", "auto", "a", "b"])
            .status
            .code(),
        Some(2)
    );
}
