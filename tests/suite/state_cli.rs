//! The destination's state through `apply`: a delta made for another base is
//! refused and nothing is written, `--force` overrides, the state follows
//! each delta, and a transfer cut midway is confirmed up to where it got
//! and accepts a resumed delta from there only.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::images::{delta_bytes, image_header};
use crate::common::*;
use lvmsync::state::{self, State};
use lvmsync::stream::{Header, PointInTime, SourceInfo, SourceKind, Writer};

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

/// The header of a delta of a classic snapshot of vg/origin, from the
/// snapshot `base` (none: a full copy) to `target` (none: a live volume).
fn header(base: Option<&str>, target: Option<&str>, resume_from: u64) -> Header {
    Header {
        source: SourceInfo {
            vg: Some("vg".into()),
            snapshot: base.map(String::from),
            origin: Some("origin".into()),
            origin_uuid: Some("origin-uuid".into()),
            ..SourceInfo::of_kind(SourceKind::Classic)
        },
        base: base.map(pit),
        target: target.map(pit),
        resume_from,
        ..image_header(SIZE as u64, BLOCK as u64)
    }
}

/// A delta setting every block of `content` from `from` on; the offset in
/// it where each record ends.
fn delta(path: &Path, h: &Header, content: &[u8], from: usize) -> Vec<u64> {
    let mut ends = Vec::new();
    let bytes = delta_bytes(h, |w| {
        for off in (from..content.len()).step_by(BLOCK) {
            w.data(off as u64, &content[off..off + BLOCK]).unwrap();
            ends.push(w.position());
        }
    });
    fs::write(path, bytes).unwrap();
    ends
}

fn state_of(dest: &Path) -> Option<State> {
    state::load(&state::location(dest).unwrap().unwrap()).unwrap()
}

struct Case {
    dir: Scratch,
    dest: PathBuf,
}

impl Case {
    fn new(name: &str) -> Case {
        let dir = scratch(name);
        let dest = dir.join("copy.img");
        fs::write(&dest, random(SIZE, 1)).unwrap();
        Case { dir, dest }
    }

    fn apply(&self, name: &str, extra: &[&str]) -> std::process::Output {
        let d = self.dir.join(name);
        let mut args = vec!["apply"];
        args.extend_from_slice(extra);
        args.extend([s(&d), s(&self.dest)]);
        run(&args)
    }
}

#[test]
fn a_delta_for_another_base_is_refused_until_forced() {
    let c = Case::new("state-base");
    let (a, b, x) = (random(SIZE, 2), random(SIZE, 3), random(SIZE, 4));
    // A full copy to A names no base: taken whatever DEST holds.
    delta(&c.dir.join("seed.lvd"), &header(None, Some("a"), 0), &a, 0);
    assert_ok(&c.apply("seed.lvd", &[]));
    assert_same(&c.dest, &a, "DEST against a");
    assert_eq!(state_of(&c.dest).unwrap().holds, Some(pit("a")));

    // A delta from X (not what DEST holds): refused, DEST untouched.
    delta(
        &c.dir.join("x.lvd"),
        &header(Some("x"), Some("y"), 0),
        &x,
        0,
    );
    let out = c.apply("x.lvd", &[]);
    assert_clean_failure(&out, "it holds vg/a taken 2026-11-26 08:00:00 +0000 (snapshot uuid a-uuid), but the delta applies to vg/x");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_same(&c.dest, &a, "DEST against a");
    assert_eq!(state_of(&c.dest).unwrap().holds, Some(pit("a")));

    // From A to B: applied, and DEST holds B.
    delta(
        &c.dir.join("ab.lvd"),
        &header(Some("a"), Some("b"), 0),
        &b,
        0,
    );
    assert_ok(&c.apply("ab.lvd", &[]));
    assert_same(&c.dest, &b, "DEST against b");
    assert_eq!(state_of(&c.dest).unwrap().holds, Some(pit("b")));
    // The same delta again: DEST holds B now, not A.
    assert_clean_failure(&c.apply("ab.lvd", &[]), "it was made for another copy");

    // --force applies the delta from X anyway.
    let out = c.apply("x.lvd", &["--force"]);
    assert_ok(&out);
    assert_same(&c.dest, &x, "DEST against x");
    assert_eq!(state_of(&c.dest).unwrap().holds, Some(pit("y")));

    // Data from a live volume: what DEST holds is no longer known, and
    // any delta is then taken.
    delta(&c.dir.join("live.lvd"), &header(Some("y"), None, 0), &a, 0);
    assert_ok(&c.apply("live.lvd", &[]));
    assert_eq!(state_of(&c.dest).unwrap(), State::default());
    assert_ok(&c.apply("ab.lvd", &[]));

    // A damaged state file is an error, unless --force.
    let path = state::location(&c.dest).unwrap().unwrap();
    fs::write(&path, "{").unwrap();
    assert_clean_failure(&c.apply("ab.lvd", &[]), "damaged state file");
    assert_ok(&c.apply("ab.lvd", &["--force"]));
    assert_eq!(state_of(&c.dest).unwrap().holds, Some(pit("b")));
}

