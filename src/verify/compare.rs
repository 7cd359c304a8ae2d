//! Both sides of a comparison at once: SRC hashed here, DEST hashed here
//! too or on its host (its hashes arriving on the remote side's stdout),
//! the two compared batch by batch as they come, and the differing blocks
//! joined into sorted ranges. Only the bytes both copies have are hashed;
//! the tail of the longer one is a difference as a whole.

use std::io::{BufReader, Read};
use std::path::Path;
use std::process::ChildStdout;
use std::sync::Arc;
use std::time::Instant;

use super::hash::{blocks_in, decode_hashes, HashStream, Hashes, HASH_LEN};
use super::remote::{self, EXPECT, HELLO};
use super::{add_range, open_copy, Comparison, Request, VerifyError};
use crate::blockdev::Source;
use crate::files;
use crate::progress::{Progress, Style};
use crate::transport::{Connection, Echo, Launch, Location};
use crate::Error;

/// DEST's remote side: it streams its hashes on `stdout`.
struct RemoteHashes {
    conn: Box<Connection>,
    stdout: BufReader<ChildStdout>,
    host: String,
}

/// Where DEST's hashes come from.
enum DestHashes {
    /// DEST is here, to be hashed by a stream of its own.
    Local(Arc<Source>),
    /// DEST is on another host.
    Remote(RemoteHashes),
}

/// DEST, opened here or reached on its host, with what its side said of it.
pub struct DestSide {
    hashes: DestHashes,
    pub size: u64,
    pub is_device: bool,
}

fn echo() -> Echo {
    Arc::new(|line: &str| eprintln!("{line}"))
}

impl DestSide {
    /// Opens DEST, or starts its remote side and reads its hello.
    pub fn open(
        req: &Request,
        dest: &Location,
        src: &Source,
        comparison: &mut Comparison,
    ) -> Result<DestSide, Error> {
        let bs = req.block_size;
        match dest {
            Location::Local(path) => {
                let d = open_copy(Path::new(path))?;
                d.advise_sequential();
                let (size, is_device) = (d.size(), d.is_block_device());
                comparison.dest_size = size;
                Ok(DestSide {
                    hashes: DestHashes::Local(Arc::new(d)),
                    size,
                    is_device,
                })
            }
            Location::Remote { host, path } => {
                comparison.remote_host = Some(host.clone());
                let launch =
                    Launch::remote_with(&req.link.rsh, host, &req.link.remote_path, EXPECT, |p| {
                        remote::words(p, bs, src.size(), path)
                    })?;
                let mut conn = Connection::start(&launch, req.link.timeout, echo())?;
                let bad_hello = || VerifyError::BadHello {
                    host: host.clone(),
                    line: conn.hello.line(HELLO),
                };
                let (theirs, is_device) = match conn.hello.words().as_slice() {
                    [b, kind, ..] if *kind == "file" || *kind == "device" => (
                        b.parse::<u64>().map_err(|_| bad_hello())?,
                        *kind == "device",
                    ),
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
                comparison.dest_size = size;
                comparison.bytes_on_wire = Some(conn.hello.line(HELLO).len() as u64 + 1);
                let Some(stdout) = conn.take_stdout() else {
                    return Err(conn
                        .broken("the remote verify's stdout is closed".into())
                        .into());
                };
                Ok(DestSide {
                    hashes: DestHashes::Remote(RemoteHashes {
                        conn: Box::new(conn),
                        stdout,
                        host: host.clone(),
                    }),
                    size,
                    is_device,
                })
            }
        }
    }
}

/// Hashes SRC and DEST's common bytes concurrently, compares the hashes
/// batch by batch, and records the ranges that differ in `comparison`.
pub fn compare(
    src: &Arc<Source>,
    dest: DestSide,
    bs: u64,
    progress: Style,
    comparison: &mut Comparison,
) -> Result<(), Error> {
    let started = Instant::now();
    let src_size = src.size();
    let common = src_size.min(dest.size);
    let shown = Progress::new(progress, "verify", "comparing", common);
    let total_blocks = blocks_in(common, bs);
    let ours = HashStream::spawn(src.clone(), common, bs);
    /// DEST's hashes, coming.
    enum Incoming {
        Local(Hashes),
        Remote(RemoteHashes),
    }
    let mut incoming = match dest.hashes {
        DestHashes::Local(d) => Incoming::Local(Hashes::new(HashStream::spawn(d, common, bs))),
        DestHashes::Remote(r) => Incoming::Remote(r),
    };
    let mut wire = Vec::new();
    let mut block = 0u64;
    let mut ranges = Vec::new();
    for batch in ours {
        let batch = batch?;
        // Their hashes of the same blocks, or how many arrived.
        let theirs: Result<Vec<u128>, u64> = match &mut incoming {
            Incoming::Local(hashes) => Ok(hashes.take(batch.len())?),
            Incoming::Remote(RemoteHashes { stdout, .. }) => {
                wire.resize(batch.len() * HASH_LEN, 0);
                let (got, _) = files::read_full(stdout, &mut wire);
                if got < wire.len() {
                    Err(block + (got / HASH_LEN) as u64)
                } else {
                    Ok(decode_hashes(&wire))
                }
            }
        };
        let theirs = match theirs {
            Ok(t) => t,
            Err(got) => {
                return Err(match incoming {
                    Incoming::Remote(RemoteHashes { conn, .. }) => conn
                        .broken(format!(
                            "the remote verify stopped after sending {got} of {total_blocks} block hashes"
                        ))
                        .into(),
                    Incoming::Local(hashes) => VerifyError::Stopped {
                        path: hashes.path().to_string(),
                    }
                    .into(),
                })
            }
        };
        debug_assert_eq!(batch.len(), theirs.len());
        for (i, (a, b)) in batch.iter().zip(&theirs).enumerate() {
            if a != b {
                let offset = (block + i as u64) * bs;
                add_range(&mut ranges, offset, bs.min(common - offset));
            }
        }
        block += batch.len() as u64;
        shown.set((block * bs).min(common));
        if let Some(w) = &mut comparison.bytes_on_wire {
            *w += (theirs.len() * HASH_LEN) as u64;
        }
    }
    comparison.compare_seconds = started.elapsed().as_secs_f64();
    drop(shown);
    if let Incoming::Remote(r) = incoming {
        end_remote(r)?;
    }
    comparison.src_bytes_read = common;
    comparison.dest_bytes_read = common;
    comparison.bytes_read = 2 * common;
    // The tail of the longer copy differs.
    add_range(&mut ranges, common, src_size.max(dest.size) - common);
    comparison.differing_bytes = ranges.iter().map(|r| r.length).sum();
    comparison.identical = ranges.is_empty();
    comparison.identical_now = comparison.identical;
    comparison.differences = ranges;
    Ok(())
}

/// After the last hash: nothing more may come, and the remote must exit 0.
fn end_remote(r: RemoteHashes) -> Result<(), Error> {
    let RemoteHashes {
        conn,
        mut stdout,
        host,
    } = r;
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
