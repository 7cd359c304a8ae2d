//! `lvmsync-rs verify SRC DEST [--repair]` through the binary: images made
//! here, differences put at known places, compared locally and through a
//! real OpenSSH server on 127.0.0.1 (tests/suite/common/sshd.rs) with this
//! build as the remote lvmsync-rs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use crate::common::sshd::{self, Sshd, HOST};
use crate::common::*;

/// The block size of most tests: small, so that images are small and
/// have many blocks.
const BS: u64 = 64 << 10;
/// An image size that is not a whole number of blocks.
const SIZE: usize = 3 * (1 << 20) + 12345;

/// `verify --json --block-size BS` (unless `extra` has one) plus `extra`,
/// SRC, DEST: the status and the object.
fn verify_json(extra: &[&str], src: &str, dest: &str) -> (i32, serde_json::Value) {
    let bs = BS.to_string();
    let mut args = vec!["verify", "--json"];
    if !extra.contains(&"--block-size") {
        args.extend(["--block-size", &bs]);
    }
    args.extend_from_slice(extra);
    args.extend([src, dest]);
    let o = run(&args);
    let code = o.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "status {code}, stderr {}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    let doc = strict_json(&stdout(&o)).unwrap_or_else(|e| panic!("stdout is not JSON: {e}"));
    (code, doc)
}

/// `[(offset, length)]` of the object's `differences`.
fn differences(doc: &serde_json::Value) -> Vec<(u64, u64)> {
    extents(&doc["differences"])
}

/// The block of `BS` holding byte `at`, clipped to `size`.
fn block_of(at: u64, size: u64) -> (u64, u64) {
    let start = at / BS * BS;
    (start, BS.min(size - start))
}

fn flip(data: &mut [u8], at: usize) {
    data[at] ^= 0x10;
}

