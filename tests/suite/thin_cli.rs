//! Thin snapshots without a pool: metadata images made by `thin_restore`
//! from known mappings, compared by the real `thin_delta` through
//! `list --thin-metadata` and `send --thin-metadata`. The extents must be
//! exactly the blocks whose mapping changed (clipped to the origin), the
//! blocks the newer device no longer maps must travel as ZERO records
//! without being read, and anything but thin_delta's output must be
//! refused with one line.
//!
//! Needs thin-provisioning-tools (`tests/run` installs it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use lvmsync::cowgen::Rng;
use lvmsync::thingen::ThinPair;

fn set(s: &lvmsync::extents::ExtentSet) -> Vec<(u64, u64)> {
    s.iter().map(|e| (e.offset, e.length)).collect()
}

/// A pair of devices with scattered writes, runs and discards, restored
/// into `dir/meta` as devices 1 (old) and 2 (new).
fn scenario(dir: &Path, block_sectors: u64, seed: u64) -> (ThinPair, PathBuf) {
    let mut pair = ThinPair::new(block_sectors, 200, 150);
    let mut rng = Rng(seed);
    pair.scatter(&mut rng, 40, 12);
    // A write to a block that was never mapped, and one past the old end.
    pair.write(170);
    pair.write(199);
    let meta = dir.join("meta");
    pair.restore(&meta, 1, 2, 8 << 20).expect("thin_restore");
    (pair, meta)
}

fn list_json(meta: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "list",
        "--json",
        "--thin-metadata",
        meta.to_str().unwrap(),
        "--thin1",
        "1",
        "--thin2",
        "2",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn changed_and_unmapped_blocks_are_listed_for_each_block_size() {
    let dir = scratch("thin-list");
    // 64 KiB, 1 MiB, and 192 KiB (a multiple of 64 KiB, not a power of two).
    for (sectors, seed) in [(128u64, 11u64), (2048, 12), (384, 13)] {
        let (pair, meta) = scenario(&dir, sectors, seed);
        let bs = sectors * 512;
        let size = 200 * bs - 1000; // the last block is partial
        let doc = json(&list_json(&meta, &["--origin-size", &size.to_string()]));
        let (data, zero) = pair.expected(size);
        assert!(
            !data.is_empty() && !zero.is_empty(),
            "the scenario proves nothing"
        );
        assert_eq!(doc["kind"], "thin");
        assert_eq!(doc["block_size"], bs);
        assert_eq!(doc["thin_id"], 1);
        assert_eq!(doc["compared_id"], 2);
        assert_eq!(extents(&doc["zero_extents"]), set(&zero), "block size {bs}");
        assert_eq!(
            extents(&doc["extents"]),
            set(&data.union(&zero)),
            "block size {bs}"
        );
        assert_eq!(doc["changed_bytes"], data.union(&zero).total_bytes());
        // The last block, written, is clipped to the origin's size.
        let last = *extents(&doc["extents"]).last().unwrap();
        assert_eq!(last.0 + last.1, size);

        // Text output: the same ranges, each saying what it holds now.
        let out = run(&[
            "list",
            "--thin-metadata",
            meta.to_str().unwrap(),
            "--thin1",
            "1",
            "--thin2",
            "2",
        ]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(&format!("block size:  {bs} ")), "{text}");
        let zero_lines: Vec<(u64, u64)> = text
            .lines()
            .filter(|l| l.ends_with("  zeroes"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].parse().unwrap(), f[1].parse().unwrap())
            })
            .collect();
        assert_eq!(zero_lines, set(&zero));
    }
}

#[test]
fn identical_devices_change_nothing() {
    let dir = scratch("thin-same");
    let pair = ThinPair::new(128, 64, 64);
    let meta = dir.join("meta");
    pair.restore(&meta, 1, 2, 8 << 20).unwrap();
    let doc = json(&list_json(&meta, &[]));
    assert_eq!(doc["changed_bytes"], 0);
    assert_eq!(doc["blocks"]["same"], 64);
}

/// A directory holding an executable `thin_delta` with `body` as its
/// script, to put first in PATH.
fn fake_thin_delta(dir: &Path, body: &str) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    script(&bin.join("thin_delta"), body);
    bin
}

fn with_path(bin: &Path, args: &[&str]) -> Output {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    command().args(args).env("PATH", path).output().unwrap()
}

#[test]
fn the_verbose_form_of_thin_delta_gives_the_same_extents() {
    let dir = scratch("thin-verbose");
    let (_, meta) = scenario(&dir, 128, 21);
    let plain = json(&list_json(&meta, &[]));
    let real = which_thin_delta();
    let bin = fake_thin_delta(&dir, &format!("exec {real} --verbose \"$@\""));
    // The real thin_delta's verbose output has <range> children.
    let verbose = Command::new(&real)
        .args(["--verbose", "--thin1", "1", "--thin2", "2"])
        .arg(&meta)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&verbose.stdout).contains("<range begin="));
    let args = [
        "list",
        "--json",
        "--thin-metadata",
        meta.to_str().unwrap(),
        "--thin1",
        "1",
        "--thin2",
        "2",
    ];
    let doc = json(&with_path(&bin, &args));
    assert_eq!(doc["extents"], plain["extents"]);
    assert_eq!(doc["zero_extents"], plain["zero_extents"]);
    assert_eq!(doc["blocks"], plain["blocks"]);
}

fn which_thin_delta() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v thin_delta"])
        .output()
        .unwrap();
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        !path.is_empty(),
        "thin_delta is not installed: apt-get install thin-provisioning-tools"
    );
    path
}

