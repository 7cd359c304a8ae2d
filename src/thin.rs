//! Thin snapshots: what changed between two thin devices of one pool, from
//! the pool's metadata, through `thin_delta` (thin-provisioning-tools).
//!
//! A thin pool maps each block of each thin device to a data block. A
//! snapshot starts by sharing all of its origin's mappings; a write to the
//! origin afterwards maps the written blocks to new data blocks, and a
//! discard unmaps them. So the blocks whose mappings differ between the
//! snapshot and the origin are exactly the blocks that changed, and the
//! blocks the snapshot maps but the origin no longer does now read as
//! zeroes. `thin_delta --thin1 SNAPSHOT --thin2 ORIGIN` walks both mapping
//! trees and prints, in thin block order, ranges that are `same`,
//! `different`, `left_only` (mapped in the snapshot only) or `right_only`
//! (mapped in the origin only).
//!
//! The live metadata changes under the kernel's feet, so it is read through
//! a metadata snapshot that the pool keeps still for as long as it is held
//! ([`MetadataSnap`]): reserved before `thin_delta` runs and released on
//! every way out, SIGINT and SIGTERM included.
//!
//! [`parse`] reads `thin_delta`'s XML as it arrives, with a small tokenizer
//! that knows the few elements `thin_delta` writes (both the plain form and
//! the `--verbose` form with `<range>` children, of versions 0.9 and 1.x),
//! and refuses anything else.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once};

use thiserror::Error;

use crate::extents::{Extent, ExtentSet};

/// Bytes in a sector, the unit of the pool's data block size.
const SECTOR: u64 = 512;
/// Largest data block size a thin pool may have: 1 GiB, in sectors.
const MAX_BLOCK_SECTORS: u64 = 1 << 21;

#[derive(Debug, Error)]
pub enum ThinError {
    #[error("thin_delta not found: install the thin-provisioning-tools package (lvmsync-rs runs thin_delta to compare thin volumes)")]
    NotInstalled,
    #[error("cannot run thin_delta: {0}")]
    Spawn(io::Error),
    #[error("thin_delta failed ({status}): {message}")]
    Failed { status: String, message: String },
    #[error("thin_delta's output is malformed at byte {at}: {reason}")]
    Malformed { at: u64, reason: String },
    #[error("reading thin_delta's output: {0}")]
    Read(io::Error),
    #[error("{pool}: the pool's metadata snapshot is already held (at metadata block {root}), by another program or an earlier run that did not finish; lvmsync-rs does not release a reservation it did not make: when nothing else uses it, release it with 'dmsetup message {pool} 0 release_metadata_snap'")]
    SnapHeld { pool: String, root: String },
    #[error("{pool}: cannot reserve the pool's metadata snapshot: {message}")]
    Reserve { pool: String, message: String },
    #[error("{pool}: cannot release the pool's metadata snapshot: {message}; release it with 'dmsetup message {pool} 0 release_metadata_snap'")]
    Release { pool: String, message: String },
    #[error("{pool}: unexpected thin-pool status {text:?}")]
    PoolStatus { pool: String, text: String },
}

/// One kind of range in `thin_delta`'s output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeKind {
    /// Mapped to the same data block in both devices: unchanged.
    Same,
    /// Mapped to different data blocks: changed.
    Different,
    /// Mapped in the first device (the snapshot) only: reads as zeroes in
    /// the second now.
    LeftOnly,
    /// Mapped in the second device only: written since.
    RightOnly,
}

impl RangeKind {
    fn from_name(name: &[u8]) -> Option<RangeKind> {
        Some(match name {
            b"same" => RangeKind::Same,
            b"different" => RangeKind::Different,
            b"left_only" => RangeKind::LeftOnly,
            b"right_only" => RangeKind::RightOnly,
            _ => return None,
        })
    }
}

/// What `thin_delta` reported, in pool blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThinDiff {
    /// The pool's data block size in sectors, from the `<superblock>`.
    pub data_block_sectors: u64,
    /// The thin device ids compared, from the `<diff>` (`left`, `right`);
    /// none when `thin_delta` named them by root block.
    pub left: Option<u64>,
    pub right: Option<u64>,
    /// Changed blocks (`different`, `right_only`): `(begin, length)`, sorted,
    /// adjacent runs joined.
    pub changed: Vec<(u64, u64)>,
    /// Blocks unmapped in the right device (`left_only`), likewise.
    pub unmapped: Vec<(u64, u64)>,
    /// Blocks reported of each kind: same, different, left only, right only.
    pub blocks: [u64; 4],
}

