//! Never writing where the tool must not: a second writer of one DEST,
//! files planted in a shared directory, DEST being one of the delta's own
//! inputs, a host that reads as an option, a far end that never ends its
//! line, a refused snapback, a DEST made by --create for a delta that
//! turns out bad, text that would rewrite the terminal, the restricted far
//! end of `serve`, and a block device's state named after the disk rather
//! than its kernel name. (Devices that are mounted or held are refused in
//! the real-kernel guest: tests/suite/vm_delta.rs.)

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::images::{delta_bytes, image_header, Change, Fill};
use crate::common::sshd::{keygen, Sshd, HOST};
use crate::common::{
    assert_clean_failure, assert_ok, assert_same, bin, command, run, s, scratch, script, stderr,
    Loop,
};
use lvmsync::stream::{Header, PointInTime};

const MIB: usize = 1 << 20;

fn pit(name: &str) -> PointInTime {
    PointInTime {
        origin_uuid: "origin".into(),
        snapshot_uuid: format!("uuid-{name}"),
        snapshot: format!("vg/{name}"),
        time: "2026-11-26 08:00:00 +0000".into(),
    }
}

/// A delta of an origin of `size` bytes that brings a copy to point
/// `target` from `base`: `records` MiB records of `fill`, from offset 0.
fn delta(size: usize, base: Option<&str>, target: &str, records: usize, fill: u8) -> Vec<u8> {
    let h = Header {
        base: base.map(pit),
        target: Some(pit(target)),
        ..image_header(size as u64, 4096)
    };
    delta_bytes(&h, |w| {
        for i in 0..records {
            w.data((i * MIB) as u64, &vec![fill; MIB]).unwrap();
        }
    })
}

