//! Reading a large COW table: 10 million exceptions of 4 KiB chunks (40 GiB
//! of changed data), scattered and in runs, in a sparse image laid out as the
//! kernel lays it out.
//!
//! Prints, for `lvmsync-rs list --cow IMG --json` run as a user runs it:
//! wall time, CPU time and peak memory; and for comparison, measured in the
//! same run, the time to merely read every metadata area of the image (the
//! I/O floor, no parsing), and the memory the extent list itself needs.
//!
//! Run: `cargo bench --bench cow_table` (EXCEPTIONS=N to change the size).

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use lvmsync::cow::{read_table, Layout};
use lvmsync::cowgen::CowWriter;

const CHUNK: u64 = 4096;

use lvmsync::cowgen::Rng;

fn main() {
    let exceptions: u64 = std::env::var("EXCEPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    // The origin is twice the changed data, so scattered writes rarely touch.
    let origin_chunks = exceptions * 2;
    let origin_size = origin_chunks * CHUNK;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let img = dir.join("bench-cow-table.img");

    let t = Instant::now();
    let mut w = CowWriter::new(File::create(&img).expect("create image"), CHUNK);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut written = 0u64;
    while written < exceptions {
        let r = rng.next_u64();
        if r & 1 == 0 {
            // A run, written in order, as a sequential write does.
            let len = (2 + (r >> 8) % 255).min(exceptions - written);
            let start = (r >> 20) % (origin_chunks - len);
            for c in start..start + len {
                w.push(c).unwrap();
            }
            written += len;
        } else {
            // Scattered single chunks, in random order.
            for _ in 0..256.min(exceptions - written) {
                w.push(rng.next_u64() % origin_chunks).unwrap();
                written += 1;
            }
        }
    }
    w.finish().expect("finish image");
    let image_size = fs::metadata(&img).unwrap().len();
    println!(
        "generated {} exceptions ({} GiB of 4 KiB chunks, origin {} GiB) in {:.2} s",
        exceptions,
        (exceptions * CHUNK) >> 30,
        origin_size >> 30,
        t.elapsed().as_secs_f64()
    );

    // Baseline: read every metadata area, parse nothing.
    let layout = Layout::new(CHUNK);
    let areas = exceptions / layout.exceptions_per_area + 1;
    let f = File::open(&img).unwrap();
    let mut buf = vec![0u8; CHUNK as usize];
    let t = Instant::now();
    let mut sum = 0u64;
    for a in 0..areas {
        f.read_exact_at(&mut buf, layout.area_chunk(a) * CHUNK)
            .unwrap();
        sum = sum.wrapping_add(buf[8] as u64);
    }
    let base_secs = t.elapsed().as_secs_f64();
    std::hint::black_box(sum);

    // In-process: the library call alone.
    let src = lvmsync::blockdev::Source::open(&img).unwrap();
    let t = Instant::now();
    let table = read_table(&src, src.size(), Some(origin_size)).unwrap();
    let lib_secs = t.elapsed().as_secs_f64();
    let extents = table.extents.len() as u64;
    assert_eq!(table.exceptions, exceptions);
    drop(table);

    // The command, as a user runs it: wall time, CPU time, peak memory.
    let before =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let t = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_lvmsync-rs"))
        .args(["list", "--json", "--cow"])
        .arg(&img)
        .arg("--origin-size")
        .arg(origin_size.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("run lvmsync-rs");
    let cmd_secs = t.elapsed().as_secs_f64();
    assert!(status.success());
    let after =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let cpu = |u: &nix::sys::resource::Usage| {
        let (a, b) = (u.user_time(), u.system_time());
        a.tv_sec() as f64 + a.tv_usec() as f64 / 1e6 + b.tv_sec() as f64 + b.tv_usec() as f64 / 1e6
    };
    let cmd_cpu = cpu(&after) - cpu(&before);
    let peak_kib = after.max_rss() as u64;
    let extent_kib = extents * 16 / 1024;

    println!(
        "image: {} GiB apparent, {} metadata areas",
        image_size >> 30,
        areas
    );
    println!("coalesced extents: {extents}");
    println!(
        "baseline (read every metadata area, no parsing): {:.3} s",
        base_secs
    );
    println!(
        "read_table (library):                            {:.3} s  ({:.2}x baseline)",
        lib_secs,
        lib_secs / base_secs
    );
    println!(
        "lvmsync-rs list --json (command):                {:.3} s wall, {:.3} s CPU  ({:.2}x baseline)",
        cmd_secs,
        cmd_cpu,
        cmd_secs / base_secs
    );
    println!(
        "peak memory: {} MiB; the extent list itself: {} MiB ({:.1}x); the raw table: {} MiB",
        peak_kib / 1024,
        extent_kib / 1024,
        peak_kib as f64 / extent_kib.max(1) as f64,
        (exceptions * 16) >> 20
    );
    println!(
        "target: under 2 s on one core: {}",
        if cmd_secs < 2.0 { "met" } else { "NOT met" }
    );
    if std::env::var_os("KEEP_IMAGE").is_none() {
        fs::remove_file(&img).ok();
    }
}
