//! The archive on both kinds of store (a local directory, and a real S3
//! server: s3s-fs on 127.0.0.1): points stored through the library as
//! `backup` stores them (a seed, then deltas of COW images), and restored,
//! listed, checked and pruned through the binary as a user does. Faults:
//! a damaged, cut or missing object; the server killed midway through an
//! upload; wrong credentials, a missing bucket, a bad URL; two runs
//! changing one volume at once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::images::{cow_image, random, words};
use crate::common::s3::S3Server;
use crate::common::{
    assert_ok, assert_same, clean_failure, command, json, s, scratch, stderr, stdout, Scratch,
};
use lvmsync::archive::catalog::Origin;
use lvmsync::archive::index::Index;
use lvmsync::archive::{Archive, ArchiveError, NewVolume};
use lvmsync::blockdev::Source;
use lvmsync::changes::ChangeSource;
use lvmsync::send::Delta;
use lvmsync::store::StoreOptions;
use lvmsync::stream::{Compression, PointInTime, KIND_DATA};

const CHUNK: u64 = 4096;
const SIZE: usize = (6 << 20) + 2048;
const VOLUME: &str = "host1/vg/data";
const BUCKET: &str = "backups";
/// Midnight, 2026-11-01 UTC; points are a day apart from there.
const DAY0: i64 = 1_793_491_200;

/// An archive on one kind of store, and how the binary reaches it.
struct Kit {
    kind: &'static str,
    dir: Scratch,
    server: Option<S3Server>,
    /// ARCHIVE as a user writes it.
    location: String,
    options: StoreOptions,
}

impl Kit {
    fn local(name: &str) -> Kit {
        let dir = scratch(&format!("archive-local-{name}"));
        let location = dir.join("archive").display().to_string();
        Kit {
            kind: "local",
            dir,
            server: None,
            location,
            options: StoreOptions::default(),
        }
    }

    fn s3(name: &str) -> Kit {
        let dir = scratch(&format!("archive-s3-{name}"));
        let server = S3Server::start(&dir);
        server.create_bucket(BUCKET);
        let options = server.options();
        Kit {
            kind: "s3",
            dir,
            server: Some(server),
            location: format!("s3://{BUCKET}/lvm"),
            options,
        }
    }

    fn both(name: &str) -> [Kit; 2] {
        [Kit::local(name), Kit::s3(name)]
    }

    fn open(&self) -> Archive {
        Archive::open(&self.location, &self.options, true).expect("open the archive")
    }

    /// Runs the binary with the store's settings (endpoint, credentials).
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = command();
        cmd.args(args);
        if let Some(server) = &self.server {
            cmd.args(["--s3-endpoint", &server.endpoint()])
                .env("AWS_ACCESS_KEY_ID", &server.access_key)
                .env("AWS_SECRET_ACCESS_KEY", &server.secret_key);
        }
        cmd.output().expect("run lvmsync-rs")
    }

    /// The file that holds object `key` of the archive.
    fn object_file(&self, key: &str) -> PathBuf {
        match &self.server {
            Some(server) => server.root.join(BUCKET).join("lvm").join(key),
            None => Path::new(&self.location).join(key),
        }
    }
}

/// A volume and the points stored of it: its content at each point.
struct Volume {
    img: PathBuf,
    states: Vec<Vec<u8>>,
}

fn pit(k: usize) -> PointInTime {
    PointInTime {
        origin_uuid: "origin-uuid".into(),
        snapshot_uuid: format!("snapshot-{k}"),
        snapshot: format!("vg/data-lvmsync-{k}"),
        time: format!("day {k}"),
    }
}

fn new_volume() -> NewVolume {
    NewVolume {
        volume: VOLUME.into(),
        origin: Origin {
            host: "host1".into(),
            name: "vg/data".into(),
            uuid: "origin-uuid".into(),
        },
    }
}

/// Stores `points` points of a volume in `kit`'s archive: a seed of an
/// image (random data and a run of zeroes), then each time a few chunks
/// changed (random, zeroes, and one run longer than a record), sent from
/// a COW image that lists them, as `backup` sends a snapshot's changes.
fn store_points(kit: &Kit, points: usize) -> Volume {
    store_points_with(kit, points, Compression::Lz4)
}

