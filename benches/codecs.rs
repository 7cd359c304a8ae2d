//! Bytes on the wire per codec (`--compress none|lz4|zstd[:LEVEL]`), and
//! how fast each writes them, next to the zstd and lz4 command-line tools
//! given the same changed bytes, measured in the same run:
//!
//! - The 1% workload: an image of `BENCH_GIB` GiB (default 4) of which 1%
//!   of the 4 KiB chunks changed in scattered runs (random data, text,
//!   zeroes, half and half; see `Workload::scattered`). Each codec's delta,
//!   `send --cow SNAP.COW --data-source NEW --compress C -o /dev/null`:
//!   its bytes and the time to write them. The baselines: `zstd -3` and
//!   `lz4` (level 1, its default) of the changed extents' bytes, one after
//!   the other in one file (zeroed extents included, as they are changed
//!   bytes; the delta carries them as ZERO records without data).
//! - The seed of a half-zero image of `BENCH_SEED_GIB` GiB (default 1; 4
//!   MiB runs of zeroes and of data, the data half text, half random):
//!   `sync --full IMAGE COPY` into a local file, with lz4 and with zstd: the
//!   delta's bytes, all but a few kilobytes of them the data half's.
//!
//! Both with the generated data and with the bytes of real files (see
//! `BENCH_CONTENT`).
//!
//! Run: `cargo bench --bench codecs` (the baselines need the zstd and lz4
//! programs; without them they are left out, with a note). Environment:
//! `BENCH_GIB`, `BENCH_SEED_GIB`, `BENCH_ROUNDS` (default 3, medians of the
//! times), `BENCH_DIR` (where the images go), `BENCH_KEEP`; `BENCH_CONTENT`
//! (`synthetic`, `files`, or unset for both) and `BENCH_FILES` (the
//! directory whose files' bytes fill the changed extents, default /usr).

#[path = "common/measure.rs"]
mod measure;

#[path = "common/workload.rs"]
mod workload;

use measure::{env_f64, median};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use workload::{concat_extents, half_zero_image_with, Data, Workload, CHUNK};

const BIN: &str = env!("CARGO_BIN_EXE_lvmsync-rs");

/// The codecs compared, as `--compress` takes them.
const CODECS: [&str; 5] = ["none", "lz4", "zstd:1", "zstd", "zstd:9"];

/// Whether `program` runs.
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `send ... --compress C -o /dev/null`: seconds and the delta's bytes (its
/// summary's `bytes`).
fn send(work: &Workload, codec: &str) -> (f64, u64) {
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["send", "--json", "-q", "--compress", codec, "--cow"])
        .arg(&work.cow)
        .arg("--data-source")
        .arg(&work.new)
        .args(["-o", "/dev/null"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run lvmsync-rs send");
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "send --compress {codec} failed");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = doc["delta_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no delta_bytes in {doc}"));
    (secs, bytes)
}

/// `sh -c "PROGRAM < INPUT | wc -c"`: seconds and the bytes it wrote.
fn compressor(program: &str, input: &Path) -> (f64, u64) {
    let t = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{program} < '{}' | wc -c", input.display()))
        .output()
        .expect("run sh");
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{program} failed");
    let bytes = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{program}: no byte count"));
    (secs, bytes)
}

/// `sync --full IMAGE COPY --create --compress C` into a fresh local COPY:
/// seconds and the delta's bytes.
fn seed(image: &Path, copy: &Path, codec: &str) -> (f64, u64) {
    let _ = fs::remove_file(copy);
    let _ = fs::remove_file(format!("{}.lvmsync-state", copy.display()));
    let t = Instant::now();
    let out = Command::new(BIN)
        .args([
            "sync",
            "--json",
            "-q",
            "--full",
            "--create",
            "--compress",
            codec,
        ])
        .arg(image)
        .arg(copy)
        .stderr(Stdio::inherit())
        .output()
        .expect("run lvmsync-rs sync");
    let secs = t.elapsed().as_secs_f64();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["result"], "ok", "{doc}");
    (secs, doc["bytes_on_wire"].as_u64().unwrap())
}

