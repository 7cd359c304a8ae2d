//! What the benchmarks share to measure: their settings from the
//! environment, medians, and a cold page cache.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `name` from the environment as a number, else `default`.
pub fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Drops the page cache of each of `paths`, so that the next read comes
/// from the disk.
pub fn drop_cache(paths: &[&Path]) {
    for p in paths {
        if let Ok(f) = File::open(p) {
            let _ = nix::fcntl::posix_fadvise(
                f.as_raw_fd(),
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
    }
}
