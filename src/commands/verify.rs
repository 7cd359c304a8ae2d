//! `lvmsync-rs verify SRC DEST`: compares two copies block by block, here
//! or with DEST on another host, prints the ranges that differ, and with
//! `--repair` sends exactly those ranges of SRC to DEST as a delta that is
//! applied like any other. Also the far side of a remote comparison
//! (`verify --remote-side`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ChildStdout;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::apply::{self, DEST_SIZE};
use crate::blockdev::Source;
use crate::commands::sync::{self, Link, Session};
use crate::extents::Extent;
use crate::send::Changes;
use crate::send::{send_extents, SendError};
use crate::stream::PointInTime;
use crate::stream::{Compression, Header, SourceInfo, SourceKind, Writer};
use crate::transport::{Connection, Dest, Echo, Hello, Launch};
use crate::units::human;
use crate::verify::{
    add_range, blocks_in, decode_hashes, encode_hashes, remote_words, HashStream, Hashes,
    VerifyError, EXPECT, HASH_LEN, HASH_VERSION, HELLO, PROTOCOL,
};
use crate::Error;

pub struct Args {
    pub src: PathBuf,
    /// `[user@]host:PATH`, or a local path.
    pub dest: String,
    pub block_size: u64,
    pub repair: bool,
    /// The remote shell, as one string (split into words).
    pub rsh: String,
    /// The remote lvmsync-rs.
    pub remote_path: String,
    /// How long to wait for the remote's hello.
    pub hello_timeout: Duration,
    pub json: bool,
    /// The point in time a repair brings DEST to (when `backup` repairs a
    /// copy against its new snapshot); its state then records it.
    pub target: Option<PointInTime>,
}

/// What a comparison (and repair) found and did, for `backup`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub differing_bytes: u64,
    /// Bytes read on each side.
    pub bytes_read: u64,
    /// The repair delta's length, 0 without a repair.
    pub delta_bytes: u64,
}

/// Compares (and with `repair`, repairs) without printing anything.
pub fn compare(args: &Args) -> Result<Outcome, Error> {
    let mut report = Report::default();
    verify(args, &mut report)?;
    Ok(Outcome {
        differing_bytes: report.differing_bytes,
        bytes_read: report.src_bytes_read,
        delta_bytes: report.repaired.as_ref().map_or(0, |r| r.delta_bytes),
    })
}

/// The far side: hashes PATH's first `min(src_size, size)` bytes.
pub struct RemoteArgs {
    pub path: PathBuf,
    pub block_size: u64,
    pub src_size: u64,
    /// The protocol the local side speaks.
    pub protocol: u32,
}

/// What a repair sent and what it did to DEST.
#[derive(Debug, Default, Serialize)]
struct Repaired {
    records: u64,
    data_bytes: u64,
    zero_bytes: u64,
    /// The repair delta's length.
    delta_bytes: u64,
    dest_size_before: u64,
    dest_size_after: u64,
}

/// The object `--json` prints.
#[derive(Debug, Default, Serialize)]
struct Report {
    /// Whether the copies were identical when compared.
    identical: bool,
    src: String,
    dest: String,
    remote_host: Option<String>,
    src_size: u64,
    dest_size: u64,
    block_size: u64,
    hash: &'static str,
    differences: Vec<Extent>,
    /// Bytes in `differences`.
    differing_bytes: u64,
    /// Bytes read and hashed on each side, and both together.
    src_bytes_read: u64,
    dest_bytes_read: u64,
    bytes_read: u64,
    /// What the remote side sent back (hello line and hashes); null for a
    /// local DEST.
    bytes_on_wire: Option<u64>,
    /// The repair, when `--repair` sent one.
    repaired: Option<Repaired>,
    /// Whether SRC and DEST are identical at the end (after a repair).
    identical_now: bool,
    /// The comparison, and the whole run (with the repair).
    compare_seconds: f64,
    seconds: f64,
}

/// DEST, opened or reached.
enum Far {
    Local(Arc<Source>),
    Remote {
        conn: Box<Connection>,
        stdout: BufReader<ChildStdout>,
        host: String,
    },
}

/// Where DEST's hashes come from.
enum Theirs {
    Local(Hashes),
    Remote {
        conn: Box<Connection>,
        stdout: BufReader<ChildStdout>,
        host: String,
    },
}

