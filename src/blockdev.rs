//! Reading block devices and their images by offset, and writing the copy
//! that a delta is applied to.
//!
//! A snapshot's COW device is written by the kernel's snapshot target, which
//! does not go through the COW device's page cache: a buffered read could hand
//! back stale metadata. Block devices are therefore read with `O_DIRECT`, into
//! buffers aligned for it. Regular files (images) are read normally.
//!
//! A [`Destination`] is written through the page cache and synced at the end:
//! nothing else writes to a backup copy while a delta is applied to it.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment that satisfies `O_DIRECT` on every logical block size in use.
pub const DIRECT_ALIGN: usize = 4096;

/// Something that can be read at a byte offset.
pub trait ReadAt {
    /// Fills `buf` from `offset`; fails with `UnexpectedEof` when the source
    /// ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(buf.len()) {
            Some(end) if end <= self.len() => {
                buf.copy_from_slice(&self[start..end]);
                Ok(())
            }
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

/// A block device or a regular file, opened: what both a [`Source`] and a
/// [`Destination`] are.
#[derive(Debug)]
pub struct Opened {
    file: File,
    path: PathBuf,
    size: u64,
    is_block_device: bool,
}

impl Opened {
    /// Opens `path` with `options` (plus `flags` for a block device) when
    /// it is a block device or a regular file.
    fn open(path: &Path, options: &mut OpenOptions, flags: i32) -> io::Result<Opened> {
        let meta = std::fs::metadata(path)?;
        let is_block_device = meta.file_type().is_block_device();
        if !is_block_device && !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a block device or a regular file",
            ));
        }
        if is_block_device {
            options.custom_flags(flags);
        }
        Opened::of(options.open(path)?, path, is_block_device)
    }

    fn of(mut file: File, path: &Path, is_block_device: bool) -> io::Result<Opened> {
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Opened {
            file,
            path: path.to_path_buf(),
            size,
            is_block_device,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// A block device or an image file, opened for reading.
#[derive(Debug)]
pub struct Source(Opened);

impl std::ops::Deref for Source {
    type Target = Opened;
    fn deref(&self) -> &Opened {
        &self.0
    }
}

impl Source {
    /// Opens `path` read-only: block devices with `O_DIRECT`, files normally.
    pub fn open(path: &Path) -> io::Result<Source> {
        let flags = nix::fcntl::OFlag::O_DIRECT.bits();
        Opened::open(path, OpenOptions::new().read(true), flags).map(Source)
    }

    /// Tells the kernel the file will be read from start to end, so that it
    /// reads ahead further (a hint: refusals are ignored; `O_DIRECT` reads
    /// of a block device have no readahead).
    pub fn advise_sequential(&self) {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.0.file);
        let _ = posix_fadvise(fd, 0, 0, PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
    }
}

impl Source {
    /// Tells the kernel that `length` bytes at `offset` will be read soon,
    /// so that it starts reading them now, many at once (a hint; refusals
    /// are ignored). A block device is read with `O_DIRECT`, past the page
    /// cache, so it is given no hint.
    pub fn advise_willneed(&self, offset: u64, length: u64) {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        if self.0.is_block_device {
            return;
        }
        let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.0.file);
        let _ = posix_fadvise(fd, offset, length, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
    }
}

impl ReadAt for Source {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.0.size)
        {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.0.file.read_exact_at(buf, offset)
    }
}

/// Ways to make a range read as zeroes, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zeroing {
    /// The `BLKZEROOUT` ioctl, for block devices: the device zeroes the
    /// range itself (WRITE ZEROES, or an unmap where that reads as zeroes,
    /// as on a thin LV) and the kernel writes zeroes where it cannot.
    BlkZeroOut,
    ZeroRange,
    PunchHole,
    Write,
}

// BLKZEROOUT = _IO(0x12, 127), taking `[start, length]` in bytes.
nix::ioctl_write_ptr_bad!(blkzeroout, 0x127f, [u64; 2]);

/// A block device or a regular file, opened read-write to receive a delta.
#[derive(Debug)]
pub struct Destination {
    opened: Opened,
    /// How zero ranges are written; steps down when the file system
    /// refuses a way.
    zeroing: Zeroing,
    zeroes: Vec<u8>,
}

impl std::ops::Deref for Destination {
    type Target = Opened;
    fn deref(&self) -> &Opened {
        &self.opened
    }
}

