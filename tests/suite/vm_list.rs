//! `list` against a real kernel: boots the host's Debian kernel under qemu,
//! creates LVM snapshots with real lvm2, writes known chunks
//! (`tests/vm/scenarios/list.sh`), and checks that `lvmsync-rs list` reports
//! exactly the chunks each scenario wrote, and refuses what it must.
//!
//! Needs qemu-system-x86, linux-image-amd64, lvm2, busybox-static
//! (`tests/run` installs them).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use crate::common::guest::{read_result, run_scenario, Failures};
use crate::common::*;

struct Scenario {
    dir: PathBuf,
    meta: BTreeMap<String, String>,
}

impl Scenario {
    fn load(dir: PathBuf) -> Scenario {
        let text = fs::read_to_string(dir.join("meta"))
            .unwrap_or_else(|e| panic!("{}: no meta: {e}", dir.display()));
        let meta = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Scenario { dir, meta }
    }

    fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn num(&self, key: &str) -> u64 {
        self.meta
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{}: meta has no number {key}", self.name()))
    }

    fn writes(&self) -> Vec<(u64, u64)> {
        read_writes(&self.dir.join("writes.txt"))
    }

    /// Every `list.<tag>` run: tag, exit status, stdout, stderr.
    fn list_runs(&self) -> Vec<(String, i32, String, String)> {
        let mut tags: Vec<String> = fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| {
                let n = e.ok()?.file_name().to_string_lossy().into_owned();
                Some(n.strip_prefix("list.")?.strip_suffix(".rc")?.to_string())
            })
            .collect();
        tags.sort();
        tags.into_iter()
            .map(|tag| {
                let read = |ext: &str| read_result(&self.dir, &format!("list.{tag}.{ext}"));
                let rc = read("rc").trim().parse().unwrap_or(-1);
                (tag.clone(), rc, read("out"), read("err"))
            })
            .collect()
    }
}

#[test]
fn list_agrees_with_the_real_kernel() {
    let (results, guest_log) = run_scenario("vm-list", "list.sh");

    let mut failures = Failures::default();
    let mut seen = Vec::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(&results)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("meta").exists())
        .collect();
    dirs.sort();
    for dir in dirs {
        let s = Scenario::load(dir);
        let name = s.name();
        seen.push(name.clone());
        let runs = s.list_runs();
        if runs.is_empty() {
            failures.fail(format!("{name}: list was never run"));
        }
        match s.meta.get("expect").map(String::as_str) {
            Some("ok") => check_ok(&s, &runs, &mut failures),
            Some("refuse") => check_refused(&s, &runs, &mut failures),
            other => failures.fail(format!("{name}: unknown expect {other:?}")),
        }
    }
    for want in [
        "chunk4k",
        "chunk64k",
        "chunk512k",
        "multiarea",
        "snapwrite",
        "empty",
        "dashes",
        "twosnaps-s1",
        "twosnaps-s2",
        "overflow",
        "merging",
        "notsnap",
        "dmplain",
        "transient",
    ] {
        if !seen.iter().any(|n| n == want) {
            failures.fail(format!("scenario {want} produced no results"));
        }
    }
    let lines: Vec<&str> = guest_log.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    failures.assert_none(&format!("(its last 40 lines)\n{tail}"));
}

fn check_ok(s: &Scenario, runs: &[(String, i32, String, String)], failures: &mut Failures) {
    let name = s.name();
    let chunk = s.num("chunk_size");
    let origin_size = s.num("origin_size");
    let expected = expected_extents(&s.writes(), chunk, origin_size);
    if name != "empty" && expected.is_empty() {
        failures.fail(format!("{name}: the scenario recorded no writes"));
    }
    for (tag, rc, out, err) in runs {
        if *rc != 0 {
            failures.fail(format!("{name} [{tag}]: exit {rc}: {err}"));
            continue;
        }
        let doc: serde_json::Value = match serde_json::from_str(out) {
            Ok(d) => d,
            Err(e) => {
                failures.fail(format!("{name} [{tag}]: not JSON ({e}): {out}"));
                continue;
            }
        };
        if doc["chunk_size"] != chunk || doc["origin_size"] != origin_size {
            failures.fail(format!(
                "{name} [{tag}]: chunk_size {} origin_size {}, expected {chunk} and {origin_size}",
                doc["chunk_size"], doc["origin_size"]
            ));
        }
        let got = extents(&doc["extents"]);
        if got != expected {
            failures.fail(format!(
                "{name} [{tag}]: extents {got:?}\n  expected {expected:?}"
            ));
        }
        let total: u64 = expected.iter().map(|e| e.1).sum();
        if doc["changed_bytes"] != total {
            failures.fail(format!(
                "{name} [{tag}]: changed_bytes {} expected {total}",
                doc["changed_bytes"]
            ));
        }
        if name == "multiarea" && doc["metadata_areas"].as_u64().unwrap_or(0) < 3 {
            failures.fail(format!(
                "{name}: only {} metadata areas",
                doc["metadata_areas"]
            ));
        }
    }
    // The image the guest copied off the COW device reads the same on the host.
    let img = s.dir.join("cow.img");
    if img.exists() {
        let out = list_image(&img, origin_size);
        match out.status.success() {
            true => {
                let got = extents(&json(&out)["extents"]);
                if got != expected {
                    failures.fail(format!(
                        "{name} [cow.img]: extents {got:?}\n  expected {expected:?}"
                    ));
                }
            }
            false => failures.fail(format!(
                "{name} [cow.img]: {}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }
}

fn check_refused(s: &Scenario, runs: &[(String, i32, String, String)], failures: &mut Failures) {
    let name = s.name();
    let reason = match name.as_str() {
        "overflow" => "the snapshot is invalid",
        "merging" => "being merged into its origin",
        "notsnap" => "not a snapshot",
        "transient" => "transient exception store (N)",
        "merging-active" => "",
        _ => "",
    };
    // A snapshot that cannot be read as asked is exit 8 ("source"); with
    // --json, stdout carries the same one-line error as a failure object.
    for (tag, rc, out, err) in runs {
        let one_line = err.trim_end().lines().count() == 1;
        let message = err
            .trim_end()
            .strip_prefix("lvmsync-rs: error: ")
            .unwrap_or_default();
        let json_agrees = serde_json::from_str::<serde_json::Value>(out).is_ok_and(|v| {
            v["result"] == "failed"
                && v["error_kind"] == "source"
                && v["exit_code"] == 8
                && v["error"] == message
        });
        if *rc != 8 || !json_agrees || !one_line || message.is_empty() || !err.contains(reason) {
            failures.fail(format!(
                "{name} [{tag}]: expected exit 8, one line saying {reason:?} and the same error as JSON; got exit {rc}, stdout {out:?}, stderr {err:?}"
            ));
        }
    }
}