impl ThinDiff {
    /// The data block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.data_block_sectors * SECTOR
    }

    /// The changed byte ranges to read from the new data, and those that
    /// read as zeroes now, clipped to `limit` bytes when given.
    pub fn extents(&self, limit: Option<u64>) -> (ExtentSet, ExtentSet) {
        let bs = self.block_size();
        let limit = limit.unwrap_or(u64::MAX);
        let bytes = |runs: &[(u64, u64)]| {
            ExtentSet::from_extents(
                runs.iter()
                    .filter_map(|&(b, n)| {
                        let offset = b.saturating_mul(bs);
                        let end = b.saturating_add(n).saturating_mul(bs).min(limit);
                        (end > offset).then(|| Extent {
                            offset,
                            length: end - offset,
                        })
                    })
                    .collect(),
            )
        };
        (bytes(&self.changed), bytes(&self.unmapped))
    }

    fn push(&mut self, kind: RangeKind, begin: u64, length: u64) {
        let idx = kind as usize;
        self.blocks[idx] = self.blocks[idx].saturating_add(length);
        let runs = match kind {
            RangeKind::Same => return,
            RangeKind::Different | RangeKind::RightOnly => &mut self.changed,
            RangeKind::LeftOnly => &mut self.unmapped,
        };
        match runs.last_mut() {
            Some((b, n)) if *b + *n == begin => *n += length,
            _ => runs.push((begin, length)),
        }
    }
}

// ------------------------------------------------------------------ parsing

/// A tag of the XML stream.
#[derive(Debug, PartialEq, Eq)]
enum Tag {
    /// `<name attrs>` or, when `empty`, `<name attrs/>`; the body is the
    /// text after the name.
    Start { empty: bool },
    /// `</name>`.
    End,
    /// The end of the input.
    Eof,
}

/// Splits an XML byte stream into tags, skipping whitespace between them,
/// the XML declaration and comments. Text between tags is refused:
/// `thin_delta` writes none.
struct Tokenizer<R: BufRead> {
    input: R,
    /// Bytes consumed before the current tag.
    at: u64,
    /// Where the current tag starts.
    tag_at: u64,
    /// The current tag, `<` and `>` excluded.
    buf: Vec<u8>,
}

/// Whether `tag` ends inside a quoted attribute value.
fn unbalanced(tag: &[u8]) -> bool {
    let mut quote = None;
    for &b in tag {
        match quote {
            None if b == b'"' || b == b'\'' => quote = Some(b),
            Some(q) if b == q => quote = None,
            _ => {}
        }
    }
    quote.is_some()
}

/// Longest tag accepted, in bytes: thin_delta's are under 200.
const MAX_TAG: usize = 64 << 10;

/// Attribute names and values of a tag.
type Attrs<'a> = Vec<(&'a [u8], &'a [u8])>;

fn malformed(at: u64, reason: impl Into<String>) -> ThinError {
    ThinError::Malformed {
        at,
        reason: reason.into(),
    }
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(60).collect();
    if text.chars().count() > 60 {
        s.push_str("...");
    }
    format!("{s:?}")
}

/// What `input` has buffered, read if it is empty (empty at the end);
/// retried when interrupted by a signal.
fn fill<R: BufRead>(input: &mut R) -> Result<&[u8], ThinError> {
    loop {
        match input.fill_buf() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ThinError::Read(e)),
            Ok(_) => break,
        }
    }
    // Buffered now (or at the end): this returns it without reading.
    input.fill_buf().map_err(ThinError::Read)
}

impl<R: BufRead> Tokenizer<R> {
    fn new(input: R) -> Self {
        Tokenizer {
            input,
            at: 0,
            tag_at: 0,
            buf: Vec::with_capacity(256),
        }
    }

