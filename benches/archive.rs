//! The archive on a real S3 server (s3s-fs on 127.0.0.1; a local directory
//! with `BENCH_STORE=local`), on a volume of `BENCH_GIB` GiB (default 4)
//! that is half zeroes (4 MiB runs; the data half text and random bytes):
//!
//! - Upload: storing a 1% delta (scattered runs of 4 KiB chunks, as
//!   `backup` stores a point: read from the image, encoded, uploaded in
//!   parallel parts, indexed), next to uploading the same delta's bytes as
//!   one object with the same client (`store::Upload`), measured in the
//!   same run. Target: at least 0.8 of its throughput. And the same delta
//!   stored as a point of an encrypted archive (`archive init
//!   --encryption`) in the same rounds. Target: at least 0.9 of the
//!   unencrypted point's throughput.
//! - Restore: the latest point of a chain of `BENCH_DELTAS` 1% deltas
//!   (default 30) after the seed, next to restoring a seed alone, all with
//!   `lvmsync-rs restore` onto a new file, the store's files and the copy
//!   out of the page cache first. Two seeds: the chain's own (point 1),
//!   and a seed of the latest point's content stored as a volume of its
//!   own: the deltas replace text and zeroes with random bytes, so the
//!   latest point holds more bytes that do not compress than point 1, and
//!   only the second seed reads the same bytes. Target: at most 1.2 times
//!   the seed's time (each byte read once). The peak memory of each
//!   restore is printed too.
//!
//! Run: `cargo bench --bench archive` (needs s3s-fs: `cargo install
//! s3s-fs@0.14.1 --features binary --locked`). Environment: `BENCH_GIB`,
//! `BENCH_DELTAS`, `BENCH_ROUNDS` (default 3, medians), `BENCH_DIR`,
//! `BENCH_STORE`, `BENCH_KEEP`, `BENCH_NO_RESTORE` (the uploads only).

#[path = "common/measure.rs"]
mod measure;

#[path = "common/workload.rs"]
mod workload;

#[allow(dead_code)]
#[path = "../tests/suite/common/s3.rs"]
mod s3;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lvmsync::archive::catalog::Origin;
use lvmsync::archive::{Archive, NewKeys, NewVolume};
use lvmsync::blockdev::Source;
use lvmsync::changes::ChangeSource;
use lvmsync::cowgen::{CowImage, Rng};
use lvmsync::send::Delta;
use lvmsync::store::{Store, StoreOptions};
use lvmsync::stream::{Compression, PointInTime};
use measure::{drop_cache, env_f64, median};
use workload::text;

const RUN: usize = 4 << 20;
const CHUNK: u64 = 4096;
const VOLUME: &str = "bench/vg/data";

fn pit(k: usize) -> PointInTime {
    PointInTime {
        origin_uuid: "bench-origin".into(),
        snapshot_uuid: format!("bench-snapshot-{k}"),
        snapshot: format!("vg/data-{k}"),
        time: String::new(),
    }
}

fn new_volume() -> NewVolume {
    NewVolume {
        volume: VOLUME.into(),
        origin: Origin {
            host: "bench".into(),
            name: "vg/data".into(),
            uuid: "bench-origin".into(),
        },
    }
}

/// An image of `size` bytes: 4 MiB runs of data (half text, half random)
/// and holes (zeroes), alternating.
fn make_image(path: &Path, size: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng(0x00a7_c41e);
    let mut data = vec![0u8; RUN];
    let mut at = 0u64;
    while at < size {
        let len = RUN.min((size - at) as usize);
        text(&mut rng, &mut data[..RUN / 2]);
        rng.fill(&mut data[RUN / 2..]);
        f.write_all_at(&data[..len], at).unwrap();
        at += 2 * RUN as u64;
    }
    f.sync_all().unwrap();
}

/// Changes 1% of the image's chunks (runs of 1 to 16 chunks, random data)
/// and returns a COW image listing them.
fn change(image: &Path, cow: &Path, size: u64, seed: u64) -> u64 {
    let chunks = size / CHUNK;
    let target = chunks / 100;
    let mut rng = Rng(seed);
    let mut table = CowImage::new(CHUNK);
    let f = fs::OpenOptions::new().write(true).open(image).unwrap();
    let mut buf = vec![0u8; 16 * CHUNK as usize];
    let mut changed = 0;
    while changed < target {
        let c = rng.below(chunks - 16);
        let len = 1 + rng.below(16);
        for i in c..c + len {
            table.push(i);
        }
        let b = &mut buf[..(len * CHUNK) as usize];
        rng.fill(b);
        f.write_all_at(b, c * CHUNK).unwrap();
        changed += len;
    }
    fs::write(cow, table.to_vec()).unwrap();
    changed * CHUNK
}

