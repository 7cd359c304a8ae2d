//! `lvmsync-rs list --cow` through the binary, on stores built in the
//! kernel's layout: output, totals, and refusals of bad input.

use std::fs;

use crate::common::images::cow_image;
use crate::common::*;
use lvmsync::cowgen::CowImage;

/// A COW image `dir/name` (see cow_image), as an argument.
fn image(dir: &std::path::Path, name: &str, chunk: u64, chunks: &[u64]) -> String {
    let path = dir.join(name);
    cow_image(&path, chunk, chunks);
    s(&path).to_string()
}

#[test]
fn json_lists_coalesced_extents_and_totals() {
    let dir = scratch("list-json");
    let img = image(&dir, "a.cow", 65536, &[10, 11, 12, 1000, 0, 11, 13, 5]);
    let doc = json(&run(&[
        "list",
        "--json",
        "--cow",
        &img,
        "--origin-size",
        "1G",
    ]));
    assert_eq!(doc["chunk_size"], 65536);
    assert_eq!(doc["origin_size"], 1u64 << 30);
    assert_eq!(doc["exceptions"], 8);
    assert_eq!(doc["extent_count"], 4);
    assert_eq!(doc["changed_bytes"], 7 * 65536);
    assert_eq!(
        extents(&doc["extents"]),
        vec![
            (0, 65536),
            (5 * 65536, 65536),
            (10 * 65536, 4 * 65536),
            (1000 * 65536, 65536)
        ]
    );
}

#[test]
fn without_origin_size_the_size_is_unknown_not_invented() {
    let dir = scratch("list-nosize");
    let img = image(&dir, "a.cow", 4096, &[3]);
    let doc = json(&run(&["list", "--json", "--cow", &img]));
    assert!(doc["origin_size"].is_null());
    assert_eq!(extents(&doc["extents"]), vec![(3 * 4096, 4096)]);
}

#[test]
fn an_empty_table_lists_nothing() {
    let dir = scratch("list-empty");
    let img = image(&dir, "a.cow", 4096, &[]);
    let doc = json(&run(&[
        "list",
        "--json",
        "--cow",
        &img,
        "--origin-size",
        "64M",
    ]));
    assert_eq!(doc["changed_bytes"], 0);
    assert_eq!(extents(&doc["extents"]), vec![]);
    let out = run(&["list", "--cow", &img, "--origin-size", "64M"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("changed:     0 bytes"), "{text}");
}

#[test]
fn text_output_names_the_totals_and_each_extent() {
    let dir = scratch("list-text");
    let img = image(&dir, "a.cow", 4096, &[7, 8, 100]);
    let out = run(&["list", "--cow", &img, "--origin-size", "1M"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("chunk size:  4096 (4 KiB)"), "{text}");
    assert!(text.contains("origin size: 1048576 (1 MiB)"), "{text}");
    assert!(
        text.contains("12288 bytes (12 KiB, 1.17% of the origin) in 2 extents"),
        "{text}"
    );
    let rows: Vec<Vec<u64>> = text
        .lines()
        .filter_map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            (v.len() == 2 && l.trim_start().starts_with(char::is_numeric)).then_some(v)
        })
        .collect();
    assert_eq!(rows, vec![vec![7 * 4096, 8192], vec![100 * 4096, 4096]]);
}

#[test]
fn an_entry_past_the_origin_is_refused() {
    let dir = scratch("list-past-origin");
    let img = image(&dir, "a.cow", 4096, &[1, 256]);
    let out = run(&["list", "--cow", &img, "--origin-size", "1M"]);
    assert_clean_failure(
        &out,
        "names origin chunk 256 (byte 1048576), past the end of the origin (1048576 bytes)",
    );
    // The same table is fine for a larger origin.
    assert_ok(&run(&["list", "--cow", &img, "--origin-size", "2M"]));
}