    /// Skips whitespace up to the next `<`; false at the end of input.
    fn skip_space(&mut self) -> Result<bool, ThinError> {
        loop {
            let chunk = fill(&mut self.input)?;
            if chunk.is_empty() {
                return Ok(false);
            }
            let n = chunk
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(chunk.len());
            if n < chunk.len() {
                if chunk[n] != b'<' {
                    let end = chunk[n..]
                        .iter()
                        .position(|&b| b == b'<' || b == b'\n')
                        .map_or(chunk.len(), |p| n + p);
                    return Err(malformed(
                        self.at + n as u64,
                        format!("text outside an element: {}", show(&chunk[n..end])),
                    ));
                }
                self.input.consume(n + 1);
                self.at += n as u64 + 1;
                return Ok(true);
            }
            let len = chunk.len();
            self.input.consume(len);
            self.at += len as u64;
        }
    }

    /// Appends input up to and including the next `>` to `buf`; false at
    /// the end of input. A tag longer than [`MAX_TAG`] is refused, so
    /// memory stays bounded whatever the input.
    fn read_to_gt(&mut self) -> Result<bool, ThinError> {
        loop {
            let chunk = fill(&mut self.input)?;
            if chunk.is_empty() {
                return Ok(false);
            }
            let (n, done) = match chunk.iter().position(|&b| b == b'>') {
                Some(p) => (p + 1, true),
                None => (chunk.len(), false),
            };
            self.buf.extend_from_slice(&chunk[..n]);
            self.input.consume(n);
            self.at += n as u64;
            if self.buf.len() > MAX_TAG {
                return Err(malformed(
                    self.tag_at,
                    format!("a tag longer than {MAX_TAG} bytes: <{}", show(&self.buf)),
                ));
            }
            if done {
                return Ok(true);
            }
        }
    }

    /// The next tag; its name and attributes are in `self.buf`.
    fn next(&mut self) -> Result<Tag, ThinError> {
        loop {
            if !self.skip_space()? {
                return Ok(Tag::Eof);
            }
            self.tag_at = self.at - 1;
            self.buf.clear();
            let cut = |t: &Self| {
                malformed(
                    t.tag_at,
                    format!("the output ends inside a tag: <{}", show(&t.buf)),
                )
            };
            if !self.read_to_gt()? {
                return Err(cut(self));
            }
            if self.buf.starts_with(b"!--") {
                while !self.buf.ends_with(b"-->") || self.buf.len() < 6 {
                    if !self.read_to_gt()? {
                        return Err(cut(self));
                    }
                }
                continue;
            }
            // A `>` inside a quoted value does not end the tag.
            while unbalanced(&self.buf) {
                if !self.read_to_gt()? {
                    return Err(cut(self));
                }
            }
            self.buf.pop(); // the '>'
            if self.buf.first() == Some(&b'?') {
                continue;
            }
            if self.buf.first() == Some(&b'/') {
                return Ok(Tag::End);
            }
            let empty = self.buf.last() == Some(&b'/');
            if empty {
                self.buf.pop();
            }
            return Ok(Tag::Start { empty });
        }
    }

    /// The current tag's name (after the `/` of an end tag).
    fn name(&self) -> &[u8] {
        let b = self.buf.strip_prefix(b"/").unwrap_or(&self.buf);
        let end = b
            .iter()
            .position(|c| c.is_ascii_whitespace())
            .unwrap_or(b.len());
        &b[..end]
    }

    /// The current tag's attributes, checked for form.
    fn attrs(&self) -> Result<Attrs<'_>, ThinError> {
        let bad = |what: &str| {
            malformed(
                self.tag_at,
                format!("{what} in <{}>", String::from_utf8_lossy(&self.buf)),
            )
        };
        let mut rest = &self.buf[self.name().len()..];
        let mut out = Vec::new();
        loop {
            let start = rest
                .iter()
                .position(|c| !c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            if start == 0 && !rest.is_empty() {
                return Err(bad("no space before an attribute"));
            }
            rest = &rest[start..];
            if rest.is_empty() {
                return Ok(out);
            }
            let eq = rest
                .iter()
                .position(|&c| c == b'=')
                .ok_or_else(|| bad("an attribute without a value"))?;
            let name = rest[..eq].trim_ascii();
            if name.is_empty() || name.iter().any(|c| c.is_ascii_whitespace() || *c == b'"') {
                return Err(bad("a malformed attribute"));
            }
            let after = rest[eq + 1..].trim_ascii_start();
            let quote = match after.first() {
                Some(&q @ (b'"' | b'\'')) => q,
                _ => return Err(bad("an unquoted attribute value")),
            };
            let close = after[1..]
                .iter()
                .position(|&c| c == quote)
                .ok_or_else(|| bad("an unterminated attribute value"))?;
            out.push((name, &after[1..1 + close]));
            rest = &after[close + 2..];
        }
    }
}

