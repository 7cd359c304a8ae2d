//! The real-kernel tests: a scenario of `tests/vm/scenarios/` runs in a
//! qemu guest and leaves its results in a directory, which the test judges
//! here, collecting every failure before it fails.
//!
//! A scenario's `step TAG CMD...` (tests/vm/lib.sh) leaves TAG.out, TAG.err
//! and TAG.rc; `record_sum NAME FILE` a line `NAME SHA256` in sums.txt.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use super::{bin, scratch, Scratch};

/// Runs `tests/vm/scenarios/SCRIPT` in the real-kernel guest
/// (`tests/vm/run-in-guest.sh`) with its results in a fresh directory for
/// `name`; fails the test if the guest run fails. Returns the results
/// directory and the guest's log. One guest runs at a time, as each keeps a
/// core busy for minutes: the other real-kernel tests wait for it.
pub fn run_scenario(name: &str, script: &str) -> (Scratch, String) {
    static GUEST: Mutex<()> = Mutex::new(());
    let results = scratch(name);
    // A test that failed with the guest held leaves the lock poisoned; the
    // next guest does not depend on it.
    let _guest = GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(repo.join("tests/vm/run-in-guest.sh"))
        .arg(repo.join("tests/vm/scenarios").join(script))
        .arg(&results)
        .env("LVMSYNC", bin())
        .status()
        .expect("run the guest");
    let log = read_result(&results, "guest.log");
    assert!(
        status.success(),
        "guest run failed ({status}); guest log:\n{log}"
    );
    (results, log)
}

/// DIR/NAME as text; empty when the scenario did not write it.
pub fn read_result(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// The `KEY VALUE` lines of DIR/NAME.
pub fn key_values(dir: &Path, name: &str) -> BTreeMap<String, String> {
    read_result(dir, name)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.trim().to_string()))
        .collect()
}

/// The `NAME SHA256` lines a scenario wrote to DIR/sums.txt.
pub fn sums(dir: &Path) -> BTreeMap<String, String> {
    key_values(dir, "sums.txt")
}

/// What went wrong in a scenario's results: each check that fails adds a
/// line, and the test fails at the end with all of them.
#[derive(Default)]
pub struct Failures(Vec<String>);

impl Failures {
    pub fn fail(&mut self, msg: String) {
        self.0.push(msg);
    }

    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    /// The stdout of step TAG in DIR when it exited 0.
    pub fn ok(&mut self, dir: &Path, tag: &str) -> Option<String> {
        match read_result(dir, &format!("{tag}.rc")).trim() {
            "0" => Some(read_result(dir, &format!("{tag}.out"))),
            rc => {
                self.fail(format!(
                    "{}: {tag} exit {rc:?}: {}",
                    dir.display(),
                    read_result(dir, &format!("{tag}.err")).trim()
                ));
                None
            }
        }
    }

    /// The stdout of step TAG in DIR as JSON; null when the step failed or
    /// its output is not JSON.
    pub fn json(&mut self, dir: &Path, tag: &str) -> serde_json::Value {
        match self.ok(dir, tag) {
            Some(out) => serde_json::from_str(&out).unwrap_or_else(|e| {
                self.fail(format!("{}: {tag}: not JSON ({e}): {out}", dir.display()));
                serde_json::Value::Null
            }),
            None => serde_json::Value::Null,
        }
    }

    /// Step TAG in DIR failed as a user should see it: an error's exit
    /// status (1, or 4 to 8 by kind), one line on stderr that contains
    /// `needle`, no panic.
    pub fn refused(&mut self, dir: &Path, tag: &str, needle: &str) {
        let rc = read_result(dir, &format!("{tag}.rc"));
        let err = read_result(dir, &format!("{tag}.err"));
        let lines = err.trim_end().lines().count();
        if !matches!(rc.trim(), "1" | "4" | "5" | "6" | "7" | "8")
            || lines != 1
            || !err.starts_with("lvmsync-rs: error: ")
            || !err.contains(needle)
            || err.contains("panicked")
        {
            self.fail(format!(
                "{}: {tag}: expected a refusal (exit 1, 4-8) and one line with {needle:?}, got exit {:?}: {err:?}",
                dir.display(),
                rc.trim()
            ));
        }
    }

    /// A and B have the same sum in DIR/sums.txt.
    pub fn same(&mut self, dir: &Path, a: &str, b: &str) {
        let s = sums(dir);
        self.check(s.contains_key(a) && s.get(a) == s.get(b), || {
            format!("{}: {a} and {b} differ: {s:?}", dir.display())
        });
    }

    /// Fails the test if anything failed, with every failure and `log`
    /// (the guest's).
    pub fn assert_none(self, log: &str) {
        assert!(
            self.0.is_empty(),
            "{} failure(s):\n{}\n\nguest log:\n{log}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}
