//! What an operator reads and types: the usage lines of --help, a
//! mistyped subcommand, and durations and sizes as people write them.

use std::fs;

use crate::common::images::{Change, Fill};
use crate::common::{
    assert_clean_failure, assert_ok, assert_usage_errors, command, json, run, s, scratch, script,
    stderr, stdout,
};

const MIB: usize = 1 << 20;

/// The `Usage:` lines of a help text or usage error, each trimmed.
fn usage_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Usage: ") {
            inside = true;
            lines.push(rest.trim().to_string());
        } else if inside && line.starts_with("       ") {
            lines.push(line.trim().to_string());
        } else {
            inside = false;
        }
    }
    lines
}

#[test]
fn usage_lines_name_each_form_of_a_command() {
    let help = |args: &[&str]| {
        let out = run(args);
        assert_ok(&out);
        stdout(&out)
    };
    let sync = help(&["sync", "--help"]);
    assert_eq!(
        usage_lines(&sync),
        [
            "lvmsync-rs sync [OPTIONS] SNAPSHOT DEST",
            "lvmsync-rs sync --full [OPTIONS] SOURCE DEST",
            "lvmsync-rs sync [OPTIONS] --cow PATH --data-source PATH DEST",
            "lvmsync-rs sync [OPTIONS] --thin-metadata PATH --thin1 ID --thin2 ID --data-source PATH DEST",
            "lvmsync-rs SNAPSHOT DEST",
        ]
    );
    assert!(!sync.contains("..."), "no argument repeats: {sync}");
    assert!(sync.contains("Copy all of SOURCE"), "{sync}");
    let verify = help(&["verify", "--help"]);
    assert_eq!(
        usage_lines(&verify),
        ["lvmsync-rs verify [OPTIONS] SRC DEST"]
    );
    assert!(!verify.contains("..."), "{verify}");
    let list = help(&["list", "--help"]);
    assert_eq!(
        usage_lines(&list),
        [
            "lvmsync-rs list [OPTIONS] SNAPSHOT",
            "lvmsync-rs list [OPTIONS] --cow PATH [--origin-size BYTES]",
            "lvmsync-rs list [OPTIONS] --thin-metadata PATH --thin1 ID --thin2 ID [--origin-size BYTES]",
        ]
    );
    let send = help(&["send", "--help"]);
    assert_eq!(
        usage_lines(&send)[0],
        "lvmsync-rs send [OPTIONS] SNAPSHOT -o FILE|-"
    );
    assert!(usage_lines(&send)[1].contains("--cow PATH --data-source PATH"));

    // --timeout: sync's help speaks of the delta sent; verify's of the
    // comparison, and of the delta only with --repair.
    let timeout = |help: &str| {
        let at = help
            .find("--timeout <DURATION>")
            .expect("--timeout is listed");
        help[at..].lines().next().unwrap().to_string()
    };
    assert!(
        timeout(&sync).contains("then, while the delta is sent"),
        "{}",
        timeout(&sync)
    );
    assert!(
        !timeout(&verify).contains("while the delta is sent"),
        "{}",
        timeout(&verify)
    );
    assert!(timeout(&verify).contains("with --repair"));
}

