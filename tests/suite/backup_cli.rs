//! `lvmsync-rs backup`, and `sync --full` (the seed it sends), refusing bad
//! input before they touch anything (the workflow itself runs in the
//! real-kernel guest: tests/suite/vm_backup.rs).

use crate::common::*;

#[test]
fn bad_origins_and_sizes_are_refused_in_one_line() {
    let dir = scratch("backup-cli");
    let dest = dir.join("copy.img");
    let d = dest.to_str().unwrap();
    assert_clean_failure(
        &run(&["backup", "just-a-name", d]),
        "just-a-name: name the origin as VG/LV",
    );
    assert_clean_failure(
        &run(&["backup", "no-such-vg-here/lv", d]),
        "no-such-vg-here/lv: lvm2 knows no such LV",
    );
    let out = run(&["backup", "--snapshot-size", "0%ORIGIN", "vg/lv", d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a size"));
    // Nothing was created.
    assert!(!dest.exists());
}

#[test]
fn a_full_copy_of_nothing_or_with_a_change_table_is_refused() {
    let dir = scratch("backup-cli-full");
    let dest = dir.join("copy.img");
    let d = dest.to_str().unwrap();
    let missing = dir.join("missing.img");
    assert_clean_failure(
        &run(&["sync", "--full", missing.to_str().unwrap(), d, "--create"]),
        "missing.img: cannot open: No such file or directory",
    );
    std::fs::write(dir.join("cow"), b"").unwrap();
    let cow = dir.join("cow");
    let out = run(&["sync", "--full", "--cow", cow.to_str().unwrap(), "src", d]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    assert!(!dest.exists());
}