#[test]
fn malformed_or_failing_thin_delta_output_is_refused_in_one_line() {
    let dir = scratch("thin-bad");
    let (_, meta) = scenario(&dir, 128, 31);
    let args = [
        "list",
        "--thin-metadata",
        meta.to_str().unwrap(),
        "--thin1",
        "1",
        "--thin2",
        "2",
    ];
    let cases = [
        ("echo 'not xml at all'", "thin_delta's output is malformed at byte 0: text outside an element"),
        (
            "printf '<superblock data_block_size=\"128\">\\n<diff left=\"1\" right=\"2\">\\n<different begin=\"3\" length=\"1\"/>\\n'",
            "the output ends inside <diff>",
        ),
        (
            "printf '<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><different begin=\"3\" length=\"x\"/></diff></superblock>'",
            "<different> length=\"x\" is not a number",
        ),
        (
            "printf '<superblock data_block_size=\"128\"><diff left=\"2\" right=\"1\"></diff></superblock>'",
            "compares thin devices 2 and 1, not 1 and 2",
        ),
        (
            "echo 'some detail' >&2; echo 'metadata is damaged, run thin_check' >&2; exit 1",
            "thin_delta failed (exit status: 1): metadata is damaged, run thin_check",
        ),
    ];
    for (body, needle) in cases {
        let bin = fake_thin_delta(&dir, body);
        if let Err(why) = clean_failure(&with_path(&bin, &args), needle) {
            panic!("a thin_delta that does {body:?}: {why}");
        }
    }
    // Not installed at all.
    let empty = dir.join("empty");
    fs::create_dir_all(&empty).unwrap();
    let out = command().args(args).env("PATH", &empty).output().unwrap();
    assert_clean_failure(
        &out,
        "thin_delta not found: install the thin-provisioning-tools package",
    );
    // A device id the metadata does not have.
    let out = run(&[
        "list",
        "--thin-metadata",
        meta.to_str().unwrap(),
        "--thin1",
        "1",
        "--thin2",
        "9",
    ]);
    assert_clean_failure(&out, "thin_delta failed");
}

#[test]
fn unmapped_blocks_travel_as_zero_records_without_being_read() {
    let dir = scratch("thin-send");
    let (pair, meta) = scenario(&dir, 128, 41);
    let bs = 128 * 512;
    let size = 200 * bs;
    // The new contents: no zero byte anywhere, so every ZERO record comes
    // from the metadata, not from the data.
    let mut new = random(size as usize, 7);
    for b in new.iter_mut().filter(|b| **b == 0) {
        *b = 1;
    }
    let new_path = dir.join("new.img");
    fs::write(&new_path, &new).unwrap();
    let old = vec![0x5au8; size as usize];
    let copy = dir.join("copy.img");
    fs::write(&copy, &old).unwrap();
    let delta = dir.join("d.lvd");
    let out = run(&[
        "send",
        "--thin-metadata",
        meta.to_str().unwrap(),
        "--thin1",
        "1",
        "--thin2",
        "2",
        "--data-source",
        new_path.to_str().unwrap(),
        "-o",
        delta.to_str().unwrap(),
    ]);
    assert_ok(&out);

    let doc = json(&run(&["inspect", "--json", delta.to_str().unwrap()]));
    assert_eq!(doc["whole"], true);
    assert_eq!(doc["header"]["source"]["kind"], "thin");
    let thin = &doc["header"]["source"]["thin"];
    assert_eq!(thin["block_size"], bs);
    assert_eq!(thin["snapshot_id"], 1);
    assert_eq!(thin["compared_id"], 2);
    assert_eq!(doc["header"]["chunk_size"], bs);
    let (data, zero) = pair.expected(size);
    let mut zero_records = Vec::new();
    let mut data_records = Vec::new();
    for r in doc["records"].as_array().unwrap() {
        let e = lvmsync::extents::Extent {
            offset: r["offset"].as_u64().unwrap(),
            length: r["length"].as_u64().unwrap(),
        };
        match r["kind"].as_str().unwrap() {
            "zero" => zero_records.push(e),
            _ => data_records.push(e),
        }
    }
    let zero_sent = lvmsync::extents::ExtentSet::from_extents(zero_records);
    let data_sent = lvmsync::extents::ExtentSet::from_extents(data_records);
    assert_eq!(set(&zero_sent), set(&zero));
    assert_eq!(set(&data_sent), set(&data));

    // Applied to the old copy: the changed blocks hold the new data, the
    // unmapped ones zeroes, the rest is untouched.
    let out = run(&["apply", delta.to_str().unwrap(), copy.to_str().unwrap()]);
    assert_ok(&out);
    let mut expect = old.clone();
    for e in data.iter() {
        let r = e.offset as usize..e.end() as usize;
        expect[r.clone()].copy_from_slice(&new[r]);
    }
    for e in zero.iter() {
        expect[e.offset as usize..e.end() as usize].fill(0);
    }
    assert_same(&copy, &expect, "the copy against what the changes imply");
}

#[test]
fn thin_metadata_needs_both_ids_and_a_data_source_for_send() {
    assert_usage_errors(&[
        (
            &["list", "--thin-metadata", "/nonexistent", "--thin1", "1"],
            "",
        ),
        (
            &[
                "send",
                "--thin-metadata",
                "/nonexistent",
                "--thin1",
                "1",
                "--thin2",
                "2",
                "-o",
                "/dev/null",
            ],
            "--thin-metadata needs --data-source",
        ),
    ]);
}