/// Compares; `Ok(true)` when SRC and DEST are identical at the end.
pub fn run(args: Args) -> Result<bool, Error> {
    let started = Instant::now();
    let mut report = Report {
        dest: args.dest.clone(),
        block_size: args.block_size,
        hash: "xxh3-128",
        ..Report::default()
    };
    let result = verify(&args, &mut report);
    report.seconds = started.elapsed().as_secs_f64();
    result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("plain fields serialize")
        );
    } else {
        print_text(&report).map_err(Error::Output)?;
    }
    Ok(report.identical_now)
}

/// SRC as typed: a path that exists is that path; otherwise `vg/lv` (one
/// `/`, not starting with `/` or `.`) names the LV `/dev/vg/lv` when that
/// exists.
pub fn src_path(spec: &Path) -> PathBuf {
    let text = spec.to_string_lossy();
    let lv_like = !text.starts_with('/')
        && !text.starts_with('.')
        && text.matches('/').count() == 1
        && !text.ends_with('/');
    if spec.exists() || !lv_like {
        return spec.to_path_buf();
    }
    let dev = Path::new("/dev").join(spec);
    if dev.exists() {
        dev
    } else {
        spec.to_path_buf()
    }
}

fn open_source(path: &Path) -> Result<Source, Error> {
    if path.is_dir() {
        return Err(Error::Open {
            path: path.display().to_string(),
            source: io::Error::other("is a directory"),
        });
    }
    Source::open(path).map_err(|source| Error::Open {
        path: path.display().to_string(),
        source,
    })
}

fn echo() -> Echo {
    Arc::new(|line: &str| eprintln!("{line}"))
}

fn verify(args: &Args, report: &mut Report) -> Result<(), Error> {
    let started = Instant::now();
    let dest = Dest::parse(&args.dest)?;
    let bs = args.block_size;
    // Local inputs first: a missing SRC needs no connection.
    let src = Arc::new(open_source(&src_path(&args.src))?);
    src.advise_sequential();
    report.src = src.path().display().to_string();
    report.src_size = src.size();
    let (far, dest_size, dest_is_device) = match &dest {
        Dest::Local(path) => {
            let d = open_source(Path::new(path))?;
            d.advise_sequential();
            let (size, device) = (d.size(), d.is_block_device());
            (Far::Local(Arc::new(d)), size, device)
        }
        Dest::Remote { host, path } => {
            report.remote_host = Some(host.clone());
            let launch = Launch::remote_with(&args.rsh, host, &args.remote_path, EXPECT, |p| {
                remote_words(p, bs, src.size(), path)
            })?;
            let mut conn = Connection::start(&launch, args.hello_timeout, echo())?;
            let bad_hello = || VerifyError::BadHello {
                host: host.clone(),
                line: conn.hello.line_as(HELLO),
            };
            let (theirs, device) = match conn.hello.extra.as_slice() {
                [b, kind, ..] if kind == "file" || kind == "device" => {
                    (b.parse::<u64>().map_err(|_| bad_hello())?, kind == "device")
                }
                _ => return Err(bad_hello().into()),
            };
            if theirs != bs {
                return Err(VerifyError::BlockSizeMismatch {
                    host: host.clone(),
                    ours: bs,
                    theirs,
                }
                .into());
            }
            let size = conn.hello.dest_size;
            report.bytes_on_wire = Some(conn.hello.line_as(HELLO).len() as u64 + 1);
            let Some(stdout) = conn.take_stdout() else {
                return Err(conn
                    .broken("the remote verify's stdout is closed".into())
                    .into());
            };
            let far = Far::Remote {
                conn: Box::new(conn),
                stdout,
                host: host.clone(),
            };
            (far, size, device)
        }
    };
    report.dest_size = dest_size;
    let src_size = src.size();
    if args.repair && dest_is_device && dest_size < src_size {
        return Err(VerifyError::DeviceTooSmall {
            dest: args.dest.clone(),
            size: dest_size,
            src_size,
        }
        .into());
    }

    // Both sides hash the bytes they have in common, concurrently; the
    // hashes are compared batch by batch as they come.
    let common = src_size.min(dest_size);
    let total_blocks = blocks_in(common, bs);
    let ours = HashStream::spawn(src.clone(), common, bs);
    let mut theirs_of = match far {
        Far::Local(d) => Theirs::Local(Hashes::new(HashStream::spawn(d, common, bs))),
        Far::Remote { conn, stdout, host } => Theirs::Remote { conn, stdout, host },
    };
    let mut wire = Vec::new();
    let mut block = 0u64;
    let mut ranges = Vec::new();
    for batch in ours {
        let batch = batch?;
        // Their hashes of the same blocks, or how many arrived.
        let theirs: Result<Vec<u128>, u64> = match &mut theirs_of {
            Theirs::Local(hashes) => Ok(hashes.take(batch.len())?),
            Theirs::Remote { stdout, .. } => {
                wire.resize(batch.len() * HASH_LEN, 0);
                let got = read_full(stdout, &mut wire);
                if got < wire.len() {
                    Err(block + (got / HASH_LEN) as u64)
                } else {
                    Ok(decode_hashes(&wire))
                }
            }
        };
        let theirs = match theirs {
            Ok(t) => t,
            Err(got) => return Err(stopped(theirs_of, got, total_blocks)),
        };
        debug_assert_eq!(batch.len(), theirs.len());
        for (i, (a, b)) in batch.iter().zip(&theirs).enumerate() {
            if a != b {
                let offset = (block + i as u64) * bs;
                add_range(&mut ranges, offset, bs.min(common - offset));
            }
        }
        block += batch.len() as u64;
        if let Some(w) = &mut report.bytes_on_wire {
            *w += (theirs.len() * HASH_LEN) as u64;
        }
    }
    report.compare_seconds = started.elapsed().as_secs_f64();
    if let Theirs::Remote { conn, stdout, host } = theirs_of {
        end_remote(conn, stdout, &host)?;
    }
    report.src_bytes_read = common;
    report.dest_bytes_read = common;
    report.bytes_read = 2 * common;
    // The tail of the longer copy differs.
    add_range(&mut ranges, common, src_size.max(dest_size) - common);
    report.differing_bytes = ranges.iter().map(|r| r.length).sum();
    report.identical = ranges.is_empty();
    report.identical_now = report.identical;
    report.differences = ranges;
    // With a target, the repair also records in DEST's state that DEST
    // holds that point in time, so it is sent even when nothing differs.
    if args.repair && (!report.identical || args.target.is_some()) {
        let repaired = repair(args, &dest, dest_is_device, &src, report)?;
        // A block device larger than SRC keeps its tail.
        report.identical_now = repaired.dest_size_after == src_size;
        report.repaired = Some(repaired);
    }
    Ok(())
}