#[test]
fn identical_images_pass() {
    let dir = scratch("verify-identical");
    let data = random(SIZE, 1);
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    fs::write(&a, &data).unwrap();
    fs::write(&b, &data).unwrap();
    let (code, doc) = verify_json(&[], s(&a), s(&b));
    assert_eq!(code, 0);
    assert_eq!(doc["identical"], true);
    assert_eq!(doc["differences"], serde_json::json!([]));
    assert_eq!(doc["src_size"], SIZE as u64);
    assert_eq!(doc["dest_size"], SIZE as u64);
    assert_eq!(doc["block_size"], BS);
    assert_eq!(doc["bytes_read"], 2 * SIZE as u64);
    assert_eq!(doc["bytes_on_wire"], serde_json::Value::Null);
    // Text, with the default block size.
    let o = run(&["verify", s(&a), s(&b)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("block size: 1048576 (1 MiB)"), "{text}");
    assert!(text.contains("identical: "), "{text}");
    // An empty pair is identical too.
    let (e, f) = (dir.join("e.img"), dir.join("f.img"));
    fs::write(&e, b"").unwrap();
    fs::write(&f, b"").unwrap();
    assert_eq!(verify_json(&[], s(&e), s(&f)).0, 0);
}

#[test]
fn single_flipped_bits_are_found_at_their_block_and_repaired() {
    let dir = scratch("verify-bits");
    let data = random(SIZE, 2);
    let src = dir.join("src.img");
    fs::write(&src, &data).unwrap();
    let size = SIZE as u64;
    for at in [
        0,
        SIZE - 1,
        BS as usize - 1,
        BS as usize,
        20 * BS as usize + 77,
    ] {
        let dest = dir.join("dest.img");
        let mut copy = data.clone();
        flip(&mut copy, at);
        fs::write(&dest, &copy).unwrap();
        let (code, doc) = verify_json(&[], s(&src), s(&dest));
        assert_eq!(code, 3, "a difference at {at} exits 3");
        assert_eq!(doc["identical"], false);
        let want = block_of(at as u64, size);
        assert_eq!(differences(&doc), [want], "a flipped bit at byte {at}");
        assert_eq!(doc["differing_bytes"], want.1);

        // The text names the same range.
        let bs = BS.to_string();
        let o = run(&["verify", "--block-size", &bs, s(&src), s(&dest)]);
        assert_eq!(o.status.code(), Some(3));
        let text = stdout(&o);
        assert!(
            text.lines().any(|l| l
                .split_whitespace()
                .take(2)
                .eq([want.0.to_string().as_str(), want.1.to_string().as_str()])),
            "{text}"
        );
        assert!(text.contains("differ: "), "{text}");

        let (code, doc) = verify_json(&["--repair"], s(&src), s(&dest));
        assert_eq!(code, 0, "repaired: {doc}");
        assert_eq!(doc["identical"], false, "as found");
        assert_eq!(doc["identical_now"], true);
        assert_eq!(doc["repaired"]["data_bytes"], want.1);
        assert_same(&dest, &data, &format!("repair at {at}"));
        let (code, doc) = verify_json(&[], s(&src), s(&dest));
        assert_eq!(code, 0, "after the repair: {doc}");
    }
}

#[test]
fn flips_on_both_sides_of_a_boundary_make_one_range() {
    let dir = scratch("verify-boundary");
    let data = random(SIZE, 3);
    let (src, dest) = (dir.join("src.img"), dir.join("dest.img"));
    fs::write(&src, &data).unwrap();
    let mut copy = data.clone();
    let b = 5 * BS as usize;
    flip(&mut copy, b - 1);
    flip(&mut copy, b);
    flip(&mut copy, 9 * BS as usize + 1);
    fs::write(&dest, &copy).unwrap();
    let (code, doc) = verify_json(&[], s(&src), s(&dest));
    assert_eq!(code, 3);
    assert_eq!(
        differences(&doc),
        [(4 * BS, 2 * BS), (9 * BS, BS)],
        "adjacent blocks join"
    );
    let o = run(&["verify", "--repair", s(&src), s(&dest)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("repaired: "), "{}", stdout(&o));
    assert_same(&dest, &data, "repaired");
}

#[test]
fn copies_of_different_sizes_are_reported_and_repaired() {
    let dir = scratch("verify-sizes");
    let data = random(SIZE, 4);
    let size = SIZE as u64;
    let src = dir.join("src.img");
    fs::write(&src, &data).unwrap();
    // DEST shorter, cut inside a block, with a flipped bit as well.
    let dest = dir.join("short.img");
    let short = 2 * BS as usize + 1000;
    let mut copy = data[..short].to_vec();
    flip(&mut copy, 10);
    fs::write(&dest, &copy).unwrap();
    let (code, doc) = verify_json(&[], s(&src), s(&dest));
    assert_eq!(code, 3);
    assert_eq!(doc["dest_size"], short as u64);
    assert_eq!(doc["src_size"], size);
    assert_eq!(
        differences(&doc),
        [(0, BS), (short as u64, size - short as u64)],
        "the first block and SRC's tail"
    );
    let o = run(&["verify", s(&src), s(&dest)]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stdout(&o).contains(&format!(
            "sizes differ: the last {} bytes of SRC",
            size - short as u64
        )),
        "{}",
        stdout(&o)
    );
    let (code, doc) = verify_json(&["--repair"], s(&src), s(&dest));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["repaired"]["dest_size_after"], size);
    assert_same(&dest, &data, "extended and repaired");
    assert_eq!(verify_json(&[], s(&src), s(&dest)).0, 0);

    // DEST longer: its tail differs, and the repair cuts it.
    let dest = dir.join("long.img");
    let mut copy = data.clone();
    copy.extend_from_slice(&random(100_000, 5));
    flip(&mut copy, SIZE - 1);
    fs::write(&dest, &copy).unwrap();
    let (code, doc) = verify_json(&[], s(&src), s(&dest));
    assert_eq!(code, 3);
    let last = block_of(size - 1, size);
    assert_eq!(
        differences(&doc),
        [(last.0, last.1 + 100_000)],
        "the last block and DEST's tail, joined"
    );
    let o = run(&["verify", "--repair", s(&src), s(&dest)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!(
            "DEST was cut from {} to {size} bytes",
            SIZE + 100_000
        )),
        "{}",
        stdout(&o)
    );
    assert_same(&dest, &data, "cut and repaired");
    assert_eq!(verify_json(&[], s(&src), s(&dest)).0, 0);

    // An empty DEST: everything differs.
    let empty = dir.join("empty.img");
    fs::write(&empty, b"").unwrap();
    let (code, doc) = verify_json(&["--repair"], s(&src), s(&empty));
    assert_eq!(code, 0);
    assert_eq!(differences(&doc), [(0, size)]);
    assert_same(&empty, &data, "the empty copy, repaired");
}

#[test]
fn missing_or_unusable_paths_are_one_line_errors() {
    let dir = scratch("verify-errors");
    let a = dir.join("a.img");
    fs::write(&a, random(100_000, 6)).unwrap();
    let missing = dir.join("missing.img");
    let under_a_file = a.join("x");
    let missing_named = format!("{}: cannot open: No such file", missing.display());
    let (a, missing, dir, under_a_file) = (s(&a), s(&missing), s(&dir), s(&under_a_file));
    assert_refusals(&[
        (&["verify", missing, a], &missing_named),
        (&["verify", a, missing], &missing_named),
        (
            &["verify", "--repair", a, missing],
            "cannot open: No such file",
        ),
        (&["verify", dir, a], "is a directory"),
        (&["verify", a, dir], "is a directory"),
        (
            &["verify", a, "/dev/null"],
            "not a block device or a regular file",
        ),
        (&["verify", a, under_a_file], "cannot open: Not a directory"),
    ]);
    assert!(!Path::new(missing).exists(), "--repair creates nothing");

    // Usage errors: status 2.
    assert_usage_errors(&[
        (&["verify", a], ""),
        (&["verify", "--block-size", "3000", a, a], ""),
        (&["verify", "--block-size", "2k", a, a], ""),
        (&["verify", "--block-size", "1G", a, a], ""),
        (&["verify", a, a, a], ""),
    ]);
    // A file compared with itself.
    assert_eq!(verify_json(&[], a, a).0, 0);
}

#[test]
fn an_unreadable_dest_is_an_error_for_a_user_without_rights() {
    // Root reads anything; the check needs another user.
    let root = fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if root {
        let dir = scratch("verify-unreadable");
        let a = dir.join("a.img");
        fs::write(&a, b"x").unwrap();
        let b = dir.join("b.img");
        fs::write(&b, b"x").unwrap();
        fs::set_permissions(&b, fs::Permissions::from_mode(0o000)).unwrap();
        let o = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .args(["verify", s(&a), s(&b)])
            .output();
        let Ok(o) = o else { return };
        if o.status.code() == Some(127) || stderr(&o).contains("setpriv:") {
            return;
        }
        // The scratch directory may not be reachable for that user at
        // all; either way, one line naming a path.
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).starts_with("lvmsync-rs: error: "),
            "{}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
        assert_eq!(stderr(&o).trim_end().lines().count(), 1);
    }
}

