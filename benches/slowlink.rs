//! A slow link: syncs over ssh to 127.0.0.1 through a link held to 100
//! Mbit/s (12.5 MB/s each way: this bench, run as ssh's ProxyCommand,
//! relays the connection to sshd; see `link_proxy`), comparing `--compress
//! auto` with lz4 and zstd, and with the pipe users script, `dd | zstd -3 |
//! ssh 'zstd -d | dd'` of the same bytes over the same link, measured in
//! the same run:
//!
//! - the 1% delta of `benches/codecs.rs` (a 4 GiB image, `BENCH_GIB`), the
//!   pipe given the changed extents' bytes one after the other;
//! - the seed of a 1 GiB half-zero image (`BENCH_SEED_GIB`), the pipe given
//!   the whole image.
//!
//! Both with the generated data of `benches/common/workload.rs` and with
//! the bytes of real files in the changed extents and the image's data
//! runs (`BENCH_CONTENT`).
//!
//! Targets: auto at most 0.7 of lz4's time, and at least as fast
//! as the pipe. Run: `cargo bench --bench slowlink` (as root, for the test
//! sshd; needs openssh-server and zstd, without which the pipe is left out
//! with a note). `BENCH_ROUNDS` (default 1), `BENCH_DIR`, `BENCH_KEEP`;
//! `BENCH_CONTENT` (`synthetic`, `files`, or unset for both) and
//! `BENCH_FILES` (whose files' bytes, default /usr).

#[path = "common/measure.rs"]
mod measure;

#[path = "common/workload.rs"]
mod workload;

#[path = "../tests/suite/common/sshd.rs"]
mod sshd;

use measure::{env_f64, median};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use lvmsync::throttle::Throttled;

use workload::{concat_extents, half_zero_image_with, make_copy, Data, Workload, CHUNK};

const BIN: &str = env!("CARGO_BIN_EXE_lvmsync-rs");
/// 100 Mbit/s.
const RATE: u64 = 12_500_000;

/// The link: ssh's connection to sshd, held to [`RATE`] each way. This
/// bench runs itself as ssh's ProxyCommand (`--link-proxy HOST PORT`): it
/// connects to HOST:PORT and copies ssh's stdin to the socket and the
/// socket to ssh's stdout, each through the writer `--bwlimit` uses (no
/// burst of more than a quarter of a second). Everything over ssh crosses
/// it, the ssh handshake included, the same for the sync and the pipe.
fn link_proxy(host: &str, port: &str) -> ! {
    use std::net::{Shutdown, TcpStream};
    let socket = TcpStream::connect(format!("{host}:{port}")).expect("connect to sshd");
    let _ = socket.set_nodelay(true);
    let back = socket.try_clone().unwrap();
    let downstream = std::thread::spawn(move || {
        // Not std::io::stdout(): it holds bytes back until a newline.
        use std::os::fd::FromRawFd;
        let stdout = unsafe { std::fs::File::from_raw_fd(1) };
        let mut to = Throttled::new(stdout, RATE, Box::new(|| {}));
        let _ = std::io::copy(&mut &back, &mut to);
        let _ = to.flush();
    });
    let mut to = Throttled::new(&socket, RATE, Box::new(|| {}));
    let _ = std::io::copy(&mut std::io::stdin(), &mut to);
    let _ = socket.shutdown(Shutdown::Write);
    let _ = downstream.join();
    std::process::exit(0)
}

/// `sync ... --compress C ARGS DEST` over the link: seconds and the
/// summary.
fn sync(rsh: &str, codec: &str, args: &[&str], dest: &str) -> (f64, serde_json::Value) {
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["sync", "--json", "-q", "--compress", codec])
        .args(["-e", rsh, "--remote-path", BIN])
        .args(args)
        .arg(dest)
        .stderr(Stdio::inherit())
        .output()
        .expect("run lvmsync-rs sync");
    let secs = t.elapsed().as_secs_f64();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["result"], "ok", "{doc}");
    (secs, doc)
}

