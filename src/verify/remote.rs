//! The far side of a remote comparison: `lvmsync-rs verify --remote-side`,
//! launched through the remote shell like the apply of `sync` (see
//! [`crate::transport`]). It opens its copy, says hello on stdout:
//!
//! ```text
//! LVMSYNC-VERIFY <protocol> <hash version> <size> <block size> <file|device>
//! ```
//!
//! and then writes the hash of every block of its first `min(SRC size, its
//! size)` bytes, in order, [`HASH_LEN`] bytes each (XXH3-128,
//! little-endian), as it computes them, and exits 0. Nothing goes back:
//! the comparison needs no round trip per block, so the latency of the
//! connection does not matter.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use super::hash::{encode_hashes, HashStream, HASH_LEN};
use super::{open_copy, VerifyError};
use crate::files;
use crate::transport::{Expect, Hello};
use crate::Error;

/// The first word of the remote side's hello line.
pub const HELLO: &str = "LVMSYNC-VERIFY";
/// The version of the exchange: the command line, the hello line, the
/// hashes after it.
pub const PROTOCOL: u32 = 1;
/// The version of the block hashes: XXH3-128 of each block's bytes.
const HASH_VERSION: u32 = 1;
/// How the remote side says hello, for [`crate::transport::Connection`].
pub const EXPECT: Expect = Expect {
    word: HELLO,
    protocol: PROTOCOL,
    format: HASH_VERSION,
    what: "block hash version",
    role: "verify",
};

/// The words of the remote side's command: `program` (one or more words)
/// `verify --remote-side ...`, options before `--`, so that a PATH
/// starting with `-` is a path.
pub fn words(program: &[String], block_size: u64, src_size: u64, path: &str) -> Vec<String> {
    let mut words = program.to_vec();
    words.extend(
        [
            "verify",
            "--remote-side",
            "--protocol",
            &PROTOCOL.to_string(),
            "--block-size",
            &block_size.to_string(),
            "--src-size",
            &src_size.to_string(),
            "--",
            path,
        ]
        .map(String::from),
    );
    words
}

/// What the remote side is asked to hash.
#[derive(Debug, Clone)]
pub struct Side {
    pub path: PathBuf,
    pub block_size: u64,
    /// SRC's size: the bytes past it are not hashed.
    pub src_size: u64,
    /// The protocol the local side speaks.
    pub protocol: u32,
}

/// Opens PATH, says hello, streams the block hashes of its first
/// `min(src_size, size)` bytes on stdout.
pub fn serve(side: &Side) -> Result<(), Error> {
    if side.protocol != PROTOCOL {
        return Err(VerifyError::ProtocolMismatch {
            theirs: side.protocol,
        }
        .into());
    }
    let source = Arc::new(open_copy(&side.path)?);
    source.advise_sequential();
    let kind = if source.is_block_device() {
        "device"
    } else {
        "file"
    };
    let hello = Hello {
        protocol: PROTOCOL,
        format: HASH_VERSION,
        dest_size: source.size(),
        rest: format!("{} {kind}", side.block_size),
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{}", hello.line(HELLO))
        .and_then(|()| out.flush())
        .map_err(Error::Output)?;
    files::grow_pipe(io::stdout());
    let common = source.size().min(side.src_size);
    let mut bytes = Vec::with_capacity(HASH_LEN * 1024);
    for batch in HashStream::spawn(source, common, side.block_size) {
        encode_hashes(&batch?, &mut bytes);
        out.write_all(&bytes)
            .and_then(|()| out.flush())
            .map_err(Error::Output)?;
    }
    Ok(())
}
