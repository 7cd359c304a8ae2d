//! What a copy holds, read without changing it (`status`, here and over a
//! real sshd), and dry runs that check DEST as the apply would and change
//! nothing (`sync -n`, `verify --repair -n`).

use std::fs;
use std::path::Path;

use lvmsync::state::{self, Applying, State};
use lvmsync::stream::{Header, PointInTime, SourceInfo, SourceKind};

use crate::common::images::{delta_bytes, image_header, random, Change, Fill};
use crate::common::sshd::{Sshd, HOST};
use crate::common::*;

const SIZE: usize = 1 << 20;
const BLOCK: usize = 64 << 10;

fn pit(snap: &str) -> PointInTime {
    PointInTime {
        origin_uuid: "origin-uuid".into(),
        snapshot_uuid: format!("{snap}-uuid"),
        snapshot: format!("vg/{snap}"),
        time: "2026-11-26 08:00:00 +0000".into(),
    }
}

/// A full copy of `content` that brings a copy to vg/`target`.
fn full_delta(path: &Path, target: &str, content: &[u8]) {
    let h = Header {
        source: SourceInfo {
            vg: Some("vg".into()),
            origin: Some("origin".into()),
            origin_uuid: Some("origin-uuid".into()),
            ..SourceInfo::of_kind(SourceKind::Full)
        },
        target: Some(pit(target)),
        ..image_header(content.len() as u64, BLOCK as u64)
    };
    let bytes = delta_bytes(&h, |w| {
        for off in (0..content.len()).step_by(BLOCK) {
            w.data(off as u64, &content[off..off + BLOCK]).unwrap();
        }
    });
    fs::write(path, bytes).unwrap();
}