/// The same, the deltas compressed with `compression` (and for another
/// codec than lz4, the new data text rather than random).
fn store_points_with(kit: &Kit, points: usize, compression: Compression) -> Volume {
    let archive = kit.open();
    let img = kit.dir.join("volume.img");
    let mut data = random(SIZE, 7);
    data[(2 << 20)..(3 << 20)].fill(0);
    fs::write(&img, &data).unwrap();
    let mut states = vec![Vec::new(), data.clone()];
    let mut seed = Delta::full_copy(Source::open(&img).unwrap(), Compression::Lz4);
    seed.header.target = Some(pit(1));
    archive
        .store_point(None, new_volume(), &seed, pit(1), DAY0 + 86400, |_| {})
        .unwrap();
    for k in 2..=points {
        let mut chunks: Vec<u64> = (0..12).map(|i| (k as u64 * 37 + i * 101) % 1500).collect();
        chunks.extend(k as u64 * 10..k as u64 * 10 + 300);
        let mut fresh = random(chunks.len() * CHUNK as usize, k as u64);
        if compression != Compression::Lz4 {
            // Text, which zstd would group (see the test of zstd below).
            words(&mut fresh, &mut lvmsync::cowgen::Rng(k as u64));
        }
        for (i, c) in chunks.iter().enumerate() {
            let start = (*c * CHUNK) as usize;
            let end = (start + CHUNK as usize).min(SIZE);
            if i % 5 == 0 {
                data[start..end].fill(0);
            } else {
                data[start..end].copy_from_slice(&fresh[i * CHUNK as usize..][..end - start]);
            }
        }
        fs::write(&img, &data).unwrap();
        let cow = kit.dir.join(format!("snap{k}.cow"));
        cow_image(&cow, CHUNK, &chunks);
        let source = ChangeSource::CowImage {
            path: cow,
            origin_size: Some(SIZE as u64),
        };
        let mut delta = Delta::of_changes(&source, Some(&img), compression).unwrap();
        delta.header.base = Some(pit(k - 1));
        delta.header.target = Some(pit(k));
        let catalog = archive.catalog(VOLUME).unwrap();
        archive
            .store_point(
                catalog,
                new_volume(),
                &delta,
                pit(k),
                DAY0 + k as i64 * 86400,
                |_| {},
            )
            .unwrap();
        states.push(data.clone());
    }
    Volume { img, states }
}

fn restore(kit: &Kit, point: usize, dest: &Path, extra: &[&str]) -> Output {
    let spec = format!("{VOLUME}@{point}");
    let mut args = vec!["restore", "--json"];
    args.extend_from_slice(extra);
    args.extend([kit.location.as_str(), spec.as_str(), s(dest)]);
    kit.run(&args)
}

#[test]
fn every_point_restores_exactly_and_only_the_difference_when_dest_holds_another() {
    for kit in Kit::both("restore") {
        let v = store_points(&kit, 5);
        for k in 1..=5 {
            let dest = kit.dir.join(format!("r{k}.img"));
            let out = restore(&kit, k, &dest, &["--create"]);
            assert_ok(&out);
            assert_same(&dest, &v.states[k], &format!("{}: point {k}", kit.kind));
            let doc = json(&out);
            assert_eq!(doc["from_point"], serde_json::Value::Null);
            assert_eq!(doc["deltas"], k);
        }
        // Forwards, from point 2, and back, from point 5: only what differs
        // is read and written.
        let dest = kit.dir.join("r2.img");
        let whole = json(&restore(&kit, 5, &kit.dir.join("r5.img"), &["--full"]));
        let out = restore(&kit, 5, &dest, &[]);
        assert_ok(&out);
        assert_same(&dest, &v.states[5], &format!("{}: forward", kit.kind));
        let forward = json(&out);
        assert_eq!(forward["from_point"], 2);
        assert!(forward["bytes_written"].as_u64() < whole["bytes_written"].as_u64());
        assert!(forward["bytes_read"].as_u64() < whole["bytes_read"].as_u64());
        let out = restore(&kit, 3, &dest, &[]);
        assert_ok(&out);
        assert_same(&dest, &v.states[3], &format!("{}: back", kit.kind));
        assert_eq!(json(&out)["from_point"], 5);
        // The same point again: nothing to write.
        let again = json(&restore(&kit, 3, &dest, &[]));
        assert_eq!(again["bytes_written"], 0);
        // A file DEST longer than the volume is cut to it by a whole
        // restore.
        let long = kit.dir.join("long.img");
        fs::write(&long, random(SIZE + 12345, 3)).unwrap();
        assert_ok(&restore(&kit, 4, &long, &[]));
        assert_same(&long, &v.states[4], &format!("{}: longer file", kit.kind));
        // The latest, by default.
        let latest = kit.dir.join("latest.img");
        let spec = VOLUME.to_string();
        assert_ok(&kit.run(&["restore", "--create", &kit.location, &spec, s(&latest)]));
        assert_same(&latest, &v.states[5], &format!("{}: latest", kit.kind));
        let _ = v.img;
    }
}