/// An sshd and a directory.
struct Remote {
    sshd: Sshd,
    dir: Scratch,
}

impl Remote {
    fn new(name: &str) -> Remote {
        let dir = scratch(name);
        let sshd = Sshd::start(&dir.join("sshd"));
        Remote { sshd, dir }
    }

    /// `verify --json --block-size BS -e SSH --remote-path BIN` plus
    /// `extra`, SRC, `root@127.0.0.1:DEST`.
    fn verify(&self, extra: &[&str], src: &Path, dest: &Path) -> (i32, serde_json::Value) {
        let (rsh, bin) = (self.sshd.rsh(), bin());
        let mut args = vec!["-e", &rsh, "--remote-path", s(&bin)];
        args.extend_from_slice(extra);
        verify_json(&args, s(src), &format!("{HOST}:{}", dest.display()))
    }

    fn run(&self, extra: &[&str], src: &Path, dest: &str) -> Output {
        let (rsh, bin) = (self.sshd.rsh(), bin());
        let mut args = vec!["verify", "-e", &rsh, "--remote-path", s(&bin)];
        args.extend_from_slice(extra);
        args.extend([s(src), dest]);
        run(&args)
    }
}

#[test]
fn over_ssh_differences_are_found_and_repaired() {
    let r = Remote::new("verify-ssh");
    let data = random(SIZE, 7);
    let size = SIZE as u64;
    let src = r.dir.join("src.img");
    fs::write(&src, &data).unwrap();
    // A path with spaces and shell syntax.
    let sub = r.dir.join("backup copies; $(touch x)");
    fs::create_dir_all(&sub).unwrap();
    let dest = sub.join("it's a copy.img");
    fs::write(&dest, &data).unwrap();

    let (code, doc) = r.verify(&[], &src, &dest);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["identical"], true);
    assert_eq!(doc["remote_host"], HOST);
    // The hello line and 16 bytes per block, nothing else.
    let blocks = size.div_ceil(BS);
    let wire = doc["bytes_on_wire"].as_u64().unwrap();
    assert!(
        wire >= 16 * blocks && wire < 16 * blocks + 100,
        "{wire} bytes for {blocks} blocks"
    );

    let mut copy = data.clone();
    for at in [0, BS as usize - 1, BS as usize, SIZE - 1] {
        flip(&mut copy, at);
    }
    fs::write(&dest, &copy).unwrap();
    let (code, doc) = r.verify(&[], &src, &dest);
    assert_eq!(code, 3);
    assert_eq!(
        differences(&doc),
        [(0, 2 * BS), block_of(size - 1, size)],
        "{doc}"
    );
    let (code, doc) = r.verify(&["--repair"], &src, &dest);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["repaired"]["data_bytes"], doc["differing_bytes"]);
    assert_same(&dest, &data, "repaired over ssh");
    assert_eq!(r.verify(&[], &src, &dest).0, 0);
    assert!(!r.dir.join("x").exists() && !Path::new("/root/x").exists());

    // Shorter and longer remote files.
    let mut short = data[..SIZE / 2].to_vec();
    flip(&mut short, 3 * BS as usize);
    fs::write(&dest, &short).unwrap();
    let (code, doc) = r.verify(&[], &src, &dest);
    assert_eq!(code, 3);
    assert_eq!(doc["dest_size"], (SIZE / 2) as u64);
    assert_eq!(
        differences(&doc),
        [(3 * BS, BS), ((SIZE / 2) as u64, size - (SIZE / 2) as u64)]
    );
    assert_eq!(r.verify(&["--repair"], &src, &dest).0, 0);
    assert_same(&dest, &data, "extended over ssh");
    let mut long = data.clone();
    long.extend_from_slice(&[1u8; 5000]);
    fs::write(&dest, &long).unwrap();
    let (code, doc) = r.verify(&[], &src, &dest);
    assert_eq!(code, 3);
    assert_eq!(differences(&doc), [(size, 5000)]);
    let o = r.run(&["--repair"], &src, &format!("{HOST}:{}", dest.display()));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("DEST was cut from"), "{}", stdout(&o));
    assert_same(&dest, &data, "cut over ssh");
}