#[test]
fn a_usage_error_found_after_parsing_shows_its_own_command() {
    let c = Change::new(
        scratch("help-send-usage"),
        MIB,
        4096,
        3,
        [(1, Fill::Random)],
    );
    let out = run(&[
        "send",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("-o FILE, or -o - for stdout"), "{err}");
    assert!(
        usage_lines(&err)
            .first()
            .is_some_and(|l| l.starts_with("lvmsync-rs send ")),
        "send's usage, not the top level's: {err}"
    );
    assert!(out.stdout.is_empty());
    // sync --full names SOURCE, as its usage does.
    let out = run(&["sync", "--full", s(&c.new_path)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("name a SOURCE and a DEST"),
        "{}",
        stderr(&out)
    );
    assert!(
        usage_lines(&stderr(&out))[0].starts_with("lvmsync-rs sync "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_mistyped_subcommand_is_named_with_the_one_meant() {
    let dir = scratch("help-typos");
    for (word, meant) in [
        ("lsit", "list"),
        ("snyc", "sync"),
        ("verfy", "verify"),
        ("aply", "apply"),
        ("LIST", "list"),
        ("bakcup", "backup"),
        ("restroe", "restore"),
        ("archvie", "archive"),
        ("inspcet", "inspect"),
    ] {
        let out = command()
            .args([word, "vg/snap"])
            .current_dir(&*dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{word}: {}", stderr(&out));
        assert_eq!(
            stderr(&out),
            format!("lvmsync-rs: error: unknown command '{word}'; did you mean '{meant}'?\n")
        );
        assert!(out.stdout.is_empty(), "{word}");
    }
    // What could be a snapshot is still the shorthand for sync: a file or
    // a path that exists, a name with '/' or ':', a word far from every
    // subcommand.
    fs::write(dir.join("lsit"), b"a file called lsit").unwrap();
    for (args, needle) in [
        (
            &["lsit", "backup:/x"][..],
            "lsit: a regular file, not an LVM snapshot",
        ),
        (&["snyc/x", "backup:/x"][..], "snyc/x: no such device"),
        (
            &["vg0", "backup:/x"][..],
            "vg0: no such device (/dev/mapper/vg0)",
        ),
    ] {
        let out = command().args(args).current_dir(&*dir).output().unwrap();
        assert_clean_failure(&out, needle);
    }
}

#[test]
fn durations_take_units_and_sizes_take_fractions() {
    let c = Change::new(scratch("help-units"), MIB, 4096, 5, [(3, Fill::Random)]);
    // A far end that says nothing: --timeout 1s gives up after a second.
    let silent = script(&c.path("silent"), "exec sleep 30");
    let started = std::time::Instant::now();
    let out = run(&[
        "sync",
        "-e",
        s(&silent),
        "--timeout",
        "1s",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "host:/x",
    ]);
    assert_clean_failure(&out, "no handshake within 1 s");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // Minutes and hours are taken (a far end that fails at once).
    let fails = script(&c.path("fails"), "exit 255");
    for timeout in ["5m", "1h", "90"] {
        let out = run(&[
            "sync",
            "-e",
            s(&fails),
            "--timeout",
            timeout,
            "--progress-every",
            "2m",
            "--cow",
            s(&c.cow_path),
            "--data-source",
            s(&c.new_path),
            "host:/x",
        ]);
        assert_eq!(out.status.code(), Some(6), "{timeout}: {}", stderr(&out));
    }
    let (cow, new) = (s(&c.cow_path), s(&c.new_path));
    assert_usage_errors(&[
        (
            &[
                "sync",
                "--timeout",
                "0",
                "--cow",
                cow,
                "--data-source",
                new,
                "h:/x",
            ],
            "at least one second",
        ),
        (
            &[
                "sync",
                "--timeout",
                "5x",
                "--cow",
                cow,
                "--data-source",
                new,
                "h:/x",
            ],
            "unknown unit",
        ),
        (
            &[
                "sync",
                "--timeout",
                "1.5m",
                "--cow",
                cow,
                "--data-source",
                new,
                "h:/x",
            ],
            "not a duration",
        ),
        (
            &["apply", "--progress-every", "0s", cow, new],
            "at least one second",
        ),
        (
            &["list", "--cow", cow, "--origin-size", "1.1k"],
            "not a whole number of bytes",
        ),
        (
            &["list", "--cow", cow, "--origin-size", "1,5G"],
            "not a size in bytes",
        ),
        (
            &["verify", "--block-size", "1.5M", new, new],
            "not a power of two",
        ),
    ]);
    // 0.5M is 524288 bytes, written as a fraction.
    let listing = json(&run(&[
        "list",
        "--json",
        "--cow",
        cow,
        "--origin-size",
        "0.5M",
    ]));
    assert_eq!(listing["origin_size"], 512 * 1024);
    let listing = json(&run(&[
        "list",
        "--json",
        "--cow",
        cow,
        "--origin-size",
        "1.0M",
    ]));
    assert_eq!(listing["origin_size"], MIB as u64);
    let verified = json(&run(&[
        "verify",
        "--json",
        "--block-size",
        "0.5M",
        new,
        new,
    ]));
    assert_eq!(verified["block_size"], 512 * 1024);
}
