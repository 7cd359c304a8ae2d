//! The extent list of a thin snapshot: a pool metadata image (built by
//! `thin_restore` from generated XML) in which the newer of two thin
//! devices differs from the snapshot in 100,000 blocks (scattered and in
//! runs, a few of them discarded), over 400,000 blocks of 64 KiB.
//!
//! Prints, measured in the same run, on the same image: `thin_delta` alone
//! (its output to /dev/null, and into a pipe that is read and dropped: the
//! floor, since lvmsync-rs runs it); lvmsync-rs computing the extent list
//! (`thin::thin_delta` and `ThinDiff::extents`: running thin_delta and
//! parsing its output as it arrives); `lvmsync-rs list --json
//! --thin-metadata` as a user runs it; the overhead of each over thin_delta
//! alone; and the time to parse thin_delta's saved output from memory.
//! Figures only: nothing is asserted but that the extents are the
//! generated changes.
//!
//! Run: `cargo bench --bench thin` (CHANGED=N, BLOCKS=N, ROUNDS=N to change it).

#[path = "common/measure.rs"]
mod measure;

use measure::{env_f64, median};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use lvmsync::cowgen::Rng;
use lvmsync::thingen::ThinPair;

fn main() {
    let changed = env_f64("CHANGED", 100_000.0) as u64;
    let blocks = env_f64("BLOCKS", (4 * changed) as f64) as u64;
    let rounds = (env_f64("ROUNDS", 5.0) as u64).max(1) as usize;
    let block_sectors = 128; // 64 KiB
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let meta = dir.join("bench-thin.meta");

    // A snapshot of a fully mapped device, then writes until `changed`
    // blocks differ, and discards of 1 in 20 of them.
    let t = Instant::now();
    let mut pair = ThinPair::new(block_sectors, blocks, blocks);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut differ = 0u64;
    let mut touched = vec![false; blocks as usize];
    while differ < changed {
        let run = if rng.below(4) == 0 {
            1 + rng.below(32)
        } else {
            1
        };
        let start = rng.below(blocks);
        for b in start..(start + run).min(blocks) {
            if differ == changed {
                break;
            }
            if !touched[b as usize] {
                touched[b as usize] = true;
                differ += 1;
                if rng.below(20) == 0 {
                    pair.discard(b);
                } else {
                    pair.write(b);
                }
            }
        }
    }
    let (data, zero) = pair.expected(u64::MAX);
    pair.restore(&meta, 1, 2, 256 << 20)
        .expect("thin_restore (install thin-provisioning-tools)");
    println!(
        "metadata image: {} blocks of 64 KiB, {} of them changed ({} extents of data, {} of zeroes), built in {:.1} s",
        blocks,
        changed,
        data.len(),
        zero.len(),
        t.elapsed().as_secs_f64()
    );

    let out = Command::new("thin_delta")
        .args(["--thin1", "1", "--thin2", "2"])
        .arg(&meta)
        .output()
        .expect("run thin_delta");
    println!(
        "thin_delta output: {} bytes, {} lines",
        out.stdout.len(),
        out.stdout.iter().filter(|&&b| b == b'\n').count()
    );

    let bin = env!("CARGO_BIN_EXE_lvmsync-rs");
    let (mut null, mut pipe, mut lib, mut cli, mut parse) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let t = Instant::now();
        let diff = lvmsync::thin::parse(&out.stdout[..], Some((1, 2))).expect("parse");
        let _ = diff.extents(None);
        parse.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let st = Command::new("thin_delta")
            .args(["--thin1", "1", "--thin2", "2"])
            .arg(&meta)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        null.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut child = Command::new("thin_delta")
            .args(["--thin1", "1", "--thin2", "2"])
            .arg(&meta)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut so = child.stdout.take().unwrap();
        let mut buf = vec![0u8; 256 << 10];
        while so.read(&mut buf).unwrap() > 0 {}
        assert!(child.wait().unwrap().success());
        pipe.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let diff = lvmsync::thin::thin_delta(&meta, 1, 2, false).expect("thin_delta");
        let (d, z) = diff.extents(None);
        lib.push(t.elapsed().as_secs_f64());
        assert_eq!(d, data, "the extents differ from the generated changes");
        assert_eq!(
            z, zero,
            "the zero extents differ from the generated changes"
        );

        let t = Instant::now();
        let st = Command::new(bin)
            .args(["list", "--json", "--thin-metadata"])
            .arg(&meta)
            .args(["--thin1", "1", "--thin2", "2"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        cli.push(t.elapsed().as_secs_f64());
    }
    let (null, pipe, lib, cli, parse) = (
        median(&mut null),
        median(&mut pipe),
        median(&mut lib),
        median(&mut cli),
        median(&mut parse),
    );
    let pct = |x: f64| (x / null - 1.0) * 100.0;
    println!("median of {rounds} rounds:");
    println!("  thin_delta > /dev/null                      {null:.3} s");
    println!(
        "  thin_delta | read and drop                  {pipe:.3} s  ({:+.1}%)",
        pct(pipe)
    );
    println!(
        "  lvmsync-rs extent list (thin_delta + parse) {lib:.3} s  ({:+.1}% over thin_delta alone; target under 20%)",
        pct(lib)
    );
    println!(
        "  lvmsync-rs list --json --thin-metadata      {cli:.3} s  ({:+.1}%)",
        pct(cli)
    );
    println!(
        "  parsing the saved output alone, in memory   {parse:.4} s  ({:.0} MB/s)",
        out.stdout.len() as f64 / parse / 1e6
    );
}