/// Fills `buf` from `r` as far as it goes: the bytes read (fewer at the
/// end of the stream or on an error).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    done
}

/// The error when DEST's hashes stopped after `got` of `total`.
fn stopped(theirs: Theirs, got: u64, total: u64) -> Error {
    match theirs {
        Theirs::Remote { conn, .. } => conn
            .broken(format!(
                "the remote verify stopped after sending {got} of {total} block hashes"
            ))
            .into(),
        Theirs::Local(hashes) => VerifyError::Stopped {
            path: hashes.path().to_string(),
        }
        .into(),
    }
}

/// After the last hash: nothing more may come, and the remote must exit 0.
fn end_remote(
    conn: Box<Connection>,
    mut stdout: BufReader<ChildStdout>,
    host: &str,
) -> Result<(), Error> {
    let mut extra = [0u8; 1];
    if !matches!(stdout.read(&mut extra), Ok(0)) {
        return Err(conn
            .broken(format!(
                "the remote verify sent more than the block hashes of the bytes both copies have; {host} runs another version"
            ))
            .into());
    }
    drop(stdout);
    Ok(conn.end()?)
}

/// The header of a repair delta: the differing blocks of SRC, for DEST.
fn repair_header(args: &Args, src: &Source) -> Header {
    let src_path = src.path().display().to_string();
    Header {
        origin_size: src.size(),
        chunk_size: args.block_size,
        source: SourceInfo {
            origin: Some(src_path.clone()),
            ..SourceInfo::of_kind(SourceKind::Compare)
        },
        compression: Compression::Lz4,
        tool: crate::TOOL.to_string(),
        base: None,
        target: args.target.clone(),
        resume_from: 0,
        properties: BTreeMap::from([
            ("compare-src".to_string(), src_path),
            ("compare-dest".to_string(), args.dest.clone()),
            ("block-size".to_string(), args.block_size.to_string()),
            (DEST_SIZE.to_string(), src.size().to_string()),
        ]),
    }
}