/// The value of attribute `name` as a decimal number.
fn number(
    tok: &Tokenizer<impl BufRead>,
    attrs: &[(&[u8], &[u8])],
    name: &str,
) -> Result<u64, ThinError> {
    let element = || String::from_utf8_lossy(tok.name()).into_owned();
    let value = attrs
        .iter()
        .find(|(n, _)| *n == name.as_bytes())
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            malformed(
                tok.tag_at,
                format!("<{}> has no {name} attribute", element()),
            )
        })?;
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        let element = element();
        return Err(malformed(
            tok.tag_at,
            format!("<{element}> {name}={} is not a number", show(value)),
        ));
    }
    // Decimal digits only: no sign, no spaces; overflow is refused.
    value
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(|| {
            malformed(
                tok.tag_at,
                format!("<{}> {name}={} is out of range", element(), show(value)),
            )
        })
}

fn optional_number(
    tok: &Tokenizer<impl BufRead>,
    attrs: &[(&[u8], &[u8])],
    name: &str,
) -> Result<Option<u64>, ThinError> {
    if attrs.iter().any(|(n, _)| *n == name.as_bytes()) {
        number(tok, attrs, name).map(Some)
    } else {
        Ok(None)
    }
}

/// Reads `thin_delta`'s output as it arrives and gathers its ranges. With
/// `expect`, the `<diff>` must compare exactly those thin device ids (left,
/// right). Anything but the elements `thin_delta` writes, in the order it
/// writes them, is refused, as are ranges out of order or overlapping, and
/// an output that stops before `</superblock>`.
pub fn parse(input: impl BufRead, expect: Option<(u64, u64)>) -> Result<ThinDiff, ThinError> {
    let mut tok = Tokenizer::new(input);
    let mut diff = ThinDiff::default();
    // The end of the last range, in blocks: ranges come in order.
    let mut next_free = 0u64;
    let unexpected = |tok: &Tokenizer<_>, tag: &Tag, inside: &str| {
        let what = match tag {
            Tag::Eof => "the output ends".to_string(),
            Tag::End => format!("</{}>", String::from_utf8_lossy(tok.name())),
            Tag::Start { .. } => format!("<{}>", String::from_utf8_lossy(tok.name())),
        };
        let at = if *tag == Tag::Eof { tok.at } else { tok.tag_at };
        malformed(at, format!("{what} {inside}"))
    };

    // <superblock ... data_block_size="N" ...>
    let tag = tok.next()?;
    if tag != (Tag::Start { empty: false }) || tok.name() != b"superblock" {
        return Err(unexpected(
            &tok,
            &tag,
            "where <superblock> should start the output (is this thin_delta's output?)",
        ));
    }
    let attrs = tok.attrs()?;
    let sectors = number(&tok, &attrs, "data_block_size")?;
    if sectors == 0 || sectors > MAX_BLOCK_SECTORS {
        return Err(malformed(
            tok.tag_at,
            format!("data_block_size {sectors} is not within 1 to {MAX_BLOCK_SECTORS} sectors"),
        ));
    }
    diff.data_block_sectors = sectors;

    // <diff left="A" right="B">
    let tag = tok.next()?;
    if tag != (Tag::Start { empty: false }) || tok.name() != b"diff" {
        return Err(unexpected(
            &tok,
            &tag,
            "inside <superblock>, where <diff> should be",
        ));
    }
    let attrs = tok.attrs()?;
    diff.left = optional_number(&tok, &attrs, "left")?;
    diff.right = optional_number(&tok, &attrs, "right")?;
    if let Some((a, b)) = expect {
        if diff.left != Some(a) || diff.right != Some(b) {
            let id = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
            return Err(malformed(
                tok.tag_at,
                format!(
                    "it compares thin devices {} and {}, not {a} and {b}",
                    id(diff.left),
                    id(diff.right)
                ),
            ));
        }
    }

    // The ranges: <KIND begin= length=/>, or <KIND> <range .../>... </KIND>.
    let mut open: Option<(RangeKind, Vec<u8>)> = None;
    loop {
        let tag = tok.next()?;
        let range_kind = match (&tag, &open) {
            (Tag::End, None) if tok.name() == b"diff" => break,
            (Tag::End, Some((_, name))) if tok.name() == name.as_slice() => {
                open = None;
                continue;
            }
            (Tag::Start { empty: false }, None) => match RangeKind::from_name(tok.name()) {
                Some(kind) => {
                    open = Some((kind, tok.name().to_vec()));
                    continue;
                }
                None => return Err(unexpected(&tok, &tag, "inside <diff>")),
            },
            (Tag::Start { empty: true }, None) => match RangeKind::from_name(tok.name()) {
                Some(kind) => kind,
                None => return Err(unexpected(&tok, &tag, "inside <diff>")),
            },
            (Tag::Start { empty: true }, Some((kind, _))) if tok.name() == b"range" => *kind,
            (_, Some((_, name))) => {
                let inside = format!("inside <{}>", String::from_utf8_lossy(name));
                return Err(unexpected(&tok, &tag, &inside));
            }
            (_, None) => return Err(unexpected(&tok, &tag, "inside <diff>")),
        };
        let attrs = tok.attrs()?;
        let begin = number(&tok, &attrs, "begin")?;
        let length = number(&tok, &attrs, "length")?;
        if length == 0 {
            return Err(malformed(tok.tag_at, "a range of length 0"));
        }
        let end = begin
            .checked_add(length)
            .filter(|e| e.checked_mul(diff.block_size()).is_some())
            .ok_or_else(|| {
                malformed(
                    tok.tag_at,
                    format!("the range at block {begin} of {length} blocks ends past 2^64 bytes"),
                )
            })?;
        if begin < next_free {
            return Err(malformed(
                tok.tag_at,
                format!("the range at block {begin} starts before the end of the one before it (block {next_free}): ranges must come in order"),
            ));
        }
        next_free = end;
        diff.push(range_kind, begin, length);
    }

    // </superblock>, then nothing.
    let tag = tok.next()?;
    if tag != Tag::End || tok.name() != b"superblock" {
        return Err(unexpected(
            &tok,
            &tag,
            "after </diff>, where </superblock> should be",
        ));
    }
    let tag = tok.next()?;
    if tag != Tag::Eof {
        return Err(unexpected(&tok, &tag, "after </superblock>"));
    }
    Ok(diff)
}

