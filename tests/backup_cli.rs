//! `lvmsync-rs backup` refusing bad input before it touches anything (the
//! workflow itself runs in the real-kernel guest: tests/vm_backup.rs).

mod common;

use common::*;

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