#[test]
fn over_ssh_hashes_larger_than_the_pipes_stream_through() {
    // 24 MiB in blocks of 4 KiB: 6144 hashes (96 KiB), more than a pipe
    // and ssh's buffers hold, so the remote waits while this side reads.
    let r = Remote::new("verify-ssh-stream");
    let size = 24 << 20;
    let data = random(size, 10);
    let src = r.dir.join("src.img");
    let dest = r.dir.join("dest.img");
    fs::write(&src, &data).unwrap();
    let mut copy = data.clone();
    for at in [4095, 4096, 5 << 20, size - 1] {
        flip(&mut copy, at);
    }
    fs::write(&dest, &copy).unwrap();
    let (code, doc) = r.verify(&["--block-size", "4k"], &src, &dest);
    assert_eq!(code, 3, "{doc}");
    assert_eq!(doc["block_size"], 4096);
    assert_eq!(
        differences(&doc),
        [(0, 8192), (5 << 20, 4096), (size as u64 - 4096, 4096)]
    );
    let wire = doc["bytes_on_wire"].as_u64().unwrap();
    assert!(wire > 16 * 6144 && wire < 16 * 6144 + 100, "{wire}");
    assert_eq!(
        r.verify(&["--block-size", "4k", "--repair"], &src, &dest).0,
        0
    );
    assert_same(&dest, &data, "repaired in blocks of 4 KiB");
}