#[test]
fn list_check_and_prune_keep_every_kept_point_restorable() {
    for kit in Kit::both("prune") {
        let v = store_points(&kit, 5);
        let list = json(&kit.run(&["archive", "list", "--json", &kit.location]));
        let points = list["volumes"][0]["points"].as_array().unwrap().clone();
        assert_eq!(points.len(), 5, "{list}");
        assert_eq!(points[0]["kind"], "seed");
        assert_eq!(points[4]["base"], 4);
        let text = kit.run(&["archive", "list", &kit.location]);
        assert_ok(&text);
        assert!(String::from_utf8_lossy(&text.stdout).contains("host1/vg/data: vg/data on host1"));
        let check = kit.run(&["archive", "check", "--read-data", "--json", &kit.location]);
        assert_ok(&check);
        assert_eq!(json(&check)["whole"], true);
        assert_eq!(json(&check)["volumes"][0]["deltas_read"], 5);
        // For cron: a whole archive checked with -q prints nothing.
        let quiet = kit.run(&["archive", "check", "-q", &kit.location]);
        assert_ok(&quiet);
        assert!(
            quiet.stdout.is_empty() && quiet.stderr.is_empty(),
            "{quiet:?}"
        );

        // A dry run changes nothing.
        let dry = kit.run(&[
            "archive",
            "prune",
            "-n",
            "--json",
            "--keep-last",
            "2",
            &kit.location,
        ]);
        assert_ok(&dry);
        assert_eq!(
            json(&dry)["volumes"][0]["dropped"],
            serde_json::json!([1, 2, 3])
        );
        let list = json(&kit.run(&["archive", "list", "--json", &kit.location]));
        assert_eq!(list["volumes"][0]["points"].as_array().unwrap().len(), 5);

        // Keep the last 2, and the latest of each of 2 days: 3, 4, 5
        // (points are a day apart).
        let out = kit.run(&[
            "archive",
            "prune",
            "--json",
            "--keep-last",
            "1",
            "--keep-daily",
            "3",
            &kit.location,
        ]);
        assert_ok(&out);
        let pruned = &json(&out)["volumes"][0];
        assert_eq!(pruned["kept"], serde_json::json!([3, 4, 5]), "{pruned}");
        assert_eq!(pruned["merged"], serde_json::json!([3]));
        for k in 3..=5 {
            let dest = kit.dir.join(format!("p{k}.img"));
            assert_ok(&restore(&kit, k, &dest, &["--create"]));
            assert_same(
                &dest,
                &v.states[k],
                &format!("{}: point {k} after the prune", kit.kind),
            );
        }
        let gone = restore(&kit, 1, &kit.dir.join("p1.img"), &["--create"]);
        if let Err(why) = clean_failure(
            &gone,
            "no point 1; the archive holds points 3 (2026-11-04T00:00:00Z), 4 (",
        ) {
            panic!("{}: {why}", kit.kind);
        }
        assert!(!kit.dir.join("p1.img").exists());
        let check = json(&kit.run(&["archive", "check", "--read-data", "--json", &kit.location]));
        assert_eq!(check["whole"], true, "{check}");
        // The objects of the dropped points are gone; the merged delta is
        // a seed now.
        let archive = kit.open();
        let catalog = archive.catalog(VOLUME).unwrap().unwrap();
        assert_eq!(catalog.points[0].delta.base, None);
        assert_eq!(catalog.points[0].delta.kind, "merged");
        let objects = archive
            .store()
            .list(&format!("volumes/{VOLUME}/deltas"))
            .unwrap();
        assert_eq!(objects.len(), 6, "{}: {objects:?}", kit.kind);

        // Prune again to the last one, quietly: it becomes a seed too.
        let quiet = kit.run(&[
            "archive",
            "prune",
            "-q",
            "--keep-last",
            "1",
            &kit.location,
            VOLUME,
        ]);
        assert_ok(&quiet);
        assert!(
            quiet.stdout.is_empty() && quiet.stderr.is_empty(),
            "{quiet:?}"
        );
        let dest = kit.dir.join("last.img");
        assert_ok(&restore(&kit, 5, &dest, &["--create"]));
        assert_same(
            &dest,
            &v.states[5],
            &format!("{}: the last point alone", kit.kind),
        );
    }
}