/// Sends the differing ranges of SRC to DEST and applies them there.
fn repair(
    args: &Args,
    dest: &Dest,
    dest_is_device: bool,
    src: &Arc<Source>,
    report: &Report,
) -> Result<Repaired, Error> {
    let header = repair_header(args, src);
    // What SRC has: the tail of a longer DEST is cut by the apply.
    let extents: Vec<Extent> = report
        .differences
        .iter()
        .filter(|r| r.offset < src.size())
        .map(|r| Extent {
            offset: r.offset,
            length: r.length.min(src.size() - r.offset),
        })
        .collect();
    let mut repaired = Repaired {
        dest_size_before: report.dest_size,
        ..Repaired::default()
    };
    match dest {
        Dest::Local(path) => {
            let (summary, delta_bytes) = apply_locally(src, &header, &extents, Path::new(path))?;
            repaired.records = summary.totals.records;
            repaired.data_bytes = summary.totals.data_bytes;
            repaired.zero_bytes = summary.totals.zero_bytes;
            repaired.delta_bytes = delta_bytes;
        }
        Dest::Remote { .. } => {
            let link = Link {
                rsh: args.rsh.clone(),
                remote_path: args.remote_path.clone(),
                create: false,
                force: false,
                hello_timeout: args.hello_timeout,
            };
            let mut shipped = sync::Report::default();
            let session = Session::connect(dest, &link, true, &mut shipped)?;
            session.ship(&header, src, Changes::read(&extents), &mut shipped)?;
            repaired.records = shipped.records;
            repaired.data_bytes = shipped.data_bytes;
            repaired.zero_bytes = shipped.zero_bytes;
            repaired.delta_bytes = shipped.bytes_on_wire;
        }
    }
    // The apply extends a shorter file and cuts a longer one; a block
    // device keeps its size.
    repaired.dest_size_after = if dest_is_device {
        report.dest_size
    } else {
        src.size()
    };
    Ok(repaired)
}

/// Writes the repair delta into a pipe on one thread and applies it from
/// the pipe on this one, with every check of `apply`.
fn apply_locally(
    src: &Source,
    header: &Header,
    extents: &[Extent],
    dest: &Path,
) -> Result<(apply::Summary, u64), Error> {
    let (r, w) = nix::unistd::pipe().map_err(|e| Error::Output(e.into()))?;
    let (read_end, write_end) = (File::from(r), File::from(w));
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<u64, SendError> {
            let out = BufWriter::with_capacity(1 << 20, write_end);
            let mut w = Writer::new(out, header).map_err(SendError::Write)?;
            send_extents(src, extents, &mut w)?;
            let (out, _, len) = w.finish().map_err(SendError::Write)?;
            out.into_inner()
                .map_err(|e| SendError::Write(e.into_error()))?;
            Ok(len)
        });
        let input = BufReader::with_capacity(crate::commands::DELTA_READ_BUF, read_end);
        let applied = apply::apply(input, "the repair delta", dest, &apply::Options::default());
        let written = writer.join().unwrap_or_else(|_| {
            Err(SendError::Write(io::Error::other(
                "the thread writing the repair delta stopped unexpectedly",
            )))
        });
        match (written, applied) {
            (Ok(len), Ok(summary)) => Ok((summary, len)),
            // A read error of SRC explains the truncated delta.
            (Err(e @ (SendError::Read { .. } | SendError::ExtentPastSource { .. })), _) => {
                Err(e.into())
            }
            (_, Err(e)) => Err(e.into()),
            (Err(e), Ok(_)) => Err(e.into()),
        }
    })
}