/// Holds DEST's lock, as a writer would.
fn lock(path: &Path) -> nix::fcntl::Flock<fs::File> {
    nix::fcntl::Flock::lock(
        fs::File::open(path).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .map_err(|(_, e)| e)
    .unwrap()
}

fn status_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["status", "--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert_ok(&out);
    strict_json(&stdout(&out)).unwrap()
}

#[test]
fn status_says_what_a_copy_holds_here_and_over_ssh() {
    let dir = scratch("status");
    let dest = dir.join("copy.img");
    let missing = status_json(&[s(&dest)]);
    assert_eq!(
        (missing["exists"].as_bool(), missing["result"].as_str()),
        (Some(false), Some("ok"))
    );
    assert!(missing["holds"].is_null());

    // Brought to vg/snap-a by an apply: it says so, and since when.
    let content = random(SIZE, 3);
    let d = dir.join("a.lvd");
    full_delta(&d, "snap-a", &content);
    assert_ok(&run(&["apply", "-q", "--create", s(&d), s(&dest)]));
    let st = status_json(&[s(&dest)]);
    assert_eq!(st["holds"]["snapshot"], "vg/snap-a");
    assert_eq!(st["holds"]["snapshot_uuid"], "snap-a-uuid");
    assert_eq!(
        (st["kind"].as_str(), st["size"].as_u64()),
        (Some("file"), Some(SIZE as u64))
    );
    assert!(
        st["state_updated"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{st}"
    );
    assert!(st["writer"].is_null() && st["applying"].is_null(), "{st}");
    let text = stdout(&run(&["status", s(&dest)]));
    assert!(
        text.contains("holds:    vg/snap-a taken 2026-11-26"),
        "{text}"
    );

    // A transfer left partway: what it was, how far it got.
    let location = state::location(&dest).unwrap().unwrap();
    let partway = State {
        holds: None,
        applying: Some(Applying {
            base: Some(pit("snap-a")),
            target: pit("snap-b"),
            confirmed: 3 * BLOCK as u64,
        }),
    };
    state::save(&location, &dest, &partway).unwrap();
    let st = status_json(&[s(&dest)]);
    assert_eq!(st["applying"]["confirmed"], 3 * BLOCK as u64);
    assert_eq!(st["applying"]["target"]["snapshot"], "vg/snap-b");
    let text = stdout(&run(&["status", s(&dest)]));
    assert!(
        text.contains("partway:  a transfer from vg/snap-a to vg/snap-b"),
        "{text}"
    );
    assert!(
        text.contains(&format!("confirmed up to byte {}", 3 * BLOCK)),
        "{text}"
    );

    // Someone writing it: named, and nothing about it changes.
    let before = fs::read(&location).unwrap();
    {
        let _held = lock(&dest);
        let st = status_json(&[s(&dest)]);
        let writer = st["writer"].as_str().unwrap_or_default();
        assert!(writer.contains(&std::process::id().to_string()), "{st}");
    }
    assert_eq!(
        fs::read(&location).unwrap(),
        before,
        "status changed the state"
    );
    assert_same(&dest, &content, "DEST after status");

    // Over ssh: the same answer, from the far end's own look.
    let sshd = Sshd::start(&dir.join("sshd"));
    let remote = format!("{HOST}:{}", dest.display());
    let far = status_json(&["-e", &sshd.rsh(), "--remote-path", s(&bin()), &remote]);
    let near = status_json(&[s(&dest)]);
    for key in [
        "exists",
        "kind",
        "size",
        "applying",
        "holds",
        "state_updated",
        "state_file",
    ] {
        assert_eq!(far[key], near[key], "{key}: {far} vs {near}");
    }
    assert_eq!(
        (far["host"].as_str(), far["dest"].as_str()),
        (Some(HOST), Some(remote.as_str()))
    );
    // A far end that is not there: unreachable, exit 6.
    let out = run(&[
        "status",
        "-e",
        &sshd.rsh(),
        "--remote-path",
        "/nonexistent/lvmsync-rs",
        &remote,
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
}

#[test]
fn a_dry_run_checks_dest_as_the_apply_would_and_changes_nothing() {
    let c = Change::new(
        scratch("dry-run"),
        SIZE,
        4096,
        11,
        [(3, Fill::Random), (40, Fill::Text), (41, Fill::Zero)],
    );
    let dest = c.path("copy.img");
    let sync_n = |extra: &[&str], dest: &str| {
        let mut args = vec![
            "sync",
            "-n",
            "--cow",
            s(&c.cow_path),
            "--data-source",
            s(&c.new_path),
        ];
        args.extend_from_slice(extra);
        args.push(dest);
        run(&args)
    };
    // Missing: refused as the apply would refuse it; with --create, fine,
    // and still nothing there.
    let out = sync_n(&[], s(&dest));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no such file; give --create"),
        "{}",
        stderr(&out)
    );
    let out = sync_n(&["--create", "--json"], s(&dest));
    assert_ok(&out);
    let doc = strict_json(&stdout(&out)).unwrap();
    assert_eq!(
        (doc["dry_run"].as_bool(), doc["bytes"].as_u64()),
        (Some(true), Some(3 * 4096))
    );
    assert!(!dest.exists(), "a dry run created DEST");

    // A copy: what would be sent; nothing written, no state made.
    fs::write(&dest, &c.old).unwrap();
    let out = sync_n(&[], s(&dest));
    assert_ok(&out);
    assert!(
        stderr(&out).contains("dry run: would send 2 extents (12 KiB"),
        "{}",
        stderr(&out)
    );
    assert_same(&dest, &c.old, "DEST after a dry run");
    assert!(!c.path("copy.img.lvmsync-state").exists());

    // Refused, as the apply would: another writer, a shorter file.
    {
        let _held = lock(&dest);
        let out = sync_n(&[], s(&dest));
        assert_eq!(out.status.code(), Some(4));
        assert!(
            stderr(&out).contains("another program is writing it"),
            "{}",
            stderr(&out)
        );
    }
    let short = c.path("short.img");
    fs::write(&short, &c.old[..SIZE / 2]).unwrap();
    let out = sync_n(&[], s(&short));
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("shorter than the origin"),
        "{}",
        stderr(&out)
    );

    // Over ssh: the far end is only looked at.
    let sshd = Sshd::start(&c.path("sshd"));
    let far = |p: &Path| format!("{HOST}:{}", p.display());
    let rsh = sshd.rsh();
    let out = sync_n(
        &["-e", &rsh, "--remote-path", s(&bin())],
        &far(&c.path("none.img")),
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let out = sync_n(
        &["-e", &rsh, "--remote-path", s(&bin()), "--json"],
        &far(&dest),
    );
    assert_ok(&out);
    let doc = strict_json(&stdout(&out)).unwrap();
    assert_eq!(doc["dest_status"]["size"], SIZE as u64);
    assert_same(&dest, &c.old, "DEST after a remote dry run");

    // verify --repair -n: the comparison, and no repair.
    let out = run(&[
        "verify",
        "--repair",
        "-n",
        "--json",
        s(&c.new_path),
        s(&dest),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let doc = strict_json(&stdout(&out)).unwrap();
    assert_eq!(doc["dry_run"], true);
    assert!(
        doc["differing_bytes"].as_u64().unwrap() > 0 && doc["repaired"].is_null(),
        "{doc}"
    );
    assert_same(&dest, &c.old, "DEST after verify --repair -n");
    // -n alone is refused: it goes with --repair.
    assert_eq!(
        run(&["verify", "-n", s(&c.new_path), s(&dest)])
            .status
            .code(),
        Some(2)
    );
}