#[test]
fn zstd_deltas_are_stored_without_groups_and_restore_exactly() {
    // A GROUP's records can only be read together; the archive reads
    // single records by ranges, so its deltas have none, even with zstd,
    // which groups small records elsewhere.
    let kit = Kit::local("zstd");
    let v = store_points_with(&kit, 3, Compression::ZSTD);
    let archive = kit.open();
    let catalog = archive.catalog(VOLUME).unwrap().unwrap();
    for point in &catalog.points[1..] {
        let object = archive.get_object(&point.delta.key, 64 << 20).unwrap();
        assert_eq!(object[8], 4, "a zstd delta, format version 4");
        let mut reader = lvmsync::stream::Reader::open(&object[..]).unwrap();
        let mut records = 0;
        while let Some(rec) = reader.next_record().unwrap() {
            assert!(!rec.grouped, "a record in a GROUP at byte {}", rec.at);
            records += 1;
        }
        assert!(records > 10, "{records} records");
    }
    assert_ok(&kit.run(&["archive", "check", "--read-data", &kit.location]));
    for k in 1..=3 {
        let dest = kit.dir.join(format!("z{k}.img"));
        assert_ok(&restore(&kit, k, &dest, &["--create"]));
        assert_same(&dest, &v.states[k], &format!("zstd: point {k}"));
    }
}

/// The record at the middle of a delta's DATA records: its index entry.
fn a_data_record(archive: &Archive, point: usize) -> (String, u64) {
    let catalog = archive.catalog(VOLUME).unwrap().unwrap();
    let delta = &catalog.points[point - 1].delta;
    let index = Index::decode(&archive.get_object(&delta.index, 1 << 20).unwrap()).unwrap();
    let data: Vec<_> = index
        .records
        .iter()
        .filter(|r| r.kind == KIND_DATA)
        .collect();
    let r = data[data.len() / 2];
    (delta.key.clone(), r.at + 40 + u64::from(r.stored) / 2)
}

