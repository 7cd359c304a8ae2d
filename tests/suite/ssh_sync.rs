//! `lvmsync-rs sync` over real OpenSSH: each test starts its own sshd on
//! 127.0.0.1 (tests/suite/common/sshd.rs) and ships a delta between images
//! made here to `root@127.0.0.1:DEST`, with this build as the remote
//! lvmsync-rs.
//! Failures (a missing remote binary, a refused login, a DEST that cannot be
//! opened, a connection cut midway, another format version) must end within
//! seconds with one clear line, and the same command again must complete the
//! sync.

use std::fs;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::images::{Change, Fill};
use crate::common::sshd::{self, Sshd, HOST};
use crate::common::*;
use lvmsync::cowgen::Rng;

const CHUNK: u64 = 4096;

/// An sshd, an old image, a new one, and the COW image of their difference.
struct Fixture {
    sshd: Sshd,
    change: Change,
}

impl Deref for Fixture {
    type Target = Change;
    fn deref(&self) -> &Change {
        &self.change
    }
}

impl Fixture {
    /// A 24 MiB origin; changed: 16 MiB of random data in runs spread over
    /// it (so the delta does not fit in the pipes and buffers on the way),
    /// text, and zeroes.
    fn new(name: &str) -> Fixture {
        let dir = scratch(name);
        let sshd = Sshd::start(&dir.join("sshd"));
        let size = 24usize << 20;
        let changes = (0..size as u64 / CHUNK).filter_map(|c| match c % 12 {
            0..=7 => Some((c, Fill::Random)),
            8 => Some((c, Fill::Text)),
            9 => Some((c, Fill::Zero)),
            _ => None,
        });
        let change = Change::new(dir, size, CHUNK, 0x9e37_79b9_7f4a_7c15, changes);
        Fixture { sshd, change }
    }

