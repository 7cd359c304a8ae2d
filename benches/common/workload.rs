//! The changed data the benchmarks ship: extents of 1 chunk to 2 MiB
//! scattered over an image four times their size, holding random data, text,
//! zeroes, or half text and half random; and a COW image listing them.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lvmsync::cowgen::CowWriter;

pub const CHUNK: u64 = 4096;
pub const PIECE: usize = 1 << 20;

pub use lvmsync::cowgen::Rng;

#[derive(Clone, Copy, PartialEq)]
pub enum Content {
    Random,
    Text,
    Zero,
    Mixed,
}

#[derive(Clone, Copy)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub content: Content,
}

impl Content {
    /// A content at random: 8 in 20 random, 7 text, 3 zeroes, 2 mixed.
    fn pick(rng: &mut Rng) -> Content {
        match rng.below(20) {
            0..=7 => Content::Random,
            8..=14 => Content::Text,
            15..=17 => Content::Zero,
            _ => Content::Mixed,
        }
    }
}

/// Words for text that compresses about as well as logs and source do.
const WORDS: &[&str] = &[
    "the",
    "backup",
    "volume",
    "snapshot",
    "chunk",
    "origin",
    "kernel",
    "error",
    "INFO",
    "2024-05-01T10:11:12Z",
    "request",
    "served",
    "in",
    "ms",
    "user=alice",
    "GET",
    "/api/v1/items",
    "status=200",
    "bytes=5123",
    "fn",
    "main()",
    "{",
    "}",
    "return",
    "let",
    "mut",
    "x",
    "=",
    ";",
];

pub fn text(rng: &mut Rng, b: &mut [u8]) {
    let mut i = 0;
    while i < b.len() {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
        let sep: &[u8] = if rng.below(12) == 0 { b"\n" } else { b" " };
        for &c in w.iter().chain(sep) {
            if i == b.len() {
                break;
            }
            b[i] = c;
            i += 1;
        }
    }
}

pub fn fill(rng: &mut Rng, content: Content, b: &mut [u8]) {
    match content {
        Content::Random => rng.fill(b),
        Content::Text => text(rng, b),
        Content::Zero => b.fill(0),
        Content::Mixed => {
            let half = b.len() / 2 / CHUNK as usize * CHUNK as usize;
            text(rng, &mut b[..half]);
            rng.fill(&mut b[half..]);
        }
    }
}

/// Bytes of real files, for content as a disk holds it (programs,
/// libraries, documentation, some of it already compressed): the regular
/// files of 4 KiB or more under a directory, walked in name order without
/// following links, one after the other, from the start again at the end.
pub struct Corpus {
    root: PathBuf,
    /// Directories still to walk: each one's entries, last first.
    stack: Vec<Vec<PathBuf>>,
    file: Option<File>,
    /// Bytes handed out.
    pub taken: u64,
}

impl Corpus {
    pub fn new(root: &Path) -> Corpus {
        Corpus {
            root: root.to_path_buf(),
            stack: Vec::new(),
            file: None,
            taken: 0,
        }
    }

    /// The root named by `BENCH_FILES` (default /usr).
    pub fn from_env() -> Corpus {
        Corpus::new(Path::new(
            &std::env::var("BENCH_FILES").unwrap_or_else(|_| "/usr".into()),
        ))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v.reverse();
        v
    }

    fn next_file(&mut self) -> File {
        let mut wrapped = false;
        loop {
            let Some(top) = self.stack.last_mut() else {
                assert!(
                    !wrapped,
                    "no file of 4 KiB or more under {}",
                    self.root.display()
                );
                wrapped = true;
                self.stack.push(Corpus::entries(&self.root));
                continue;
            };
            let Some(path) = top.pop() else {
                self.stack.pop();
                continue;
            };
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                self.stack.push(Corpus::entries(&path));
            } else if meta.is_file() && meta.len() >= CHUNK {
                if let Ok(f) = File::open(&path) {
                    return f;
                }
            }
        }
    }

    /// Fills `b` with the next bytes of the files.
    pub fn fill(&mut self, b: &mut [u8]) {
        use std::io::Read;
        let mut at = 0;
        while at < b.len() {
            if self.file.is_none() {
                self.file = Some(self.next_file());
            }
            let f = self.file.as_mut().expect("a file");
            match f.read(&mut b[at..]) {
                Ok(0) | Err(_) => self.file = None,
                Ok(n) => at += n,
            }
        }
        self.taken += b.len() as u64;
    }
}