#[test]
fn a_damaged_cut_or_missing_object_is_named_and_nothing_unchecked_is_written() {
    for kit in Kit::both("damage") {
        let v = store_points(&kit, 3);
        let archive = kit.open();
        let catalog = archive.catalog(VOLUME).unwrap().unwrap();

        // A missing index: refused before DEST is touched.
        let dest = kit.dir.join("dest.img");
        fs::write(&dest, &v.states[1]).unwrap();
        let index = catalog.points[1].delta.index.clone();
        let saved = fs::read(kit.object_file(&index)).unwrap();
        fs::remove_file(kit.object_file(&index)).unwrap();
        let out = restore(&kit, 3, &dest, &[]);
        if let Err(why) = clean_failure(&out, &index) {
            panic!("{}: missing index: {why}", kit.kind);
        }
        assert_same(&dest, &v.states[1], "DEST after a missing index");
        fs::write(kit.object_file(&index), &saved).unwrap();

        // A delta cut by a byte: its size differs from the catalogue's.
        let key = catalog.points[2].delta.key.clone();
        let file = kit.object_file(&key);
        let whole = fs::read(&file).unwrap();
        fs::write(&file, &whole[..whole.len() - 1]).unwrap();
        let out = restore(&kit, 3, &dest, &[]);
        if let Err(why) = clean_failure(&out, &format!("{key}: the object is")) {
            panic!("{}: cut delta: {why}", kit.kind);
        }
        assert_same(&dest, &v.states[1], "DEST after a cut delta");

        // A flipped byte in a record's payload: that record is refused
        // before it is written, and DEST is not said to hold the point.
        let (key, at) = a_data_record(&archive, 3);
        let mut bad = whole.clone();
        bad[at as usize] ^= 0x40;
        fs::write(&file, &bad).unwrap();
        let fresh = kit.dir.join("fresh.img");
        let out = restore(&kit, 3, &fresh, &["--create"]);
        if let Err(why) = clean_failure(&out, &format!("{key}: damaged delta: damaged payload")) {
            panic!("{}: damaged record: {why}", kit.kind);
        }
        let state =
            fs::read_to_string(format!("{}.lvmsync-state", fresh.display())).unwrap_or_default();
        assert!(!state.contains("\"holds\": {"), "{}: {state}", kit.kind);
        // check --read-data finds it too, and says which object.
        let check = kit.run(&["archive", "check", "--read-data", &kit.location]);
        assert_eq!(
            check.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        assert!(String::from_utf8_lossy(&check.stdout).contains(&key));
        // -q still names the damaged volume and what is wrong with it.
        let quiet = kit.run(&["archive", "check", "-q", "--read-data", &kit.location]);
        assert_eq!(quiet.status.code(), Some(3));
        let said = String::from_utf8_lossy(&quiet.stdout);
        assert!(said.contains("DAMAGED") && said.contains(&key), "{said}");
        fs::write(&file, &whole).unwrap();
        assert_ok(&restore(&kit, 3, &fresh, &["--full", "--create"]));
        assert_same(
            &fresh,
            &v.states[3],
            "restored after the repair of the object",
        );
    }
}

#[test]
fn an_upload_cut_by_the_server_dying_leaves_no_point_and_the_next_run_stores_it() {
    let mut kit = Kit::s3("killed");
    let archive = kit.open();
    let img = kit.dir.join("big.img");
    let data = random(48 << 20, 11);
    fs::write(&img, &data).unwrap();
    let mut seed = Delta::full_copy(Source::open(&img).unwrap(), Compression::None);
    seed.header.target = Some(pit(1));
    let mut server = kit.server.take().unwrap();
    let stored = std::thread::scope(|scope| {
        let store =
            scope.spawn(|| archive.store_point(None, new_volume(), &seed, pit(1), DAY0, |_| {}));
        // Once parts of the upload are on the server, it dies.
        let mut parts = false;
        for _ in 0..4000 {
            if !server.upload_parts().is_empty() {
                parts = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        server.kill();
        assert!(parts, "the upload never reached the server");
        store.join().unwrap()
    });
    let err = stored.expect_err("a store whose server died midway succeeded");
    assert!(!err.to_string().contains('\n'), "{err}");
    server.restart();
    kit.server = Some(server);
    let archive = kit.open();
    // Whatever the upload left, no catalogue names it: there is no point.
    assert!(archive.catalog(VOLUME).unwrap().is_none());
    let list = json(&kit.run(&["archive", "list", "--json", &kit.location]));
    assert_eq!(list["volumes"], serde_json::json!([]), "{list}");
    // The next run stores it.
    archive
        .store_point(None, new_volume(), &seed, pit(1), DAY0, |_| {})
        .unwrap();
    let dest = kit.dir.join("dest.img");
    assert_ok(&restore(&kit, 1, &dest, &["--create"]));
    assert_same(&dest, &data, "the seed stored by the second run");
}

#[test]
fn bad_urls_credentials_and_buckets_are_one_line_errors_and_nothing_is_written() {
    let kit = Kit::s3("refusals");
    store_points(&kit, 1);
    let server = kit.server.as_ref().unwrap();
    let dest = kit.dir.join("never.img");
    let run = |args: &[&str], secret: &str| {
        command()
            .args(args)
            .args(["--s3-endpoint", &server.endpoint()])
            .env("AWS_ACCESS_KEY_ID", &server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .unwrap()
    };
    let spec = format!("{VOLUME}@1");
    for (args, secret, needle) in [
        (
            vec!["archive", "list", kit.location.as_str()],
            "wrong",
            "access denied",
        ),
        (
            vec![
                "restore",
                "--create",
                kit.location.as_str(),
                spec.as_str(),
                s(&dest),
            ],
            "wrong",
            "access denied",
        ),
        (
            vec!["archive", "list", "s3://nobucket/x"],
            server.secret_key.as_str(),
            "no bucket nobucket",
        ),
        (
            vec!["archive", "list", "http://example.org/x"],
            server.secret_key.as_str(),
            "is not a store location",
        ),
        (
            vec!["archive", "list", "s3://"],
            server.secret_key.as_str(),
            "is not a store location",
        ),
        (
            vec![
                "restore",
                "--create",
                kit.location.as_str(),
                "host1/vg/other",
                s(&dest),
            ],
            server.secret_key.as_str(),
            "no volume host1/vg/other; it holds host1/vg/data",
        ),
        (
            vec![
                "restore",
                "--create",
                kit.location.as_str(),
                "host1/vg/data@9",
                s(&dest),
            ],
            server.secret_key.as_str(),
            "no point 9; the archive holds points 1 (",
        ),
    ] {
        let out = run(&args, secret);
        if let Err(why) = clean_failure(&out, needle) {
            panic!("{args:?}: {why}");
        }
        assert!(!dest.exists(), "{args:?} created DEST");
    }
    // A directory that is not an archive.
    let empty = kit.dir.join("empty");
    fs::create_dir_all(&empty).unwrap();
    let out = command()
        .args(["archive", "list", s(&empty)])
        .output()
        .unwrap();
    if let Err(why) = clean_failure(&out, "not an lvmsync-rs archive") {
        panic!("{why}");
    }
}

#[test]
fn two_runs_changing_one_volume_at_once_cannot_overwrite_each_other() {
    let kit = Kit::local("concurrent");
    let v = store_points(&kit, 2);
    let archive = kit.open();
    let stale = archive.catalog(VOLUME).unwrap();
    let mut delta = Delta::full_copy(Source::open(&v.img).unwrap(), Compression::Lz4);
    delta.header.target = Some(pit(3));
    archive
        .store_point(
            stale.clone(),
            new_volume(),
            &delta,
            pit(3),
            DAY0 + 3 * 86400,
            |_| {},
        )
        .unwrap();
    delta.header.target = Some(pit(4));
    let err = archive
        .store_point(
            stale,
            new_volume(),
            &delta,
            pit(4),
            DAY0 + 4 * 86400,
            |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Concurrent { .. }), "{err}");
    assert!(err.to_string().contains("run it again"));
    let catalog = archive.catalog(VOLUME).unwrap().unwrap();
    let numbers: Vec<u64> = catalog.points.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 3]);
}

/// An encrypted archive on one kind of store: made by `archive init
/// --encryption` with a key file and a passphrase; the kit opens it with
/// the key file.
fn encrypted(kit: &mut Kit) -> PathBuf {
    let key = kit.dir.join("archive.key");
    let out = kit.run_env(
        &[
            "archive",
            "init",
            "--encryption",
            "--key-file",
            s(&key),
            &kit.location,
        ],
        &[(lvmsync::crypt::PASSPHRASE_ENV, "open sesame")],
    );
    assert_ok(&out);
    kit.options.secrets.key_file = Some(key.clone());
    key
}

impl Kit {
    /// [`Kit::run`] with environment variables, and without
    /// LVMSYNC_PASSPHRASE unless given.
    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = command();
        cmd.args(args).env_remove(lvmsync::crypt::PASSPHRASE_ENV);
        if let Some(server) = &self.server {
            cmd.args(["--s3-endpoint", &server.endpoint()])
                .env("AWS_ACCESS_KEY_ID", &server.access_key)
                .env("AWS_SECRET_ACCESS_KEY", &server.secret_key);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run lvmsync-rs")
    }
}

#[test]
fn an_encrypted_archive_restores_exactly_with_its_key_or_passphrase_and_hides_its_contents() {
    for mut kit in Kit::both("crypt") {
        let key = encrypted(&mut kit);
        let v = store_points(&kit, 3);
        let archive = kit.open();
        let catalog = archive.catalog(VOLUME).unwrap().unwrap();
        // Every object but the marker is an envelope, and says nothing.
        let gens = archive.generations(VOLUME).unwrap();
        let mut keys: Vec<String> = gens.iter().map(|(_, k)| k.clone()).collect();
        for p in &catalog.points {
            keys.push(p.delta.key.clone());
            keys.push(p.delta.index.clone());
        }
        for k in &keys {
            let body = fs::read(kit.object_file(k)).unwrap();
            assert_eq!(&body[..8], b"\x89LVMSE\r\n", "{}: {k}", kit.kind);
            for secret in [b"vg/data-lvmsync".as_slice(), b"origin-uuid", b"LVMSD"] {
                assert!(
                    !body.windows(secret.len()).any(|w| w == secret),
                    "{}: {k} shows {secret:?}",
                    kit.kind
                );
            }
        }
        let marker = fs::read_to_string(kit.object_file("lvmsync-archive.json")).unwrap();
        assert!(marker.contains("\"lvmsync_archive\": 2"), "{marker}");
        // Each point, with the key file.
        let k = s(&key).to_string();
        for p in 1..=3 {
            let dest = kit.dir.join(format!("r{p}.img"));
            let out = restore(&kit, p, &dest, &["--create", "--key-file", &k]);
            assert_ok(&out);
            assert_same(&dest, &v.states[p], &format!("{}: point {p}", kit.kind));
        }
        // With the passphrase, from the environment.
        let dest = kit.dir.join("pass.img");
        let spec = format!("{VOLUME}@2");
        let out = kit.run_env(
            &["restore", "--create", &kit.location, &spec, s(&dest)],
            &[(lvmsync::crypt::PASSPHRASE_ENV, "open sesame")],
        );
        assert_ok(&out);
        assert_same(&dest, &v.states[2], &format!("{}: passphrase", kit.kind));

        // No key, another key, a wrong passphrase, a missing key file: one
        // line each, and DEST untouched.
        let dest = kit.dir.join("r1.img");
        let other = kit.dir.join("other.key");
        assert_ok(&command().args(["key", "new", s(&other)]).output().unwrap());
        let missing = kit.dir.join("missing.key");
        type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], i32, &'a str);
        let cases: [Case; 4] = [
            (vec![], &[], 2, "encrypted with a key of its own"),
            (
                vec!["--key-file", s(&other)],
                &[],
                4,
                "encrypted with another key",
            ),
            (
                vec![],
                &[(lvmsync::crypt::PASSPHRASE_ENV, "open sesame!")],
                4,
                "wrong passphrase",
            ),
            (vec!["--key-file", s(&missing)], &[], 2, "no such key file"),
        ];
        for (extra, env, code, needle) in cases {
            let spec = format!("{VOLUME}@3");
            let mut args = vec!["restore"];
            args.extend(extra.iter().copied());
            args.extend([kit.location.as_str(), spec.as_str(), s(&dest)]);
            let out = kit.run_env(&args, env);
            if let Err(why) = clean_failure(&out, needle) {
                panic!("{}: {needle}: {why}", kit.kind);
            }
            assert_eq!(out.status.code(), Some(code), "{}: {needle}", kit.kind);
            assert_same(
                &dest,
                &v.states[1],
                &format!("{}: DEST after {needle}", kit.kind),
            );
            let mut args = vec!["archive", "list"];
            args.extend(extra.iter().copied());
            args.push(&kit.location);
            let out = kit.run_env(&args, env);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{}: list, {needle}",
                kit.kind
            );
        }

        // list, check --read-data, prune, and the points kept still
        // restore exactly.
        let out = kit.run(&["archive", "list", "--json", "--key-file", &k, &kit.location]);
        assert_ok(&out);
        assert_eq!(
            json(&out)["volumes"][0]["points"].as_array().unwrap().len(),
            3
        );
        let out = kit.run(&[
            "archive",
            "check",
            "--read-data",
            "--key-file",
            &k,
            &kit.location,
        ]);
        assert_ok(&out);
        assert!(stdout(&out).contains("whole"), "{}", stdout(&out));
        let out = kit.run(&[
            "archive",
            "prune",
            "--keep-last",
            "1",
            "--key-file",
            &k,
            &kit.location,
        ]);
        assert_ok(&out);
        let dest = kit.dir.join("after-prune.img");
        assert_ok(&restore(&kit, 3, &dest, &["--create", "--key-file", &k]));
        assert_same(&dest, &v.states[3], &format!("{}: merged", kit.kind));

        // key export: a key file that opens the archive.
        let exported = kit.dir.join("exported.key");
        let out = kit.run_env(
            &[
                "archive",
                "key",
                "export",
                "-o",
                s(&exported),
                &kit.location,
            ],
            &[(lvmsync::crypt::PASSPHRASE_ENV, "open sesame")],
        );
        assert_ok(&out);
        assert_eq!(
            lvmsync::crypt::read_key_file(&exported).unwrap().bytes(),
            lvmsync::crypt::read_key_file(&key).unwrap().bytes()
        );
        // An archive is made once.
        let out = kit.run(&["archive", "init", &kit.location]);
        if let Err(why) = clean_failure(&out, "already an archive") {
            panic!("{}: init twice: {why}", kit.kind);
        }
    }
}