impl Destination {
    /// Opens an existing block device or regular file for reading and
    /// writing. A block device is opened with `O_EXCL`: the open fails
    /// (`EBUSY`) while it is mounted, held by another device (device-mapper,
    /// md, a swap area) or opened exclusively by another program, and while
    /// it is open here nobody can do any of that (see [`users_of`]).
    pub fn open(path: &Path) -> io::Result<Destination> {
        let flags = nix::fcntl::OFlag::O_EXCL.bits();
        Opened::open(path, OpenOptions::new().read(true).write(true), flags).map(Destination::of)
    }

    /// Creates `path` as a new, empty regular file; fails if it exists.
    pub fn create(path: &Path) -> io::Result<Destination> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Opened::of(file, path, false).map(Destination::of)
    }

    fn of(opened: Opened) -> Destination {
        Destination {
            zeroing: if opened.is_block_device {
                Zeroing::BlkZeroOut
            } else {
                Zeroing::ZeroRange
            },
            opened,
            zeroes: Vec::new(),
        }
    }

    /// Makes a regular file `len` bytes long (new bytes read as zeroes).
    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        if self.opened.is_block_device {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a block device cannot be resized",
            ));
        }
        self.opened.file.set_len(len)?;
        self.opened.size = len;
        Ok(())
    }

    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.opened.file.write_all_at(buf, offset)
    }

    /// Fills `buf` from `offset`; bytes past the end read as zeroes.
    pub fn read_at_or_zero(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self
                .opened
                .file
                .read_at(&mut buf[done..], offset + done as u64)
            {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeroes. On a regular file,
    /// without writing data: `FALLOC_FL_ZERO_RANGE` (the file keeps its
    /// blocks, as unwritten extents), else a punched hole (on file systems
    /// mounted with `discard`, freeing blocks is slow, hence not first);
    /// else zeroes are written. On a block device: `BLKZEROOUT`, else
    /// zeroes are written.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags as F};
        let (o, l) = (
            i64::try_from(offset).unwrap_or(i64::MAX),
            i64::try_from(len).unwrap_or(i64::MAX),
        );
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.opened.file);
        if !self.opened.is_block_device && self.is_hole(offset, len) {
            // Already reads as zeroes, and stays a hole.
            return Ok(());
        }
        if self.zeroing == Zeroing::BlkZeroOut {
            let range = [offset, len];
            // SAFETY: the ioctl reads two u64 from a valid array.
            match unsafe { blkzeroout(fd, &range) } {
                Ok(_) => return Ok(()),
                // Not aligned to the logical block size, or not supported:
                // zeroes are written instead.
                Err(nix::errno::Errno::EINVAL)
                | Err(nix::errno::Errno::EOPNOTSUPP)
                | Err(nix::errno::Errno::ENOTTY) => {}
                Err(e) => return Err(e.into()),
            }
        }
        while !matches!(self.zeroing, Zeroing::Write | Zeroing::BlkZeroOut) {
            let flags = match self.zeroing {
                Zeroing::ZeroRange => F::FALLOC_FL_ZERO_RANGE | F::FALLOC_FL_KEEP_SIZE,
                _ => F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
            };
            match fallocate(fd, flags, o, l) {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::ENOSYS) => {
                    self.zeroing = match self.zeroing {
                        Zeroing::ZeroRange => Zeroing::PunchHole,
                        _ => Zeroing::Write,
                    };
                }
                Err(e) => return Err(e.into()),
            }
        }
        const ZERO_BUF: u64 = 1 << 20;
        if self.zeroes.is_empty() {
            self.zeroes = vec![0u8; ZERO_BUF as usize];
        }
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_BUF) as usize;
            self.opened
                .file
                .write_all_at(&self.zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Whether `len` bytes at `offset` of a regular file are all a hole
    /// (or past its end), so that they read as zeroes without a write.
    fn is_hole(&self, offset: u64, len: u64) -> bool {
        use nix::unistd::{lseek, Whence};
        let Ok(at) = i64::try_from(offset) else {
            return false;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.opened.file);
        match lseek(fd, at, Whence::SeekData) {
            Ok(data) => data as u64 >= offset.saturating_add(len),
            // No data from `offset` to the end of the file.
            Err(nix::errno::Errno::ENXIO) => true,
            Err(_) => false,
        }
    }

    /// A handle that starts writeback of this destination from another
    /// thread (see [`Writeback`]).
    ///
    /// It opens the destination again (through `/proc/self/fd`), rather
    /// than sharing this open file: a write error that a flush of its own
    /// reports is then still reported to this one's final sync.
    pub fn writeback(&self) -> io::Result<Writeback> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.opened.file);
        Ok(Writeback(File::open(format!("/proc/self/fd/{fd}"))?))
    }

    /// Flushes what was written to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        self.opened.file.sync_all()
    }
}