#[test]
fn damaged_headers_and_images_are_refused_with_a_reason() {
    let dir = scratch("list-damaged");
    let good = {
        let mut img = CowImage::new(4096);
        img.push(9);
        img.to_vec()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zeroes", vec![0u8; 65536], "bad magic 0x00000000"),
        (
            "version2",
            {
                let mut b = good.clone();
                b[8] = 2;
                b
            },
            "unsupported exception store version 2",
        ),
        (
            "invalid",
            {
                let mut b = good.clone();
                b[4] = 0;
                b
            },
            "the snapshot is invalid",
        ),
        (
            "chunk3",
            {
                let mut b = good.clone();
                b[12] = 3;
                b
            },
            "bad chunk size in header: 3 sectors",
        ),
        ("short", good[..10].to_vec(), "truncated"),
        ("no-area", good[..4096].to_vec(), "truncated"),
    ];
    for (name, bytes, needle) in cases {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        let out = run(&["list", "--cow", s(&path)]);
        if let Err(why) = clean_failure(&out, needle) {
            panic!("{name}: {why}");
        }
        assert!(
            stderr(&out).contains(s(&path)),
            "{name}: names the file: {}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_arguments_are_refused() {
    let dir = scratch("list-args");
    let img = image(&dir, "a.cow", 4096, &[1]);
    let missing = dir.join("missing.cow");
    assert_refusals(&[
        (
            &["list", "--cow", s(&missing)],
            "cannot open: No such file or directory",
        ),
        (
            &["list", "--cow", s(&dir)],
            "not a block device or a regular file",
        ),
        // A snapshot name that is a regular file, or nothing at all.
        (
            &["list", &img],
            "a.cow: a regular file, not an LVM snapshot; it holds a dm-snapshot COW store: read it with --cow",
        ),
        (
            &["list", "novg/nolv"],
            "novg/nolv: no such device (/dev/novg/nolv)",
        ),
    ]);
    // Usage errors come from the argument parser, with status 2.
    assert_usage_errors(&[
        (&["list"], ""),
        (&["list", "vg/lv", "--cow", &img], ""),
        (&["list", "vg/lv", "--origin-size", "1G"], ""),
        (&["list", "--cow", &img, "--origin-size", "lots"], ""),
    ]);
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let dir = scratch("list-pipe");
    let chunks: Vec<u64> = (0..20000).map(|i| i * 2).collect();
    let img = image(&dir, "a.cow", 4096, &chunks);
    let mut child = command()
        .args(["list", "--cow", &img])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).is_empty(),
        "{:?}",
        out.stderr
    );
}

#[test]
fn a_regular_file_named_as_a_snapshot_is_called_one() {
    let dir = scratch("list-regular-file");
    image(&dir, "snap.cow", 4096, &[1, 5]);
    fs::write(dir.join("base.img"), random(64 << 10, 3)).unwrap();
    let in_dir = |args: &[&str]| command().args(args).current_dir(&*dir).output().unwrap();
    let image_hint = "SNAPSHOT names an LVM snapshot (VG/LV, /dev/VG/LV or a device-mapper name)";
    let cow_hint =
        "it holds a dm-snapshot COW store: read it with --cow snap.cow --origin-size SIZE";
    for (args, needle) in [
        (
            &["list", "base.img"][..],
            format!("base.img: a regular file, not an LVM snapshot; {image_hint}"),
        ),
        (
            &["list", "./base.img"][..],
            format!("./base.img: a regular file, not an LVM snapshot; {image_hint}"),
        ),
        (
            &["list", "snap.cow"][..],
            format!("snap.cow: a regular file, not an LVM snapshot; {cow_hint}"),
        ),
        (
            &["send", "snap.cow", "-o", "d.lvd"][..],
            format!("snap.cow: a regular file, not an LVM snapshot; {cow_hint}"),
        ),
        // The shorthand for sync, before anything is run for DEST.
        (
            &["base.img", "host:/copy"][..],
            format!("base.img: a regular file, not an LVM snapshot; {image_hint}"),
        ),
    ] {
        let out = in_dir(args);
        assert_clean_failure(&out, &needle);
        assert_eq!(out.status.code(), Some(8), "{args:?}");
    }
    assert!(!dir.join("d.lvd").exists());
    // What the hint says works.
    let out = in_dir(&["list", "--cow", "snap.cow", "--origin-size", "64k"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("in 2 extents"), "{}", stdout(&out));
    // One of each, in the singular.
    image(&dir, "one.cow", 4096, &[1]);
    let out = in_dir(&["list", "--cow", "one.cow", "--origin-size", "64k"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("table:       1 entry in 1 metadata area\n"),
        "{text}"
    );
    assert!(text.contains(") in 1 extent\n"), "{text}");
}