// ------------------------------------------------------- running thin_delta

/// The pid of the running `thin_delta`, for the signal handler (0: none).
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Runs `thin_delta --thin1 THIN1 --thin2 THIN2 METADATA` (with `-m` when
/// `metadata_snap`: through the pool's reserved metadata snapshot) and
/// parses its output as it arrives.
pub fn thin_delta(
    metadata: &Path,
    thin1: u64,
    thin2: u64,
    metadata_snap: bool,
) -> Result<ThinDiff, ThinError> {
    let mut args: Vec<OsString> = Vec::new();
    if metadata_snap {
        args.push("-m".into());
    }
    args.extend(["--thin1".into(), thin1.to_string().into()]);
    args.extend(["--thin2".into(), thin2.to_string().into()]);
    args.push(metadata.as_os_str().to_owned());
    let mut child = Command::new("thin_delta")
        .args(&args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ThinError::NotInstalled
            } else {
                ThinError::Spawn(e)
            }
        })?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        // The last 64 KiB are enough for the last line.
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 128 << 10 {
                        kept.drain(..kept.len() - (64 << 10));
                    }
                }
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    });
    let mut stdout =
        BufReader::with_capacity(256 << 10, child.stdout.take().expect("stdout is piped"));
    let parsed = parse(&mut stdout, Some((thin1, thin2)));
    if parsed.is_err() {
        // Let thin_delta finish (or fail) rather than block on a full pipe.
        let _ = io::copy(&mut stdout, &mut io::sink());
    }
    drop(stdout);
    let status = child.wait();
    CHILD.store(0, Ordering::SeqCst);
    let err_text = stderr_reader.join().unwrap_or_default();
    let status = status.map_err(ThinError::Spawn)?;
    if !status.success() {
        let message = err_text
            .lines()
            .map(str::trim)
            .rfind(|l| {
                !l.is_empty()
                    && !l.starts_with("Usage:")
                    && !l.starts_with('{')
                    && !l.starts_with("Options:")
            })
            .unwrap_or("no message")
            .to_string();
        return Err(ThinError::Failed {
            status: status.to_string(),
            message,
        });
    }
    parsed
}