/// Starts writing back what has been written to a [`Destination`], without
/// waiting for it, so that the disk works while more is prepared and the
/// final sync has less left to do. Durability still comes from
/// [`Destination::sync`] alone.
#[derive(Debug)]
pub struct Writeback(File);

impl Writeback {
    /// Starts writeback of the dirty pages, without waiting for it.
    pub fn start(&self) -> io::Result<()> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.0);
        // SAFETY: a plain system call on a descriptor this value owns; no
        // memory is passed.
        let rc = unsafe { nix::libc::sync_file_range(fd, 0, 0, nix::libc::SYNC_FILE_RANGE_WRITE) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Writes back the dirty pages and flushes the device's write cache,
    /// waiting for both: a device that caches writes (a disk, or the host
    /// of a virtual machine) then empties its cache a piece at a time
    /// rather than all at the final sync.
    pub fn flush(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// A heap buffer whose start is aligned to [`DIRECT_ALIGN`], as `O_DIRECT`
/// reads require.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// What uses block device `rdev`, as far as the kernel says: where it is
/// mounted, the devices stacked on it (device-mapper, md), a swap area on it.
pub fn users_of(rdev: u64) -> Vec<String> {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let mut users = Vec::new();
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
        let dev = format!("{major}:{minor}");
        for line in mounts.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT ...
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.get(2) == Some(&dev.as_str()) {
                if let Some(at) = fields.get(4) {
                    users.push(format!("mounted at {}", at.replace("\\040", " ")));
                }
            }
        }
    }
    if let Ok(holders) = std::fs::read_dir(sys.join("holders")) {
        for h in holders.flatten() {
            let kernel = h.file_name().to_string_lossy().into_owned();
            let name = std::fs::read_to_string(h.path().join("dm/name"))
                .map(|n| n.trim().to_string())
                .unwrap_or_else(|_| kernel.clone());
            users.push(format!("held by {name} ({kernel})"));
        }
    }
    if let (Ok(swaps), Ok(kernel)) = (
        std::fs::read_to_string("/proc/swaps"),
        std::fs::read_link(&sys),
    ) {
        let kernel = kernel.file_name().map(|n| n.to_string_lossy().into_owned());
        for line in swaps.lines().skip(1) {
            let dev = line.split_whitespace().next().unwrap_or("");
            let same = std::fs::metadata(dev).is_ok_and(|m| m.rdev() == rdev)
                || kernel
                    .as_deref()
                    .is_some_and(|k| dev.ends_with(&format!("/{k}")));
            if same {
                users.push("a swap area".into());
            }
        }
    }
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_sized() {
        for len in [512, 4096, 65536, 100] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
            assert_eq!(b.len(), len);
        }
    }

    #[test]
    fn a_destination_writes_reads_and_zeroes() {
        let dir = std::env::temp_dir().join(format!("lvmsync-dest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.img");
        let _ = std::fs::remove_file(&path);
        let mut d = Destination::create(&path).unwrap();
        assert!(
            Destination::create(&path).is_err(),
            "create never overwrites"
        );
        d.set_len(3 * 4096).unwrap();
        d.write_all_at(&[7u8; 8192], 4096).unwrap();
        d.write_zeroes(4096, 4096).unwrap();
        let mut buf = vec![1u8; 4 * 4096];
        d.read_at_or_zero(&mut buf, 0).unwrap();
        assert!(buf[..8192].iter().all(|&b| b == 0));
        assert!(buf[8192..12288].iter().all(|&b| b == 7));
        assert!(
            buf[12288..].iter().all(|&b| b == 0),
            "past the end reads as zero"
        );
        d.sync().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * 4096);
        assert!(Destination::open(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn slice_read_at_refuses_reads_past_the_end() {
        let data = vec![1u8, 2, 3, 4];
        let mut buf = [0u8; 2];
        data.read_exact_at(&mut buf, 2).unwrap();
        assert_eq!(buf, [3, 4]);
        let err = data.read_exact_at(&mut buf, 3).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(data.read_exact_at(&mut buf, u64::MAX).is_err());
    }
}
