//! Shipping changed data: 1 GiB of changes scattered over a 4 GiB image
//! (random data, text, zeroes, and extents mixing random and text), sent as a
//! user sends it, `lvmsync-rs send -o - | lvmsync-rs apply - COPY`, into a
//! copy of the old image.
//!
//! Prints MB/s of changed data for the pipeline, with lz4 and without
//! compression, next to a baseline measured in the same run: a plain loop
//! that reads the same extents from the new image and writes them into
//! another copy with pread/pwrite, then fsyncs it (apply syncs its copy too).
//! Also the peak memory of the child processes, and the delta's size.
//!
//! First, the standard small workload: a 4 GiB image with 1% of its 4 KiB
//! chunks changed in extents of 1 to 3 chunks (about 43 MB in 5,300
//! extents), with a cold page cache and then a warm one, next to its floor:
//! the same extents read with a readahead hint for all of them
//! (POSIX_FADV_WILLNEED), written with pwrite, then fsync.
//!
//! Encryption: the same pipelines with `send --encrypt --key-file K` and
//! `apply --key-file K`, next to the unencrypted ones of the same rounds.
//! Target: at least 0.9 of their speed.
//!
//! Run: `cargo bench --bench delta`. Environment:
//! - `BENCH_WORKLOAD`: `standard` or `bulk` to run only one of the two;
//! - `BENCH_STANDARD_GIB`: the standard workload's image size (default 4);
//! - `BENCH_GIB`: changed data in GiB (default 1; the image is 4 times that);
//! - `BENCH_ROUNDS`: rounds of the three measurements (default 3; the median
//!   is reported);
//! - `BENCH_DIR`: where the sparse images go (default the target's tmp dir;
//!   a tmpfs such as /dev/shm takes the disk out of the figures);
//! - `BENCH_KEEP`: keep the images afterwards (to profile by hand).

use measure::{env_f64, median};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "common/measure.rs"]
mod measure;

#[path = "common/workload.rs"]
mod workload;

use workload::{copy_extents, copy_extents_hinted, make_copy, same_extents, Content, Workload};

/// `send ... -o - | apply - copy`, encrypted with the key file `key` when
/// given; returns the wall time and apply's report.
fn pipeline(
    cow: &Path,
    new: &Path,
    copy: &Path,
    compress: &str,
    key: Option<&Path>,
) -> (f64, String) {
    let bin = env!("CARGO_BIN_EXE_lvmsync-rs");
    let keys: Vec<&std::ffi::OsStr> = match key {
        Some(k) => vec!["--key-file".as_ref(), k.as_os_str()],
        None => vec![],
    };
    let t = Instant::now();
    let mut send = Command::new(bin)
        .args(["send", "--compress", compress, "--cow"])
        .arg(cow)
        .arg("--data-source")
        .arg(new)
        .args(["-o", "-"])
        .args(if key.is_some() {
            &["--encrypt"][..]
        } else {
            &[]
        })
        .args(&keys)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run lvmsync-rs send");
    let apply = Command::new(bin)
        .args(["apply", "-"])
        .args(&keys)
        .arg(copy)
        .stdin(send.stdout.take().unwrap())
        .stderr(Stdio::piped())
        .output()
        .expect("run lvmsync-rs apply");
    let sent = send.wait().unwrap();
    let secs = t.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&apply.stderr).into_owned();
    assert!(sent.success() && apply.status.success(), "{report}");
    (secs, report)
}

fn main() {
    let rounds = env_f64("BENCH_ROUNDS", 3.0).max(1.0) as usize;
    let only = std::env::var("BENCH_WORKLOAD").unwrap_or_default();
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join(format!("bench-delta-{}", std::process::id()));
    if only != "bulk" {
        fs::create_dir_all(&dir).unwrap();
        standard(&dir.join("standard"), rounds);
    }
    if only != "standard" {
        bulk(&dir.join("bulk"), rounds);
    }
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Reads the changed extents of the new image and the whole COW image
/// once, so that their pages are in the page cache (the rest of the new
/// image is a hole: reading it would only fill the cache with zeroes).
fn warm(work: &Workload) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(&work.new).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for e in &work.extents {
        f.read_exact_at(&mut buf[..e.length as usize], e.offset)
            .unwrap();
    }
    fs::read(&work.cow).unwrap();
}

/// A new key file in `dir`, made by `lvmsync-rs key new`.
fn new_key(dir: &Path) -> PathBuf {
    let key = dir.join("bench.key");
    let _ = fs::remove_file(&key);
    let made = Command::new(env!("CARGO_BIN_EXE_lvmsync-rs"))
        .args(["key", "new"])
        .arg(&key)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    key
}

