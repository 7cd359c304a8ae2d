//! Shipping changed data over ssh: the workload of `benches/delta.rs` (1 GiB
//! of changes scattered over a 4 GiB image) synced to a copy of the old
//! image through a private sshd on 127.0.0.1, as a user runs it:
//! `lvmsync-rs sync --cow SNAP.COW --data-source NEW root@127.0.0.1:COPY`.
//!
//! The baseline, measured in the same run over the same ssh settings, is
//! the delta itself written to a file beforehand and piped through the
//! connection: `ssh root@127.0.0.1 'cat > /dev/null' < DELTA`. The sync does
//! more (it reads the data, compresses, and the far end checks and writes it
//! and syncs the copy), so the ratio shows what is left of the connection's
//! speed. Also the bytes on the wire against the changed bytes.
//!
//! Two more figures say what this machine allows, whatever the tool does:
//! the time to copy the changed data into the copy with a pread/pwrite loop
//! and sync it (`disk floor`, the baseline of `benches/delta.rs` without
//! the zero extents), and the CPU time the sync took on all cores together. On a
//! machine where ssh and sshd already keep every core busy for the `cat`,
//! the sync cannot take less than its CPU time divided by the number of
//! cores (`cpu floor`); the best ratio this machine allows is the cat's
//! time over the larger of the two floors (`ceiling`).
//!
//! Run: `cargo bench --bench ssh` (as root: sshd lets root in with the
//! generated key; needs openssh-server). Environment: `BENCH_GIB` (changed
//! data in GiB, default 1), `BENCH_ROUNDS` (default 3, the median is
//! reported), `BENCH_DIR` (where the images go), `BENCH_DEST_DIR` (where
//! the copy goes, such as /dev/shm to take the disk out), `BENCH_KEEP`,
//! `BENCH_CIPHER` (an ssh cipher for both, such as aes128-gcm@openssh.com).

#[path = "common/measure.rs"]
mod measure;

#[path = "common/workload.rs"]
mod workload;

#[path = "../tests/suite/common/sshd.rs"]
mod sshd;

use measure::{env_f64, median};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use workload::{copy_extents, make_copy, same_extents, Content, Workload};

/// Busy and total CPU time of the machine so far, in clock ticks
/// (`/proc/stat`): to tell a run limited by the CPUs from one that waits.
fn cpu_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 5 {
        return (0, 0);
    }
    let idle = f[3] + f[4];
    let total: u64 = f.iter().take(8).sum();
    (total - idle, total)
}

/// Busy cores on average while `f` ran, and what it returned.
fn busy<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let (b0, t0) = cpu_ticks();
    let out = f();
    let (b1, t1) = cpu_ticks();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let share = (b1 - b0) as f64 / ((t1 - t0).max(1)) as f64;
    (share * cores, out)
}

/// `ssh ... host 'cat > /dev/null' < delta`: seconds.
fn cat_through(ssh: &[String], delta: &Path) -> f64 {
    let t = Instant::now();
    let status = Command::new(&ssh[0])
        .args(&ssh[1..])
        .args([sshd::HOST, "cat > /dev/null"])
        .stdin(File::open(delta).unwrap())
        .status()
        .expect("run ssh");
    assert!(status.success(), "ssh cat failed");
    t.elapsed().as_secs_f64()
}

/// The sync; returns the seconds and its summary object.
fn sync(rsh: &str, work: &Workload, copy: &Path, compress: &str) -> (f64, serde_json::Value) {
    let bin = env!("CARGO_BIN_EXE_lvmsync-rs");
    let t = Instant::now();
    let out = Command::new(bin)
        .args(["sync", "-q", "--json", "--compress", compress, "--cow"])
        .arg(&work.cow)
        .arg("--data-source")
        .arg(&work.new)
        .args(["-e", rsh, "--remote-path", bin])
        .arg(format!("{}:{}", sshd::HOST, copy.display()))
        .stderr(Stdio::inherit())
        .output()
        .expect("run lvmsync-rs sync");
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "sync failed");
    (secs, serde_json::from_slice(&out.stdout).unwrap())
}

