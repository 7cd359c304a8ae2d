//! Helpers shared by the integration tests: running the binary, scratch
//! directories, and checking what it printed and how it failed.

pub mod guest;
pub mod images;
pub mod s3;
pub mod sshd;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

pub use images::random;

/// The lvmsync-rs binary of this build.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lvmsync-rs"))
}

/// The binary as a command to complete, without RUST_BACKTRACE from the
/// environment: a panic is then one recognisable message.
pub fn command() -> Command {
    let mut command = Command::new(bin());
    command.env_remove("RUST_BACKTRACE");
    command
}

pub fn run(args: &[&str]) -> Output {
    command().args(args).output().expect("run lvmsync-rs")
}

/// A path as an argument (the tests make only UTF-8 paths).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that the command succeeded, and did not panic on the way.
#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "status {:?}: {}", o.status, stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

/// Writes an executable shell script with `body` to `path`.
pub fn script(path: &Path, body: &str) -> PathBuf {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// Asserts that the file at `path` holds exactly `want`; a difference is
/// named by its offset, not printed.
#[track_caller]
pub fn assert_same(path: &Path, want: &[u8], what: &str) {
    assert_same_bytes(&fs::read(path).unwrap(), want, what);
}

/// Asserts that `got` is `want`; a difference is named by its offset, not
/// printed.
#[track_caller]
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

/// A fresh directory for one test. All the tests run in one process, so
/// `name` must be unique among them: a name given twice is refused, rather
/// than two tests sharing a directory.
pub fn scratch(name: &str) -> Scratch {
    static NAMES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let fresh = NAMES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string());
    assert!(fresh, "scratch directory {name:?} is taken by another test");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A test's directory under the target directory: removed when the test
/// passes, kept (and named on stderr) when it fails, so that what it left
/// can be looked at. `LVMSYNC_TEST_KEEP=1` keeps it in any case.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("LVMSYNC_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Asserts that the command failed the way a user should see it: exit status
/// 1, one line on stderr that contains `needle`, nothing on stdout, no panic.
#[track_caller]
pub fn assert_clean_failure(out: &Output, needle: &str) {
    if let Err(why) = clean_failure(out, needle) {
        panic!("{why}");
    }
}

/// What makes `out` other than a clean failure naming `needle` (see
/// assert_clean_failure), if anything.
pub fn clean_failure(out: &Output, needle: &str) -> Result<(), String> {
    let stderr = stderr(out);
    // The exit statuses of errors: 1, 2 (a usage error found past the
    // argument parser) and 4 to 8 by kind (3 is a difference found).
    if !matches!(out.status.code(), Some(1 | 2 | 4..=8)) {
        return Err(format!(
            "exit status {:?}, not an error's (1, 2, 4 to 8); stderr: {stderr}",
            out.status.code()
        ));
    }
    if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
        return Err(format!("panic: {stderr}"));
    }
    if stderr.trim_end().lines().count() != 1 {
        return Err(format!("not one line: {stderr:?}"));
    }
    if !stderr.starts_with("lvmsync-rs: error: ") {
        return Err(format!("not an error line: {stderr:?}"));
    }
    if !stderr.contains(needle) {
        return Err(format!("expected {needle:?} in {stderr:?}"));
    }
    // Nothing on stdout, but with --json the one object that says so.
    if !out.stdout.is_empty() {
        match failure_json(out) {
            Ok(doc) if doc["result"] == "failed" => {
                if doc["exit_code"] != out.status.code().unwrap_or(-1) {
                    return Err(format!("exit_code in {doc} is not the exit status"));
                }
            }
            _ => return Err(format!("stdout: {:?}", stdout(out))),
        }
    }
    Ok(())
}

/// The one JSON object on stdout, read as jq reads it, but a key given
/// twice is an error (serde_json keeps the last one silently).
pub fn failure_json(out: &Output) -> Result<serde_json::Value, String> {
    strict_json(&stdout(out))
}

