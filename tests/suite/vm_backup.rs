//! `lvmsync-rs backup` on real LVM volumes in a real kernel
//! (`tests/vm/scenarios/backup.sh`): rounds of backups while the origin is
//! written, snapshot rotation, the base check, runs killed midway and
//! resumed, an overflowed base, and the restore procedure of the user
//! guide: the backup copy onto a fresh LV, and the origin repaired in place.
//!
//! Needs what `tests/run` installs (qemu, a Debian kernel, lvm2).

use std::path::Path;

use crate::common::guest::{read_result, run_scenario, sums, Failures};

/// The non-empty lines of DIR/NAME, trimmed.
fn lines(dir: &Path, name: &str) -> Vec<String> {
    read_result(dir, name)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn backups_rotate_snapshots_check_bases_and_resume() {
    let (results, log) = run_scenario("vm-backup", "backup.sh");
    let mut f = Failures::default();

    // Five rounds: each ends with the copy equal to the round's snapshot,
    // and that snapshot the only one left.
    let rounds = results.join("rounds");
    let mut snaps = Vec::new();
    for r in 1..=5 {
        let doc = f.json(&rounds, &format!("backup{r}"));
        let kind = if r == 1 { "seed" } else { "incremental" };
        f.check(doc["kind"] == kind, || {
            format!("round {r}: kind {} (expected {kind})", doc["kind"])
        });
        f.same(&rounds, &format!("copy{r}"), &format!("snap{r}"));
        let owned = lines(&rounds, &format!("owned{r}.txt"));
        let snap = read_result(&rounds, &format!("snap{r}.txt"))
            .trim()
            .to_string();
        f.check(owned == [snap.clone()], || {
            format!("round {r}: tool-owned snapshots {owned:?}, expected only {snap}")
        });
        f.check(doc["snapshot"] == format!("lvmsynctest/{snap}"), || {
            format!("round {r}: summary names {} not {snap}", doc["snapshot"])
        });
        if r > 1 {
            f.check(
                doc["base"] == format!("lvmsynctest/{}", snaps.last().unwrap()),
                || format!("round {r}: base {} is not the last round's", doc["base"]),
            );
            // An incremental sends much less than the seed.
            let sent = doc["transfer"]["bytes_read"].as_u64().unwrap_or(u64::MAX);
            f.check(sent < 24 << 20, || {
                format!("round {r}: an incremental read {sent} bytes")
            });
        }
        snaps.push(snap);
    }
    // The writer kept writing: the origin moved past the snapshots.
    let s = sums(&rounds);
    for r in 3..=5 {
        f.check(
            s.get(&format!("origin{r}")) != s.get(&format!("snap{r}")),
            || format!("round {r}: the origin equals the snapshot: the writer did not write"),
        );
    }
    let state = read_result(&rounds, "state.json");
    f.check(
        state.contains(&snaps[4]) && state.contains("\"applying\": null"),
        || format!("the copy's state does not name the last snapshot: {state}"),
    );

    // A leftover tagged snapshot is removed; an untagged one is not.
    let left = results.join("leftover");
    f.ok(&left, "backup");
    f.check(
        lines(&left, "owned-before.txt").len() == 2 && lines(&left, "owned-after.txt").len() == 1,
        || {
            format!(
                "leftover: owned before {:?}, after {:?}",
                lines(&left, "owned-before.txt"),
                lines(&left, "owned-after.txt")
            )
        },
    );
    f.check(
        !lines(&left, "owned-after.txt").contains(&"left-new".to_string()),
        || "leftover: the leftover snapshot is still there".into(),
    );
    f.same(&left, "copy", "snap");
    f.ok(&left, "backup2");
    f.check(
        lines(&left, "lvs.txt").contains(&"not-ours".to_string()),
        || "leftover: an untagged snapshot was removed".into(),
    );

    // A delta for another base: refused and nothing written; --force applies it.
    let wrong = results.join("wrongbase");
    f.ok(&wrong, "send");
    let rc = read_result(&wrong, "apply.rc").trim().to_string();
    let err = read_result(&wrong, "apply.err");
    f.check(
        rc == "4" && err.contains("it was made for another copy") && err.contains("--force"),
        || format!("wrongbase: apply exit {rc}: {err}"),
    );
    f.same(&wrong, "before", "after");
    f.ok(&wrong, "force");
    let s = sums(&wrong);
    f.check(s.get("forced") != s.get("before"), || {
        "wrongbase: --force wrote nothing".into()
    });
    // DEST no longer holds a known point in time: compared and repaired.
    let doc = f.json(&wrong, "after");
    f.check(doc["kind"] == "repair", || {
        format!("wrongbase: after --force the next run is a {}", doc["kind"])
    });
    f.same(&wrong, "copy", "snap");

    // Killed midway, resumed: less than the whole is sent the second time.
    for case in ["seedkill", "inckill"] {
        let dir = results.join(case);
        let killed = read_result(&dir, "state-killed.json");
        f.check(killed.contains("\"confirmed\""), || {
            format!("{case}: no transfer was recorded partway: {killed:?}")
        });
        let doc = f.json(&dir, "resume");
        let from = doc["transfer"]["resumed_from"].as_u64().unwrap_or(0);
        f.check(from > 0, || {
            format!("{case}: the second run did not resume: {doc}")
        });
        f.check(
            doc["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("resumed")),
            || format!("{case}: kind {}", doc["kind"]),
        );
        f.same(&dir, "copy", "snap");
        eprintln!(
            "{case}: resumed at byte {from}, read {} bytes, sent {} bytes",
            doc["transfer"]["bytes_read"], doc["transfer"]["bytes_on_wire"]
        );
    }
    let seed = results.join("seedkill");
    f.check(lines(&seed, "owned-after.txt").len() == 1, || {
        format!(
            "seedkill: owned after {:?}",
            lines(&seed, "owned-after.txt")
        )
    });
    // The 8 MiB the data LV leaves zero stay a hole in the copy.
    let du: Vec<u64> = read_result(&seed, "du.txt")
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    f.check(du.len() == 2 && du[1] + 6 * 1024 < du[0], || {
        format!("seedkill: the copy is not sparse (apparent, allocated KiB): {du:?}")
    });

    // An overflowed base, then a base that is gone: compared and repaired,
    // not copied whole; --reseed copies all again.
    let over = results.join("overflow");
    for (tag, copy, snap) in [
        ("backup", "copy", "snap"),
        ("gone", "copy-gone", "snap-gone"),
    ] {
        let doc = f.json(&over, tag);
        f.check(doc["kind"] == "repair", || format!("overflow {tag}: {doc}"));
        let err = read_result(&over, &format!("{tag}.err"));
        f.check(err.contains("sending what differs"), || {
            format!("overflow {tag}: the fallback is not explained: {err}")
        });
        // Much less than the volume went over: the differences only.
        let sent = doc["transfer"]["bytes_on_wire"]
            .as_u64()
            .unwrap_or(u64::MAX);
        f.check(sent < 46 << 20, || format!("overflow {tag}: sent {sent}"));
        f.same(&over, copy, snap);
    }
    f.check(
        read_result(&over, "backup.err").contains("invalidated"),
        || format!("overflow: {}", read_result(&over, "backup.err")),
    );
    let doc = f.json(&over, "reseed");
    f.check(doc["kind"] == "seed", || format!("overflow: {doc}"));
    f.same(&over, "copy-reseed", "snap-reseed");
    f.check(lines(&over, "owned-reseed.txt").len() == 1, || {
        format!(
            "overflow: owned after {:?}",
            lines(&over, "owned-reseed.txt")
        )
    });

    // A thin origin through the same rounds, to a thin LV.
    let thin = results.join("thin");
    for r in 1..=3 {
        let doc = f.json(&thin, &format!("backup{r}"));
        let kind = if r == 1 { "seed" } else { "incremental" };
        f.check(doc["kind"] == kind, || format!("thin round {r}: {doc}"));
        f.same(&thin, &format!("copy{r}"), &format!("snap{r}"));
        f.check(lines(&thin, &format!("owned{r}.txt")).len() == 1, || {
            format!(
                "thin round {r}: owned {:?}",
                lines(&thin, &format!("owned{r}.txt"))
            )
        });
    }

    // Restoring (docs/user-guide.md, "Restoring from a backup copy"): the
    // copy onto a fresh LV, whole; the damaged origin repaired from the
    // copy with only the blocks that differ; both then equal the copy, and
    // the next backup is an incremental from the snapshot it kept.
    let rest = results.join("restore");
    f.json(&rest, "backup");
    f.same(&rest, "copy", "snap");
    let s = sums(&rest);
    f.check(s.get("damaged") != s.get("copy"), || {
        "restore: the damage changed nothing".into()
    });
    let full = f.json(&rest, "full");
    f.check(full["bytes_read"] == 48u64 << 20, || {
        format!("restore: sync --full did not copy all 48 MiB: {full}")
    });
    f.ok(&rest, "cmp-full");
    f.same(&rest, "restored", "copy");
    let repair = f.json(&rest, "repair");
    f.check(
        repair["identical"] == false && repair["identical_now"] == true,
        || format!("restore: verify --repair: {repair}"),
    );
    let differ = repair["differing_bytes"].as_u64().unwrap_or(0);
    let r = &repair["repaired"];
    let sent = r["data_bytes"].as_u64().unwrap_or(0) + r["zero_bytes"].as_u64().unwrap_or(0);
    f.check(differ > 0 && differ < 16 << 20 && sent == differ, || {
        format!("restore: {differ} bytes differ, {sent} sent: {repair}")
    });
    f.ok(&rest, "cmp-repair");
    f.same(&rest, "origin", "copy");
    let after = f.json(&rest, "after");
    f.check(after["kind"] == "incremental", || {
        format!("restore: the backup after the repair: {after}")
    });
    f.same(&rest, "copy-after", "snap-after");
    f.same(&rest, "copy-after", "copy");
    f.check(lines(&rest, "owned-after.txt").len() == 1, || {
        format!("restore: owned after {:?}", lines(&rest, "owned-after.txt"))
    });
    eprintln!(
        "restore: sync --full sent {} bytes; verify --repair found {differ} bytes differing and sent a delta of {} bytes",
        full["bytes_on_wire"], r["delta_bytes"]
    );

    // status and dry runs on real volumes: they say what the next run
    // does and change nothing; --config backs up one volume and reports
    // the other that fails.
    let op = results.join("operator");
    let status = f.json(&op, "status");
    let held = lines(&op, "owned-before.txt");
    f.check(
        held.len() == 1
            && status["holds"]["snapshot"] == format!("lvmsynctest/{}", held[0])
            && status["kind"] == "device"
            && status["next_backup"]["kind"] == "incremental",
        || format!("operator: status {status}, owned {held:?}"),
    );
    let dry = f.json(&op, "dryrun");
    let bytes = dry["bytes"].as_u64().unwrap_or(0);
    f.check(
        dry["dry_run"] == true
            && dry["kind"] == "incremental"
            && dry["base"] == format!("lvmsynctest/{}", held.first().map_or("", |s| s.as_str()))
            && dry["creates_snapshot"] == true
            && dry["removes_after"]
                == serde_json::json!(dry["base"].as_str().map(|b| vec![b]).unwrap_or_default())
            && bytes > 0
            && bytes < 8 << 20,
        || format!("operator: backup -n {dry}"),
    );
    f.check(lines(&op, "owned-dryrun.txt") == held, || {
        format!(
            "operator: the dry run changed the snapshots: {:?}",
            lines(&op, "owned-dryrun.txt")
        )
    });
    f.same(&op, "copy-dryrun", "copy-before");
    let rc = read_result(&op, "config.rc").trim().to_string();
    let out = read_result(&op, "config.out");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let vols = doc["volumes"].as_array().cloned().unwrap_or_default();
    f.check(
        rc != "0"
            && doc["exit_code"].as_u64().map(|c| c.to_string()) == Some(rc.clone())
            && vols.len() == 2
            && vols[0]["result"] == "ok"
            && vols[0]["kind"] == "incremental"
            && vols[0]["transfer"]["data_bytes"]
                .as_u64()
                .is_some_and(|d| d > 0 && d <= bytes)
            && vols[1]["result"] == "failed",
        || format!("operator: backup --config exit {rc}: {out}"),
    );
    f.same(&op, "copy-after", "snap-after");
    f.check(lines(&op, "owned-after.txt").len() == 1, || {
        format!("operator: owned after {:?}", lines(&op, "owned-after.txt"))
    });

    f.assert_none(&log);
}