/// The far side of a remote comparison: opens PATH, says hello, streams
/// the block hashes of its first `min(src_size, size)` bytes on stdout.
pub fn run_remote(args: RemoteArgs) -> Result<(), Error> {
    if args.protocol != PROTOCOL {
        return Err(VerifyError::ProtocolMismatch {
            theirs: args.protocol,
        }
        .into());
    }
    let source = Arc::new(open_source(&args.path)?);
    source.advise_sequential();
    let hello = Hello {
        protocol: PROTOCOL,
        format: HASH_VERSION,
        dest_size: source.size(),
        state: None,
        extra: vec![
            args.block_size.to_string(),
            if source.is_block_device() {
                "device"
            } else {
                "file"
            }
            .to_string(),
        ],
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{}", hello.line_as(HELLO))
        .and_then(|()| out.flush())
        .map_err(Error::Output)?;
    crate::commands::grow_pipe(io::stdout());
    let common = source.size().min(args.src_size);
    let mut bytes = Vec::new();
    for batch in HashStream::spawn(source, common, args.block_size) {
        encode_hashes(&batch?, &mut bytes);
        out.write_all(&bytes)
            .and_then(|()| out.flush())
            .map_err(Error::Output)?;
    }
    Ok(())
}

fn print_text(r: &Report) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "src:        {} ({} bytes, {})",
        r.src,
        r.src_size,
        human(r.src_size)
    )?;
    writeln!(
        out,
        "dest:       {} ({} bytes, {})",
        r.dest,
        r.dest_size,
        human(r.dest_size)
    )?;
    writeln!(
        out,
        "block size: {} ({}), {}",
        r.block_size,
        human(r.block_size),
        r.hash
    )?;
    if r.src_size != r.dest_size {
        writeln!(
            out,
            "sizes differ: the last {} bytes of {} count as a difference",
            r.src_size.abs_diff(r.dest_size),
            if r.src_size > r.dest_size {
                "SRC"
            } else {
                "DEST"
            }
        )?;
    }
    let read = format!(
        "{} read on each side in {:.1} s ({}/s per side)",
        human(r.src_bytes_read),
        r.compare_seconds,
        human((r.src_bytes_read as f64 / r.compare_seconds.max(1e-3)) as u64)
    );
    let wire = match r.bytes_on_wire {
        Some(n) => format!("; {n} bytes ({}) from the remote", human(n)),
        None => String::new(),
    };
    if r.identical {
        writeln!(out, "identical: {read}{wire}")?;
        return out.flush();
    }
    writeln!(out)?;
    writeln!(out, "{:>20} {:>20}", "offset", "length")?;
    for d in &r.differences {
        writeln!(
            out,
            "{:>20} {:>20}   {} at {}",
            d.offset,
            d.length,
            human(d.length),
            human(d.offset)
        )?;
    }
    writeln!(out)?;
    let n = r.differences.len();
    writeln!(
        out,
        "differ: {} bytes ({}) in {n} range{}; {read}{wire}",
        r.differing_bytes,
        human(r.differing_bytes),
        if n == 1 { "" } else { "s" }
    )?;
    if let Some(p) = &r.repaired {
        let mut line = format!(
            "repaired: {} record{} ({} of data, {} of zeroes) sent as a delta of {} bytes ({}), applied to {} and checked",
            p.records,
            if p.records == 1 { "" } else { "s" },
            human(p.data_bytes),
            human(p.zero_bytes),
            p.delta_bytes,
            human(p.delta_bytes),
            r.dest
        );
        if p.dest_size_after > p.dest_size_before {
            line.push_str(&format!(
                "; DEST was extended from {} to {} bytes",
                p.dest_size_before, p.dest_size_after
            ));
        } else if p.dest_size_after < p.dest_size_before {
            line.push_str(&format!(
                "; DEST was cut from {} to {} bytes",
                p.dest_size_before, p.dest_size_after
            ));
        }
        writeln!(out, "{line}")?;
        if r.identical_now {
            writeln!(out, "DEST is now identical to SRC")?;
        } else {
            writeln!(
                out,
                "DEST is a block device larger than SRC: its last {} bytes remain",
                p.dest_size_after - r.src_size
            )?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repair_delta_is_a_comparison_for_any_content_of_srcs_size() {
        let dir = std::env::temp_dir().join(format!("lvmsync-repair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("src.img");
        std::fs::write(&path, vec![5u8; 10_000]).unwrap();
        let src = Source::open(&path).unwrap();
        let args = Args {
            src: path.clone(),
            dest: "host:/copy img".into(),
            block_size: 4096,
            repair: true,
            rsh: "ssh".into(),
            remote_path: "lvmsync-rs".into(),
            hello_timeout: Duration::from_secs(1),
            json: false,
            target: None,
        };
        let h = repair_header(&args, &src);
        assert_eq!(h.source.kind, SourceKind::Compare);
        assert_eq!((h.base, h.target, h.resume_from), (None, None, 0));
        assert_eq!(h.origin_size, 10_000);
        assert_eq!(h.chunk_size, 4096);
        assert_eq!(h.source.origin.as_deref(), Some(path.to_str().unwrap()));
        assert_eq!(h.properties[DEST_SIZE], "10000");
        assert_eq!(h.properties["compare-dest"], "host:/copy img");
        assert_eq!(h.properties["compare-src"], path.to_str().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn src_is_a_path_or_an_lv() {
        // Paths that exist, or do not look like vg/lv, stay as they are.
        assert_eq!(src_path(Path::new("Cargo.toml")), Path::new("Cargo.toml"));
        assert_eq!(src_path(Path::new("src/lib.rs")), Path::new("src/lib.rs"));
        for p in ["./a/b", "/a/b", "a/b/c", "missing.img", "a/"] {
            assert_eq!(src_path(Path::new(p)), Path::new(p), "{p}");
        }
        // vg/lv is /dev/vg/lv when that exists.
        assert_eq!(
            src_path(Path::new("no-such-vg/lv")),
            Path::new("no-such-vg/lv")
        );
        if Path::new("/dev/fd/0").exists() && !Path::new("fd/0").exists() {
            assert_eq!(src_path(Path::new("fd/0")), Path::new("/dev/fd/0"));
        }
    }
}