/// Where the data of a workload comes from.
pub enum Data {
    /// The generated mix of [`Content`] (random, text, zeroes, mixed).
    Synthetic,
    /// The extents that are not zeroes hold the bytes of real files.
    Files(Corpus),
}

impl Data {
    /// `BENCH_CONTENT`: `synthetic`, `files` (under `BENCH_FILES`, default
    /// /usr), or unset: both, synthetic first.
    pub fn from_env() -> Vec<Data> {
        match std::env::var("BENCH_CONTENT").as_deref() {
            Ok("synthetic") => vec![Data::Synthetic],
            Ok("files") => vec![Data::Files(Corpus::from_env())],
            Ok(other) if !other.is_empty() => {
                panic!("BENCH_CONTENT is synthetic or files, not {other}")
            }
            _ => vec![Data::Synthetic, Data::Files(Corpus::from_env())],
        }
    }

    /// How the data is described in a report.
    pub fn describe(&self) -> String {
        match self {
            Data::Synthetic => "generated data (random, text, zeroes, half and half)".into(),
            Data::Files(c) => format!("the bytes of the files under {}", c.root().display()),
        }
    }

    /// Fills `b`, meant to hold `content`.
    fn fill(&mut self, rng: &mut Rng, content: Content, b: &mut [u8]) {
        match self {
            Data::Files(c) if content != Content::Zero => c.fill(b),
            _ => fill(rng, content, b),
        }
    }
}

/// The images of a workload.
pub struct Workload {
    pub extents: Vec<Extent>,
    pub origin_size: u64,
    /// Bytes of changed extents.
    pub changed: u64,
    /// The new image: the changed extents hold their new data, the rest
    /// is a hole.
    pub new: PathBuf,
    /// The COW image listing the changed chunks.
    pub cow: PathBuf,
}

impl Workload {
    /// Makes about `gib` GiB of changes in `dir`, and says what it made.
    pub fn make(dir: &Path, gib: f64) -> Workload {
        let t = Instant::now();
        let changed_target = (gib * (1u64 << 30) as f64) as u64 / CHUNK * CHUNK;
        let origin_size = changed_target * 4;
        let origin_chunks = origin_size / CHUNK;
        // Extents: 1 chunk to 2 MiB, separated by gaps three times as long on
        // average, so that a quarter of the image changes.
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut extents = Vec::new();
        let mut chunk = 0u64;
        let mut changed = 0u64;
        while changed < changed_target {
            let len = match rng.below(10) {
                0..=3 => 1 + rng.below(4),
                4..=7 => 4 + rng.below(60),
                _ => 64 + rng.below(449),
            }
            .min((changed_target - changed) / CHUNK)
            .max(1);
            let gap = rng.below(6 * len + 1);
            if chunk + gap + len > origin_chunks {
                break;
            }
            let content = Content::pick(&mut rng);
            extents.push(Extent {
                offset: (chunk + gap) * CHUNK,
                length: len * CHUNK,
                content,
            });
            chunk += gap + len;
            changed += len * CHUNK;
        }
        Workload::write(dir, origin_size, extents, &mut rng, &mut Data::Synthetic, t)
    }

    /// The standard small workload: an image of `gib` GiB in which about
    /// `percent`% of the 4 KiB chunks changed, in extents of 1 to 3 chunks
    /// scattered at random (for 4 GiB and 1%: about 43 MB in 5,300
    /// extents), holding the same mix of contents.
    pub fn scattered(dir: &Path, gib: f64, percent: f64) -> Workload {
        Workload::scattered_with(dir, gib, percent, &mut Data::Synthetic)
    }

