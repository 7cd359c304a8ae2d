//! `--bwlimit`: a local sync of random data (which neither compression nor
//! zero detection shrinks) at 10 MiB/s for about 30 s. Prints the average
//! rate and its ratio to the limit (the aim: within 5%), and the slowest
//! and fastest second seen in the progress lines (smoothness).
//!
//! `cargo bench --bench bwlimit` (LVMSYNC_BENCH_SECS sets the length).

use std::fs;
use std::process::Command;
use std::time::Instant;

fn main() {
    let secs: u64 = std::env::var("LVMSYNC_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let rate: u64 = 10 << 20;
    let size = rate * secs;
    let dir = std::env::temp_dir().join(format!("lvmsync-bench-bwlimit-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.img");
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none", "iflag=fullblock"])
        .arg(format!("of={}", src.display()))
        .arg(format!("count={}", size >> 20))
        .status()
        .unwrap();
    assert!(status.success());
    let bin = env!("CARGO_BIN_EXE_lvmsync-rs");
    let started = Instant::now();
    let out = Command::new(bin)
        .args([
            "sync",
            "--full",
            "--create",
            "--compress",
            "none",
            "--bwlimit",
            "10M",
        ])
        .args(["--log-format", "json", "--progress-every", "1"])
        .arg(&src)
        .arg(dir.join("copy.img"))
        .output()
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let avg = size as f64 / elapsed;
    // Per-second rates from the progress lines, the first and last left out.
    let done: Vec<u64> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["done_bytes"].as_u64())
        .collect();
    let per_second: Vec<f64> = done.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
    let inner = if per_second.len() > 2 {
        &per_second[1..per_second.len() - 1]
    } else {
        &per_second[..]
    };
    let (lo, hi) = inner
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let mib = |b: f64| b / (1 << 20) as f64;
    println!("bwlimit: {} MiB of random data, --bwlimit 10M", size >> 20);
    println!(
        "  average {:.2} MiB/s over {elapsed:.1} s: {:.3} of the limit",
        mib(avg),
        avg / rate as f64
    );
    if !inner.is_empty() {
        println!(
            "  seconds seen: {}, slowest {:.2} MiB/s ({:.3}), fastest {:.2} MiB/s ({:.3})",
            inner.len(),
            mib(lo),
            lo / rate as f64,
            mib(hi),
            hi / rate as f64
        );
    }
    let _ = fs::remove_dir_all(&dir);
}
