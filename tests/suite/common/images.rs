//! Data, images and deltas made by the tests.

use std::fs;
use std::path::{Path, PathBuf};

use lvmsync::cowgen::{CowImage, Rng};
use lvmsync::stream::{Compression, Header, SourceInfo, SourceKind, Writer};

use super::Scratch;

/// `len` pseudo-random bytes from `seed` (not 0): the same for the same
/// seed, and a prefix of what a longer length gives.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng(seed).fill(&mut v);
    v
}

/// Writes a COW image in the kernel's layout, of chunks of `chunk` bytes,
/// whose table lists the origin chunks `chunks` in that order.
pub fn cow_image(path: &Path, chunk: u64, chunks: &[u64]) {
    let mut img = CowImage::new(chunk);
    for &c in chunks {
        img.push(c);
    }
    fs::write(path, img.to_vec()).unwrap();
}

/// What a changed chunk holds in the new image.
#[derive(Clone, Copy)]
pub enum Fill {
    /// Random bytes: stored raw, as they do not compress.
    Random,
    /// A line of text over and over: compresses.
    Text,
    /// Words in an order that varies, as in logs: lz4 finds few repeats
    /// in it, an entropy coder (zstd) halves it again.
    Words,
    /// Zeroes: a ZERO record.
    Zero,
}

/// An old image, a new one that differs from it in known chunks, and the
/// COW image listing those chunks, in a test's directory.
pub struct Change {
    pub dir: Scratch,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
    /// The new image, `new.img`.
    pub new_path: PathBuf,
    /// The COW image, `snap.cow`.
    pub cow_path: PathBuf,
}

impl Change {
    /// An old image of `size` random bytes from `seed`, and the new one:
    /// each of `changes` sets chunk number `.0` (of `chunk` bytes; the last
    /// chunk of the image may be partial) to `.1`, in that order, and the
    /// COW image lists the chunks in the same order.
    pub fn new(
        dir: Scratch,
        size: usize,
        chunk: u64,
        seed: u64,
        changes: impl IntoIterator<Item = (u64, Fill)>,
    ) -> Change {
        const TEXT: &[u8] = b"the quick brown fox jumps over the lazy dog\n";
        let mut rng = Rng(seed);
        let mut old = vec![0u8; size];
        rng.fill(&mut old);
        let mut new = old.clone();
        let mut chunks = Vec::new();
        for (c, fill) in changes {
            let start = (c * chunk) as usize;
            let end = (start + chunk as usize).min(size);
            let b = &mut new[start..end];
            match fill {
                Fill::Random => rng.fill(b),
                Fill::Zero => b.fill(0),
                Fill::Text => {
                    for (i, x) in b.iter_mut().enumerate() {
                        *x = TEXT[i % TEXT.len()];
                    }
                }
                Fill::Words => words(b, &mut rng),
            }
            chunks.push(c);
        }
        let new_path = dir.join("new.img");
        let cow_path = dir.join("snap.cow");
        fs::write(&new_path, &new).unwrap();
        cow_image(&cow_path, chunk, &chunks);
        Change {
            dir,
            old,
            new,
            new_path,
            cow_path,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A fresh copy of the old image.
    pub fn copy_of_old(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, &self.old).unwrap();
        p
    }
}

/// Fills `b` with words from a list of 16, picked by `rng`, separated by
/// spaces and now and then a line break.
pub fn words(b: &mut [u8], rng: &mut Rng) {
    const WORDS: [&str; 16] = [
        "backup",
        "volume",
        "snapshot",
        "extent",
        "the",
        "of",
        "chunk",
        "copy",
        "a",
        "delta",
        "record",
        "origin",
        "error",
        "checked",
        "written",
        "2026-12-01",
    ];
    let mut i = 0;
    while i < b.len() {
        let r = rng.below(1 << 16);
        let word = WORDS[(r % 16) as usize].as_bytes();
        for &c in word
            .iter()
            .chain(if r.is_multiple_of(11) { b"\n" } else { b" " })
        {
            if i == b.len() {
                break;
            }
            b[i] = c;
            i += 1;
        }
    }
}

/// The header of a delta of an image (no snapshot, no base), for deltas
/// made here with the library's writer.
pub fn image_header(origin_size: u64, chunk_size: u64) -> Header {
    Header {
        origin_size,
        chunk_size,
        source: SourceInfo::of_kind(SourceKind::Image),
        compression: Compression::Lz4,
        tool: "test".into(),
        base: None,
        target: None,
        resume_from: 0,
        properties: Default::default(),
    }
}

/// A delta: the header `h`, the records `records` writes, the END record.
pub fn delta_bytes(h: &Header, records: impl FnOnce(&mut Writer<Vec<u8>>)) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), h).unwrap();
    records(&mut w);
    w.finish().unwrap().0
}
