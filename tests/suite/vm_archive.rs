//! `backup` into an archive, `restore` and `archive prune|check|list` on
//! real LVM volumes in a real kernel (`tests/vm/scenarios/archive.sh`):
//! five points stored while the origin keeps being written, each restored
//! byte for byte equal to its round's snapshot, also over the difference
//! from another point (forwards and back); after pruning to three, those
//! three still restore exactly and a pruned one is refused, naming the
//! points there are.
//!
//! Needs what `tests/run` installs (qemu, a Debian kernel, lvm2).

use crate::common::guest::{run_scenario, sums, Failures};

#[test]
fn every_point_of_an_archive_restores_exactly_before_and_after_a_prune() {
    let (results, log) = run_scenario("vm-archive", "archive.sh");
    let mut f = Failures::default();

    let rounds = results.join("rounds");
    let round = sums(&rounds);
    for r in 1..=5 {
        let doc = f.json(&rounds, &format!("backup{r}"));
        if !doc.is_null() {
            let kind = if r == 1 { "seed" } else { "incremental" };
            f.check(doc["kind"] == kind && doc["point"] == r, || {
                format!("round {r}: expected a {kind} stored as point {r}: {doc}")
            });
        }
    }
    // Rounds 3 to 5 ran with a writer: the snapshot, not the origin, is
    // the point.
    f.check(round.get("round5") != round.get("origin5"), || {
        "round 5: the origin did not move during the backup, the test proves less".into()
    });
    let list = f.json(&rounds, "list");
    if !list.is_null() {
        let points = &list["volumes"][0]["points"];
        f.check(points.as_array().is_some_and(|p| p.len() == 5), || {
            format!("list: expected 5 points: {list}")
        });
    }

    let restore = results.join("restore");
    let restored = sums(&restore);
    let same = |f: &mut Failures, got: &str, want: &str| {
        f.check(
            restored.contains_key(got) && restored.get(got) == round.get(want),
            || {
                format!(
                    "restore: {got} is not {want}: {:?} / {:?}",
                    restored.get(got),
                    round.get(want)
                )
            },
        );
    };
    for r in 1..=5 {
        f.ok(&restore, &format!("restore{r}"));
        same(&mut f, &format!("restored{r}"), &format!("round{r}"));
    }
    same(&mut f, "forward", "round5");
    same(&mut f, "back", "round2");
    same(&mut f, "file", "round3");
    // Over the difference: less read and written than the whole volume.
    for (tag, from) in [("forward", 1), ("back", 4)] {
        let doc = f.json(&restore, tag);
        let whole = f.json(&restore, "restore5");
        if !doc.is_null() && !whole.is_null() {
            f.check(
                doc["from_point"] == from
                    && doc["bytes_written"].as_u64() < whole["bytes_written"].as_u64(),
                || format!("{tag}: not restored over the difference from point {from}: {doc}"),
            );
        }
    }

    let prune = results.join("prune");
    let doc = f.json(&prune, "prune");
    if !doc.is_null() {
        let v = &doc["volumes"][0];
        f.check(
            v["kept"] == serde_json::json!([3, 4, 5]) && v["dropped"] == serde_json::json!([1, 2]),
            || format!("prune: expected to keep 3, 4, 5: {doc}"),
        );
    }
    let check = f.json(&prune, "check");
    if !check.is_null() {
        f.check(
            check["whole"] == true && check["volumes"][0]["deltas_read"] == 3,
            || format!("check --read-data after the prune: {check}"),
        );
    }
    let pruned = sums(&prune);
    for r in 3..=5 {
        f.ok(&prune, &format!("restore{r}"));
        f.check(
            pruned.contains_key(&format!("restored{r}"))
                && pruned.get(&format!("restored{r}")) == round.get(&format!("round{r}")),
            || format!("after the prune, point {r} does not restore exactly"),
        );
    }
    f.check(pruned.get("nobase") == round.get("round4"), || {
        "after the prune, point 4 onto a copy of a pruned point is wrong".into()
    });
    f.refused(&prune, "pruned", "no point 1; the archive holds points 3 (");
    f.same(&prune, "before1", "after1");

    f.assert_none(&log);
}
