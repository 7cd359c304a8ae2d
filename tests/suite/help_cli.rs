//! What an operator reads and types: the usage lines of --help, a
//! mistyped subcommand, durations and sizes as people write them, and the
//! manual pages and shell completions made from the same definitions.

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

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

/// The subcommands `lvmsync-rs --help` lists (but help).
fn subcommands() -> Vec<String> {
    let out = run(&["--help"]);
    assert_ok(&out);
    let text = stdout(&out);
    let list = text
        .split("Commands:\n")
        .nth(1)
        .expect("--help lists the commands");
    let names: Vec<String> = list
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&n| n != "help")
        .map(String::from)
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    names
}

/// Whether groff is installed, to format pages with.
fn groff() -> bool {
    Command::new("groff").arg("--version").output().is_ok()
}

/// Checks one page: its title and sections; formatted by groff when it is
/// installed, which must not warn.
#[track_caller]
fn check_page(name: &str, text: &str) {
    let title = name
        .strip_suffix(".1")
        .unwrap()
        .to_uppercase()
        .replace('-', "\\-");
    assert!(
        text.contains(&format!(".TH {title} 1 ")),
        "{name}: no title line {title}"
    );
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH DESCRIPTION",
        ".SH \"SEE ALSO\"",
    ] {
        assert!(text.contains(section), "{name}: no {section}");
    }
    if groff() {
        let dir = scratch(&format!("help-groff-{name}"));
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{name}: groff: {}",
            stderr(&out)
        );
    }
}

#[test]
fn man_pages_are_made_for_every_subcommand() {
    let dir = scratch("help-man");
    let pages = dir.join("man1");
    let out = run(&["man", s(&pages)]);
    assert_ok(&out);
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("wrote lvmsync-rs.1"),
        "{}",
        stderr(&out)
    );
    let written: BTreeSet<String> = fs::read_dir(&pages)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut want: BTreeSet<String> = subcommands()
        .iter()
        .map(|c| format!("lvmsync-rs-{c}.1"))
        .collect();
    want.insert("lvmsync-rs.1".into());
    for sub in ["init", "key", "key-export", "list", "check", "prune"] {
        want.insert(format!("lvmsync-rs-archive-{sub}.1"));
    }
    want.insert("lvmsync-rs-key-new.1".into());
    assert_eq!(written, want);
    for name in &written {
        check_page(name, &fs::read_to_string(pages.join(name)).unwrap());
    }
    // The main page: every exit status, and each subcommand's page named.
    let main = fs::read_to_string(pages.join("lvmsync-rs.1")).unwrap();
    let exit = main
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .expect("an EXIT STATUS section");
    let exit = exit.split("\n.SH ").next().unwrap();
    for status in [
        "0",
        "1 (failed)",
        "2 (usage)",
        "3 (differ)",
        "4 (refused)",
        "5 (damaged)",
        "6 (unreachable)",
        "7 (interrupted)",
        "8 (source)",
    ] {
        assert!(
            exit.contains(&format!(".TP\n{status}\n")),
            "{status} in {exit}"
        );
    }
    for sub in subcommands() {
        assert!(main.contains(&format!("lvmsync\\-rs\\-{sub}(1)")), "{sub}");
    }
    // A subcommand's page: its forms, its options, its examples.
    let sync = fs::read_to_string(pages.join("lvmsync-rs-sync.1")).unwrap();
    assert!(
        sync.contains("\\fBlvmsync\\-rs sync\\fR \\-\\-full [OPTIONS] SOURCE DEST"),
        "{sync}"
    );
    assert!(sync.contains("\\-\\-timeout"), "{sync}");
    assert!(sync.contains(".nf\nlvmsync\\-rs vg/root\\-snap backup:/dev/vg/root\\-copy\n"));
    // Without DIR: the main page on stdout, as the file holds it.
    let out = run(&["man"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), main);
    // A DIR that cannot be made.
    let file = dir.join("file");
    fs::write(&file, b"x").unwrap();
    assert_clean_failure(&run(&["man", s(&file.join("man1"))]), "cannot create");
}

#[test]
fn shell_completions_know_the_subcommands() {
    let dir = scratch("help-completions");
    let out = run(&["completions", "bash"]);
    assert_ok(&out);
    let bash = stdout(&out);
    for sub in subcommands() {
        assert!(bash.contains(&sub), "{sub} in the bash completion");
    }
    let path = dir.join("lvmsync-rs.bash");
    fs::write(&path, &bash).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", stderr(&check));
    // Completing in bash, as the Tab key does.
    let complete = |words: &str| {
        let script = format!(
            "source {}\nCOMP_WORDS=({words})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
             _lvmsync__rs lvmsync-rs \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            s(&path)
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{words}: {}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(complete("lvmsync-rs ver").trim(), "verify");
    // Past a subcommand too (clap_complete's own script completes nothing
    // there for a program whose name has a '-').
    assert_eq!(complete("lvmsync-rs sync --ful").trim(), "--full");
    assert_eq!(
        complete("lvmsync-rs archive prune --keep-l").trim(),
        "--keep-last"
    );
    for (shell, start) in [
        ("zsh", "#compdef lvmsync-rs"),
        ("fish", "complete -c lvmsync-rs"),
    ] {
        let out = run(&["completions", shell]);
        assert_ok(&out);
        assert!(stdout(&out).contains(start), "{shell}");
        assert!(stdout(&out).contains("verify"), "{shell}");
    }
    assert_usage_errors(&[(&["completions", "tcsh"], "possible values: bash, zsh, fish")]);
}

/// Options may come between the two names, as people type them: the
/// second name is DEST, not a repeated first argument.
#[test]
fn options_between_the_two_names_are_read() {
    let dir = scratch("between");
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    fs::write(&a, vec![7u8; 64 * 1024]).unwrap();
    fs::write(&b, vec![7u8; 64 * 1024]).unwrap();
    let out = run(&["verify", s(&a), "--block-size", "4k", s(&b)]);
    assert_ok(&out);
    assert!(stdout(&out).contains("identical"), "{}", stdout(&out));
    // sync with --data-source between SNAPSHOT and DEST gets past the
    // parser to the snapshot, which does not exist here.
    let out = run(&["sync", "no-such-snap", "--data-source", s(&a), s(&b)]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-snap"), "{}", stderr(&out));
    // Three names are still one too many.
    let out = run(&["verify", s(&a), s(&b), s(&a)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
