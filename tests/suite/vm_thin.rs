//! Thin snapshots on a real kernel (`tests/vm/scenarios/thin.sh`): after a
//! delta made from a thin snapshot, the backup LV holds exactly what its
//! source holds, for 64 KiB and 1 MiB pool blocks, through a file, a pipe
//! and `sync`, with a later thin snapshot as the data source, and for a
//! snapshot of a snapshot; discarded blocks travel as zeroes; the pool's
//! metadata snapshot is free again after success, errors and signals, and
//! one held by someone else is left alone.
//!
//! Needs what `tests/run` installs (qemu, a Debian kernel, lvm2,
//! thin-provisioning-tools).

use std::path::Path;

use crate::common::extents;
use crate::common::guest::{key_values, read_result, run_scenario, sums, Failures};

/// Every recorded held root of the pool is `-`, except those listed.
fn released(c: &mut Failures, dir: &Path, held_expected: &[&str]) {
    let h = key_values(dir, "held.txt");
    if h.is_empty() {
        c.fail(format!("{}: no held.txt", dir.display()));
    }
    for (when, root) in &h {
        let want_held = held_expected.contains(&when.as_str());
        if want_held == (root == "-") {
            c.fail(format!(
                "{}: the pool's metadata snapshot at {when}: {root:?} (expected {})",
                dir.display(),
                if want_held { "held" } else { "released" }
            ));
        }
    }
}