/// `text` as one JSON value; refused when an object names a key twice.
pub fn strict_json(text: &str) -> Result<serde_json::Value, String> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Strict;
    impl<'de> Visitor<'de> for Strict {
        type Value = serde_json::Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value_seed(StrictSeed)?;
                if out.insert(key.clone(), value).is_some() {
                    return Err(serde::de::Error::custom(format!(
                        "the key {key:?} is given twice"
                    )));
                }
            }
            Ok(serde_json::Value::Object(out))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element_seed(StrictSeed)? {
                out.push(v);
            }
            Ok(serde_json::Value::Array(out))
        }
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(serde_json::Value::Null)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(serde_json::Value::Null)
        }
    }
    struct StrictSeed;
    impl<'de> serde::de::DeserializeSeed<'de> for StrictSeed {
        type Value = serde_json::Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Strict)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text.trim());
    let value = de
        .deserialize_any(Strict)
        .map_err(|e| format!("{e}: {text:?}"))?;
    de.end().map_err(|e| format!("{e}: {text:?}"))?;
    Ok(value)
}

/// A table of refusals: runs the binary with each case's arguments, each of
/// which must fail cleanly with the case's text (see assert_clean_failure).
/// Every case runs; the test fails naming each that did not.
#[track_caller]
pub fn assert_refusals(cases: &[(&[&str], &str)]) {
    assert_cases(cases, clean_failure);
}

/// What makes `out` other than a usage error (exit status 2, from the
/// argument parser, no panic) with `needle` on stderr, if anything.
pub fn usage_error(out: &Output, needle: &str) -> Result<(), String> {
    let stderr = stderr(out);
    if out.status.code() != Some(2) {
        return Err(format!(
            "exit status {:?}, not 2; stderr: {stderr}",
            out.status.code()
        ));
    }
    if stderr.contains("panicked") {
        return Err(format!("panic: {stderr}"));
    }
    if !stderr.contains(needle) {
        return Err(format!("expected {needle:?} in {stderr:?}"));
    }
    Ok(())
}

/// A table of usage errors: runs the binary with each case's arguments;
/// each must be a usage error with the case's text ("": any) on stderr.
/// Every case runs; the test fails naming each that did not.
#[track_caller]
pub fn assert_usage_errors(cases: &[(&[&str], &str)]) {
    assert_cases(cases, usage_error);
}

#[track_caller]
fn assert_cases(cases: &[(&[&str], &str)], judge: fn(&Output, &str) -> Result<(), String>) {
    let failed: Vec<String> = cases
        .iter()
        .filter_map(|&(args, needle)| {
            judge(&run(args), needle)
                .err()
                .map(|why| format!("{args:?}: {why}"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

#[track_caller]
pub fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "status {:?}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    strict_json(&stdout(out)).unwrap_or_else(|e| panic!("stdout is not one JSON document: {e}"))
}

/// `[(offset, length)]` from an array of `{"offset", "length"}` objects: a
/// listing's `extents` or `zero_extents`, verify's `differences`.
pub fn extents(list: &serde_json::Value) -> Vec<(u64, u64)> {
    list.as_array()
        .expect("an array of extents")
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

/// The chunks touched by byte writes `(offset, length)`, coalesced into byte
/// extents: what a change table must list. Independent of the library.
pub fn expected_extents(writes: &[(u64, u64)], chunk: u64, origin_size: u64) -> Vec<(u64, u64)> {
    let mut chunks = std::collections::BTreeSet::new();
    for &(off, len) in writes {
        if len == 0 {
            continue;
        }
        for c in off / chunk..=(off + len - 1) / chunk {
            chunks.insert(c);
        }
    }
    let mut out: Vec<(u64, u64)> = Vec::new();
    for c in chunks {
        let start = c * chunk;
        let end = ((c + 1) * chunk).min(origin_size);
        match out.last_mut() {
            Some(last) if last.0 + last.1 == start => last.1 = end - last.0,
            _ => out.push((start, end - start)),
        }
    }
    out
}

/// `lvmsync-rs list --json --cow IMG --origin-size SIZE`.
pub fn list_image(img: &Path, origin_size: u64) -> Output {
    run(&[
        "list",
        "--json",
        "--cow",
        img.to_str().expect("UTF-8 path"),
        "--origin-size",
        &origin_size.to_string(),
    ])
}

/// The `(offset, length)` of each line `origin|snap OFFSET LENGTH` of a
/// scenario's `writes.txt` (none when the file is missing).
pub fn read_writes(path: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| (f[1].parse().unwrap(), f[2].parse().unwrap()))
        })
        .collect()
}

/// A loop device over a file, detached when dropped.
pub struct Loop(pub String);

impl Loop {
    /// `None` where loop devices cannot be made (no root, no loop driver).
    pub fn attach(file: &Path) -> Option<Loop> {
        let o = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .ok()?;
        let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (o.status.success() && dev.starts_with("/dev/")).then_some(Loop(dev))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}