#[test]
fn a_second_writer_of_one_dest_is_refused_and_the_first_completes() {
    let dir = scratch("safety-two-writers");
    let dest = dir.join("copy.img");
    fs::write(&dest, vec![0u8; 8 * MIB]).unwrap();
    let a = delta(8 * MIB, None, "a", 8, 0xaa);
    let b = dir.join("b.lvd");
    fs::write(&b, delta(8 * MIB, None, "b", 8, 0xbb)).unwrap();
    // The first apply reads from a pipe and waits for the rest.
    let mut first = command()
        .args(["apply", "-", s(&dest)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = first.stdin.take().unwrap();
    stdin.write_all(&a[..a.len() / 2]).unwrap();
    stdin.flush().unwrap();
    // It has taken its lock once its state says it is applying.
    let state = dir.join("copy.img.lvmsync-state");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&state)
        .unwrap_or_default()
        .contains("applying\": {")
    {
        assert!(Instant::now() < deadline, "the first apply never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = run(&["apply", s(&b), s(&dest)]);
    assert_clean_failure(&second, "another program is writing it (process ");
    assert!(
        stderr(&second).contains("lvmsync-rs apply -"),
        "{}",
        stderr(&second)
    );
    // sync and verify --repair to the same DEST are refused the same way.
    let img = dir.join("other.img");
    fs::write(&img, vec![0xcc; 8 * MIB]).unwrap();
    assert_clean_failure(
        &run(&["sync", "--full", s(&img), s(&dest)]),
        "another program is writing it",
    );
    assert_clean_failure(
        &run(&["verify", "--repair", s(&img), s(&dest)]),
        "another program is writing it",
    );
    stdin.write_all(&a[a.len() / 2..]).unwrap();
    drop(stdin);
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&dest, &vec![0xaa; 8 * MIB], "DEST after the first writer");
    let state = fs::read_to_string(&state).unwrap();
    assert!(
        state.contains("uuid-a") && !state.contains("uuid-b"),
        "{state}"
    );
}

#[test]
fn files_planted_in_a_shared_directory_are_never_followed_or_hung_on() {
    let dir = scratch("safety-planted");
    let victim = dir.join("victim");
    fs::write(&victim, b"keep me").unwrap();
    let d = dir.join("d.lvd");
    fs::write(&d, delta(4 * MIB, None, "a", 2, 0x11)).unwrap();
    let dest = dir.join("copy.img");
    let state = dir.join("copy.img.lvmsync-state");
    fs::write(&dest, vec![0u8; 4 * MIB]).unwrap();

    // A symlink where the state file goes: refused, the victim untouched;
    // with --force the link itself is replaced.
    symlink(&victim, &state).unwrap();
    assert_clean_failure(&run(&["apply", s(&d), s(&dest)]), "symbolic link");
    assert_same(
        &dest,
        &vec![0u8; 4 * MIB],
        "DEST after a planted state link",
    );
    assert_ok(&run(&["apply", "--force", s(&d), s(&dest)]));
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
    assert!(!fs::symlink_metadata(&state)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::read_to_string(&state).unwrap().contains("uuid-a"));

    // A FIFO there: refused at once, not waited on; a link to /dev/zero
    // is not read.
    for (what, make) in [
        (
            "fifo",
            Box::new(|p: &Path| nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap())
                as Box<dyn Fn(&Path)>,
        ),
        (
            "zero",
            Box::new(|p: &Path| symlink("/dev/zero", p).unwrap()),
        ),
    ] {
        fs::remove_file(&state).unwrap();
        make(&state);
        let started = Instant::now();
        let out = run(&["apply", s(&d), s(&dest)]);
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: hung");
        assert_clean_failure(&out, "cannot read the destination's state");
    }
    fs::remove_file(&state).unwrap();

    // send -o onto a planted symlink: the link is replaced, its target
    // untouched; nothing else is left in the directory.
    let c = Change::new(
        scratch("safety-send-link"),
        MIB,
        4096,
        5,
        [(3, Fill::Random)],
    );
    let out = c.path("out.lvd");
    symlink(&victim, &out).unwrap();
    assert_ok(&run(&[
        "send",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "-o",
        s(&out),
    ]));
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
    assert!(fs::symlink_metadata(&out).unwrap().is_file());
    assert_ok(&run(&["inspect", s(&out)]));
    let names: Vec<String> = fs::read_dir(&c.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("partial")), "{names:?}");
}

#[test]
fn dest_is_never_one_of_the_deltas_own_inputs() {
    let c = Change::new(
        scratch("safety-inputs"),
        2 * MIB,
        4096,
        6,
        [(1, Fill::Random), (9, Fill::Text)],
    );
    let cow_before = fs::read(&c.cow_path).unwrap();
    for dest in [&c.cow_path, &c.new_path] {
        let out = run(&[
            "sync",
            "--cow",
            s(&c.cow_path),
            "--data-source",
            s(&c.new_path),
            s(dest),
        ]);
        assert_clean_failure(&out, "writing to it would destroy what is being copied");
    }
    assert_eq!(fs::read(&c.cow_path).unwrap(), cow_before);
    assert_same(&c.new_path, &c.new, "the data source");
    // verify --repair of a file onto itself.
    assert_clean_failure(
        &run(&["verify", "--repair", s(&c.new_path), s(&c.new_path)]),
        "the same device or file",
    );
    // send -o onto a block device.
    let spare = c.path("spare.img");
    fs::write(&spare, vec![9u8; MIB]).unwrap();
    if let Some(dev) = Loop::attach(&spare) {
        assert_clean_failure(
            &run(&[
                "send",
                "--cow",
                s(&c.cow_path),
                "--data-source",
                s(&c.new_path),
                "-o",
                &dev.0,
            ]),
            "is a block device",
        );
        assert_same(&spare, &vec![9u8; MIB], "a block device given to send -o");
    }
}

#[test]
fn hosts_that_read_as_options_and_endless_far_end_lines_are_refused() {
    let c = Change::new(scratch("safety-hosts"), MIB, 4096, 7, [(2, Fill::Random)]);
    for (dest, needle) in [
        ("-oProxyCommand=false:/x", "a host cannot start with '-'"),
        (
            "user@-oProxyCommand=false:/x",
            "a host cannot start with '-'",
        ),
        ("user@:/x", "no host before the ':'"),
        ("@host:/x", "no user before the '@'"),
    ] {
        // After `--`, as a user must write a DEST starting with '-'.
        let out = run(&[
            "sync",
            "--cow",
            s(&c.cow_path),
            "--data-source",
            s(&c.new_path),
            "--",
            dest,
        ]);
        assert_clean_failure(&out, needle);
    }
    // A DEST with an empty user or host is refused before any remote
    // shell is run, by sync and by verify; one starting with ':' is a
    // local path, as for scp.
    let ran = c.path("rsh-ran");
    let rsh = script(&c.path("rsh"), &format!("touch {}\nexit 1", s(&ran)));
    for (dest, needle) in [
        ("user@:/x", "\"user@:/x\": no host before the ':'"),
        ("@host:/x", "\"@host:/x\": no user before the '@'"),
        ("[]:/x", "\"[]:/x\": no host before the ':'"),
        ("user@[]:/x", "no host before the ':'"),
        (":/x", ":/x: no such file; give --create"),
    ] {
        let sync = run(&[
            "sync",
            "-e",
            s(&rsh),
            "--cow",
            s(&c.cow_path),
            "--data-source",
            s(&c.new_path),
            dest,
        ]);
        assert_clean_failure(&sync, needle);
        let verify = run(&["verify", "-e", s(&rsh), s(&c.new_path), dest]);
        assert_clean_failure(
            &verify,
            if dest == ":/x" {
                ":/x: cannot open"
            } else {
                needle
            },
        );
        let status = if dest == ":/x" { [4, 1] } else { [2, 2] };
        assert_eq!(
            [sync.status.code(), verify.status.code()],
            status.map(Some),
            "{dest}"
        );
        assert!(!ran.exists(), "{dest}: the remote shell was run");
    }
    // A far end that prints without ever ending its line.
    let endless = script(
        &c.path("endless-rsh"),
        "#!/bin/sh\nexec tr -d '\\n' < /dev/zero | tr '\\0' x\n",
    );
    let started = Instant::now();
    let out = run(&[
        "sync",
        "-e",
        s(&endless),
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "host:/copy",
    ]);
    assert_clean_failure(&out, "sent a line of more than 64 KiB before its handshake");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_refused_snapback_or_a_bad_delta_for_a_new_dest_changes_nothing() {
    let dir = scratch("safety-preconditions");
    let dest = dir.join("copy.img");
    fs::write(&dest, vec![0u8; 4 * MIB]).unwrap();
    let a = dir.join("a.lvd");
    fs::write(&a, delta(4 * MIB, None, "a", 1, 0x22)).unwrap();
    assert_ok(&run(&["apply", s(&a), s(&dest)]));
    let state = dir.join("copy.img.lvmsync-state");
    let before = fs::read(&state).unwrap();
    // A snapback file that exists: refused, and DEST's state still says
    // it holds point a, so the next correct delta is taken.
    let ab = dir.join("ab.lvd");
    fs::write(&ab, delta(4 * MIB, Some("a"), "b", 2, 0x33)).unwrap();
    let snapback = dir.join("undo.lvd");
    fs::write(&snapback, b"mine").unwrap();
    assert_clean_failure(
        &run(&["apply", "--snapback", s(&snapback), s(&ab), s(&dest)]),
        "already exists",
    );
    assert_eq!(fs::read(&state).unwrap(), before);
    assert_eq!(fs::read(&snapback).unwrap(), b"mine");
    assert_ok(&run(&["apply", s(&ab), s(&dest)]));

    // A DEST made by --create for a delta whose first record is damaged
    // is removed again, as the error says nothing was written.
    let mut bad = delta(4 * MIB, None, "c", 1, 0x44);
    let n = bad.len();
    bad[n - 200] ^= 1;
    let badf = dir.join("bad.lvd");
    fs::write(&badf, &bad).unwrap();
    let new = dir.join("new.img");
    assert_clean_failure(
        &run(&["apply", "--create", s(&badf), s(&new)]),
        "nothing was written",
    );
    assert!(!new.exists());
    assert!(!dir.join("new.img.lvmsync-state").exists());
    // The far end of sync (apply --remote), whose header never arrives
    // whole.
    let mut far = command()
        .args([
            "apply",
            "--remote",
            "--expect-format",
            "2",
            "--create",
            "--",
            "-",
            s(&new),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    far.stdin
        .take()
        .unwrap()
        .write_all(b"not a delta at all")
        .unwrap();
    let out = far.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("LVMSYNC-APPLY "));
    assert!(!new.exists(), "the far end left the file it created");
}

#[test]
fn escape_sequences_from_a_delta_or_a_far_end_never_reach_the_terminal() {
    let dir = scratch("safety-escapes");
    let mut h = image_header(MIB as u64, 4096);
    h.tool = "evil\u{1b}[2J\u{1b}[1;1Hcheck:        whole".into();
    h.properties
        .insert("note\u{9b}31m".into(), "x\ry\u{7}".into());
    let d = dir.join("d.lvd");
    fs::write(&d, delta_bytes(&h, |w| w.data(0, &[1u8; 4096]).unwrap())).unwrap();
    let out = run(&["inspect", s(&d)]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(text.contains("evil\\x1b[2J"), "{text}");
    let dest = dir.join("copy.img");
    fs::write(&dest, vec![0u8; MIB]).unwrap();
    let out = run(&["apply", s(&d), s(&dest)]);
    assert_ok(&out);
    let said = stderr(&out);
    assert!(
        !said.chars().any(|c| c.is_control() && c != '\n'),
        "{said:?}"
    );
    // The far end's stderr and error line.
    let evil = script(
        &dir.join("evil-rsh"),
        "#!/bin/sh\necho 'chatter \u{1b}]0;owned\u{7}' >&2\necho 'lvmsync-rs: error: bad \u{1b}[31mred' >&2\nexit 1\n",
    );
    let c = Change::new(
        scratch("safety-escapes-sync"),
        MIB,
        4096,
        8,
        [(1, Fill::Random)],
    );
    let out = run(&[
        "sync",
        "-e",
        s(&evil),
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "h:/x",
    ]);
    assert_clean_failure(&out, "bad \\x1b[31mred");
    assert!(!stderr(&out).contains('\u{1b}'), "{:?}", stderr(&out));
}

#[test]
fn the_restricted_far_end_runs_only_its_own_sessions_under_its_prefixes() {
    let dir = scratch("safety-serve");
    let allowed = dir.join("copies");
    let outside = dir.join("outside");
    fs::create_dir_all(&allowed).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("secret"), b"keep me").unwrap();
    symlink(outside.join("secret"), allowed.join("link")).unwrap();
    let d = delta(MIB, None, "a", 1, 0x55);
    let serve = |asked: &str, input: &[u8]| {
        let mut child = command()
            .args(["serve", "--restrict-to", s(&allowed)])
            .env("SSH_ORIGINAL_COMMAND", asked)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    };
    let apply = |path: &Path| {
        format!(
            "'lvmsync-rs' 'apply' '--remote' '--expect-format' '2' '--create' '--' '-' '{}'",
            path.display()
        )
    };
    // Allowed: a new file under the prefix.
    let out = serve(&apply(&allowed.join("new.img")), &d);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(
        &allowed.join("new.img"),
        &vec![0x55; MIB],
        "a copy made through serve",
    );
    // Refused: outside, through '..', through a symlink, another command,
    // nothing at all.
    for (asked, needle) in [
        (
            apply(&outside.join("x.img")),
            "resolves outside the prefixes",
        ),
        (
            apply(&allowed.join("../outside/secret")),
            "'..' is never allowed",
        ),
        (
            apply(&allowed.join("link")),
            "resolves outside the prefixes",
        ),
        (
            "lvmsync-rs list vg/x".to_string(),
            "this key only runs the far end",
        ),
        (
            "sh -c 'touch /tmp/x'".to_string(),
            "this key only runs the far end",
        ),
        (
            format!(
                "lvmsync-rs apply {} {}",
                "-",
                allowed.join("y.img").display()
            ),
            "this key only runs the far end",
        ),
    ] {
        let out = serve(&asked, &d);
        assert_clean_failure(&out, needle);
    }
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"keep me");
    assert!(!outside.join("x.img").exists());
    let out = command()
        .args(["serve", "--restrict-to", s(&allowed)])
        .env_remove("SSH_ORIGINAL_COMMAND")
        .output()
        .unwrap();
    assert_clean_failure(&out, "no command");

    // Through a real sshd with the key's forced command: a sync lands
    // under the prefix, one outside is refused with serve's reason.
    let sshd = Sshd::start(&dir.join("sshd"));
    let key = dir.join("restricted_key");
    keygen(&key);
    let mut authorized = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("sshd/authorized_keys"))
        .unwrap();
    writeln!(
        authorized,
        "command=\"{} serve --restrict-to {}\",restrict {}",
        bin().display(),
        allowed.display(),
        fs::read_to_string(key.with_extension("pub"))
            .unwrap()
            .trim()
    )
    .unwrap();
    drop(authorized);
    let c = Change::new(
        scratch("safety-serve-sync"),
        MIB,
        4096,
        9,
        [(4, Fill::Random)],
    );
    let rsh = sshd.rsh_with(&key);
    let ok = run(&[
        "sync",
        "-e",
        &rsh,
        "--full",
        "--create",
        s(&c.new_path),
        &format!("{HOST}:{}", allowed.join("synced.img").display()),
    ]);
    assert_ok(&ok);
    assert_same(
        &allowed.join("synced.img"),
        &c.new,
        "a sync through the restricted key",
    );
    let refused = run(&[
        "sync",
        "-e",
        &rsh,
        "--full",
        "--create",
        s(&c.new_path),
        &format!("{HOST}:{}", outside.join("synced.img").display()),
    ]);
    assert_clean_failure(&refused, "resolves outside the prefixes");
    assert!(!outside.join("synced.img").exists());
}

#[test]
fn a_block_devices_state_is_named_after_the_disk_not_its_kernel_name() {
    let dir = scratch("safety-loop-state");
    let file = dir.join("disk.img");
    fs::write(&file, vec![0u8; 2 * MIB]).unwrap();
    let Some(dev) = Loop::attach(&file) else {
        eprintln!("no loop devices here: skipped");
        return;
    };
    let states = dir.join("states");
    let d = dir.join("d.lvd");
    fs::write(&d, delta(2 * MIB, None, "a", 1, 0x66)).unwrap();
    let out = command()
        .args(["apply", s(&d), &dev.0])
        .env("LVMSYNC_STATE_DIR", &states)
        .output()
        .unwrap();
    assert_ok(&out);
    let names: Vec<String> = fs::read_dir(&states)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let kernel = Path::new(&dev.0)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with("loop-") && !names[0].starts_with(&format!("{kernel}.")),
        "{names:?}"
    );
}
