//! The store module (`lvmsync::store`) against both kinds: a local directory
//! and a real S3 server (s3s-fs on 127.0.0.1, see tests/suite/common/s3.rs).

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::common::s3::{self, S3Server};
use crate::common::{assert_same_bytes, random, scratch, Scratch};
use lvmsync::store::{Location, Store, StoreError, StoreOptions};

const MIB: usize = 1 << 20;
const BUCKET: &str = "archive";

/// A store of one kind, with what it needs kept alive.
struct Fixture {
    kind: &'static str,
    store: Store,
    server: Option<S3Server>,
    dir: Scratch,
}

impl Fixture {
    /// The local directory the store writes to, for the local kind.
    fn local_dir(&self) -> Option<std::path::PathBuf> {
        match self.store.location() {
            Location::Local(dir) => Some(dir.clone()),
            Location::S3 { .. } => None,
        }
    }
}

fn local(name: &str) -> Fixture {
    let dir = scratch(&format!("store-local-{name}"));
    let location = Location::parse(dir.join("archive").to_str().unwrap()).unwrap();
    let options = StoreOptions {
        create: true,
        ..StoreOptions::default()
    };
    let store = Store::open(&location, &options).expect("open a local store");
    Fixture {
        kind: "local",
        store,
        server: None,
        dir,
    }
}

/// A store on a fresh s3s-fs, under a prefix of its bucket.
fn s3(name: &str) -> Fixture {
    let dir = scratch(&format!("store-s3-{name}"));
    let server = S3Server::start(&dir);
    server.create_bucket(BUCKET);
    let location = Location::parse(&format!("s3://{BUCKET}/vols")).unwrap();
    let store = Store::open(&location, &server.options()).expect("open an S3 store");
    Fixture {
        kind: "s3",
        store,
        server: Some(server),
        dir,
    }
}

fn both(name: &str) -> [Fixture; 2] {
    [local(name), s3(name)]
}

/// Asserts that an error is one line and names each of `names`.
fn assert_names(e: &StoreError, names: &[&str]) {
    let text = e.to_string();
    assert!(!text.contains('\n'), "one line: {text:?}");
    for name in names {
        assert!(text.contains(name), "{name:?} in {text:?}");
    }
}