fn main() {
    let gib = env_f64("BENCH_GIB", 1.0);
    let rounds = env_f64("BENCH_ROUNDS", 3.0).max(1.0) as usize;
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join(format!("bench-ssh-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let work = Workload::make(&dir, gib);
    let server = sshd::Sshd::start(&dir.join("sshd"));
    // BENCH_CIPHER: the ssh cipher for both the sync and the baseline.
    let cipher = std::env::var("BENCH_CIPHER").ok();
    let rsh = match &cipher {
        Some(c) => format!("{} -c {c}", server.rsh()),
        None => server.rsh(),
    };
    let ssh: Vec<String> = rsh.split(' ').map(String::from).collect();
    let bin = env!("CARGO_BIN_EXE_lvmsync-rs");

    // The deltas, written once (not timed), for the baseline and the sizes.
    let mut deltas = Vec::new();
    for compress in ["lz4", "none"] {
        let delta = dir.join(format!("d-{compress}.lvd"));
        let status = Command::new(bin)
            .args(["send", "--compress", compress, "--cow"])
            .arg(&work.cow)
            .arg("--data-source")
            .arg(&work.new)
            .arg("-o")
            .arg(&delta)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        deltas.push((compress, delta));
    }

    let dest_dir = std::env::var_os("BENCH_DEST_DIR")
        .map(|d| PathBuf::from(d).join(format!("bench-ssh-{}", std::process::id())))
        .unwrap_or_else(|| dir.clone());
    fs::create_dir_all(&dest_dir).unwrap();
    let copy = dest_dir.join("copy.img");
    let data_extents: Vec<_> = work
        .extents
        .iter()
        .filter(|e| e.content != Content::Zero)
        .cloned()
        .collect();
    let ncores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // Per compression: cat seconds, sync seconds, sync core-seconds.
    let mut times: Vec<[Vec<f64>; 3]> = vec![Default::default(), Default::default()];
    let mut disk = Vec::new();
    let mut wire = [0u64; 2];
    for round in 0..rounds {
        make_copy(&copy, work.origin_size, &work.extents);
        let d = copy_extents(&work.new, &copy, &data_extents);
        println!(
            "round {}: copying the changed data (not the zeroes) into the copy with pread/pwrite and syncing it: {d:.2} s",
            round + 1
        );
        disk.push(d);
        for (i, (compress, delta)) in deltas.iter().enumerate() {
            let (cat_cores, cat) = busy(|| cat_through(&ssh, delta));
            make_copy(&copy, work.origin_size, &work.extents);
            let (sync_cores, (secs, doc)) = busy(|| sync(&rsh, &work, &copy, compress));
            assert_eq!(doc["result"], "ok");
            wire[i] = doc["bytes_on_wire"].as_u64().unwrap();
            assert_eq!(wire[i], fs::metadata(delta).unwrap().len());
            if round == 0 {
                assert!(
                    same_extents(&work.new, &copy, &work.extents),
                    "the copy differs from the new image after the sync ({compress})"
                );
            }
            println!(
                "round {}, {compress}: ssh cat of the delta {cat:.2} s ({cat_cores:.1} cores busy), sync {secs:.2} s ({sync_cores:.1} cores busy)",
                round + 1
            );
            times[i][0].push(cat);
            times[i][1].push(secs);
            times[i][2].push(sync_cores * secs);
        }
    }
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    if std::env::var_os("BENCH_KEEP").is_none() {
        fs::remove_dir_all(&dir).unwrap();
        let _ = fs::remove_dir_all(&dest_dir);
    }
    drop(server);

    let mbs = |bytes: u64, secs: f64| bytes as f64 / 1e6 / secs;
    let disk = median(&mut disk);
    println!("median of {rounds} rounds ({ncores} cores; the copy's disk takes {disk:.2} s for the changed data):");
    for (i, (compress, _)) in deltas.iter().enumerate() {
        let c = median(&mut times[i][0]);
        let s = median(&mut times[i][1]);
        let ratio = c / s;
        println!(
            "  {compress:>4}: delta {} bytes ({:.1}% of the {} changed bytes); ssh cat {c:.2} s ({:.0} MB/s of delta); sync {s:.2} s ({:.0} MB/s of changed data, {:.0} MB/s on the wire); {ratio:.2} of the cat (target 0.8: {})",
            wire[i],
            wire[i] as f64 * 100.0 / work.changed as f64,
            work.changed,
            mbs(wire[i], c),
            mbs(work.changed, s),
            mbs(wire[i], s),
            if ratio >= 0.8 { "met" } else { "NOT met" }
        );
        let cpu = median(&mut times[i][2]);
        let floor = (cpu / ncores).max(disk);
        println!(
            "        the sync used {cpu:.1} core-seconds: cpu floor {:.2} s, disk floor {disk:.2} s; ceiling on this machine {:.2} of the cat, the sync reached {:.0}% of it",
            cpu / ncores,
            c / floor,
            100.0 * ratio / (c / floor)
        );
    }
    println!(
        "peak memory of a child process: {:.1} MiB",
        usage.max_rss() as f64 / 1024.0
    );
}
