//! Comparing two identical images with `lvmsync-rs verify`, locally and
//! through a private sshd on 127.0.0.1, with a cold page cache (both files
//! dropped from it with `posix_fadvise(DONTNEED)` before each run) and a
//! warm one.
//!
//! The baseline, measured in the same run on the same files, is reading
//! them with `cat FILE > /dev/null`: one file alone, and both at once (what
//! a local verify must read, from the same disk). Also one side alone
//! (`verify --remote-side` into /dev/null: what each host does when DEST
//! is remote, on its own disk), next to the one cat. Printed: MB/s per side
//! and the ratio to cat (aimed for: 0.8 or more), and the bytes a remote
//! verify puts on the wire next to bdsync's 16 bytes of MD5 per 4 KiB
//! block (aimed for: 20 times fewer or better). Figures only: nothing is
//! asserted about time.
//!
//! Run: `cargo bench --bench verify` (as root, for the sshd; needs
//! openssh-server). Environment: `BENCH_GIB` (size of each image, default
//! 4; made smaller when the disk has no room for two), `BENCH_ROUNDS`
//! (default 3, the median is reported), `BENCH_DIR` (where the images go),
//! `BENCH_KEEP`.

#[path = "common/measure.rs"]
mod measure;

#[path = "../tests/suite/common/sshd.rs"]
mod sshd;

use measure::{drop_cache, env_f64, median};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use lvmsync::cowgen::Rng;

/// Free bytes of the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// Two identical files of `size` bytes of random data, every block
/// written (no holes), synced.
fn make_images(src: &Path, dest: &Path, size: u64) {
    let t = Instant::now();
    let (mut a, mut b) = (File::create(src).unwrap(), File::create(dest).unwrap());
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let mut buf = vec![0u8; 8 << 20];
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        a.write_all(&buf[..n]).unwrap();
        b.write_all(&buf[..n]).unwrap();
        done += n as u64;
    }
    a.sync_all().unwrap();
    b.sync_all().unwrap();
    println!(
        "made two identical images of {size} bytes ({:.2} GiB) of random data in {:.1} s",
        size as f64 / (1u64 << 30) as f64,
        t.elapsed().as_secs_f64()
    );
}

/// `cat FILE > /dev/null` for each of `paths`, all at once: seconds.
fn cat(paths: &[&Path]) -> f64 {
    let t = Instant::now();
    let children: Vec<_> = paths
        .iter()
        .map(|p| {
            Command::new("sh")
                .args(["-c", "cat \"$1\" > /dev/null", "sh"])
                .arg(p)
                .spawn()
                .expect("run cat")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "cat failed");
    }
    t.elapsed().as_secs_f64()
}

/// One side alone, as each host of a remote verify works: `lvmsync-rs
/// verify --remote-side` hashing `path` into /dev/null. Seconds.
fn one_side(path: &Path, size: u64) -> f64 {
    let bin = env!("CARGO_BIN_EXE_lvmsync-rs");
    let t = Instant::now();
    let status = Command::new(bin)
        .args(["verify", "--remote-side", "--protocol", "1", "--block-size"])
        .arg((1u64 << 20).to_string())
        .arg("--src-size")
        .arg(size.to_string())
        .arg("--")
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .expect("run lvmsync-rs verify --remote-side");
    assert!(status.success(), "verify --remote-side failed");
    t.elapsed().as_secs_f64()
}

/// `lvmsync-rs verify --json` plus `extra`: seconds and the object.
fn verify(extra: &[&str], src: &Path, dest: &str) -> (f64, serde_json::Value) {
    let bin = env!("CARGO_BIN_EXE_lvmsync-rs");
    let t = Instant::now();
    let out = Command::new(bin)
        .args(["verify", "--json"])
        .args(extra)
        .arg(src)
        .arg(dest)
        .stderr(Stdio::inherit())
        .output()
        .expect("run lvmsync-rs verify");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.code() == Some(0),
        "verify failed: {:?}",
        out.status
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["identical"], true);
    (secs, doc)
}

#[derive(Default)]
struct Times {
    cat_one: Vec<f64>,
    cat_both: Vec<f64>,
    one_side: Vec<f64>,
    local: Vec<f64>,
    remote: Vec<f64>,
}

