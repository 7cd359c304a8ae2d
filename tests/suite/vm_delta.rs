//! `send` and `apply` on real LVM volumes in a real kernel
//! (`tests/vm/scenarios/delta.sh`): after a delta, the backup LV holds
//! exactly what its source holds, through a file, through a pipe, and with a
//! later snapshot as the data source while the origin keeps changing.
//!
//! Needs what `tests/run` installs (qemu, a Debian kernel, lvm2).

use std::fs;
use std::path::Path;

use crate::common::*;

fn step(dir: &Path, tag: &str) -> Result<String, String> {
    let read = |ext: &str| fs::read_to_string(dir.join(format!("{tag}.{ext}"))).unwrap_or_default();
    match read("rc").trim() {
        "0" => Ok(read("out")),
        rc => Err(format!(
            "{}: {tag} exit {rc:?}: {}",
            dir.display(),
            read("err").trim()
        )),
    }
}

#[test]
fn a_backup_updated_through_a_delta_equals_its_source() {
    let (results, log) = run_scenario("vm-delta", "delta.sh");

    let mut failures = Vec::new();
    fn check(failures: &mut Vec<String>, r: Result<String, String>) -> Option<String> {
        r.map_err(|e| failures.push(e)).ok()
    }

    // Through a file.
    let file = results.join("file");
    check(&mut failures, step(&file, "send"));
    check(&mut failures, step(&file, "apply"));
    if let Some(out) = check(&mut failures, step(&file, "inspect")) {
        match serde_json::from_str::<serde_json::Value>(&out) {
            Ok(doc) => {
                if doc["whole"] != true {
                    failures.push(format!("inspect: the delta is not whole: {out}"));
                }
            }
            Err(e) => failures.push(format!("inspect --json: {e}: {out}")),
        }
    }
    let s = sums(&file);
    if !s.contains_key("origin") || s.get("origin") != s.get("backup") {
        failures.push(format!("file: backup differs from the origin: {s:?}"));
    }
    if s.get("backup-before") == s.get("origin") {
        failures.push("file: the origin was not changed, the test proves nothing".into());
    }

    // Onto a device smaller than the origin: refused, nothing written.
    let small = results.join("toosmall");
    match step(&small, "apply") {
        Ok(_) => failures.push("toosmall: apply onto a smaller device succeeded".into()),
        Err(e) if !e.contains("exit \"1\"") => failures.push(e),
        Err(_) => {}
    }
    let s = sums(&small);
    if !s.contains_key("before") || s.get("before") != s.get("after") {
        failures.push(format!("toosmall: the device was changed: {s:?}"));
    }

    // Through a pipe.
    let pipe = results.join("pipe");
    check(&mut failures, step(&pipe, "pipe"));
    let s = sums(&pipe);
    if !s.contains_key("origin") || s.get("origin") != s.get("backup") {
        failures.push(format!("pipe: backup differs from the origin: {s:?}"));
    }

    // From a later snapshot, the origin written after it.
    let ds = results.join("datasrc");
    check(&mut failures, step(&ds, "send"));
    check(&mut failures, step(&ds, "apply"));
    let s = sums(&ds);
    if !s.contains_key("snapB") || s.get("snapB") != s.get("backup") {
        failures.push(format!(
            "datasrc: backup differs from the later snapshot: {s:?}"
        ));
    }
    if s.get("origin") == s.get("backup") {
        failures.push(format!(
            "datasrc: backup equals the origin written after the snapshot: {s:?}"
        ));
    }

    assert!(
        failures.is_empty(),
        "{}\n\nguest log:\n{log}",
        failures.join("\n")
    );
}
