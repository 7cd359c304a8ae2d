//! `send` and `apply` on real LVM volumes in a real kernel
//! (`tests/vm/scenarios/delta.sh`): after a delta, the backup LV holds
//! exactly what its source holds, through a file, through a pipe, and with a
//! later snapshot as the data source while the origin keeps changing; and
//! a device that is mounted or held, or is one of the delta's inputs, is
//! never written.
//!
//! Needs what `tests/run` installs (qemu, a Debian kernel, lvm2).

use crate::common::guest::{read_result, run_scenario, sums, Failures};

#[test]
fn a_backup_updated_through_a_delta_equals_its_source() {
    let (results, log) = run_scenario("vm-delta", "delta.sh");
    let mut f = Failures::default();

    // Through a file.
    let file = results.join("file");
    f.ok(&file, "send");
    f.ok(&file, "apply");
    let doc = f.json(&file, "inspect");
    if !doc.is_null() {
        f.check(doc["whole"] == true, || {
            format!("inspect: the delta is not whole: {doc}")
        });
    }
    f.same(&file, "origin", "backup");
    let s = sums(&file);
    f.check(s.get("backup-before") != s.get("origin"), || {
        "file: the origin was not changed, the test proves nothing".into()
    });

    // Onto a device smaller than the origin: refused (exit 4), nothing
    // written.
    let small = results.join("toosmall");
    let rc = read_result(&small, "apply.rc");
    f.check(rc.trim() == "4", || {
        format!(
            "toosmall: apply onto a smaller device: exit {:?} (expected 4, refused): {}",
            rc.trim(),
            read_result(&small, "apply.err").trim()
        )
    });
    f.same(&small, "before", "after");

    // Through a pipe.
    let pipe = results.join("pipe");
    f.ok(&pipe, "pipe");
    f.same(&pipe, "origin", "backup");

    // From a later snapshot, the origin written after it.
    let ds = results.join("datasrc");
    f.ok(&ds, "send");
    f.ok(&ds, "apply");
    f.same(&ds, "snapB", "backup");
    let s = sums(&ds);
    f.check(s.get("origin") != s.get("backup"), || {
        format!("datasrc: backup equals the origin written after the snapshot: {s:?}")
    });

    // Devices in use, and the delta's own inputs as DEST: refused, and
    // every one of them unchanged.
    let inuse = results.join("inuse");
    f.refused(&inuse, "mounted", "in use (mounted at /tmp/lvmsync-mnt)");
    f.same(&inuse, "mounted-before", "mounted-after");
    f.refused(&inuse, "held", "in use (held by lvmsync-holder");
    f.same(&inuse, "held-before", "held-after");
    for case in ["origin", "cow", "datasource", "backup-origin"] {
        f.refused(
            &inuse,
            case,
            "writing to it would destroy what is being copied",
        );
    }
    for dev in ["origin", "snapB", "cow"] {
        f.same(&inuse, &format!("{dev}-before"), &format!("{dev}-after"));
    }
    let lvs = read_result(&inuse, "lvs.txt");
    f.check(!lvs.contains("-lvmsync-"), || {
        format!("inuse: backup onto its own origin created a snapshot: {lvs}")
    });

    f.assert_none(&log);
}