fn main() {
    let rounds = env_f64("BENCH_ROUNDS", 3.0).max(1.0) as usize;
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join(format!("bench-verify-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let asked = (env_f64("BENCH_GIB", 4.0) * (1u64 << 30) as f64) as u64 / (1 << 20) * (1 << 20);
    // Two images, and a margin of 2 GiB for everything else.
    let room = free_bytes(&dir).saturating_sub(2 << 30) / 2 / (1 << 20) * (1 << 20);
    let size = asked.min(room);
    if size < asked {
        println!(
            "the disk has room for two images of {size} bytes only, not {asked}: using {size}"
        );
    }
    assert!(size > 0, "no room for the images in {}", dir.display());
    let (src, dest) = (dir.join("src.img"), dir.join("dest.img"));
    make_images(&src, &dest, size);
    let server = sshd::Sshd::start(&dir.join("sshd"));
    let rsh = server.rsh();
    let bin = env!("CARGO_BIN_EXE_lvmsync-rs");
    let remote_dest = format!("{}:{}", sshd::HOST, dest.display());
    let local_dest = dest.display().to_string();
    let both: [&Path; 2] = [&src, &dest];
    let remote_args = ["-e", rsh.as_str(), "--remote-path", bin];

    let mut cold = Times::default();
    let mut warm = Times::default();
    let mut wire = 0u64;
    for round in 0..rounds {
        // Cold: both files out of the page cache before each run.
        drop_cache(&both);
        cold.cat_one.push(cat(&[&src]));
        drop_cache(&both);
        cold.cat_both.push(cat(&both));
        drop_cache(&both);
        cold.one_side.push(one_side(&src, size));
        drop_cache(&both);
        cold.local.push(verify(&[], &src, &local_dest).0);
        drop_cache(&both);
        let (secs, doc) = verify(&remote_args, &src, &remote_dest);
        cold.remote.push(secs);
        wire = doc["bytes_on_wire"].as_u64().unwrap();
        // Warm: both files in the page cache.
        cat(&both);
        warm.cat_one.push(cat(&[&src]));
        warm.cat_both.push(cat(&both));
        warm.one_side.push(one_side(&src, size));
        warm.local.push(verify(&[], &src, &local_dest).0);
        warm.remote.push(verify(&remote_args, &src, &remote_dest).0);
        println!(
            "round {}: cold: cat {:.2} s, cat of both {:.2} s, one side {:.2} s, verify {:.2} s, over ssh {:.2} s; warm: cat {:.2} s, cat of both {:.2} s, one side {:.2} s, verify {:.2} s, over ssh {:.2} s",
            round + 1,
            cold.cat_one[round],
            cold.cat_both[round],
            cold.one_side[round],
            cold.local[round],
            cold.remote[round],
            warm.cat_one[round],
            warm.cat_both[round],
            warm.one_side[round],
            warm.local[round],
            warm.remote[round],
        );
    }
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    drop(server);
    if std::env::var_os("BENCH_KEEP").is_none() {
        fs::remove_dir_all(&dir).unwrap();
    }

    let mbs = |secs: f64| size as f64 / 1e6 / secs;
    println!(
        "median of {rounds} rounds, two identical images of {size} bytes, block size 1 MiB, {} cores:",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (name, t) in [("cold cache", &mut cold), ("warm cache", &mut warm)] {
        let one = median(&mut t.cat_one);
        let both = median(&mut t.cat_both);
        let side = median(&mut t.one_side);
        let local = median(&mut t.local);
        let remote = median(&mut t.remote);
        let ratio = |secs: f64| mbs(secs) / mbs(one);
        println!("  {name}:");
        println!(
            "    cat SRC > /dev/null:           {one:6.2} s, {:7.0} MB/s",
            mbs(one)
        );
        println!(
            "    cat of both files at once:     {both:6.2} s, {:7.0} MB/s per file ({:.2} of one cat)",
            mbs(both),
            ratio(both)
        );
        println!(
            "    one side alone (--remote-side):{side:6.2} s, {:7.0} MB/s, {:.2} of one cat (target 0.8: {})",
            mbs(side),
            ratio(side),
            if ratio(side) >= 0.8 { "met" } else { "NOT met" },
        );
        println!(
            "    verify SRC DEST (local):       {local:6.2} s, {:7.0} MB/s per side, {:.2} of one cat (target 0.8: {}), {:.2} of both cats",
            mbs(local),
            ratio(local),
            if ratio(local) >= 0.8 { "met" } else { "NOT met" },
            mbs(local) / mbs(both)
        );
        println!(
            "    verify SRC host:DEST (ssh):    {remote:6.2} s, {:7.0} MB/s per side, {:.2} of one cat (target 0.8: {}), {:.2} of both cats",
            mbs(remote),
            ratio(remote),
            if ratio(remote) >= 0.8 { "met" } else { "NOT met" },
            mbs(remote) / mbs(both)
        );
    }
    let bdsync = size.div_ceil(4096) * 16;
    let fewer = bdsync as f64 / wire as f64;
    println!(
        "  on the wire (remote verify): {wire} bytes (hello line and 16 bytes per 1 MiB block); bdsync's 16 bytes of MD5 per 4 KiB block: {bdsync} bytes; {fewer:.0} times fewer (target 20: {})",
        if fewer >= 20.0 { "met" } else { "NOT met" }
    );
    println!(
        "  peak memory of a child process: {:.1} MiB",
        usage.max_rss() as f64 / 1024.0
    );
}