#[test]
fn an_encrypted_archive_refuses_objects_altered_or_swapped_before_writing_them() {
    for mut kit in Kit::both("crypt-damage") {
        let key = encrypted(&mut kit);
        let k = s(&key).to_string();
        let v = store_points(&kit, 3);
        let archive = kit.open();
        let catalog = archive.catalog(VOLUME).unwrap().unwrap();
        let dest = kit.dir.join("dest.img");
        fs::write(&dest, &v.states[1]).unwrap();

        // A byte of a record flipped: its chunk fails, the record is not
        // written.
        let (key3, at) = a_data_record(&archive, 3);
        let file = kit.object_file(&key3);
        let whole = fs::read(&file).unwrap();
        let mut bad = whole.clone();
        let sealed_at = lvmsync::crypt::HEADER_LEN as u64
            + at / lvmsync::crypt::CHUNK as u64 * lvmsync::crypt::SEALED as u64
            + at % lvmsync::crypt::CHUNK as u64;
        bad[sealed_at as usize] ^= 0x40;
        fs::write(&file, &bad).unwrap();
        let fresh = kit.dir.join("fresh.img");
        let out = restore(&kit, 3, &fresh, &["--create", "--key-file", &k]);
        if let Err(why) = clean_failure(&out, "fails authentication") {
            panic!("{}: flipped byte: {why}", kit.kind);
        }
        assert_eq!(out.status.code(), Some(5));
        let check = kit.run(&[
            "archive",
            "check",
            "--read-data",
            "--key-file",
            &k,
            &kit.location,
        ]);
        assert_eq!(check.status.code(), Some(3), "{}", stderr(&check));
        fs::write(&file, &whole).unwrap();

        // An object put in another's place (the index of point 2 as point
        // 3's): it was sealed for its own name, and fails.
        let i2 = kit.object_file(&catalog.points[1].delta.index);
        let i3 = kit.object_file(&catalog.points[2].delta.index);
        let saved = fs::read(&i3).unwrap();
        fs::copy(&i2, &i3).unwrap();
        let out = restore(&kit, 3, &dest, &["--key-file", &k]);
        if let Err(why) = clean_failure(&out, "fails authentication") {
            panic!("{}: swapped index: {why}", kit.kind);
        }
        assert_eq!(out.status.code(), Some(5));
        assert_same(&dest, &v.states[1], "DEST after a swapped index");
        fs::write(&i3, &saved).unwrap();

        // A plain object in an encrypted archive: refused.
        let plain = kit.object_file(&catalog.points[2].delta.index);
        fs::write(&plain, b"LVMSIDX\0 not sealed").unwrap();
        let out = restore(&kit, 3, &dest, &["--key-file", &k]);
        if let Err(why) = clean_failure(&out, "not encrypted") {
            panic!("{}: plain object: {why}", kit.kind);
        }
        fs::write(&i3, &saved).unwrap();
        assert_ok(&restore(&kit, 3, &dest, &["--key-file", &k]));
        assert_same(&dest, &v.states[3], "restored after the repair");
    }
}