#[test]
fn a_cut_transfer_is_confirmed_where_it_stopped_and_resumes_only_from_there() {
    let c = Case::new("state-resume");
    let (a, b) = (random(SIZE, 5), random(SIZE, 6));
    delta(&c.dir.join("seed.lvd"), &header(None, Some("a"), 0), &a, 0);
    assert_ok(&c.apply("seed.lvd", &[]));

    // The delta from A to B, cut after its sixth record.
    let whole = c.dir.join("ab.lvd");
    let ends = delta(&whole, &header(Some("a"), Some("b"), 0), &b, 0);
    let bytes = fs::read(&whole).unwrap();
    fs::write(c.dir.join("cut.lvd"), &bytes[..ends[5] as usize + 10]).unwrap();
    let out = c.apply("cut.lvd", &[]);
    assert_clean_failure(&out, "the bytes before 393216 are applied");
    let st = state_of(&c.dest).unwrap();
    assert_eq!(st.holds, None);
    let partway = st.applying.unwrap();
    assert_eq!(
        (partway.target, partway.confirmed),
        (pit("b"), 6 * BLOCK as u64)
    );
    let copy = fs::read(&c.dest).unwrap();
    assert_eq!(copy[..6 * BLOCK], b[..6 * BLOCK]);
    assert_eq!(copy[6 * BLOCK..], a[6 * BLOCK..]);

    // While DEST is partway, another delta is refused, and so is a resumed
    // delta starting past what DEST confirmed.
    for (name, h, from, needle) in [
        (
            "ac.lvd",
            header(Some("a"), Some("c"), 0),
            0,
            "partway through a delta that brings it to vg/b",
        ),
        (
            "late.lvd",
            header(Some("a"), Some("b"), 8 * BLOCK as u64),
            8 * BLOCK,
            "confirmed only the bytes before 393216",
        ),
    ] {
        delta(&c.dir.join(name), &h, &b, from);
        if let Err(why) = clean_failure(&c.apply(name, &[]), needle) {
            panic!("{name}: {why}");
        }
    }
    // The resumed delta from where DEST stopped completes it.
    let rest = c.dir.join("rest.lvd");
    delta(
        &rest,
        &header(Some("a"), Some("b"), 6 * BLOCK as u64),
        &b,
        6 * BLOCK,
    );
    assert!(fs::metadata(&rest).unwrap().len() < bytes.len() as u64);
    assert_ok(&c.apply("rest.lvd", &[]));
    assert_same(&c.dest, &b, "DEST against b");
    assert_eq!(state_of(&c.dest).unwrap().holds, Some(pit("b")));
    assert_eq!(state_of(&c.dest).unwrap().applying, None);

    // A resumed delta that holds a record before where it says it resumes
    // is damaged.
    let bad = delta_bytes(&header(Some("b"), Some("c"), 2 * BLOCK as u64), |w| {
        w.data(0, &a[..BLOCK]).unwrap();
    });
    fs::write(c.dir.join("bad.lvd"), bad).unwrap();
    assert_clean_failure(
        &c.apply("bad.lvd", &["--force"]),
        "before the end of the previous record or the offset the delta resumes at",
    );
    assert_same(&c.dest, &b, "DEST against b");
}

