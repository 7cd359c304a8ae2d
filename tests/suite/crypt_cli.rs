//! Encrypted deltas (`send --encrypt`, `apply` and `inspect` with a key
//! file or a passphrase): round trips, and every kind of damage or edit to
//! the envelope refused before a byte of the damaged part is written.

use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::common::images::{delta_bytes, image_header, random, Change, Fill};
use crate::common::*;
use lvmsync::apply::{self, Options};
use lvmsync::crypt::{self, Envelope, Key, SealWriter, Secrets, Stream, HEADER_LEN, SEALED};

const CHUNK: u64 = 4096;

/// An origin of 1 MiB, half of it changed: the delta is some 6 chunks of
/// the envelope.
fn fixture(name: &str) -> Change {
    let changes = (0..256u64).filter(|c| c % 2 == 0).map(|c| {
        (
            c,
            match c % 6 {
                2 => Fill::Text,
                4 if c % 12 == 4 => Fill::Zero,
                _ => Fill::Random,
            },
        )
    });
    Change::new(scratch(name), 1 << 20, CHUNK, 0x5eed_c0de, changes)
}

fn send(f: &Change, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "send",
        "--cow",
        s(&f.cow_path),
        "--data-source",
        s(&f.new_path),
        "-o",
        s(out),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn new_key(f: &Change, name: &str) -> PathBuf {
    let path = f.path(name);
    assert_ok(&run(&["key", "new", s(&path)]));
    path
}

/// Asserts a one-line failure with `code` and `needle`.
#[track_caller]
fn assert_fails(out: &Output, code: i32, needle: &str) {
    assert_clean_failure(out, needle);
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
}

#[test]
fn a_delta_encrypted_with_a_key_file_applies_only_with_it() {
    let f = fixture("crypt-keyfile");
    let key = new_key(&f, "k.key");
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A key file is never overwritten.
    assert_fails(&run(&["key", "new", s(&key)]), 2, "never overwritten");
    let delta = f.path("d.lvd");
    let o = send(&f, &delta, &["--encrypt", "--key-file", s(&key)]);
    assert_ok(&o);
    assert!(stderr(&o).contains("encrypted as"), "{}", stderr(&o));
    let bytes = fs::read(&delta).unwrap();
    assert_eq!(&bytes[..8], b"\x89LVMSE\r\n");
    assert!(
        !bytes
            .windows(20)
            .any(|w| w == b"the quick brown fox ".as_slice()),
        "plaintext in the encrypted delta"
    );
    assert!(
        !bytes
            .windows(8)
            .any(|w| w == b"new.img\0" || w == b"snap.cow"),
        "the header's names in the encrypted delta"
    );

    // No key: refused with one line, the copy untouched.
    let copy = f.copy_of_old("copy.img");
    assert_fails(
        &run(&["apply", s(&delta), s(&copy)]),
        2,
        "encrypted with a key; give its key file with --key-file FILE",
    );
    assert_same(&copy, &f.old, "copy after a refusal");
    assert_fails(&run(&["inspect", s(&delta)]), 2, "--key-file");
    // Another key: refused.
    let other = new_key(&f, "other.key");
    assert_fails(
        &run(&["apply", "--key-file", s(&other), s(&delta), s(&copy)]),
        4,
        "encrypted with another key",
    );
    assert_same(&copy, &f.old, "copy after a wrong key");
    // A missing key file, a file that is no key file.
    assert_fails(
        &run(&[
            "apply",
            "--key-file",
            s(&f.path("none.key")),
            s(&delta),
            s(&copy),
        ]),
        2,
        "no such key file",
    );
    let not_key = f.path("not.key");
    fs::write(&not_key, "hello\n").unwrap();
    assert_fails(
        &run(&["apply", "--key-file", s(&not_key), s(&delta), s(&copy)]),
        2,
        "not a key file",
    );
    assert_same(&copy, &f.old, "copy after bad key files");

    // The key: applied, byte for byte.
    let o = run(&["apply", "--key-file", s(&key), s(&delta), s(&copy)]);
    assert_ok(&o);
    assert_same(&copy, &f.new, "copy");
    // Through a pipe too.
    let copy2 = f.copy_of_old("copy2.img");
    let mut child = command()
        .args(["apply", "--key-file", s(&key), "-", s(&copy2)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    assert_ok(&child.wait_with_output().unwrap());
    assert_same(&copy2, &f.new, "copy from a pipe");

    let o = run(&["inspect", "--key-file", s(&key), s(&delta)]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("encryption:   AES-256-GCM"),
        "{}",
        stdout(&o)
    );
    let doc = json(&run(&[
        "inspect",
        "--json",
        "--key-file",
        s(&key),
        s(&delta),
    ]));
    assert_eq!(doc["whole"], true);
    assert!(doc["encryption"].as_str().unwrap().contains("key id"));
    // A key without --encrypt is a mistake, said so.
    let o = send(&f, &f.path("x.lvd"), &["--key-file", s(&key)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("give --encrypt"), "{}", stderr(&o));
    let o = send(&f, &f.path("y.lvd"), &["--encrypt"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--encrypt needs a key"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_delta_encrypted_with_a_passphrase_opens_from_a_file_a_descriptor_or_the_environment() {
    let f = fixture("crypt-passphrase");
    let pass = f.path("pass");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    let delta = f.path("d.lvd");
    assert_ok(&send(
        &f,
        &delta,
        &["--encrypt", "--passphrase-file", s(&pass)],
    ));

    let copy = f.copy_of_old("copy.img");
    let o = command()
        .args(["apply", s(&delta), s(&copy)])
        .env_remove(crypt::PASSPHRASE_ENV)
        .output()
        .unwrap();
    assert_fails(&o, 2, "encrypted with a passphrase");
    let o = command()
        .args(["apply", s(&delta), s(&copy)])
        .env(crypt::PASSPHRASE_ENV, "correct horse battery stapler")
        .output()
        .unwrap();
    assert_fails(&o, 4, "wrong passphrase");
    assert_same(&copy, &f.old, "copy after a wrong passphrase");
    let o = command()
        .args(["apply", s(&delta), s(&copy)])
        .env(crypt::PASSPHRASE_ENV, "correct horse battery staple")
        .output()
        .unwrap();
    assert_ok(&o);
    assert_same(&copy, &f.new, "copy, passphrase from the environment");

    // From a descriptor: stdin here.
    let copy = f.copy_of_old("copy-fd.img");
    let mut child = command()
        .args(["apply", "--passphrase-fd", "0", s(&delta), s(&copy)])
        .env_remove(crypt::PASSPHRASE_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery staple\n")
        .unwrap();
    assert_ok(&child.wait_with_output().unwrap());
    assert_same(&copy, &f.new, "copy, passphrase from a descriptor");

    // The passphrase never appears in the file.
    let bytes = fs::read(&delta).unwrap();
    assert!(!bytes.windows(7).any(|w| w == b"correct"));
}

/// A small delta, sealed with `key`: one chunk.
fn small_sealed(key: &Key) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let size = 64 << 10;
    let noise = random(size, 77);
    let plain = delta_bytes(&image_header(size as u64, 4096), |w| {
        w.data(0, &noise[..2048]).unwrap();
        w.zero(8192, 4096).unwrap();
        w.data(16384, &[b'x'; 4096]).unwrap();
    });
    let base = random(size, 78);
    let env = Envelope::for_key(key).unwrap();
    let mut w = SealWriter::new(Vec::new(), Stream::new(&env, key, b"")).unwrap();
    w.write_all(&plain).unwrap();
    (w.finish().unwrap().0, plain, base)
}

fn apply_sealed(sealed: &[u8], key: &Key, dest: &Path) -> Result<(), String> {
    let dir = dest.parent().unwrap();
    let key_path = dir.join("apply.key");
    if !key_path.exists() {
        crypt::write_key_file(&key_path, key).unwrap();
    }
    let secrets = Secrets {
        key_file: Some(key_path),
        ..Secrets::default()
    };
    let opened = crypt::open_input(Box::new(Cursor::new(sealed.to_vec())), "m", &secrets)
        .map_err(|e| e.to_string())?;
    apply::apply(
        std::io::BufReader::new(opened.into_read()),
        "m",
        dest,
        &Options::default(),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[test]
fn every_byte_of_a_small_encrypted_delta_flipped_is_refused_and_nothing_written() {
    let dir = scratch("crypt-flips");
    let key = Key::random().unwrap();
    let (sealed, _, base) = small_sealed(&key);
    assert!(sealed.len() < SEALED, "one chunk");
    let dest = dir.join("dest.img");
    fs::write(&dest, &base).unwrap();
    apply_sealed(&sealed, &key, &dest).unwrap();
    let good = fs::read(&dest).unwrap();
    assert_ne!(good, base);
    let mut accepted = Vec::new();
    for i in 0..sealed.len() {
        let mut m = sealed.clone();
        m[i] ^= 1 << (i % 8);
        fs::write(&dest, &base).unwrap();
        let result = apply_sealed(&m, &key, &dest);
        if result.is_ok() || fs::read(&dest).unwrap() != base {
            accepted.push(i);
        }
    }
    assert!(
        accepted.is_empty(),
        "bytes whose flip was not refused whole: {accepted:?}"
    );
    // Through the binary, a sample: one line, exit 5 (damaged) for the
    // data, and nothing written.
    let key_path = dir.join("apply.key");
    let mutant = dir.join("m.lvd");
    for i in (0..sealed.len()).step_by(97).chain([8, 13, 30, 50, 90]) {
        let mut m = sealed.clone();
        m[i] ^= 0x40;
        fs::write(&mutant, &m).unwrap();
        fs::write(&dest, &base).unwrap();
        let o = run(&["apply", "--key-file", s(&key_path), s(&mutant), s(&dest)]);
        assert_clean_failure(&o, "");
        if i >= HEADER_LEN {
            assert_eq!(o.status.code(), Some(5), "byte {i}: {}", stderr(&o));
            assert!(
                stderr(&o).contains("fails authentication"),
                "{}",
                stderr(&o)
            );
        }
        assert_same(&dest, &base, &format!("dest after byte {i} flipped"));
    }
}

#[test]
fn chunks_swapped_dropped_cut_or_spliced_are_refused() {
    let f = fixture("crypt-chunks");
    let key = new_key(&f, "k.key");
    let delta = f.path("d.lvd");
    assert_ok(&send(&f, &delta, &["--encrypt", "--key-file", s(&key)]));
    let sealed = fs::read(&delta).unwrap();
    let chunks = (sealed.len() - HEADER_LEN) / SEALED;
    assert!(chunks >= 4, "{chunks} full chunks");
    let other_path = f.path("other.lvd");
    assert_ok(&send(
        &f,
        &other_path,
        &["--encrypt", "--key-file", s(&key)],
    ));
    let other = fs::read(&other_path).unwrap();
    let c = |i: usize| HEADER_LEN + i * SEALED..HEADER_LEN + (i + 1) * SEALED;
    let mut cases: Vec<(&str, Vec<u8>, bool)> = Vec::new();
    let mut m = sealed.clone();
    m[c(0)].copy_from_slice(&sealed[c(1)]);
    m[c(1)].copy_from_slice(&sealed[c(0)]);
    cases.push(("chunks 0 and 1 swapped", m, true));
    let mut m = sealed.clone();
    m[c(2)].copy_from_slice(&sealed[c(3)]);
    m[c(3)].copy_from_slice(&sealed[c(2)]);
    cases.push(("chunks 2 and 3 swapped", m, false));
    let mut m = sealed.clone();
    m.drain(c(1));
    cases.push(("chunk 1 dropped", m, false));
    cases.push((
        "cut after the full chunks",
        sealed[..HEADER_LEN + chunks * SEALED].to_vec(),
        false,
    ));
    cases.push((
        "the last chunk cut short",
        sealed[..sealed.len() - 1].to_vec(),
        false,
    ));
    let mut m = sealed.clone();
    m[c(2)].copy_from_slice(&other[c(2)]);
    cases.push(("chunk 2 from another stream", m, false));
    let mut m = sealed.clone();
    m[c(0)].copy_from_slice(&other[c(0)]);
    cases.push(("chunk 0 from another stream", m, true));
    let mut m = other[..HEADER_LEN].to_vec();
    m.extend_from_slice(&sealed[HEADER_LEN..]);
    cases.push(("another stream's header", m, true));
    let mut m = sealed.clone();
    m.extend_from_slice(&sealed[c(0)]);
    cases.push(("a chunk appended", m, false));
    let mutant = f.path("m.lvd");
    for (what, m, nothing) in cases {
        fs::write(&mutant, &m).unwrap();
        let copy = f.copy_of_old("copy.img");
        let o = run(&["apply", "--key-file", s(&key), s(&mutant), s(&copy)]);
        assert_clean_failure(&o, "");
        assert_eq!(o.status.code(), Some(5), "{what}: {}", stderr(&o));
        let got = fs::read(&copy).unwrap();
        assert_ne!(got, f.new, "{what}: the copy was synced");
        if nothing {
            assert_same(&copy, &f.old, what);
        }
        let o = run(&["inspect", "--key-file", s(&key), s(&mutant)]);
        assert_eq!(o.status.code(), Some(5), "inspect, {what}: {}", stderr(&o));
    }
}
