//! `list --cow` on COW images captured from a real kernel (`dm-fixtures/`),
//! and on damaged copies of them: no qemu needed.
//!
//! Each fixture directory holds `cow.img.gz`, the `writes.txt` its scenario
//! made, and `expected.json` derived from those writes by
//! `dm-fixtures/capture.sh`. `dm-fixtures/damaged/cases.tsv` lists damaged
//! images and the error each must give.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::common::*;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dm-fixtures")
}

/// Decompresses `gz` into the test's scratch directory.
fn unpack(gz: &Path, dir: &Path, name: &str) -> PathBuf {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(gz).unwrap())
        .read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", gz.display()));
    let out = dir.join(name);
    fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn captured_images_list_what_their_scenario_wrote() {
    let dir = scratch("fixtures");
    let mut checked = 0;
    let mut entries: Vec<PathBuf> = fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").exists())
        .collect();
    entries.sort();
    for fx in entries {
        let name = fx.file_name().unwrap().to_string_lossy().into_owned();
        let expected: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
        let img = unpack(&fx.join("cow.img.gz"), &dir, &format!("{name}.img"));
        assert_eq!(
            fs::metadata(&img).unwrap().len(),
            expected["cow_size"].as_u64().unwrap(),
            "{name}: image size"
        );
        let origin_size = expected["origin_size"].as_u64().unwrap();
        let out = list_image(&img, origin_size);
        match name.as_str() {
            // The kernel invalidated it: the header says so.
            "overflow" => {
                assert_clean_failure(&out, "the snapshot is invalid");
                checked += 1;
                continue;
            }
            // A merge that waits for the origin to close leaves the table as
            // it was: only LVM knows (vm_list checks the refusal there).
            "merging" => {}
            // A merge that ran removed its entries from the table.
            "merging-active" => {
                assert_eq!(
                    extents(&json(&out)["extents"]),
                    vec![],
                    "{name}: merged entries are gone"
                );
                checked += 1;
                continue;
            }
            _ => assert_eq!(
                expected["expect"], "ok",
                "{name}: a refusal this test does not know"
            ),
        }
        let doc = json(&out);
        assert_eq!(doc["chunk_size"], expected["chunk_size"], "{name}");
        let want: Vec<(u64, u64)> = extents(&expected["extents"]);
        assert_eq!(extents(&doc["extents"]), want, "{name}: extents");
        // The expected list is what the scenario's writes imply.
        let writes = read_writes(&fx.join("writes.txt"));
        let chunk = expected["chunk_size"].as_u64().unwrap();
        assert_eq!(
            want,
            expected_extents(&writes, chunk, origin_size),
            "{name}: expected.json vs writes.txt"
        );
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} fixtures found in {}",
        fixtures_dir().display()
    );
}

#[test]
fn damaged_images_are_refused_with_their_error() {
    let dir = scratch("fixtures-damaged");
    let damaged = fixtures_dir().join("damaged");
    let cases =
        fs::read_to_string(damaged.join("cases.tsv")).expect("dm-fixtures/damaged/cases.tsv");
    let mut checked = 0;
    for line in cases
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            f.len(),
            4,
            "cases.tsv line {line:?}: name, origin size, expected error, what was done"
        );
        let (name, origin_size, needle) = (f[0], f[1], f[2]);
        let img = unpack(&damaged.join(format!("{name}.img.gz")), &dir, name);
        let mut args = vec!["list", "--cow", img.to_str().unwrap()];
        if origin_size != "-" {
            args.extend(["--origin-size", origin_size]);
        }
        if let Err(why) = clean_failure(&run(&args), needle) {
            panic!("damaged/{name}: {why}");
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} damaged cases");
}