    /// An executable script in the test's directory.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        script(&self.path(name), body)
    }

    /// `lvmsync-rs sync --cow ... --data-source ... -e SSH --remote-path
    /// BIN` plus `extra`, then DEST.
    fn sync_with(&self, rsh: &str, remote_path: &str, extra: &[&str], dest: &str) -> Output {
        let mut args: Vec<String> = [
            "sync",
            "--cow",
            s(&self.cow_path),
            "--data-source",
            s(&self.new_path),
            "-e",
            rsh,
            "--remote-path",
            remote_path,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(dest.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    }

    fn sync(&self, extra: &[&str], dest: &str) -> Output {
        self.sync_with(&self.sshd.rsh(), s(&bin()), extra, dest)
    }

    fn assert_synced(&self, path: &Path) {
        assert_same(
            path,
            &self.new,
            &format!("{} against the new image", path.display()),
        );
    }
}

/// Runs `f`, checks it failed cleanly with `needle` within 30 s.
fn fails_quickly(needle: &str, f: impl FnOnce() -> Output) -> Output {
    let t = Instant::now();
    let o = f();
    let took = t.elapsed();
    assert!(took < Duration::from_secs(30), "{needle:?}: took {took:?}");
    if let Err(why) = clean_failure(&o, needle) {
        panic!("{needle:?}: {why}");
    }
    o
}

#[test]
fn a_sync_over_ssh_makes_the_copy_equal_to_the_new_image() {
    let f = Fixture::new("ssh-sync-basic");
    let copy = f.copy_of_old("copy.img");
    let o = f.sync(&[], &format!("{HOST}:{}", s(&copy)));
    assert_ok(&o);
    f.assert_synced(&copy);
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(err.starts_with("lvmsync-rs sync: "), "{err}");
    assert!(err.contains("applied and checked there"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Again, uncompressed, with a summary object and no summary line.
    let copy = f.copy_of_old("copy.img");
    let o = f.sync(
        &["--compress", "none", "--json", "-q"],
        &format!("{HOST}:{}", s(&copy)),
    );
    assert_ok(&o);
    f.assert_synced(&copy);
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    let doc = strict_json(&stdout(&o)).unwrap();
    assert_eq!(doc["result"], "ok");
    assert_eq!(doc["remote_host"], HOST);
    let changed = (24u64 << 20) / 12 * 10;
    assert_eq!(doc["bytes_read"], changed);
    assert!(doc["bytes_on_wire"].as_u64().unwrap() > (24u64 << 20) / 12 * 9);
    assert!(doc["records"].as_u64().unwrap() > 0);
    assert!(doc["seconds"].as_f64().is_some());
    assert!(doc["error"].is_null());
}

#[test]
fn the_short_form_and_create_and_a_local_destination() {
    let f = Fixture::new("ssh-sync-forms");
    // `lvmsync-rs [options] DEST` means sync; --create makes the file.
    let dest = f.path("made.img");
    let o = run(&[
        "--cow",
        s(&f.cow_path),
        "--data-source",
        s(&f.new_path),
        "-e",
        &f.sshd.rsh(),
        "--remote-path",
        s(&bin()),
        "--create",
        &format!("{HOST}:{}", s(&dest)),
    ]);
    assert_ok(&o);
    let got = fs::read(&dest).unwrap();
    assert_eq!(got.len(), f.new.len());
    // The old image's unchanged chunks are not in the delta: compare the
    // changed ones only, by applying the same delta to a copy of the old.
    let copy = f.copy_of_old("copy.img");
    let o = f.sync(&[], &format!("{HOST}:{}", s(&copy)));
    assert_ok(&o);
    f.assert_synced(&copy);

    // Without --create, a missing DEST is refused by the remote.
    let missing = f.path("missing.img");
    fails_quickly("no such file; give --create", || {
        f.sync(&[], &format!("{HOST}:{}", s(&missing)))
    });
    assert!(!missing.exists());

    // A local DEST (with a `:` in its name) is applied here, without ssh.
    let local = f.copy_of_old("a:b.img");
    let o = f.sync_with(
        "/nonexistent/ssh",
        "/nonexistent/lvmsync-rs",
        &[],
        s(&local),
    );
    assert_ok(&o);
    f.assert_synced(&local);
}

#[test]
fn a_destination_with_shell_syntax_is_only_a_path() {
    let f = Fixture::new("ssh-sync-quoting");
    let land = f.path("land");
    fs::create_dir(&land).unwrap();
    // The remote command runs in `land`, so a relative DEST lands there.
    let wrapper = f.script(
        "in-land",
        &format!("cd '{}' || exit 1\nexec '{}' \"$@\"", s(&land), s(&bin())),
    );
    let names = [
        "a b;$(touch pwned)'x\"`touch pwned2`",
        "-x; touch pwned3",
        "--create",
    ];
    for name in names {
        fs::write(land.join(name), &f.old).unwrap();
        let o = f.sync_with(&f.sshd.rsh(), s(&wrapper), &[], &format!("{HOST}:{name}"));
        assert_ok(&o);
        f.assert_synced(&land.join(name));
    }
    // An absolute path with the same characters.
    let abs = land.join("$HOME 'q' \\ *");
    fs::write(&abs, &f.old).unwrap();
    let o = f.sync(&[], &format!("{HOST}:{}", s(&abs)));
    assert_ok(&o);
    f.assert_synced(&abs);
    let mut found: Vec<String> = fs::read_dir(&land)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.push("$HOME 'q' \\ *".into());
    want.sort();
    assert_eq!(found, want);
    for p in ["pwned", "pwned2", "pwned3"] {
        assert!(!Path::new("/root").join(p).exists());
        assert!(!f.dir.join(p).exists());
    }
}

#[test]
fn a_missing_remote_binary_or_a_refused_login_ends_at_once() {
    let f = Fixture::new("ssh-sync-connect");
    let copy = f.copy_of_old("copy.img");
    let dest = format!("{HOST}:{}", s(&copy));
    let other_key = f.path("other_key");
    sshd::keygen(&other_key);
    let (rsh, other_rsh, bin) = (f.sshd.rsh(), f.sshd.rsh_with(&other_key), bin());
    // The remote shell, the remote lvmsync-rs, the error, and more that
    // its line must say.
    let cases: [(&str, &str, &str, &[&str]); 3] = [
        (
            &rsh,
            "/nonexistent/lvmsync-rs",
            "was not found or cannot be run (exit status 127)",
            &["/nonexistent/lvmsync-rs: ", "--remote-path"],
        ),
        // A key the server does not know.
        (
            &other_rsh,
            s(&bin),
            "could not connect or log in (exit status 255)",
            &["Permission denied"],
        ),
        // No remote shell at all.
        (
            "/nonexistent/ssh -p 1",
            s(&bin),
            "cannot run /nonexistent/ssh",
            &[],
        ),
    ];
    for (rsh, remote_path, needle, also) in cases {
        let o = fails_quickly(needle, || f.sync_with(rsh, remote_path, &[], &dest));
        for text in also {
            assert!(stderr(&o).contains(text), "{needle:?}: {}", stderr(&o));
        }
    }

    // With --json, the summary object says what failed.
    let o = f.sync_with(&rsh, "/nonexistent/lvmsync-rs", &["--json"], &dest);
    // The far program is missing: unreachable, exit 6.
    assert_eq!(o.status.code(), Some(6));
    let doc = strict_json(&stdout(&o)).unwrap();
    assert_eq!(doc["result"], "failed");
    assert_eq!(doc["remote_host"], HOST);
    assert_eq!(doc["bytes_on_wire"], 0);
    assert!(
        doc["error"].as_str().unwrap().contains("was not found"),
        "{doc}"
    );

    // Nothing was written; the same command with what was missing works.
    assert_same(&copy, &f.old, "the untouched copy");
    assert_ok(&f.sync(&[], &dest));
    f.assert_synced(&copy);
}

#[test]
fn a_destination_that_cannot_be_opened_is_refused_before_any_data() {
    let f = Fixture::new("ssh-sync-dest");
    let dir = f.path("a-directory");
    fs::create_dir(&dir).unwrap();
    let o = fails_quickly("the apply refused: ", || {
        f.sync(&[], &format!("{HOST}:{}", s(&dir)))
    });
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    assert!(stderr(&o).contains(HOST), "{}", stderr(&o));

    let nowhere = f.path("no-such-dir/copy.img");
    let o = fails_quickly("cannot open: No such file or directory", || {
        f.sync(&["--create"], &format!("{HOST}:{}", s(&nowhere)))
    });
    assert!(
        stderr(&o).contains("no-such-dir/copy.img"),
        "{}",
        stderr(&o)
    );
    fs::create_dir(f.path("no-such-dir")).unwrap();
    assert_ok(&f.sync(&["--create"], &format!("{HOST}:{}", s(&nowhere))));
    assert_eq!(fs::read(&nowhere).unwrap().len(), f.new.len());
}

#[test]
fn a_connection_cut_midway_fails_and_a_rerun_completes_the_sync() {
    let f = Fixture::new("ssh-sync-cut");
    let copy = f.copy_of_old("copy.img");
    let dest = format!("{HOST}:{}", s(&copy));
    // The remote apply is killed (SIGXFSZ) when it first writes past 4 MiB
    // of DEST, with most of the delta still to come.
    let killed = f.script(
        "killed-at-4m",
        &format!("ulimit -f 4096\nexec '{}' \"$@\"", s(&bin())),
    );
    let o = fails_quickly(HOST, || f.sync_with(&f.sshd.rsh(), s(&killed), &[], &dest));
    let err = stderr(&o);
    eprintln!("killed: {err}");
    assert!(
        err.contains("the connection ended after") || err.contains("the apply failed"),
        "{err}"
    );
    assert!(err.contains("run the same command again"), "{err}");
    assert_ne!(fs::read(&copy).unwrap(), f.new);

    // The remote's stdin is cut after 3 MiB: it stops at a truncated delta.
    let cut = f.script(
        "cut-at-3m",
        &format!("head -c 3145728 | '{}' \"$@\"", s(&bin())),
    );
    let o = fails_quickly(HOST, || f.sync_with(&f.sshd.rsh(), s(&cut), &[], &dest));
    let err = stderr(&o);
    eprintln!("cut: {err}");
    assert!(
        err.contains("truncated: the delta ends at byte 3145728"),
        "{err}"
    );

    let o = f.sync(&[], &dest);
    assert_ok(&o);
    f.assert_synced(&copy);
}

#[test]
fn a_remote_of_another_version_is_refused_on_both_sides() {
    let f = Fixture::new("ssh-sync-version");
    let copy = f.copy_of_old("copy.img");
    let dest = format!("{HOST}:{}", s(&copy));
    // The sender's check: the remote claims format version 99.
    // What it receives is kept: nothing may come before a good hello.
    let received = f.path("received");
    let other = f.script(
        "other-version",
        &format!(
            ": > '{r}'\necho 'LVMSYNC-APPLY 1 99 0'\ncat >> '{r}'",
            r = s(&received)
        ),
    );
    let o = fails_quickly("protocol 1 and delta format version 99", || {
        f.sync_with(&f.sshd.rsh(), s(&other), &[], &dest)
    });
    assert!(stderr(&o).contains("install the same version on both hosts"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        fs::read(&received).unwrap(),
        b"",
        "data was sent before the hello"
    );
    // Remotes that are not the apply the sync needs: the error the sync
    // must end with (within 30 s), more that its line must say, and how
    // long it must take.
    struct Remote<'a> {
        name: &'a str,
        script: String,
        options: &'a [&'a str],
        error: &'a str,
        also: &'a [&'a str],
        took: Range<Duration>,
    }
    let hello = format!(
        "echo 'LVMSYNC-APPLY {} {} 0 -'",
        lvmsync::ship::PROTOCOL,
        // What an lz4 delta (the default) is written in.
        lvmsync::stream::Compression::Lz4.version()
    );
    let secs = Duration::from_secs;
    let timeout: &[&str] = &["--timeout", "2"];
    let remotes = [
        // A remote that never answers: the wait for the hello ends.
        Remote {
            name: "never-answers",
            script: "exec cat >/dev/null".into(),
            options: timeout,
            error: "no handshake within 2 s",
            also: &[],
            took: Duration::ZERO..secs(10),
        },
        // A remote that answers, then stops reading: the run stops once
        // no data went through for the timeout.
        Remote {
            name: "stops-reading",
            script: format!("{hello}\nexec sleep 600"),
            options: timeout,
            error: "the remote took no data for 2 s after",
            also: &[],
            took: Duration::ZERO..secs(15),
        },
        // A remote that takes the whole delta, then says nothing: the
        // wait for its report ends.
        Remote {
            name: "hangs-at-the-end",
            script: format!("{hello}\ncat >/dev/null\nexec sleep 600"),
            options: timeout,
            error: "the remote said nothing for 2 s after the whole delta was sent",
            also: &[],
            took: Duration::ZERO..secs(15),
        },
        // One that says it is alive while it finishes is waited for past
        // the timeout, and its own failure is the reason.
        Remote {
            name: "slow-at-the-end",
            script: format!(
                "{hello}\ncat >/dev/null\nfor i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do echo {}; sleep 0.25; done\necho 'lvmsync-rs: error: DEST: the disk is on fire' >&2\nexit 1",
                lvmsync::ship::ALIVE
            ),
            options: timeout,
            error: "the disk is on fire",
            also: &[],
            took: secs(4)..Duration::MAX,
        },
        Remote {
            name: "other-protocol",
            script: "echo 'LVMSYNC-APPLY 7 1 0'\ncat >/dev/null".into(),
            options: &[],
            error: "speaks protocol 7",
            also: &[],
            took: Duration::ZERO..Duration::MAX,
        },
        // Something that is no lvmsync-rs at all: what it said, on stdout
        // and on stderr, is the reason.
        Remote {
            name: "no-lvmsync",
            script: "echo 'something else'\necho 'it failed' >&2\nexit 3".into(),
            options: &[],
            error: "ended before the handshake (exit status 3): ",
            also: &["something else", "it failed"],
            took: Duration::ZERO..Duration::MAX,
        },
    ];
    for r in remotes {
        let remote = f.script(r.name, &r.script);
        let t = Instant::now();
        let o = fails_quickly(r.error, || {
            f.sync_with(&f.sshd.rsh(), s(&remote), r.options, &dest)
        });
        let took = t.elapsed();
        assert!(r.took.contains(&took), "{}: took {took:?}", r.name);
        for text in r.also {
            assert!(stderr(&o).contains(text), "{}: {}", r.name, stderr(&o));
        }
    }
    assert_same(&copy, &f.old, "the untouched copy");

    // The remote's check: a sender writing format version 99.
    let o = command()
        .args(["apply", "--remote", "--expect-format", "99", "--", "-"])
        .arg(&copy)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_clean_failure(
        &o,
        "the sender writes delta format version 99, but this lvmsync-rs",
    );
    // The hello a current sender gets.
    let o = command()
        .args(["apply", "--remote", "--expect-format"])
        .arg(lvmsync::stream::VERSION.to_string())
        .args(["--", "-"])
        .arg(&copy)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "LVMSYNC-APPLY {} {} {} -\n",
            lvmsync::ship::PROTOCOL,
            lvmsync::stream::VERSION,
            f.old.len()
        )
    );
    // No delta came: damaged (empty) input, exit 5.
    assert_eq!(o.status.code(), Some(5));
}