/// The standard small workload, cold and warm, next to its floor; and
/// cold, encrypted next to plain.
fn standard(dir: &Path, rounds: usize) {
    fs::create_dir_all(dir).unwrap();
    let gib = env_f64("BENCH_STANDARD_GIB", 4.0);
    let work = Workload::scattered(dir, gib, 1.0);
    let copy = dir.join("copy.img");
    let key = new_key(dir);
    let (mut floor_cold, mut cold, mut floor_warm, mut warm_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut sealed_cold = Vec::new();
    for round in 0..rounds {
        for cache in ["cold", "warm"] {
            let prepare = || {
                make_copy(&copy, work.origin_size, &work.extents);
                if cache == "cold" {
                    measure::drop_cache(&[&work.new, &work.cow, &copy]);
                } else {
                    warm(&work);
                }
            };
            prepare();
            let f = copy_extents_hinted(&work.new, &copy, &work.extents);
            prepare();
            let (p, report) = pipeline(&work.cow, &work.new, &copy, "lz4", None);
            if round == 0 {
                assert!(
                    same_extents(&work.new, &copy, &work.extents),
                    "the copy differs from the new image after send | apply ({cache})"
                );
                assert!(report.contains("stream digest matched"), "{report}");
            }
            println!(
                "standard, round {}, {cache}: floor {:.3} s, send | apply {:.3} s",
                round + 1,
                f,
                p
            );
            if cache == "cold" {
                floor_cold.push(f);
                cold.push(p);
                prepare();
                let (e, report) = pipeline(&work.cow, &work.new, &copy, "lz4", Some(key.as_path()));
                if round == 0 {
                    assert!(
                        same_extents(&work.new, &copy, &work.extents),
                        "the copy differs from the new image after an encrypted send | apply"
                    );
                    assert!(report.contains("stream digest matched"), "{report}");
                }
                println!(
                    "standard, round {}, cold: send --encrypt | apply {:.3} s",
                    round + 1,
                    e
                );
                sealed_cold.push(e);
            } else {
                floor_warm.push(f);
                warm_t.push(p);
            }
        }
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mbs = |secs: f64| work.changed as f64 / 1e6 / secs;
    println!("standard workload, median of {rounds} rounds:");
    // The disk's speed drifts from round to round: each round's ratio is
    // taken between runs a moment apart, and their median is the figure.
    let paired = |f: &[f64], p: &[f64]| {
        let mut r: Vec<f64> = f.iter().zip(p).map(|(f, p)| f / p).collect();
        median(&mut r)
    };
    // Before the medians below sort the times.
    let sealed_ratio = paired(&cold, &sealed_cold);
    for (cache, floors, runs, target) in [
        ("cold", &mut floor_cold, &mut cold, 0.75),
        ("warm", &mut floor_warm, &mut warm_t, 0.8),
    ] {
        let ratio = paired(floors, runs);
        let (f, p) = (median(floors), median(runs));
        println!(
            "  {cache}: floor {:.3} s ({:.0} MB/s), send | apply {:.3} s ({:.0} MB/s): {:.2} of the floor's speed, round by round (target {target}: {})",
            f,
            mbs(f),
            p,
            mbs(p),
            ratio,
            verdict(ratio >= target)
        );
    }
    println!(
        "  cold, encrypted: send --encrypt | apply {:.3} s: {:.2} of the plain pipeline's speed, round by round (target 0.9: {})",
        median(&mut sealed_cold),
        sealed_ratio,
        verdict(sealed_ratio >= 0.9)
    );
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// The bulk workload: 1 GiB of changes by default.
fn bulk(dir: &Path, rounds: usize) {
    let gib = env_f64("BENCH_GIB", 1.0);
    let dir = dir.to_path_buf();
    fs::create_dir_all(&dir).unwrap();

    let work = Workload::make(&dir, gib);
    let Workload {
        extents,
        origin_size,
        changed,
        new,
        cow,
    } = &work;
    let (origin_size, changed) = (*origin_size, *changed);

    // Sizes and the ZERO records, from a delta written once (not timed).
    let delta = dir.join("d.lvd");
    let bin = env!("CARGO_BIN_EXE_lvmsync-rs");
    let status = Command::new(bin)
        .args(["send", "--cow"])
        .arg(cow)
        .arg("--data-source")
        .arg(new)
        .arg("-o")
        .arg(&delta)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(bin)
        .args(["inspect", "--json"])
        .arg(&delta)
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = doc["records"].as_array().unwrap();
    let zero_records: Vec<_> = records.iter().filter(|r| r["kind"] == "zero").collect();
    let zero_payload: u64 = zero_records
        .iter()
        .map(|r| r["stored"].as_u64().unwrap())
        .sum();
    let zero_bytes: u64 = zero_records
        .iter()
        .map(|r| r["length"].as_u64().unwrap())
        .sum();
    let expected_zero: u64 = extents
        .iter()
        .filter(|e| e.content == Content::Zero)
        .map(|e| e.length)
        .sum();
    let delta_len = fs::metadata(&delta).unwrap().len();
    let record_bytes: u64 = records
        .iter()
        .map(|r| 40 + r["stored"].as_u64().unwrap())
        .sum();
    fs::remove_file(&delta).unwrap();

    let key = new_key(&dir);
    let copy = dir.join("copy.img");
    let mut base = Vec::new();
    let mut lz4 = Vec::new();
    let mut none = Vec::new();
    let mut lz4_aes = Vec::new();
    let mut none_aes = Vec::new();
    for round in 0..rounds {
        make_copy(&copy, origin_size, extents);
        base.push(copy_extents(new, &copy, extents));
        for (mode, times, k) in [
            ("lz4", &mut lz4, None),
            ("lz4", &mut lz4_aes, Some(key.as_path())),
            ("none", &mut none, None),
            ("none", &mut none_aes, Some(key.as_path())),
        ] {
            make_copy(&copy, origin_size, extents);
            let (secs, report) = pipeline(cow, new, &copy, mode, k);
            times.push(secs);
            if round == 0 {
                assert!(
                    same_extents(new, &copy, extents),
                    "the copy differs from the new image after send | apply ({mode})"
                );
                assert!(report.contains("stream digest matched"), "{report}");
            }
        }
        println!(
            "round {}: baseline {:.2} s, lz4 {:.2} s, lz4 encrypted {:.2} s, none {:.2} s, none encrypted {:.2} s",
            round + 1,
            base[round],
            lz4[round],
            lz4_aes[round],
            none[round],
            none_aes[round]
        );
    }
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let peak_mib = usage.max_rss() as f64 / 1024.0;
    if std::env::var_os("BENCH_KEEP").is_none() {
        fs::remove_dir_all(&dir).unwrap();
    }

    let mbs = |secs: f64| changed as f64 / 1e6 / secs;
    let (b, l, n) = (median(&mut base), median(&mut lz4), median(&mut none));
    let (la, na) = (median(&mut lz4_aes), median(&mut none_aes));
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("median of {rounds} rounds, MB/s of changed data:");
    println!(
        "  baseline (pread/pwrite loop + fsync):  {:.2} s  {:7.0} MB/s",
        b,
        mbs(b)
    );
    println!(
        "  send | apply, lz4:                     {:.2} s  {:7.0} MB/s  {:.2} of the baseline (target 0.7: {})",
        l,
        mbs(l),
        b / l,
        verdict(b / l >= 0.7)
    );
    println!(
        "  send | apply, --compress none:         {:.2} s  {:7.0} MB/s  {:.2} of the baseline (target 0.9: {})",
        n,
        mbs(n),
        b / n,
        verdict(b / n >= 0.9)
    );
    println!(
        "  send --encrypt | apply, lz4:           {:.2} s  {:7.0} MB/s  {:.2} of unencrypted lz4 (target 0.9: {})",
        la,
        mbs(la),
        l / la,
        verdict(l / la >= 0.9)
    );
    println!(
        "  send --encrypt | apply, none:          {:.2} s  {:7.0} MB/s  {:.2} of unencrypted none (target 0.9: {})",
        na,
        mbs(na),
        n / na,
        verdict(n / na >= 0.9)
    );
    println!(
        "delta (lz4): {} bytes, {:.1}% of the changed data, {} records",
        delta_len,
        delta_len as f64 * 100.0 / changed as f64,
        records.len()
    );
    println!(
        "ZERO records: {}, {} bytes (expected {}), payload {} bytes; stream = header + records + END: {}",
        zero_records.len(),
        zero_bytes,
        expected_zero,
        zero_payload,
        delta_len == doc["records"][0]["at"].as_u64().unwrap() + record_bytes + 88
    );
    println!(
        "peak memory of a child process: {:.1} MiB (target under 64 MiB: {})",
        peak_mib,
        verdict(peak_mib < 64.0)
    );
    assert_eq!(zero_payload, 0);
    assert_eq!(zero_bytes, expected_zero);
}
