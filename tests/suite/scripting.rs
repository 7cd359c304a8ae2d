//! What a script sees: one exit status per kind of failure, and with
//! `--json` one object on stdout, also on failure, naming the kind
//! (`error_kind`) and the status (`exit_code`), read the way jq reads it
//! (a key given twice fails); `-q` leaves stderr empty on success.

use std::fs;

use crate::common::images::{delta_bytes, image_header, Change, Fill};
use crate::common::{assert_ok, command, run, s, scratch, script, stderr, stdout, strict_json};

#[test]
fn each_kind_of_failure_has_its_exit_status_and_its_json() {
    let c = Change::new(
        scratch("scripting-kinds"),
        1 << 20,
        4096,
        3,
        [(5, Fill::Random), (9, Fill::Text)],
    );
    let delta = c.path("d.lvd");
    assert_ok(&run(&[
        "send",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "-o",
        s(&delta),
    ]));
    let whole = fs::read(&delta).unwrap();
    let cut = c.path("cut.lvd");
    fs::write(&cut, &whole[..whole.len() - 10]).unwrap();
    let copy = c.path("copy.img");
    fs::write(&copy, &c.old).unwrap();
    let bad_cow = c.path("bad.cow");
    fs::write(&bad_cow, vec![7u8; 8192]).unwrap();
    // A far end that says hello, takes a little of a delta larger than the
    // pipes between, and dies.
    let big = Change::new(
        scratch("scripting-kinds-big"),
        8 << 20,
        4096,
        5,
        (0..1024).map(|i| (i, Fill::Random)),
    );
    let hello = format!(
        "LVMSYNC-APPLY {} {} {} -",
        lvmsync::ship::PROTOCOL,
        lvmsync::stream::Compression::Lz4.version(),
        big.old.len()
    );
    let dies = script(
        &c.path("dies"),
        &format!("#!/bin/sh\necho '{hello}'\nhead -c 100 > /dev/null\nexit 1\n"),
    );
    let (x, missing) = (c.path("x.lvd"), c.path("missing.img"));
    let cases: &[(&[&str], &str, i32)] = &[
        (&["apply", "--json", s(&delta), s(&c.dir)], "refused", 4),
        (&["apply", "--json", s(&cut), s(&copy)], "damaged", 5),
        (&["inspect", "--json", s(&cut)], "damaged", 5),
        (
            &[
                "sync",
                "--json",
                "-e",
                "false",
                "--cow",
                s(&c.cow_path),
                "--data-source",
                s(&c.new_path),
                "h:/x",
            ],
            "unreachable",
            6,
        ),
        (
            &[
                "sync",
                "--json",
                "-e",
                s(&dies),
                "--cow",
                s(&big.cow_path),
                "--data-source",
                s(&big.new_path),
                "h:/x",
            ],
            "interrupted",
            7,
        ),
        (&["list", "--json", "--cow", s(&bad_cow)], "source", 8),
        (
            &[
                "send",
                "--json",
                "--cow",
                s(&bad_cow),
                "--data-source",
                s(&c.new_path),
                "-o",
                s(&x),
            ],
            "source",
            8,
        ),
        (
            &[
                "send",
                "--json",
                "--cow",
                s(&c.cow_path),
                "--data-source",
                s(&c.new_path),
                "-o",
                "/nonexistent/dir/x.lvd",
            ],
            "failed",
            1,
        ),
        (
            &["restore", "--json", s(&c.dir), "v", s(&copy)],
            "refused",
            4,
        ),
        (&["verify", "--json", s(&missing), s(&copy)], "failed", 1),
    ];
    let mut failures = Vec::new();
    for (args, kind, code) in cases {
        let out = run(args);
        let doc = strict_json(&stdout(&out));
        let ok = out.status.code() == Some(*code)
            && doc.as_ref().is_ok_and(|d| {
                d["result"] == "failed" && d["error_kind"] == *kind && d["exit_code"] == *code
            })
            && stderr(&out).starts_with("lvmsync-rs: error: ");
        if !ok {
            failures.push(format!(
                "{args:?}: want {kind} ({code}), got exit {:?}, stdout {:?}, stderr {:?}",
                out.status.code(),
                stdout(&out),
                stderr(&out)
            ));
        }
    }
    // The copies differ: a result, exit 3, the comparison on stdout.
    fs::write(&copy, &c.old).unwrap();
    let out = run(&["verify", "--json", s(&c.new_path), s(&copy)]);
    if out.status.code() != Some(3)
        || strict_json(&stdout(&out)).map(|d| d["identical"] == false) != Ok(true)
    {
        failures.push(format!(
            "verify of different copies: {:?} {}",
            out.status.code(),
            stdout(&out)
        ));
    }
    // A usage error: the argument parser's, exit 2.
    let out = run(&["list", "--origin-size", "1G", "vg/snap"]);
    if out.status.code() != Some(2) {
        failures.push(format!("usage: {:?}", out.status.code()));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn success_prints_one_object_with_json_and_nothing_with_q() {
    let c = Change::new(
        scratch("scripting-ok"),
        1 << 20,
        4096,
        4,
        [(2, Fill::Random)],
    );
    let delta = c.path("d.lvd");
    let copy = c.path("copy.img");
    fs::write(&copy, &c.old).unwrap();
    let out = run(&[
        "send",
        "--json",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "-o",
        s(&delta),
    ]);
    assert_ok(&out);
    let doc = strict_json(&stdout(&out)).unwrap();
    assert_eq!(
        (doc["command"].as_str(), doc["result"].as_str()),
        (Some("send"), Some("ok"))
    );
    assert_eq!(doc["delta_bytes"], fs::metadata(&delta).unwrap().len());
    let out = run(&["apply", "--json", "-q", s(&delta), s(&copy)]);
    assert_ok(&out);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let doc = strict_json(&stdout(&out)).unwrap();
    assert_eq!(doc["result"], "ok");
    assert_eq!(doc["records"], 1);
    // -q and nothing else: nothing at all.
    fs::write(&copy, &c.old).unwrap();
    for args in [
        vec!["apply", "-q", s(&delta), s(&copy)],
        vec![
            "send",
            "-q",
            "--cow",
            s(&c.cow_path),
            "--data-source",
            s(&c.new_path),
            "-o",
            s(&delta),
        ],
        vec!["verify", "-q", s(&c.new_path), s(&copy)],
        vec!["list", "-q", "--cow", s(&c.cow_path)],
        vec!["inspect", "-q", s(&delta)],
    ] {
        let out = run(&args);
        assert_ok(&out);
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{args:?}: {} {}",
            stdout(&out),
            stderr(&out)
        );
    }
    // inspect -q of a damaged delta says only what is wrong.
    let whole = fs::read(&delta).unwrap();
    let cut = c.path("quiet-cut.lvd");
    fs::write(&cut, &whole[..whole.len() - 10]).unwrap();
    let out = run(&["inspect", "-q", s(&cut)]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    // sync's and backup's summaries: every key once (backup's transfer is
    // an object of its own).
    let out = run(&[
        "sync",
        "--json",
        "-q",
        "--full",
        s(&c.new_path),
        s(&c.path("seed.img")),
        "--create",
    ]);
    assert_ok(&out);
    let doc = strict_json(&stdout(&out)).unwrap();
    assert_eq!(doc["result"], "ok");
    assert!(doc["error_kind"].is_null());
    let out = command()
        .args(["backup", "--json", "no-such-vg/lv", s(&c.path("b.img"))])
        .output()
        .unwrap();
    let doc = strict_json(&stdout(&out)).unwrap();
    assert_eq!(doc["result"], "failed");
    assert!(doc["transfer"].is_object(), "{doc}");
    assert_eq!(doc["exit_code"], out.status.code().unwrap());
    // A header that says nothing: a damaged delta's inspect still prints
    // its one object.
    let h = image_header(1 << 20, 4096);
    let bytes = delta_bytes(&h, |w| w.data(0, &[1u8; 4096]).unwrap());
    let d = c.path("one.lvd");
    fs::write(&d, &bytes[..bytes.len() - 1]).unwrap();
    let out = run(&["inspect", "--json", s(&d)]);
    assert_eq!(out.status.code(), Some(5));
    let doc = strict_json(&stdout(&out)).unwrap();
    assert_eq!(
        (doc["whole"].as_bool(), doc["error_kind"].as_str()),
        (Some(false), Some("damaged"))
    );
}

/// Off a terminal, a long command says how far it is every
/// --progress-every seconds, one line each, plain or JSON; -q silences it.
#[test]
fn progress_lines_appear_off_a_terminal_at_the_interval_asked() {
    use std::io::Write;
    use std::process::Stdio;
    use std::time::Duration;
    let c = Change::new(
        scratch("scripting-progress"),
        4 << 20,
        4096,
        6,
        (0..256).map(|i| (i * 4, Fill::Random)),
    );
    let delta = c.path("d.lvd");
    assert_ok(&run(&[
        "send",
        "-q",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "-o",
        s(&delta),
    ]));
    let bytes = fs::read(&delta).unwrap();
    let half = bytes.len() / 2;
    // The delta arrives on stdin in two halves, 2.5 s apart: the apply
    // waits in between, as it would for a slow link.
    let apply = |extra: &[&str]| {
        let copy = c.path("copy.img");
        fs::write(&copy, &c.old).unwrap();
        let mut child = command()
            .args(["apply", "--progress-every", "1"])
            .args(extra)
            .args(["-", s(&copy)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&bytes[..half]).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        stdin.write_all(&bytes[half..]).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert_ok(&out);
        crate::common::assert_same(&copy, &c.new, "the copy after a slow apply");
        stderr(&out)
    };
    let plain = apply(&[]);
    let lines: Vec<&str> = plain
        .lines()
        .filter(|l| l.contains("lvmsync-rs apply: applying: "))
        .collect();
    assert!(
        lines.len() >= 2,
        "want a line a second while the apply waits:\n{plain}"
    );
    assert!(lines.iter().all(|l| l.contains("/s")), "{plain}");
    let json = apply(&["--log-format", "json"]);
    let objects: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| strict_json(l).unwrap())
        .collect();
    assert!(objects.len() >= 2, "{json}");
    for o in &objects {
        assert_eq!(o["command"], "apply");
        let done = o["done_bytes"].as_u64().unwrap();
        assert!(done > 0 && done <= half as u64 + (1 << 20), "{o}");
        assert!(o["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{o}");
    }
    let quiet = apply(&["-q"]);
    assert!(quiet.is_empty(), "{quiet}");
}
