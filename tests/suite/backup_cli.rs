//! `lvmsync-rs backup`, and `sync --full` (the seed it sends), refusing bad
//! input before they touch anything (the workflow itself runs in the
//! real-kernel guest: tests/suite/vm_backup.rs).

use crate::common::*;

#[test]
fn bad_origins_and_sizes_are_refused_in_one_line() {
    let dir = scratch("backup-cli");
    let dest = dir.join("copy.img");
    let d = s(&dest);
    assert_refusals(&[
        (
            &["backup", "just-a-name", d],
            "just-a-name: name the origin as VG/LV",
        ),
        (
            &["backup", "no-such-vg-here/lv", d],
            "no-such-vg-here/lv: lvm2 knows no such LV",
        ),
    ]);
    assert_usage_errors(&[(
        &["backup", "--snapshot-size", "0%ORIGIN", "vg/lv", d],
        "not a size",
    )]);
    // Nothing was created.
    assert!(!dest.exists());
}

#[test]
fn a_full_copy_of_nothing_or_with_a_change_table_is_refused() {
    let dir = scratch("backup-cli-full");
    let dest = dir.join("copy.img");
    let d = s(&dest);
    let missing = dir.join("missing.img");
    let cow = dir.join("cow");
    std::fs::write(&cow, b"").unwrap();
    assert_refusals(&[(
        &["sync", "--full", s(&missing), d, "--create"],
        "missing.img: cannot open: No such file or directory",
    )]);
    assert_usage_errors(&[(
        &["sync", "--full", "--cow", s(&cow), "src", d],
        "cannot be used with",
    )]);
    assert!(!dest.exists());
}