    /// The same extents, holding `data` (the same zero extents; with
    /// [`Data::Files`], real files' bytes in the others).
    pub fn scattered_with(dir: &Path, gib: f64, percent: f64, data: &mut Data) -> Workload {
        let t = Instant::now();
        let origin_size = (gib * (1u64 << 30) as f64) as u64 / CHUNK * CHUNK;
        let origin_chunks = origin_size / CHUNK;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Extents of 2 chunks on average, gaps of 2 * (100 / percent - 1)
        // chunks on average.
        let mean_gap = 2.0 * (100.0 / percent - 1.0);
        let mut extents = Vec::new();
        let mut chunk = 0u64;
        loop {
            let len = 1 + rng.below(3);
            let gap = rng.below((2.0 * mean_gap) as u64 + 1);
            if chunk + gap + len > origin_chunks {
                break;
            }
            let content = Content::pick(&mut rng);
            extents.push(Extent {
                offset: (chunk + gap) * CHUNK,
                length: len * CHUNK,
                content,
            });
            chunk += gap + len;
        }
        Workload::write(dir, origin_size, extents, &mut rng, data, t)
    }

    /// Writes the new image and the COW image of `extents`.
    fn write(
        dir: &Path,
        origin_size: u64,
        extents: Vec<Extent>,
        rng: &mut Rng,
        data: &mut Data,
        t: Instant,
    ) -> Workload {
        let changed: u64 = extents.iter().map(|e| e.length).sum();
        let new = dir.join("new.img");
        let cow = dir.join("snap.cow");
        let f = File::create(&new).unwrap();
        f.set_len(origin_size).unwrap();
        let mut buf = vec![0u8; 2 << 20];
        let mut cw = CowWriter::new(File::create(&cow).unwrap(), CHUNK);
        for e in &extents {
            let b = &mut buf[..e.length as usize];
            data.fill(rng, e.content, b);
            if e.content != Content::Zero {
                f.write_all_at(b, e.offset).unwrap();
            }
            for c in e.offset / CHUNK..(e.offset + e.length) / CHUNK {
                cw.push(c).unwrap();
            }
        }
        cw.finish().unwrap();
        f.sync_all().unwrap();
        drop(f);
        let share = |c: Content| {
            extents
                .iter()
                .filter(|e| e.content == c)
                .map(|e| e.length)
                .sum::<u64>() as f64
                * 100.0
                / changed as f64
        };
        let mix = match data {
            Data::Synthetic => format!(
                "{:.0}% random, {:.0}% text, {:.0}% zeroes, {:.0}% half text half random",
                share(Content::Random),
                share(Content::Text),
                share(Content::Zero),
                share(Content::Mixed)
            ),
            Data::Files(c) => format!(
                "{:.0}% zeroes, the rest the bytes of the files under {}",
                share(Content::Zero),
                c.root().display()
            ),
        };
        println!(
            "changed: {:.3} GiB in {} extents over a {:.0} GiB image ({mix}), made in {:.1} s in {}",
            changed as f64 / (1u64 << 30) as f64,
            extents.len(),
            origin_size as f64 / (1u64 << 30) as f64,
            t.elapsed().as_secs_f64(),
            dir.display()
        );
        Workload {
            extents,
            origin_size,
            changed,
            new,
            cow,
        }
    }

    /// Bytes of extents holding `content`.
    pub fn bytes_of(&self, content: Content) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.content == content)
            .map(|e| e.length)
            .sum()
    }
}

/// An image of `size` bytes: 4 MiB runs of data (half text, half random)
/// and of zeroes (written, as on a device), alternating: the seed's image.
pub fn half_zero_image(path: &Path, size: u64) {
    half_zero_image_with(path, size, &mut Data::Synthetic)
}

/// The same image, its data runs holding `data`.
pub fn half_zero_image_with(path: &Path, size: u64, source: &mut Data) {
    use std::io::Write;
    const RUN: usize = 4 << 20;
    let mut f = File::create(path).unwrap();
    let mut rng = Rng(0x005e_ed0f_da7a);
    let mut data = vec![0u8; RUN];
    let zeroes = vec![0u8; RUN];
    let mut at = 0u64;
    let mut n = 0;
    while at < size {
        let len = RUN.min((size - at) as usize);
        if n % 2 == 0 {
            match source {
                Data::Files(c) => c.fill(&mut data),
                Data::Synthetic => {
                    text(&mut rng, &mut data[..RUN / 2]);
                    rng.fill(&mut data[RUN / 2..]);
                }
            }
            f.write_all(&data[..len]).unwrap();
        } else {
            f.write_all(&zeroes[..len]).unwrap();
        }
        at += len as u64;
        n += 1;
    }
    f.sync_all().unwrap();
}