fn keys(store: &Store, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

/// The files under a directory, recursively, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn put_new_put_get_head_list_delete() {
    for f in both("basic") {
        let s = &f.store;
        let kind = f.kind;
        let location = s.location().to_string();
        let before = SystemTime::now() - Duration::from_secs(5);

        s.put_new("vg0/root/catalogue", b"first".to_vec()).unwrap();
        let e = s
            .put_new("vg0/root/catalogue", b"other".to_vec())
            .unwrap_err();
        assert!(matches!(e, StoreError::Exists { .. }), "{kind}: {e}");
        assert_names(&e, &[&location, "vg0/root/catalogue", "already exists"]);
        assert_eq!(
            s.get("vg0/root/catalogue", 100).unwrap(),
            b"first",
            "{kind}"
        );

        s.put("vg0/root/catalogue", b"second".to_vec()).unwrap();
        assert_eq!(
            s.get("vg0/root/catalogue", 100).unwrap(),
            b"second",
            "{kind}"
        );
        let meta = s.head("vg0/root/catalogue").unwrap().expect("head");
        assert_eq!(meta.key, "vg0/root/catalogue");
        assert_eq!(meta.size, 6, "{kind}");
        assert!(meta.e_tag.is_some(), "{kind}");
        assert!(meta.last_modified > before, "{kind}");
        assert_eq!(s.head("vg0/root/nothing").unwrap(), None, "{kind}");
        let e = s.get("vg0/root/nothing", 100).unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{kind}: {e}");
        assert_names(&e, &[&location, "vg0/root/nothing"]);
        let e = s.reader("vg0/root/nothing").expect_err("no reader");
        assert!(matches!(e, StoreError::NotFound { .. }), "{kind}: {e}");

        s.put_new("vg0/root/delta-1", random(1000, 1)).unwrap();
        s.put_new("vg0/rootfs/delta-1", random(10, 2)).unwrap();
        s.put_new("vg1/home/delta-1", Vec::new()).unwrap();
        assert_eq!(
            keys(s, "vg0/root"),
            ["vg0/root/catalogue", "vg0/root/delta-1"],
            "{kind}"
        );
        assert_eq!(keys(s, "vg0/root/"), keys(s, "vg0/root"), "{kind}");
        assert_eq!(
            keys(s, "vg0/ro"),
            Vec::<String>::new(),
            "whole segments; {kind}"
        );
        assert_eq!(keys(s, "").len(), 4, "{kind}");
        let listed = s.list("vg0").unwrap();
        assert_eq!(
            listed.iter().map(|m| m.size).collect::<Vec<_>>(),
            [6, 1000, 10],
            "{kind}"
        );
        assert_eq!(s.get("vg1/home/delta-1", 0).unwrap(), b"", "{kind}");

        // Ranges.
        let whole = random(1000, 1);
        assert_eq!(
            s.get_range("vg0/root/delta-1", 10..300).unwrap(),
            &whole[10..300]
        );
        assert_eq!(
            s.get_range("vg0/root/delta-1", 999..1000).unwrap(),
            &whole[999..]
        );
        assert_eq!(s.get_range("vg0/root/delta-1", 5..5).unwrap(), b"");
        for range in [990..1001, 1000..1010, 2000..3000] {
            let e = s.get_range("vg0/root/delta-1", range.clone()).unwrap_err();
            assert!(
                matches!(e, StoreError::OutOfRange { size: 1000, .. }),
                "{kind} {range:?}: {e}"
            );
            assert_names(&e, &[&location, "vg0/root/delta-1", "1000 bytes"]);
        }
        let e = s.get_range("vg0/root/nothing", 0..10).unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{kind}: {e}");

        // A small object read through the streaming reader.
        let mut read = Vec::new();
        s.reader("vg0/root/delta-1")
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, whole, "{kind}");

        // Delete, twice.
        s.delete("vg0/root/delta-1").unwrap();
        assert_eq!(s.head("vg0/root/delta-1").unwrap(), None, "{kind}");
        assert_eq!(keys(s, "vg0/root"), ["vg0/root/catalogue"], "{kind}");
        s.delete("vg0/root/delta-1").unwrap();
        s.put_new("vg0/root/delta-1", b"again".to_vec()).unwrap();

        // Keys that could escape or confuse are refused before any request.
        for key in ["", "../x", "a/../b", "/a", "a/", "a//b", "a\nb", "a#1"] {
            let e = s.put(key, b"x".to_vec()).unwrap_err();
            assert!(
                matches!(e, StoreError::BadKey { .. }),
                "{kind} {key:?}: {e}"
            );
            assert!(!e.to_string().contains('\n'), "{e}");
        }

        // The objects are where the kind keeps them.
        match f.local_dir() {
            Some(dir) => assert_eq!(
                files_under(&dir),
                [
                    "vg0/root/catalogue",
                    "vg0/root/delta-1",
                    "vg0/rootfs/delta-1",
                    "vg1/home/delta-1"
                ]
            ),
            None => {
                let root = f.server.as_ref().unwrap().root.join(BUCKET).join("vols");
                assert_eq!(
                    std::fs::read(root.join("vg0/root/catalogue")).unwrap(),
                    b"second"
                );
            }
        }
    }
}

#[test]
fn get_refuses_objects_larger_than_its_limit() {
    for f in both("max-len") {
        let s = &f.store;
        s.put("big", random(100_000, 3)).unwrap();
        assert_eq!(
            s.get("big", 100_000).unwrap(),
            random(100_000, 3),
            "{}",
            f.kind
        );
        let e = s.get("big", 99_999).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::TooLarge {
                    size: 100_000,
                    max_len: 99_999,
                    ..
                }
            ),
            "{}: {e}",
            f.kind
        );
        assert_names(
            &e,
            &[&s.location().to_string(), "big", "100000 bytes", "99999"],
        );
    }
}