#[test]
fn over_ssh_failures_are_one_line_errors() {
    let r = Remote::new("verify-ssh-errors");
    let src = r.dir.join("src.img");
    fs::write(&src, random(200_000, 8)).unwrap();
    let missing = r.dir.join("no such dir/copy.img");
    let nope = r.dir.join("nope.img");
    // Another version on the far side.
    let other_version = script(
        &r.dir.join("fake-other-version"),
        "echo 'LVMSYNC-VERIFY 7 1 200000 65536 file'\nsleep 1",
    );
    // A far side that stops sending hashes midway.
    let stops = script(
        &r.dir.join("fake-stops-midway"),
        "echo 'LVMSYNC-VERIFY 1 1 200000 65536 file'\nprintf 0123456789abcdef\necho 'lvmsync-rs: error: disk on fire' >&2\nexit 1",
    );
    let other_key = r.dir.join("other_key");
    sshd::keygen(&other_key);
    let (rsh, other_rsh, bin) = (r.sshd.rsh(), r.sshd.rsh_with(&other_key), bin());
    let (rsh, other_rsh, bin, src_arg) = (rsh.as_str(), other_rsh.as_str(), s(&bin), s(&src));
    let to_missing = format!("{HOST}:{}", missing.display());
    let dest = format!("{HOST}:{}", src.display());
    let refused = format!("{HOST}: the verify refused: ");
    // The arguments, the text the error line must hold, and more that it
    // must hold.
    let cases: &[(&[&str], &str, &[&str])] = &[
        (
            &[
                "verify",
                "-e",
                rsh,
                "--remote-path",
                bin,
                src_arg,
                &to_missing,
            ],
            &refused,
            &["cannot open: No such file"],
        ),
        (
            &[
                "verify",
                "-e",
                rsh,
                "--remote-path",
                bin,
                "--repair",
                src_arg,
                &to_missing,
            ],
            "cannot open: No such file",
            &[],
        ),
        // A missing local SRC needs no connection.
        (
            &["verify", "-e", rsh, "--remote-path", bin, s(&nope), &dest],
            "nope.img: cannot open: No such file",
            &[],
        ),
        (
            &[
                "verify",
                "-e",
                rsh,
                "--remote-path",
                s(&other_version),
                src_arg,
                &dest,
            ],
            "speaks protocol 7 and block hash version 1",
            &[],
        ),
        (
            &[
                "verify",
                "--block-size",
                "64k",
                "-e",
                rsh,
                "--remote-path",
                s(&stops),
                src_arg,
                &dest,
            ],
            "stopped after sending 1 of 4 block hashes",
            &["disk on fire"],
        ),
        // A refused login.
        (
            &[
                "verify",
                "-e",
                other_rsh,
                "--remote-path",
                bin,
                src_arg,
                &dest,
            ],
            "could not connect or log in (exit status 255)",
            &[],
        ),
    ];
    for &(args, needle, also) in cases {
        let o = run(args);
        if let Err(why) = clean_failure(&o, needle) {
            panic!("{args:?}: {why}");
        }
        for text in also {
            assert!(
                stderr(&o).contains(text),
                "{args:?}: expected {text:?} in {}",
                stderr(&o)
            );
        }
    }
    assert!(!missing.exists());
}

#[test]
fn block_devices_are_read_directly_and_never_resized() {
    let dir = scratch("verify-loop");
    let data = random(2 << 20, 9);
    let src = dir.join("src.img");
    fs::write(&src, &data).unwrap();
    let Some(src_dev) = Loop::attach(&src) else {
        eprintln!("no loop devices here: skipped");
        return;
    };
    // A block device SRC (read with O_DIRECT) against its own file.
    let (code, doc) = verify_json(&[], &src_dev.0, s(&src));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["src_size"], 2 << 20);
    // The device is read in larger pieces than the file: a difference
    // late in the file is still found.
    let copy = dir.join("copy.img");
    let mut copy_data = data.clone();
    flip(&mut copy_data, (3 << 19) + 1);
    fs::write(&copy, &copy_data).unwrap();
    let (code, doc) = verify_json(&[], &src_dev.0, s(&copy));
    assert_eq!(code, 3, "{doc}");
    assert_eq!(differences(&doc), [(3 << 19, BS)]);
    let (code, doc) = verify_json(&[], s(&copy), &src_dev.0);
    assert_eq!(code, 3, "{doc}");
    assert_eq!(differences(&doc), [(3 << 19, BS)]);

    // A device smaller than SRC cannot be repaired: refused, untouched.
    let small = dir.join("small.img");
    let mut small_data = data[..1 << 20].to_vec();
    flip(&mut small_data, 5);
    fs::write(&small, &small_data).unwrap();
    let small_dev = Loop::attach(&small).expect("a second loop device");
    let (code, doc) = verify_json(&[], s(&src), &small_dev.0);
    assert_eq!(code, 3);
    assert_eq!(differences(&doc), [(0, BS), (1 << 20, 1 << 20)]);
    let o = run(&["verify", "--repair", s(&src), &small_dev.0]);
    assert_clean_failure(
        &o,
        "the block device is 1048576 bytes, smaller than SRC (2097152 bytes): --repair cannot make it a copy",
    );
    drop(small_dev);
    assert_same(&small, &small_data, "nothing written");

    // A device larger than SRC: repaired, but its tail remains (exit 3).
    let big = dir.join("big.img");
    let mut big_data = data.clone();
    big_data.extend_from_slice(&[3u8; 1 << 20]);
    flip(&mut big_data, 100_000);
    fs::write(&big, &big_data).unwrap();
    let big_dev = Loop::attach(&big).expect("a third loop device");
    let o = run(&["verify", "--repair", s(&src), &big_dev.0]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("its last 1048576 bytes remain"),
        "{}",
        stdout(&o)
    );
    let (code, doc) = verify_json(&[], s(&src), &big_dev.0);
    assert_eq!(code, 3);
    assert_eq!(differences(&doc), [(2 << 20, 1 << 20)], "only the tail");
    drop(big_dev);
    assert_same_bytes(&fs::read(&big).unwrap()[..2 << 20], &data, "big");
}