/// The bytes of `extents` of `image`, one after the other, into `out`:
/// what a plain compressor of the changed data is given.
pub fn concat_extents(image: &Path, extents: &[Extent], out: &Path) {
    use std::io::Write;
    let f = File::open(image).unwrap();
    let mut w = std::io::BufWriter::new(File::create(out).unwrap());
    let mut buf = vec![0u8; PIECE];
    for e in extents {
        let mut done = 0;
        while done < e.length {
            let n = (e.length - done).min(PIECE as u64) as usize;
            f.read_exact_at(&mut buf[..n], e.offset + done).unwrap();
            w.write_all(&buf[..n]).unwrap();
            done += n as u64;
        }
    }
    w.flush().unwrap();
}

/// A fresh copy of the old image: sparse, with old (random) data where the
/// new image has zeroes, so that ZERO records change something; synced.
pub fn make_copy(path: &Path, size: u64, extents: &[Extent]) {
    let _ = std::fs::remove_file(path);
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut rng = Rng(0xdead_beef_1234_5678);
    let mut buf = vec![0u8; PIECE];
    for e in extents.iter().filter(|e| e.content == Content::Zero) {
        let mut done = 0;
        while done < e.length {
            let n = (e.length - done).min(PIECE as u64) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all_at(&buf[..n], e.offset + done).unwrap();
            done += n as u64;
        }
    }
    f.sync_all().unwrap();
}

/// Whether `a` and `b` hold the same bytes over `extents`.
pub fn same_extents(a: &Path, b: &Path, extents: &[Extent]) -> bool {
    use std::os::unix::fs::FileExt;
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let (mut x, mut y) = (vec![0u8; PIECE], vec![0u8; PIECE]);
    extents.iter().all(|e| {
        let mut done = 0;
        while done < e.length {
            let n = (e.length - done).min(PIECE as u64) as usize;
            fa.read_exact_at(&mut x[..n], e.offset + done).unwrap();
            fb.read_exact_at(&mut y[..n], e.offset + done).unwrap();
            if x[..n] != y[..n] {
                return false;
            }
            done += n as u64;
        }
        true
    })
}

/// Reads each extent from `src` and writes it into `dst` (pread/pwrite),
/// then syncs `dst`: a baseline for what ships changed extents. Seconds.
pub fn copy_extents(src: &Path, dst: &Path, extents: &[Extent]) -> f64 {
    let t = Instant::now();
    let s = File::open(src).unwrap();
    let d = OpenOptions::new().write(true).open(dst).unwrap();
    let mut buf = vec![0u8; PIECE];
    for e in extents {
        let mut done = 0;
        while done < e.length {
            let n = (e.length - done).min(PIECE as u64) as usize;
            s.read_exact_at(&mut buf[..n], e.offset + done).unwrap();
            d.write_all_at(&buf[..n], e.offset + done).unwrap();
            done += n as u64;
        }
    }
    d.sync_all().unwrap();
    t.elapsed().as_secs_f64()
}

/// The floor for shipping changed extents: tells the kernel to read all of
/// `extents` of `src` ahead (POSIX_FADV_WILLNEED, so the disk gets many
/// reads at once), then reads each and writes it into `dst`
/// (pread/pwrite), then syncs `dst`. Seconds.
pub fn copy_extents_hinted(src: &Path, dst: &Path, extents: &[Extent]) -> f64 {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::os::fd::AsRawFd;
    let t = Instant::now();
    let s = File::open(src).unwrap();
    for e in extents {
        let _ = posix_fadvise(
            s.as_raw_fd(),
            e.offset as i64,
            e.length as i64,
            PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
    // The hints hold for the file's pages, whichever descriptor reads them.
    copy_extents(src, dst, extents);
    t.elapsed().as_secs_f64()
}