#[test]
fn streamed_upload_of_40_mib_goes_up_in_parts_and_arrives_whole() {
    let size = 40 * MIB;
    let payload = random(size, 40);
    for f in both("upload-40") {
        let s = &f.store;
        let kind = f.kind;
        let mut upload = s.upload("vg0/root/seed").unwrap();
        // Odd-sized writes, as a delta stream makes them.
        for chunk in payload.chunks(MIB + 4099) {
            upload.write(chunk).unwrap();
        }
        assert_eq!(upload.size(), size as u64);
        assert!(
            upload.parts() >= 3,
            "{kind}: {} parts sent before finish",
            upload.parts()
        );
        // Nothing is visible before the upload finishes.
        assert_eq!(s.head("vg0/root/seed").unwrap(), None, "{kind}");
        assert!(keys(s, "vg0").is_empty(), "{kind}");
        let done = upload.finish().unwrap();
        assert_eq!(done.size, size as u64);
        assert_eq!(done.parts, 5, "{kind}: 8 MiB parts");
        if kind == "s3" {
            // S3's multipart e_tag: the hash of the parts' hashes, "-" and
            // their count.
            let e_tag = done.e_tag.clone().unwrap_or_default();
            assert!(e_tag.trim_matches('"').ends_with("-5"), "{e_tag}");
        }

        let meta = s
            .head("vg0/root/seed")
            .unwrap()
            .expect("visible after finish");
        assert_eq!(meta.size, size as u64, "{kind}");
        let mut read = Vec::new();
        let mut reader = s.reader("vg0/root/seed").unwrap();
        assert_eq!(reader.size(), size as u64);
        reader.read_to_end(&mut read).unwrap();
        assert_eq!(read.len(), size, "{kind}");
        assert_same_bytes(&read, &payload, kind);
        // Across a part boundary.
        let range = (8 * MIB - 100) as u64..(8 * MIB + 100) as u64;
        assert_eq!(
            s.get_range("vg0/root/seed", range.clone()).unwrap(),
            &payload[range.start as usize..range.end as usize]
        );

        // A small upload goes up in one request.
        let mut small = s.upload("vg0/root/small").unwrap();
        small.write(b"hello ").unwrap();
        small.write(b"world").unwrap();
        let done = small.finish().unwrap();
        assert_eq!((done.size, done.parts), (11, 0), "{kind}");
        assert_eq!(s.get("vg0/root/small", 11).unwrap(), b"hello world");

        // An upload replaces what is under its key, when it finishes.
        let mut again = s.upload("vg0/root/small").unwrap();
        again.write(&random(9 * MIB, 9)).unwrap();
        assert_eq!(s.get("vg0/root/small", 11).unwrap(), b"hello world");
        assert_eq!(again.finish().unwrap().parts, 2, "{kind}");
        assert_eq!(
            s.head("vg0/root/small").unwrap().unwrap().size,
            9 * MIB as u64
        );
    }
}

#[test]
fn an_upload_dropped_or_aborted_midway_leaves_nothing() {
    for f in both("upload-abandoned") {
        let s = &f.store;
        let kind = f.kind;
        s.put("vg0/root/kept", b"old".to_vec()).unwrap();

        // Dropped after two parts went out.
        let mut upload = s.upload("vg0/root/dropped").unwrap();
        upload.write(&random(20 * MIB, 5)).unwrap();
        assert!(upload.parts() >= 2, "{kind}");
        drop(upload);

        // Aborted.
        let mut upload = s.upload("vg0/root/aborted").unwrap();
        upload.write(&random(12 * MIB, 6)).unwrap();
        assert!(upload.parts() >= 1, "{kind}");
        upload.abort().unwrap();

        // Dropped before any part, over an existing object.
        let mut upload = s.upload("vg0/root/kept").unwrap();
        upload.write(&random(3 * MIB, 7)).unwrap();
        drop(upload);

        // Dropped with parts out, over an existing object.
        let mut upload = s.upload("vg0/root/kept").unwrap();
        upload.write(&random(17 * MIB, 8)).unwrap();
        drop(upload);

        for key in ["vg0/root/dropped", "vg0/root/aborted"] {
            assert_eq!(s.head(key).unwrap(), None, "{kind} {key}");
        }
        assert_eq!(keys(s, ""), ["vg0/root/kept"], "{kind}");
        assert_eq!(s.get("vg0/root/kept", 10).unwrap(), b"old", "{kind}");

        // No staging files or parts are left behind.
        match (f.local_dir(), &f.server) {
            (Some(dir), _) => assert_eq!(files_under(&dir), ["vg0/root/kept"]),
            (None, Some(server)) => {
                assert_eq!(
                    server.upload_parts(),
                    Vec::<String>::new(),
                    "multipart uploads aborted"
                )
            }
            (None, None) => unreachable!(),
        }
    }
}