#[test]
fn the_remote_report_must_match_what_was_sent() {
    let f = Fixture::new("ssh-sync-report");
    let copy = f.copy_of_old("copy.img");
    let dest = format!("{HOST}:{}", s(&copy));
    let b = s(&bin()).to_string();
    let liar = f.script(
        "liar",
        &format!("'{b}' \"$@\" | sed -u 's/\"records\":[0-9]*/\"records\":1/'"),
    );
    fails_quickly("the apply reports records 1, but", || {
        f.sync_with(&f.sshd.rsh(), s(&liar), &[], &dest)
    });
    let mute = f.script(
        "mute",
        &format!("'{b}' \"$@\" | grep --line-buffered -v LVMSYNC-APPLIED"),
    );
    fails_quickly("ended without reporting what it applied", || {
        f.sync_with(&f.sshd.rsh(), s(&mute), &[], &dest)
    });
    // Remote stderr lines that are not errors come back with the host name.
    let chatty = f.script(
        "chatty",
        &format!("echo 'hello from the backup host' >&2\nexec '{b}' \"$@\""),
    );
    let o = f.sync_with(&f.sshd.rsh(), s(&chatty), &[], &dest);
    assert_ok(&o);
    assert!(
        stderr(&o).contains(&format!("{HOST}: hello from the backup host")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_full_copy_seeds_a_new_copy_with_holes_and_overwrites_an_old_one() {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::new("ssh-sync-full");
    // 8 MiB of data, 16 MiB of zeroes, 4 MiB of data.
    let mut image = vec![0u8; 28 << 20];
    Rng(7).fill(&mut image[..8 << 20]);
    Rng(8).fill(&mut image[24 << 20..]);
    let src = f.path("src.img");
    fs::write(&src, &image).unwrap();
    let full = |dest: &Path, extra: &[&str]| {
        let mut args = vec!["sync", "--full", "--json", "-q", "-e"];
        let rsh = f.sshd.rsh();
        args.push(&rsh);
        let program = bin();
        args.extend(["--remote-path", s(&program)]);
        args.extend_from_slice(extra);
        let d = format!("{HOST}:{}", s(dest));
        args.extend([s(&src), d.as_str()]);
        run(&args)
    };
    // A new copy: equal, and the zeroes are holes, not sent as data.
    let copy = f.path("seed.img");
    let o = full(&copy, &["--create"]);
    let doc = json(&o);
    assert_same(&copy, &image, "the seeded copy");
    assert_eq!(doc["zero_bytes"], 16u64 << 20);
    assert!(doc["bytes_on_wire"].as_u64().unwrap() < 13 << 20, "{doc}");
    let allocated = fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(allocated < 14 << 20, "{allocated} bytes allocated");
    // An old copy full of other data: every byte is overwritten.
    let old = f.copy_of_old("old.img");
    let o = full(&old, &[]);
    json(&o);
    assert_same(&old, &image, "the overwritten copy");
}

/// `--bwlimit`: a sync of 4 MiB of random data at 2 MiB/s takes about two
/// seconds (less at most a quarter-second burst), and lands intact; a
/// nonsense rate is a usage error.
#[test]
fn a_bandwidth_limit_holds_the_rate_down() {
    let dir = scratch("bwlimit");
    let src = dir.join("src.img");
    let content = crate::common::images::random(4 << 20, 21);
    std::fs::write(&src, &content).unwrap();
    let dest = dir.join("copy.img");
    let started = std::time::Instant::now();
    let out = run(&[
        "sync",
        "--json",
        "--bwlimit",
        "2M",
        "--compress",
        "none",
        "--full",
        s(&src),
        s(&dest),
        "--create",
    ]);
    let secs = started.elapsed().as_secs_f64();
    assert_ok(&out);
    assert_same(&dest, &content, "the copy sent at 2 MiB/s");
    assert!(secs >= 1.6, "4 MiB at 2 MiB/s took {secs:.2} s");
    assert_usage_errors(&[
        (
            &["sync", "--bwlimit", "fast", "--full", s(&src), s(&dest)],
            "not a rate",
        ),
        (
            &["sync", "--bwlimit", "0", "--full", s(&src), s(&dest)],
            "at least 1 KiB/s",
        ),
    ]);
}