/// A long apply confirms as it goes (every 256 MiB), without waiting for
/// the end: killed with SIGKILL, so that it cannot confirm on its way out,
/// it leaves a state that confirms a record boundary it had reached, and
/// the delta resumed from there completes the copy.
#[test]
fn a_long_apply_confirms_as_it_goes_and_a_killed_one_resumes() {
    use std::io::Write;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    const MIB: u64 = 1 << 20;
    const ORIGIN: u64 = 1024 * MIB;
    let dir = scratch("state-long");
    let dest = dir.join("copy.img");
    fs::File::create(&dest).unwrap().set_len(ORIGIN).unwrap();
    let head = |resume_from| Header {
        origin_size: ORIGIN,
        ..header(None, Some("a"), resume_from)
    };
    // 1 MiB records: 640 of zeroes (cheap to apply on a sparse file, but
    // counted towards confirmation like any other), then 8 of data.
    let block = vec![0x5au8; MIB as usize];
    let records = |w: &mut Writer<Vec<u8>>, from: u64, ends: &mut Vec<(u64, u64)>| {
        for i in from / MIB..648 {
            if i < 640 {
                w.zero(i * MIB, MIB).unwrap();
            } else {
                w.data(i * MIB, &block).unwrap();
            }
            ends.push(((i + 1) * MIB, w.position()));
        }
    };
    let mut ends = Vec::new();
    let whole = delta_bytes(&head(0), |w| records(w, 0, &mut ends));

    // Feed the records up to 600 MiB, then wait for a confirmation past
    // 512 MiB while the apply waits for more.
    let fed = ends.iter().find(|(end, _)| *end == 600 * MIB).unwrap().1 as usize;
    let mut apply = command()
        .args(["apply", "-"])
        .arg(&dest)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = apply.stdin.take().unwrap();
    stdin.write_all(&whole[..fed]).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let confirmed = loop {
        let c = state_of(&dest)
            .and_then(|s| s.applying)
            .map_or(0, |a| a.confirmed);
        if c >= 512 * MIB {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no confirmation past 512 MiB while the apply ran (confirmed {c})"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    apply.kill().unwrap();
    apply.wait().unwrap();
    drop(stdin);
    let st = state_of(&dest).unwrap();
    assert_eq!(st.holds, None);
    let partway = st.applying.unwrap();
    assert_eq!(partway.target, pit("a"));
    assert!(partway.confirmed >= confirmed && partway.confirmed <= 600 * MIB);
    assert_eq!(partway.confirmed % MIB, 0, "a record boundary");

    // The delta resumed from there completes the copy.
    let rest = delta_bytes(&head(partway.confirmed), |w| {
        records(w, partway.confirmed, &mut Vec::new())
    });
    assert!(rest.len() < whole.len());
    fs::write(dir.join("rest.lvd"), rest).unwrap();
    let out = run(&["apply", s(&dir.join("rest.lvd")), s(&dest)]);
    assert_ok(&out);
    let st = state_of(&dest).unwrap();
    assert_eq!((st.holds, st.applying), (Some(pit("a")), None));
    let copy = fs::File::open(&dest).unwrap();
    let at = |offset: u64| {
        let mut b = vec![0u8; MIB as usize];
        std::os::unix::fs::FileExt::read_exact_at(&copy, &mut b, offset).unwrap();
        b
    };
    for mib in [0, 599, 600, 639] {
        assert!(at(mib * MIB).iter().all(|&b| b == 0), "MiB {mib}");
    }
    for mib in 640..648 {
        assert_eq!(at(mib * MIB), block, "MiB {mib}");
    }
}