#[test]
fn a_server_killed_midway_through_an_upload_is_an_error_within_seconds() {
    let mut f = s3("killed");
    let mut upload = f.store.upload("vg0/root/seed").unwrap();
    upload.write(&random(20 * MIB, 11)).unwrap();
    assert!(upload.parts() >= 2);
    f.server.as_mut().unwrap().kill();

    let started = Instant::now();
    let mut result = Ok(());
    for chunk in random(20 * MIB, 12).chunks(MIB) {
        result = upload.write(chunk);
        if result.is_err() {
            break;
        }
    }
    let e = match result {
        Err(e) => {
            // The upload is abandoned.
            assert!(upload.write(b"more").is_err());
            assert!(upload.finish().is_err());
            e
        }
        Ok(()) => upload.finish().expect_err("finish with the server gone"),
    };
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "the error took {took:?}");
    let server = f.server.as_mut().unwrap();
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    assert_names(
        &e,
        &[&server.endpoint(), "s3://archive/vols", "vg0/root/seed"],
    );

    // Nothing is visible under the key once the server is back.
    server.restart();
    let store = Store::open(f.store.location(), &server.options()).unwrap();
    assert_eq!(store.head("vg0/root/seed").unwrap(), None);
    assert!(store.list("").unwrap().is_empty());
    drop(f.dir);
}

#[test]
fn a_server_that_stops_answering_is_an_error_within_seconds() {
    let f = s3("hung");
    f.store.put("obj", b"x".to_vec()).unwrap();
    let server = f.server.as_ref().unwrap();
    let options = StoreOptions {
        request_timeout: Duration::from_secs(2),
        ..server.options()
    };
    let store = Store::open(f.store.location(), &options).unwrap();
    server.pause();
    let started = Instant::now();
    let e = store.get("obj", 10).unwrap_err();
    let took = started.elapsed();
    server.resume();
    assert!(took < Duration::from_secs(15), "the error took {took:?}");
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    assert_names(&e, &[&server.endpoint(), "object obj", "no answer in time"]);
    assert_eq!(store.get("obj", 10).unwrap(), b"x");
}

#[test]
fn wrong_credentials_are_access_denied() {
    let dir = scratch("store-s3-credentials");
    let server = S3Server::start(&dir);
    server.create_bucket(BUCKET);
    let location = Location::parse("s3://archive").unwrap();

    let mut options = server.options();
    options.credentials.as_mut().unwrap().secret_access_key = "not-the-secret".into();
    let e = Store::open(&location, &options).unwrap_err();
    assert!(matches!(e, StoreError::AccessDenied { .. }), "{e}");
    assert_names(
        &e,
        &[
            "s3://archive",
            "access denied",
            "AWS_SECRET_ACCESS_KEY",
            "SignatureDoesNotMatch",
        ],
    );

    let mut options = server.options();
    options.credentials.as_mut().unwrap().access_key_id = "AKNOBODY".into();
    let e = Store::open(&location, &options).unwrap_err();
    assert!(matches!(e, StoreError::AccessDenied { .. }), "{e}");
    assert_names(&e, &["s3://archive", "access denied", "AWS_ACCESS_KEY_ID"]);

    // The right ones work.
    Store::open(&location, &server.options()).unwrap();
}

#[test]
fn a_missing_bucket_is_named() {
    let dir = scratch("store-s3-bucket");
    let server = S3Server::start(&dir);
    server.create_bucket(BUCKET);
    let location = Location::parse("s3://no-such-bucket/vols").unwrap();
    let e = Store::open(&location, &server.options()).unwrap_err();
    assert!(matches!(e, StoreError::NoSuchBucket { .. }), "{e}");
    assert_names(
        &e,
        &[
            "s3://no-such-bucket/vols",
            "no bucket no-such-bucket",
            &server.endpoint(),
        ],
    );
}