#[test]
fn a_key_for_an_archive_that_is_not_encrypted_is_refused() {
    let kit = Kit::local("crypt-plain");
    let key = kit.dir.join("k.key");
    assert_ok(&command().args(["key", "new", s(&key)]).output().unwrap());
    // A backup with a key into a new location would make an unencrypted
    // archive: refused, nothing made.
    let options = StoreOptions {
        secrets: lvmsync::crypt::Secrets {
            key_file: Some(key.clone()),
            ..Default::default()
        },
        ..StoreOptions::default()
    };
    let e = Archive::open(&kit.location, &options, true).err().unwrap();
    assert!(e.to_string().contains("archive init --encryption"), "{e}");
    assert!(!Path::new(&kit.location)
        .join("lvmsync-archive.json")
        .exists());
    // An unencrypted archive named with a key.
    let _ = store_points(&kit, 1);
    let out = kit.run(&["archive", "list", "--key-file", s(&key), &kit.location]);
    if let Err(why) = clean_failure(&out, "not an encrypted archive") {
        panic!("{why}");
    }
    assert_eq!(out.status.code(), Some(2));
    // LVMSYNC_PASSPHRASE alone, set for other archives, is no refusal.
    let out = kit.run_env(
        &["archive", "list", &kit.location],
        &[(lvmsync::crypt::PASSPHRASE_ENV, "for another archive")],
    );
    assert_ok(&out);
}