#[test]
fn backups_updated_from_thin_snapshots_equal_their_source() {
    let (results, log) = run_scenario("vm-thin", "thin.sh");
    let mut c = Failures::default();

    // 64 KiB blocks, through a file.
    let d = results.join("chunk64k");
    let facts = key_values(&d, "facts.txt");
    let fact = |k: &str| facts.get(k).and_then(|v| v.parse::<u64>().ok());
    let list = c.json(&d, "list");
    if list != serde_json::Value::Null {
        let block = 65536;
        if list["kind"] != "thin" || list["block_size"] != block {
            c.fail(format!("chunk64k: list: {list}"));
        }
        if list["thin_id"].as_u64() != fact("snap_id")
            || list["compared_id"].as_u64() != fact("origin_id")
        {
            c.fail(format!(
                "chunk64k: list compares the wrong ids: {list} {facts:?}"
            ));
        }
        // The discard after the snapshot: 2 MiB read as zeroes now.
        let zero = match &list["zero_extents"] {
            list @ serde_json::Value::Array(_) => extents(list),
            _ => Vec::new(),
        };
        if !zero.contains(&(18 << 20, 2 << 20)) {
            c.fail(format!(
                "chunk64k: the discarded range is not listed as zeroes: {zero:?}"
            ));
        }
        if list["blocks"]["right_only"].as_u64().unwrap_or(0) == 0 {
            c.fail(format!(
                "chunk64k: no block written where the snapshot maps none: {list}"
            ));
        }
        // Only what changed: far less than the origin.
        let changed = list["changed_bytes"].as_u64().unwrap_or(0);
        if changed == 0 || changed > 8 << 20 {
            c.fail(format!("chunk64k: changed_bytes {changed}"));
        }
        // Every extent is whole 64 KiB blocks.
        for e in list["extents"].as_array().into_iter().flatten() {
            let (o, l) = (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            if o % block != 0 || l % block != 0 {
                c.fail(format!("chunk64k: extent {o}+{l} is not whole blocks"));
            }
        }
    }
    if let Some(text) = c.ok(&d, "listtext") {
        if !text.contains("(thin, id ") || !text.contains("its origin") {
            c.fail(format!("chunk64k: list text: {text}"));
        }
    }
    c.ok(&d, "send");
    c.ok(&d, "apply");
    let inspect = c.json(&d, "inspect");
    if inspect != serde_json::Value::Null {
        let src = &inspect["header"]["source"];
        if inspect["whole"] != true
            || src["kind"] != "thin"
            || src["thin"]["block_size"] != 65536
            || src["thin"]["pool"] != "thintest/pool64"
            || src["thin"]["pool_uuid"].as_str().unwrap_or("").is_empty()
            || src["thin"]["snapshot_id"].as_u64() != fact("snap_id")
            || src["thin"]["compared_id"].as_u64() != fact("origin_id")
            || inspect["header"]["base"]["snapshot"] != "thintest/snap1"
            || !inspect["header"]["target"].is_null()
        {
            c.fail(format!("chunk64k: inspect header: {}", inspect["header"]));
        }
        if inspect["totals"]["zero_bytes"].as_u64().unwrap_or(0) < 2 << 20 {
            c.fail(format!(
                "chunk64k: the discard did not travel as zeroes: {}",
                inspect["totals"]
            ));
        }
    }
    c.same(&d, "origin", "backup");
    let s = sums(&d);
    if s.get("backup-before") == s.get("origin") {
        c.fail("chunk64k: the origin was not changed, the test proves nothing".into());
    }
    released(&mut c, &d, &[]);

    // Through sync.
    let d = results.join("sync");
    c.ok(&d, "sync");
    c.same(&d, "origin", "backup");
    released(&mut c, &d, &[]);

    // A later thin snapshot as the source.
    let d = results.join("datasrc");
    let facts = key_values(&d, "facts.txt");
    c.ok(&d, "send");
    c.ok(&d, "apply");
    let inspect = c.json(&d, "inspect");
    if inspect != serde_json::Value::Null {
        let h = &inspect["header"];
        let id = |k: &str| facts.get(k).and_then(|v| v.parse::<u64>().ok());
        if h["source"]["thin"]["compared_id"].as_u64() != id("snapB_id")
            || h["source"]["thin"]["snapshot_id"].as_u64() != id("snapA_id")
            || h["target"]["snapshot"] != "thintest/snapB"
            || h["base"]["snapshot"] != "thintest/snapA"
            || h["target"]["origin_uuid"] != h["base"]["origin_uuid"]
        {
            c.fail(format!("datasrc: header: {h} facts {facts:?}"));
        }
    }
    let inspect = c.json(&d, "inspectorigin");
    if inspect != serde_json::Value::Null {
        let h = &inspect["header"];
        let id = |k: &str| facts.get(k).and_then(|v| v.parse::<u64>().ok());
        if h["source"]["thin"]["compared_id"].as_u64() != id("origin_id")
            || !h["target"].is_null()
            || h["base"]["snapshot"] != "thintest/snapA"
        {
            c.fail(format!(
                "datasrc: with the origin as data source: header {h}"
            ));
        }
    }
    c.same(&d, "snapB", "backup");
    let s = sums(&d);
    if s.get("origin") == s.get("backup") {
        c.fail(format!(
            "datasrc: backup equals the origin written after snapB: {s:?}"
        ));
    }
    released(&mut c, &d, &[]);

    // 1 MiB blocks, through a pipe.
    let d = results.join("chunk1m");
    let list = c.json(&d, "list");
    if list["block_size"] != 1 << 20 {
        c.fail(format!("chunk1m: list: {list}"));
    }
    c.ok(&d, "pipe");
    c.same(&d, "origin", "backup");
    released(&mut c, &d, &[]);

    // A snapshot of a snapshot: the backup of s1 as s2 froze it becomes s1.
    let d = results.join("snapsnap");
    c.ok(&d, "send");
    c.ok(&d, "apply");
    c.same(&d, "s1", "backup");
    released(&mut c, &d, &[]);

    // Refusals.
    let d = results.join("errors");
    c.refused(&d, "held", "the pool's metadata snapshot is already held");
    c.refused(
        &d,
        "failing",
        "thin_delta failed (exit status: 1): fake failure: metadata is damaged",
    );
    c.refused(&d, "garbage", "thin_delta's output is malformed");
    c.refused(&d, "missing", "install the thin-provisioning-tools package");
    c.refused(&d, "plain", "a thin volume, not a thin snapshot");
    c.refused(&d, "inactive", "lvchange -ay -K thintest/inactive");
    c.refused(
        &d,
        "otherpool",
        "is in thin pool thintest/pool64, but /dev/thintest/big is in thintest/pool1m",
    );
    c.refused(
        &d,
        "unrelated",
        "neither its origin thintest/origin nor a snapshot of it",
    );
    // Someone else's reservation is left held; ours are released.
    released(&mut c, &d, &["others-before", "others-after"]);
    if key_values(&d, "facts.txt").contains_key("never-written") {
        c.fail("errors: a failed send left a delta behind".into());
    }

    // Signals while thin_delta runs.
    let d = results.join("signals");
    for (sig, code) in [("INT", "130"), ("TERM", "143")] {
        let rc = read_result(&d, &format!("{sig}.rc"));
        let err = read_result(&d, &format!("{sig}.err"));
        if rc.trim() != code || !err.contains("was released") {
            c.fail(format!(
                "signals: SIG{sig}: exit {:?}, stderr {err:?}",
                rc.trim()
            ));
        }
    }
    released(&mut c, &d, &["INT-during", "TERM-during"]);

    c.assert_none(&log);
}