/// The files under `dir`, to drop from the page cache.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `lvmsync-rs restore` of `point` onto a new file: seconds, its summary,
/// and its peak memory in KiB.
fn restore(
    location: &str,
    env: &[(String, String)],
    volume: &str,
    point: usize,
    dest: &Path,
) -> (f64, serde_json::Value, u64) {
    let _ = fs::remove_file(dest);
    let _ = fs::remove_file(format!("{}.lvmsync-state", dest.display()));
    let spec = format!("{volume}@{point}");
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lvmsync-rs"))
        .args(["restore", "--json", "--create", location, &spec])
        .arg(dest)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(s) = fs::read_to_string(&status) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            {
                peak = peak.max(kb);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "restore of point {point} failed");
    (secs, serde_json::from_slice(&out.stdout).unwrap(), peak)
}

fn main() {
    let gib = env_f64("BENCH_GIB", 4.0);
    let deltas = env_f64("BENCH_DELTAS", 30.0) as usize;
    let rounds = env_f64("BENCH_ROUNDS", 3.0).max(1.0) as usize;
    let dir = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join(format!("bench-archive-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let size = (gib * (1u64 << 30) as f64) as u64 / CHUNK * CHUNK;
    let local = std::env::var("BENCH_STORE").as_deref() == Ok("local");

    let server = (!local).then(|| {
        let server = s3::S3Server::start(&dir.join("s3"));
        server.create_bucket("bench");
        server
    });
    let (location, options, env, store_root) = match &server {
        Some(s) => (
            "s3://bench/archive".to_string(),
            StoreOptions {
                endpoint: Some(s.endpoint()),
                credentials: Some(s.credentials()),
                ..StoreOptions::default()
            },
            vec![
                ("AWS_ACCESS_KEY_ID".to_string(), s.access_key.clone()),
                ("AWS_SECRET_ACCESS_KEY".to_string(), s.secret_key.clone()),
                ("AWS_ENDPOINT_URL".to_string(), s.endpoint()),
            ],
            s.root.clone(),
        ),
        None => {
            let p = dir.join("archive");
            (p.display().to_string(), StoreOptions::default(), vec![], p)
        }
    };
    let archive = Archive::open(&location, &options, true).unwrap();
    println!(
        "archive on {}: a volume of {size} bytes ({gib} GiB, half zeroes), {deltas} deltas of 1% after the seed",
        if local { "a local directory" } else { "s3s-fs on 127.0.0.1" }
    );

    // The seed.
    let image = dir.join("volume.img");
    make_image(&image, size);
    let mut seed = Delta::full_copy(Source::open(&image).unwrap(), Compression::Lz4);
    seed.header.target = Some(pit(1));
    let t = Instant::now();
    let (_, _, seed_ref) = archive
        .store_point(None, new_volume(), &seed, pit(1), 0, |_| {})
        .unwrap();
    println!(
        "seed stored: {} bytes in {:.1} s",
        seed_ref.bytes,
        t.elapsed().as_secs_f64()
    );

    // The deltas; the first one is also the upload benchmark's.
    let cow = dir.join("snap.cow");
    let mut upload_delta = None;
    for k in 2..=deltas + 1 {
        let changed = change(&image, &cow, size, 0x0de1_7a00 + k as u64);
        let source = ChangeSource::CowImage {
            path: cow.clone(),
            origin_size: Some(size),
        };
        let mut delta = Delta::of_changes(&source, Some(&image), Compression::Lz4).unwrap();
        delta.header.base = Some(pit(k - 1));
        delta.header.target = Some(pit(k));
        let catalog = archive.catalog(VOLUME).unwrap();
        archive
            .store_point(catalog, new_volume(), &delta, pit(k), 0, |_| {})
            .unwrap();
        if k == 2 {
            println!("each delta: {changed} bytes of 4 KiB chunks changed (1%)");
            // A copy of the first delta as the upload benchmark's input.
            let copy = dir.join("upload.cow");
            fs::copy(&cow, &copy).unwrap();
            let snap = dir.join("upload.img");
            fs::copy(&image, &snap).unwrap();
            upload_delta = Some((copy, snap));
        }
    }

    // A seed of the latest point's content, as a volume of its own.
    let now_volume = NewVolume {
        volume: "bench/vg/data-now".into(),
        ..new_volume()
    };
    let mut now = Delta::full_copy(Source::open(&image).unwrap(), Compression::Lz4);
    now.header.target = Some(pit(1));
    archive
        .store_point(None, now_volume, &now, pit(1), 0, |_| {})
        .unwrap();

    // Upload: storing the 1% delta, next to uploading its bytes.
    let (cow2, img2) = upload_delta.unwrap();
    let source = ChangeSource::CowImage {
        path: cow2,
        origin_size: Some(size),
    };
    let delta = Delta::of_changes(&source, Some(&img2), Compression::Lz4).unwrap();
    let file = dir.join("delta.lvd");
    let (out, _, len) = delta.write_all(File::create(&file).unwrap()).unwrap();
    drop(out);
    let bytes = fs::read(&file).unwrap();
    let store = Store::open(
        &lvmsync::store::Location::parse(&location).unwrap(),
        &options,
    )
    .unwrap();
    // The same store, an encrypted archive beside the other.
    let sealed_location = format!("{location}-encrypted");
    let key_path = dir.join("archive.key");
    let _ = fs::remove_file(&key_path);
    Archive::init(
        &sealed_location,
        &options,
        Some(&NewKeys {
            key_file: Some(key_path.clone()),
            passphrase: None,
        }),
    )
    .unwrap();
    let sealed_options = StoreOptions {
        secrets: lvmsync::crypt::Secrets {
            key_file: Some(key_path),
            ..Default::default()
        },
        ..options.clone()
    };
    let sealed = Archive::open(&sealed_location, &sealed_options, false).unwrap();
    let (mut ours, mut raw, mut enc) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let t = Instant::now();
        sealed
            .put_delta(
                "bench/upload",
                r as u64 + 1,
                None,
                "incremental",
                &delta,
                |_| {},
            )
            .unwrap();
        enc.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        archive
            .put_delta(
                "bench/upload",
                r as u64 + 1,
                None,
                "incremental",
                &delta,
                |_| {},
            )
            .unwrap();
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut up = store.upload(&format!("raw/delta-{r}.lvd")).unwrap();
        for piece in bytes.chunks(1 << 20) {
            up.write(piece).unwrap();
        }
        up.finish().unwrap();
        raw.push(t.elapsed().as_secs_f64());
    }
    let (ours, raw, enc) = (median(&mut ours), median(&mut raw), median(&mut enc));
    let mb = |secs: f64| len as f64 / secs / 1e6;
    println!();
    println!("upload of the 1% delta ({len} bytes), median of {rounds}:");
    println!(
        "  the bytes as one object (store::Upload): {raw:.3} s, {:.0} MB/s",
        mb(raw)
    );
    println!(
        "  stored as a point (read, encode, upload, index): {ours:.3} s, {:.0} MB/s",
        mb(ours)
    );
    println!(
        "  throughput / the object's: {:.2} (target at least 0.8)",
        raw / ours
    );
    println!(
        "  stored as a point of an encrypted archive: {enc:.3} s, {:.0} MB/s; / the unencrypted point's: {:.2} (target at least 0.9: {})",
        mb(enc),
        ours / enc,
        if ours / enc >= 0.9 { "met" } else { "NOT met" }
    );
    if std::env::var_os("BENCH_NO_RESTORE").is_some() {
        drop(server);
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = fs::remove_dir_all(&dir);
        }
        return;
    }

    // Restore: the latest point next to the seed alone.
    let dest = dir.join("restored.img");
    let files = files_under(&store_root);
    let cold = || {
        let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        drop_cache(&paths);
        drop_cache(&[&image]);
    };
    let cases = [
        ("the chain's seed (point 1)", VOLUME, 1),
        (
            "a seed of the latest point's content",
            "bench/vg/data-now",
            1,
        ),
        ("the latest point", VOLUME, deltas + 1),
    ];
    let mut times = vec![Vec::new(); cases.len()];
    let mut docs = vec![serde_json::Value::Null; cases.len()];
    let mut peaks = vec![0u64; cases.len()];
    for _ in 0..rounds {
        for (i, (_, volume, point)) in cases.iter().enumerate() {
            cold();
            let (t, doc, mem) = restore(&location, &env, volume, *point, &dest);
            times[i].push(t);
            docs[i] = doc;
            peaks[i] = peaks[i].max(mem);
        }
    }
    println!();
    println!("restore onto a new file, cold cache, median of {rounds}:");
    let mut medians = Vec::new();
    for (i, (what, _, _)) in cases.iter().enumerate() {
        let t = median(&mut times[i]);
        medians.push(t);
        println!(
            "  {what}: {t:.2} s, {} deltas, {} bytes read in {} ranged reads, {} bytes written, peak memory {} MiB",
            docs[i]["deltas"], docs[i]["bytes_read"], docs[i]["reads"], docs[i]["bytes_written"], peaks[i] / 1024
        );
    }
    println!(
        "  the latest / the seed of the same content: {:.2} (target at most 1.2); / the chain's seed: {:.2}",
        medians[2] / medians[1],
        medians[2] / medians[0]
    );
    let _ = std::io::stdout().flush();

    drop(server);
    if std::env::var_os("BENCH_KEEP").is_none() {
        let _ = fs::remove_dir_all(&dir);
    }
}
