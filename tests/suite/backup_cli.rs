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

/// `backup --config`: every volume is tried, one failing does not stop
/// the next, the exit status and the one JSON object say how it went; a
/// mistake in the file stops everything before anything runs.
#[test]
fn a_config_runs_every_volume_and_reports_each() {
    let dir = scratch("backup-cli-config");
    let config = dir.join("backup.toml");
    std::fs::write(
        &config,
        format!(
            "[defaults]\ncreate = true\n\n[[volume]]\norigin = \"no-such-vg-here/a\"\ndest = \"{0}/a.img\"\n\n[[volume]]\norigin = \"no-such-vg-here/b\"\ndest = \"{0}/b.img\"\nsnapshot_size = \"1G\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let out = run(&["backup", "--json", "--config", s(&config)]);
    let doc = strict_json(&stdout(&out)).unwrap();
    let volumes = doc["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2, "{doc}");
    for (v, name) in volumes.iter().zip(["a", "b"]) {
        assert_eq!(v["origin"], format!("no-such-vg-here/{name}"));
        assert_eq!(v["result"], "failed");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("lvm2 knows no such LV"),
            "{v}"
        );
    }
    assert_eq!(
        (doc["result"].as_str(), doc["volumes_failed"].as_u64()),
        (Some("failed"), Some(2))
    );
    let code = out.status.code().unwrap();
    assert!(
        code != 0 && doc["exit_code"] == code && volumes[0]["exit_code"] == code,
        "{doc}"
    );
    let err = stderr(&out);
    assert_eq!(
        err.matches("lvmsync-rs: error: no-such-vg-here/").count(),
        2,
        "{err}"
    );
    assert!(err.contains("2 volumes: 0 backed up, 2 failed"), "{err}");
    assert!(!dir.join("a.img").exists() && !dir.join("b.img").exists());

    // A mistake in the file: named, exit 2, nothing tried.
    std::fs::write(
        &config,
        "[[volume]]\norigin = \"vg/a\"\ndest = \"/x\"\nsnapshot_sise = \"1G\"\n",
    )
    .unwrap();
    let out = run(&["backup", "--config", s(&config)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("backup.toml") && stderr(&out).contains("snapshot_sise"),
        "{}",
        stderr(&out)
    );
    assert_clean_failure(&out, "unknown field");
    assert_usage_errors(&[
        (
            &["backup", "--config", s(&config), "vg/a", "/x"],
            "cannot be used with",
        ),
        (&["backup", "vg/a"], "required"),
    ]);
}

/// The shipped systemd unit runs the shipped example config as it stands:
/// every option it gives is one the command takes, every volume is tried
/// (here, with no such volumes, each fails on its origin).
#[test]
fn the_shipped_unit_and_config_are_what_the_command_takes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit =
        std::fs::read_to_string(root.join("examples/systemd/lvmsync-rs-backup.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    let words: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|w| {
            w.replace(
                "/etc/lvmsync-rs/backup.toml",
                s(&root.join("examples/backup.toml")),
            )
        })
        .collect();
    assert_eq!(words[..2], ["backup", "--config"]);
    let out = command().args(&words).output().unwrap();
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("lvmsync-rs: error: vg0/").count(), 3, "{err}");
    assert!(err.contains("3 volumes: 0 backed up, 3 failed"), "{err}");
    let timer =
        std::fs::read_to_string(root.join("examples/systemd/lvmsync-rs-backup.timer")).unwrap();
    assert!(timer.contains("OnCalendar=") && timer.contains("WantedBy=timers.target"));
}