fn main() {
    let gib = env_f64("BENCH_GIB", 4.0);
    let seed_gib = env_f64("BENCH_SEED_GIB", 1.0);
    let rounds = env_f64("BENCH_ROUNDS", 3.0).max(1.0) as usize;
    let dir: PathBuf = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join(format!("bench-codecs-{}", std::process::id()));
    for (n, mut data) in Data::from_env().into_iter().enumerate() {
        let dir = dir.join(format!("data-{n}"));
        fs::create_dir_all(&dir).unwrap();
        println!("with {}:", data.describe());
        one_percent(&dir, gib, rounds, &mut data);
        seed_of(&dir, seed_gib, rounds, &mut data);
    }
    if std::env::var_os("BENCH_KEEP").is_none() {
        fs::remove_dir_all(&dir).unwrap();
    }
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// The 1% workload holding `data`: each codec next to the programs.
fn one_percent(dir: &Path, gib: f64, rounds: usize, data: &mut Data) {
    let work = Workload::scattered_with(dir, gib, 1.0, data);
    let changed = work.changed;
    let raw = dir.join("changed.bin");
    concat_extents(&work.new, &work.extents, &raw);
    let mut rows: Vec<(String, f64, u64)> = Vec::new();
    for codec in CODECS {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..rounds {
            let (secs, b) = send(&work, codec);
            times.push(secs);
            bytes = b;
        }
        rows.push((
            format!("lvmsync-rs --compress {codec}"),
            median(&mut times),
            bytes,
        ));
    }
    for (program, cmd) in [("zstd", "zstd -3 -c"), ("lz4", "lz4 -1 -c")] {
        if !have(program) {
            println!("note: no {program} program here: its baseline is left out (apt-get install {program})");
            continue;
        }
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..rounds {
            let (secs, b) = compressor(cmd, &raw);
            times.push(secs);
            bytes = b;
        }
        rows.push((
            format!("{cmd} of the changed bytes"),
            median(&mut times),
            bytes,
        ));
    }
    let lz4 = rows[1].2 as f64;
    println!(
        "1% workload: {changed} changed bytes ({:.1} MB) in {} extents of a {:.0} GiB image; median of {rounds} rounds:",
        mb(changed),
        work.extents.len(),
        gib
    );
    println!(
        "  {:<44} {:>12} {:>8} {:>9} {:>9}",
        "", "bytes", "MB", "of data", "of lz4's"
    );
    for (name, secs, bytes) in &rows {
        println!(
            "  {name:<44} {bytes:>12} {:>8.2} {:>8.1}% {:>8.1}%   {secs:.2} s ({:.0} MB/s of changed data)",
            mb(*bytes),
            *bytes as f64 * 100.0 / changed as f64,
            *bytes as f64 * 100.0 / lz4,
            mb(changed) / secs
        );
    }

    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = fs::remove_file(&work.new);
    }
}

/// The seed of a half-zero image whose data runs hold `data`.
fn seed_of(dir: &Path, seed_gib: f64, rounds: usize, data: &mut Data) {
    let seed_size = (seed_gib * (1u64 << 30) as f64) as u64 / CHUNK * CHUNK;
    let image = dir.join("half-zero.img");
    half_zero_image_with(&image, seed_size, data);
    let copy = dir.join("seed-copy.img");
    let mut seeds = Vec::new();
    for codec in ["lz4", "zstd"] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..rounds {
            let (secs, b) = seed(&image, &copy, codec);
            times.push(secs);
            bytes = b;
        }
        seeds.push((codec, median(&mut times), bytes));
    }
    let data_half = seed_size / 2;
    println!(
        "seed of a {seed_size}-byte image, half zeroes ({:.0} MB of {}); median of {rounds} rounds:",
        mb(data_half),
        match data {
            Data::Synthetic => "data: half text, half random",
            Data::Files(_) => "the files' bytes",
        }
    );
    for (codec, secs, bytes) in &seeds {
        println!(
            "  sync --full --compress {codec:<5} {bytes:>11} bytes ({:.1} MB, {:.1}% of the data half), {secs:.2} s",
            mb(*bytes),
            *bytes as f64 * 100.0 / data_half as f64
        );
    }
    println!(
        "  zstd / lz4: {:.3} of the bytes",
        seeds[1].2 as f64 / seeds[0].2 as f64
    );
    let _ = fs::remove_file(&image);
    let _ = fs::remove_file(&copy);
}