// ------------------------------------------------- the metadata snapshot

/// The pool whose metadata snapshot this process holds, if any. Its lock
/// is held while the pool is told to reserve or release, so the signal
/// handler never sees a reservation half made.
static HELD: Mutex<Option<String>> = Mutex::new(None);
static SIGNALS: Once = Once::new();

/// The pool's metadata snapshot, reserved by this process: released when
/// dropped, and by the signal handler on SIGINT, SIGTERM or SIGHUP.
#[derive(Debug)]
pub struct MetadataSnap {
    pool: String,
}

/// The held metadata root in a thin-pool's `dmsetup status` line (`-` when
/// none is held). The line is `START LEN thin-pool TRANSACTION
/// USED/TOTAL-META USED/TOTAL-DATA HELD-ROOT ...`, or `... thin-pool Fail`.
fn held_metadata_root(status_line: &str) -> Option<&str> {
    let fields: Vec<&str> = status_line.split_whitespace().collect();
    if fields.get(2) != Some(&"thin-pool") || fields.len() < 7 {
        return None;
    }
    if !fields[4].contains('/') || !fields[5].contains('/') {
        return None;
    }
    Some(fields[6])
}

/// `dmsetup ARGS`; the error as one line, for the messages about the
/// metadata snapshot.
fn dmsetup(args: &[&str]) -> Result<String, String> {
    crate::tool::run_str("dmsetup", "dmsetup", args).map_err(|e| e.to_string())
}

/// The held metadata root of pool device `pool` (its dm name), `-` when
/// none is held.
fn pool_held_root(pool: &str) -> Result<String, ThinError> {
    let text = dmsetup(&["status", pool]).map_err(|message| ThinError::Reserve {
        pool: pool.into(),
        message,
    })?;
    let line = text.lines().next().unwrap_or("");
    held_metadata_root(line)
        .map(str::to_string)
        .ok_or_else(|| ThinError::PoolStatus {
            pool: pool.into(),
            text: line.to_string(),
        })
}

impl MetadataSnap {
    /// Reserves the metadata snapshot of pool device `pool` (its dm name,
    /// `VG-POOL-tpool`), after checking that nobody holds one: a held
    /// snapshot belongs to someone else and is left alone.
    pub fn reserve(pool: &str) -> Result<MetadataSnap, ThinError> {
        arm_signal_handler();
        let root = pool_held_root(pool)?;
        if root != "-" {
            return Err(ThinError::SnapHeld {
                pool: pool.into(),
                root,
            });
        }
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(message) = dmsetup(&["message", pool, "0", "reserve_metadata_snap"]) {
            // Someone may have reserved it in between: it is theirs.
            return Err(match pool_held_root(pool) {
                Ok(root) if root != "-" => ThinError::SnapHeld {
                    pool: pool.into(),
                    root,
                },
                _ => ThinError::Reserve {
                    pool: pool.into(),
                    message,
                },
            });
        }
        *held = Some(pool.to_string());
        Ok(MetadataSnap { pool: pool.into() })
    }

    /// Releases the reservation, reporting a failure.
    pub fn release(mut self) -> Result<(), ThinError> {
        let pool = std::mem::take(&mut self.pool);
        release_held(&pool).map_err(|message| ThinError::Release { pool, message })
    }
}

