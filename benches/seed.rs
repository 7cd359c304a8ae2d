//! Seeding a copy and the increment after it, over ssh: what `backup` does
//! on its first run and on the next ones, measured on image files (the
//! snapshot steps of `backup` are left out: they take the same time
//! whatever is copied).
//!
//! - The seed: `lvmsync-rs sync --full IMAGE root@127.0.0.1:COPY --create`
//!   of an image that is half zeroes (in 4 MiB runs; the data half is text
//!   and random bytes), against a full copy of the kind users script,
//!   `dd if=IMAGE | lz4 -1 | ssh root@127.0.0.1 'lz4 -d | dd of=COPY'`,
//!   measured in the same run: time and bytes on the wire. Targets: at
//!   least twice as fast, and under half the bytes.
//! - The increment: 1% of the image changed (scattered runs), sent with
//!   `lvmsync-rs sync --cow SNAP.COW --data-source NEW root@127.0.0.1:COPY`
//!   onto the seeded copy. Target: under 5% of the seed's time.
//!
//! Run: `cargo bench --bench seed` (as root: sshd lets root in with the
//! generated key; needs openssh-server and lz4). Environment: `BENCH_GIB`
//! (image size, default 4), `BENCH_ROUNDS` (default 3, medians),
//! `BENCH_DIR` (where the images go), `BENCH_KEEP`.

#[path = "common/measure.rs"]
mod measure;

#[path = "common/workload.rs"]
mod workload;

#[path = "../tests/suite/common/sshd.rs"]
mod sshd;

use measure::{drop_cache, env_f64, median};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use workload::half_zero_image;

use lvmsync::cowgen::{CowImage, Rng};

const CHUNK: u64 = 4096;

/// A COW image of `share` of the chunks of an image of `size` bytes (runs
/// of 1 to 64 chunks), and a new image where those chunks hold random
/// data (the rest a hole: only the listed chunks are read).
fn make_change(dir: &Path, size: u64, share: f64) -> (PathBuf, PathBuf, u64) {
    let chunks = size / CHUNK;
    let target = (chunks as f64 * share) as u64;
    let mut rng = Rng(0x00c4_a79e);
    let mut cow = CowImage::new(CHUNK);
    let new = dir.join("new.img");
    let f = File::create(&new).unwrap();
    f.set_len(size).unwrap();
    let mut buf = vec![0u8; 64 * CHUNK as usize];
    let mut changed = 0;
    let mut c = 0;
    while changed < target {
        c += rng.below(2 * chunks / target.max(1) * 32);
        let len = (1 + rng.below(64)).min(chunks.saturating_sub(c));
        if len == 0 {
            break;
        }
        for i in c..c + len {
            cow.push(i);
        }
        let b = &mut buf[..(len * CHUNK) as usize];
        rng.fill(b);
        f.write_all_at(b, c * CHUNK).unwrap();
        changed += len;
        c += len;
    }
    f.sync_all().unwrap();
    let cow_path = dir.join("snap.cow");
    fs::write(&cow_path, cow.to_vec()).unwrap();
    (cow_path, new, changed * CHUNK)
}

/// `lvmsync-rs sync ARGS`: seconds and the summary.
fn lvmsync(args: &[&str]) -> (f64, serde_json::Value) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lvmsync-rs"))
        .args(["sync", "--json", "-q"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["result"], "ok", "{doc}");
    (secs, doc)
}

fn main() {
    let gib = env_f64("BENCH_GIB", 4.0);
    let rounds = env_f64("BENCH_ROUNDS", 3.0).max(1.0) as usize;
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join(format!("bench-seed-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let size = (gib * (1u64 << 30) as f64) as u64 / CHUNK * CHUNK;
    let image = dir.join("image.img");
    half_zero_image(&image, size);
    let (cow, new, changed) = make_change(&dir, size, 0.01);
    let server = sshd::Sshd::start(&dir.join("sshd"));
    let rsh = server.rsh();
    let bin = env!("CARGO_BIN_EXE_lvmsync-rs");
    let copy = dir.join("copy.img");
    let dest = format!("{}:{}", sshd::HOST, copy.display());

    // What the full copy puts on the wire (not timed).
    let lz4_bytes: u64 = {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("lz4 -1 -c < '{}' | wc -c", image.display()))
            .output()
            .expect("lz4 (install the lz4 package)");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("lz4 output size")
    };

    let (mut dd, mut seed, mut inc) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seed_wire, mut inc_wire) = (0, 0);
    for round in 0..rounds {
        let _ = fs::remove_file(&copy);
        drop_cache(&[&image]);
        let t = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "dd if='{img}' bs=1M status=none | lz4 -1 -c | {rsh} {host} \"lz4 -d -c | dd of='{copy}' bs=1M status=none conv=fsync\"",
                img = image.display(),
                copy = copy.display(),
                host = sshd::HOST,
            ))
            .status()
            .unwrap();
        assert!(status.success());
        dd.push(t.elapsed().as_secs_f64());

        let _ = fs::remove_file(&copy);
        let _ = fs::remove_file(format!("{}.lvmsync-state", copy.display()));
        drop_cache(&[&image]);
        let (secs, doc) = lvmsync(&[
            "-e",
            &rsh,
            "--remote-path",
            bin,
            "--create",
            "--full",
            image.to_str().unwrap(),
            &dest,
        ]);
        seed.push(secs);
        seed_wire = doc["bytes_on_wire"].as_u64().unwrap();
        if round == 0 {
            let same = Command::new("cmp")
                .arg(&image)
                .arg(&copy)
                .status()
                .unwrap()
                .success();
            assert!(same, "the seeded copy differs from the image");
        }

        drop_cache(&[&new]);
        let (secs, doc) = lvmsync(&[
            "-e",
            &rsh,
            "--remote-path",
            bin,
            "--cow",
            cow.to_str().unwrap(),
            "--data-source",
            new.to_str().unwrap(),
            &dest,
        ]);
        inc.push(secs);
        inc_wire = doc["bytes_on_wire"].as_u64().unwrap();
        println!(
            "round {}: dd | lz4 | ssh {:.2} s; seed {:.2} s; increment {:.2} s",
            round + 1,
            dd[round],
            seed[round],
            inc[round]
        );
    }
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&copy).map(|m| m.blocks() * 512).unwrap_or(0)
    };
    if std::env::var_os("BENCH_KEEP").is_none() {
        fs::remove_dir_all(&dir).unwrap();
    }
    drop(server);
    let (d, s, i) = (median(&mut dd), median(&mut seed), median(&mut inc));
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "image {} bytes, half zeroes; median of {rounds} rounds:",
        size
    );
    println!(
        "  dd | lz4 -1 | ssh: {d:.2} s, {lz4_bytes} bytes on the wire ({:.0} MB)",
        mb(lz4_bytes)
    );
    println!(
        "  lvmsync-rs seed:   {s:.2} s ({:.2}x as fast; target 2x: {}), {seed_wire} bytes on the wire ({:.0}% of the full copy's; target under 50%: {}); the copy allocates {:.0} MB",
        d / s,
        if d / s >= 2.0 { "met" } else { "NOT met" },
        seed_wire as f64 * 100.0 / lz4_bytes as f64,
        if seed_wire * 2 < lz4_bytes { "met" } else { "NOT met" },
        mb(allocated)
    );
    println!(
        "  increment of {changed} changed bytes (1%): {i:.2} s, {:.1}% of the seed's time (target under 5%: {}), {inc_wire} bytes on the wire",
        i * 100.0 / s,
        if i * 20.0 < s { "met" } else { "NOT met" }
    );
}