/// `zstd -3 -c < INPUT` into `ssh HOST 'zstd -d | dd of=COPY conv=fsync'`
/// over the link: seconds and the bytes through.
fn pipe(rsh: &str, input: &Path, copy: &Path) -> (f64, u64) {
    let t = Instant::now();
    let mut zstd = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if='{}' bs=1M status=none | zstd -3 -c",
            input.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ssh = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{rsh} {} \"zstd -d -c | dd of='{}' bs=1M status=none conv=fsync\"",
            sshd::HOST,
            copy.display()
        ))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut from = zstd.stdout.take().unwrap();
    let mut to = ssh.stdin.take().unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    loop {
        let n = from.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).unwrap();
        sent += n as u64;
    }
    drop(to);
    assert!(zstd.wait().unwrap().success() && ssh.wait().unwrap().success());
    (t.elapsed().as_secs_f64(), sent)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, host, port] = &args[..] {
        if flag == "--link-proxy" {
            link_proxy(host, port);
        }
    }
    let gib = env_f64("BENCH_GIB", 4.0);
    let seed_gib = env_f64("BENCH_SEED_GIB", 1.0);
    let rounds = env_f64("BENCH_ROUNDS", 1.0).max(1.0) as usize;
    let dir: PathBuf = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join(format!("bench-slowlink-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let server = sshd::Sshd::start(&dir.join("sshd"));
    let me = std::env::current_exe().unwrap();
    let rsh = format!(
        "{} -o 'ProxyCommand={} --link-proxy %h %p'",
        server.rsh(),
        me.display()
    );
    let have_zstd = Command::new("zstd")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_zstd {
        println!(
            "note: no zstd program here: the dd | zstd pipe is left out (apt-get install zstd)"
        );
    }

    for (n, mut data) in Data::from_env().into_iter().enumerate() {
        let sub = dir.join(format!("data-{n}"));
        fs::create_dir_all(&sub).unwrap();
        println!("with {}:", data.describe());
        delta(&sub, &rsh, gib, rounds, have_zstd, &mut data);
        seed(&sub, &rsh, seed_gib, rounds, have_zstd, &mut data);
        let _ = fs::remove_dir_all(&sub);
    }
    drop(server);
    if std::env::var_os("BENCH_KEEP").is_none() {
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// A row of the report: what ran, its median time, its bytes on the wire.
type Row = (String, f64, u64);

/// `sync --compress C ARGS DEST` for lz4, zstd and auto, `rounds` times
/// each, `prepare` before each run: their rows, named `what`.
fn codec_rows(
    rsh: &str,
    dest: &str,
    rounds: usize,
    what: &str,
    args: &[&str],
    prepare: impl Fn(),
) -> Vec<Row> {
    let mut rows = Vec::new();
    for codec in ["lz4", "zstd", "auto"] {
        let (mut times, mut wire, mut why) = (Vec::new(), 0, String::new());
        for _ in 0..rounds {
            prepare();
            let (secs, doc) = sync(rsh, codec, args, dest);
            times.push(secs);
            wire = doc["bytes_on_wire"].as_u64().unwrap();
            if let Some(a) = doc["auto"].as_object() {
                why = format!(
                    " ({} for {:.0}%, {} changes: {})",
                    a["chose"],
                    a["share"].as_f64().unwrap_or(0.0) * 100.0,
                    a["changes"],
                    a["why"]
                );
            }
        }
        rows.push((
            format!("{what} --compress {codec}{why}"),
            median(&mut times),
            wire,
        ));
    }
    rows
}

/// The pipe's row: `run` (seconds, bytes through), `rounds` times.
fn pipe_row(rounds: usize, mut run: impl FnMut() -> (f64, u64)) -> Row {
    let mut times = Vec::new();
    let mut wire = 0;
    for _ in 0..rounds {
        let (secs, b) = run();
        times.push(secs);
        wire = b;
    }
    (
        "dd | zstd -3 | 100 Mbit/s | ssh zstd -d | dd".into(),
        median(&mut times),
        wire,
    )
}

/// Prints `rows` (lz4, zstd, auto, and the pipe when there is one) and the
/// two targets.
fn report(title: String, rows: &[Row]) {
    println!("{title}");
    let lz4 = rows[0].1;
    for (name, secs, wire) in rows {
        println!(
            "  {name:<60} {secs:>7.2} s {:>6.3} of lz4's   {wire:>11} bytes on the wire",
            secs / lz4
        );
    }
    let auto = rows[2].1;
    println!(
        "  auto / lz4: {:.3} (target at most 0.7: {})",
        auto / lz4,
        if auto <= 0.7 * lz4 { "met" } else { "NOT met" }
    );
    if let Some((_, pipe, _)) = rows.get(3) {
        println!(
            "  auto / the zstd pipe: {:.3} (target at most 1: {})",
            auto / pipe,
            if auto <= *pipe { "met" } else { "NOT met" }
        );
    }
}

/// The 1% delta holding `data`, with each codec and through the pipe.
fn delta(dir: &Path, rsh: &str, gib: f64, rounds: usize, have_zstd: bool, data: &mut Data) {
    let work = Workload::scattered_with(dir, gib, 1.0, data);
    let raw = dir.join("changed.bin");
    concat_extents(&work.new, &work.extents, &raw);
    let copy = dir.join("copy.img");
    let dest = format!("{}:{}", sshd::HOST, copy.display());
    let delta_args = [
        "--cow",
        work.cow.to_str().unwrap(),
        "--data-source",
        work.new.to_str().unwrap(),
    ];
    let mut rows = codec_rows(rsh, &dest, rounds, "sync", &delta_args, || {
        make_copy(&copy, work.origin_size, &work.extents);
        let _ = fs::remove_file(format!("{}.lvmsync-state", copy.display()));
    });
    if have_zstd {
        let piped = dir.join("piped.bin");
        rows.push(pipe_row(rounds, || pipe(rsh, &raw, &piped)));
    }
    report(
        format!(
            "1% delta: {} changed bytes in {} extents of a {gib} GiB image, over ssh held to 100 Mbit/s; median of {rounds}:",
            work.changed,
            work.extents.len()
        ),
        &rows,
    );
}

/// The seed of a half-zero image whose data runs hold `data`.
fn seed(dir: &Path, rsh: &str, seed_gib: f64, rounds: usize, have_zstd: bool, data: &mut Data) {
    let copy = dir.join("copy.img");
    let dest = format!("{}:{}", sshd::HOST, copy.display());
    let seed_size = (seed_gib * (1u64 << 30) as f64) as u64 / CHUNK * CHUNK;
    let image = dir.join("half-zero.img");
    half_zero_image_with(&image, seed_size, data);
    let args = ["--full", "--create", image.to_str().unwrap()];
    let fresh = || {
        let _ = fs::remove_file(&copy);
        let _ = fs::remove_file(format!("{}.lvmsync-state", copy.display()));
    };
    let mut rows = codec_rows(rsh, &dest, rounds, "sync --full", &args, fresh);
    if have_zstd {
        rows.push(pipe_row(rounds, || {
            fresh();
            pipe(rsh, &image, &copy)
        }));
    }
    report(
        format!("seed of a {seed_size}-byte half-zero image, over ssh held to 100 Mbit/s; median of {rounds}:"),
        &rows,
    );
}