impl Drop for MetadataSnap {
    fn drop(&mut self) {
        if !self.pool.is_empty() {
            if let Err(message) = release_held(&self.pool) {
                eprintln!(
                    "lvmsync-rs: warning: {}",
                    ThinError::Release {
                        pool: self.pool.clone(),
                        message
                    }
                );
            }
        }
    }
}

fn release_held(pool: &str) -> Result<(), String> {
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if held.as_deref() != Some(pool) {
        return Ok(());
    }
    dmsetup(&["message", pool, "0", "release_metadata_snap"])?;
    *held = None;
    Ok(())
}

/// From now on, SIGINT, SIGTERM and SIGHUP are taken by a thread that
/// stops `thin_delta`, releases a metadata snapshot this process holds, and
/// exits with 128 + the signal's number. The signals are blocked in the
/// calling thread, and so in every thread it starts later; child processes
/// start with them unblocked.
fn arm_signal_handler() {
    use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
    SIGNALS.call_once(|| {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        if nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
            return;
        }
        std::thread::spawn(move || loop {
            let Ok(sig) = set.wait() else { continue };
            let child = CHILD.load(Ordering::SeqCst);
            if child > 0 {
                let _ = kill(nix::unistd::Pid::from_raw(child), Signal::SIGTERM);
            }
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            let note = match held.take() {
                Some(pool) => match dmsetup(&["message", &pool, "0", "release_metadata_snap"]) {
                    Ok(_) => format!("; the metadata snapshot of {pool} was released"),
                    Err(e) => format!("; releasing the metadata snapshot of {pool} failed: {e}"),
                },
                None => String::new(),
            };
            eprintln!("lvmsync-rs: error: interrupted by {}{note}", sig.as_str());
            std::process::exit(128 + sig as i32);
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<ThinDiff, ThinError> {
        parse(s.as_bytes(), None)
    }

    const PLAIN: &str = r#"<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="0">
  <diff left="1" right="2">
    <same begin="0" length="5"/>
    <different begin="5" length="2"/>
    <left_only begin="7" length="1"/>
    <right_only begin="8" length="3"/>
    <same begin="11" length="117"/>
  </diff>
</superblock>
"#;

    #[test]
    fn the_plain_form_parses() {
        let d = parse(PLAIN.as_bytes(), Some((1, 2))).unwrap();
        assert_eq!(d.data_block_sectors, 128);
        assert_eq!(d.block_size(), 65536);
        assert_eq!((d.left, d.right), (Some(1), Some(2)));
        assert_eq!(d.changed, vec![(5, 2), (8, 3)]);
        assert_eq!(d.unmapped, vec![(7, 1)]);
        assert_eq!(d.blocks, [122, 2, 1, 3]);
        let (data, zero) = d.extents(None);
        assert_eq!(
            data.as_slice(),
            &[
                Extent {
                    offset: 5 * 65536,
                    length: 2 * 65536
                },
                Extent {
                    offset: 8 * 65536,
                    length: 3 * 65536
                }
            ]
        );
        assert_eq!(
            zero.as_slice(),
            &[Extent {
                offset: 7 * 65536,
                length: 65536
            }]
        );
        // Clipped to the origin's size.
        let (data, _) = d.extents(Some(9 * 65536 + 100));
        assert_eq!(
            data.as_slice()[1],
            Extent {
                offset: 8 * 65536,
                length: 65536 + 100
            }
        );
    }

    #[test]
    fn the_verbose_forms_parse() {
        // 0.9: open kind elements with <range> children carrying data
        // block addresses; 1.x: the same, with a version attribute.
        let text = r#"<superblock uuid="" time="1" transaction="2" version="2" data_block_size="2048" nr_data_blocks="100">
<diff left="3" right="4">
<same>
<range begin="0" data_begin="10" length="2"/>
</same>
<different>
<range begin="2" left_data_begin="12" right_data_begin="40" length="1"/>
<range begin="3" left_data_begin="13" right_data_begin="50" length="1"/>
</different>
<left_only>
<range begin="4" data_begin="14" length="2"/>
</left_only>
<right_only>
<range begin="6" data_begin="60" length="1"/>
</right_only>
</diff>
</superblock>"#;
        let d = parse(text.as_bytes(), Some((3, 4))).unwrap();
        assert_eq!(d.block_size(), 1 << 20);
        assert_eq!(d.changed, vec![(2, 2), (6, 1)]);
        assert_eq!(d.unmapped, vec![(4, 2)]);
        assert_eq!(d.blocks, [2, 2, 2, 1]);
    }

    #[test]
    fn declarations_comments_and_odd_spacing_are_accepted() {
        let text = "<?xml version=\"1.0\"?>\n<!-- a comment > with a gt -->\n<superblock data_block_size = '128' uuid=\"a>b\"><diff left=\"1\" right=\"2\"><different begin=\"0\" length=\"1\" /></diff></superblock>\n\n";
        let d = parse_str(text).unwrap();
        assert_eq!(d.changed, vec![(0, 1)]);
    }

    #[test]
    fn an_empty_diff_changes_nothing() {
        let d = parse_str(
            r#"<superblock data_block_size="128"><diff left="1" right="2"></diff></superblock>"#,
        )
        .unwrap();
        assert!(d.changed.is_empty() && d.unmapped.is_empty());
    }

    #[test]
    fn malformed_output_is_refused() {
        let cases: &[(&str, &str)] = &[
            ("", "the output ends"),
            ("garbage", "text outside an element"),
            ("<device dev_id=\"1\">", "where <superblock> should start"),
            ("<superblock uuid=\"\">", "no data_block_size attribute"),
            ("<superblock data_block_size=\"0\">", "not within 1 to"),
            ("<superblock data_block_size=\"abc\">", "is not a number"),
            ("<superblock data_block_size=128>", "unquoted attribute value"),
            ("<superblock data_block_size=\"99999999999999999999999\">", "is out of range"),
            ("<superblock data_block_size=\"-1\">", "is not a number"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><same begin=\"0\" length=\"5\"/>", "the output ends inside <diff>"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><same begin=\"0\" len", "ends inside a tag"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><mapped begin=\"0\" length=\"1\"/>", "<mapped> inside <diff>"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><same length=\"1\"/>", "no begin attribute"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><same begin=\"0\" length=\"0\"/>", "length 0"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><same begin=\"5\" length=\"2\"/><different begin=\"6\" length=\"1\"/>", "must come in order"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><same begin=\"18446744073709551615\" length=\"2\"/>", "past 2^64"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><same><different begin=\"0\" length=\"1\"/>", "<different> inside <same>"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><same><range begin=\"0\" length=\"1\"/></different>", "</different> inside <same>"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\">text</diff></superblock>", "text outside"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"></diff></superblock><superblock>", "<superblock> after </superblock>"),
            ("<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"></diff>", "the output ends after </diff>"),
        ];
        for (text, needle) in cases {
            let err = parse_str(text).expect_err(text).to_string();
            assert!(
                err.starts_with("thin_delta's output is malformed at byte "),
                "{err}"
            );
            assert!(
                err.contains(needle),
                "{text:?}: expected {needle:?} in {err:?}"
            );
        }
    }

    #[test]
    fn a_tag_without_end_is_refused_before_it_fills_memory() {
        let mut text =
            b"<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"><same ".to_vec();
        text.resize(10 << 20, b'a');
        let err = parse(&text[..], None).unwrap_err().to_string();
        assert!(err.contains("a tag longer than 65536 bytes"), "{err}");
    }

    #[test]
    fn the_devices_compared_must_be_the_ones_asked_for() {
        let err = parse(PLAIN.as_bytes(), Some((2, 1)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("compares thin devices 1 and 2, not 2 and 1"),
            "{err}"
        );
    }

    #[test]
    fn the_held_root_is_read_from_the_pool_status() {
        let free =
            "0 4194304 thin-pool 1 166/8192 23/64 - rw discard_passdown queue_if_no_space - 1024";
        let held =
            "0 4194304 thin-pool 3 170/8192 23/64 165 rw discard_passdown queue_if_no_space - 1024";
        assert_eq!(held_metadata_root(free), Some("-"));
        assert_eq!(held_metadata_root(held), Some("165"));
        assert_eq!(held_metadata_root("0 4194304 thin-pool Fail"), None);
        assert_eq!(held_metadata_root("0 2048 linear"), None);
    }
}