#[test]
fn nothing_listening_on_the_endpoint_is_named_within_seconds() {
    let port = s3::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let options = StoreOptions {
        endpoint: Some(endpoint.clone()),
        credentials: Some(lvmsync::store::S3Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "SK".into(),
            session_token: None,
        }),
        max_retries: 2,
        retry_timeout: Duration::from_secs(3),
        ..StoreOptions::default()
    };
    let started = Instant::now();
    let e = Store::open(&Location::parse("s3://archive").unwrap(), &options).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    assert_names(
        &e,
        &["s3://archive", "cannot connect", &endpoint, "refused"],
    );
}

#[test]
fn bad_locations_and_directories_are_refused() {
    for (text, why) in [
        ("http://127.0.0.1:9000/bucket", "http:// is not supported"),
        (
            "https://s3.amazonaws.com/bucket",
            "https:// is not supported",
        ),
        ("s3://", "no bucket name"),
        ("s3:///prefix", "no bucket name"),
        ("s3://Upper_Case", "S3 bucket names are 3 to 63"),
        ("s3://ab", "S3 bucket names are 3 to 63"),
        ("s3://bucket/a//b", "empty segment"),
        ("s3://bucket/../up", "\"..\""),
        ("s3:bucket", "s3://BUCKET"),
        ("file://host/dir", "file:///DIR"),
        ("", "empty"),
    ] {
        let e = Location::parse(text).unwrap_err();
        assert!(matches!(e, StoreError::BadLocation { .. }), "{text}: {e}");
        assert_names(&e, &[&format!("{text:?}"), why]);
    }

    let dir = scratch("store-local-refusals");
    let missing = dir.join("missing");
    let location = Location::parse(missing.to_str().unwrap()).unwrap();
    let e = Store::open(&location, &StoreOptions::default()).unwrap_err();
    assert!(matches!(e, StoreError::NoSuchDirectory { .. }), "{e}");
    assert_names(&e, &[missing.to_str().unwrap(), "no such directory"]);
    assert!(!missing.exists());
    let create = StoreOptions {
        create: true,
        ..StoreOptions::default()
    };
    let store = Store::open(&location, &create).unwrap();
    assert!(missing.is_dir());
    store.put_new("x", b"1".to_vec()).unwrap();
    assert_eq!(std::fs::read(missing.join("x")).unwrap(), b"1");

    let file = dir.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let url = format!("file://{}", file.display());
    let e = Store::open(&Location::parse(&url).unwrap(), &create).unwrap_err();
    assert!(matches!(e, StoreError::NotADirectory { .. }), "{e}");
    assert_names(&e, &[file.to_str().unwrap(), "not a directory"]);

    let options = StoreOptions {
        part_size: 1 << 20,
        ..StoreOptions::default()
    };
    let e = Store::open(&location, &options).unwrap_err();
    assert!(matches!(e, StoreError::BadSettings { .. }), "{e}");
    assert_names(&e, &["part size 1048576"]);
}

#[test]
fn a_reader_refuses_an_object_replaced_while_it_reads() {
    // The local kind checks the e_tag of each block it fetches (s3s-fs
    // ignores If-Match on GET).
    let f = local("replaced");
    let s = &f.store;
    s.put("obj", random(30 * MIB, 20)).unwrap();
    let mut reader = s.reader("obj").unwrap();
    let mut first = vec![0; 1000];
    reader.read_exact(&mut first).unwrap();
    assert_eq!(first, random(1000, 20));
    // Past what is fetched ahead, the blocks come from the new object.
    std::thread::sleep(Duration::from_millis(20));
    s.put("obj", random(30 * MIB, 21)).unwrap();
    let mut rest = Vec::new();
    let e = reader.read_to_end(&mut rest).unwrap_err();
    let e = e.into_inner().expect("a store error");
    let e = e.downcast::<StoreError>().expect("a store error");
    assert!(matches!(*e, StoreError::Changed { .. }), "{e}");
    assert_names(&e, &["obj", "changed while it was being read"]);
}
