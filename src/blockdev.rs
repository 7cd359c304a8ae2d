//! Reading block devices and their images by offset.
//!
//! A snapshot's COW device is written by the kernel's snapshot target, which
//! does not go through the COW device's page cache: a buffered read could hand
//! back stale metadata. Block devices are therefore read with `O_DIRECT`, into
//! buffers aligned for it. Regular files (images) are read normally.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
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

/// A block device or an image file, opened for reading.
#[derive(Debug)]
pub struct Source {
    file: File,
    path: PathBuf,
    size: u64,
    is_block_device: bool,
}

impl Source {
    /// Opens `path` read-only: block devices with `O_DIRECT`, files normally.
    pub fn open(path: &Path) -> io::Result<Source> {
        let meta = std::fs::metadata(path)?;
        let is_block_device = meta.file_type().is_block_device();
        if !is_block_device && !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a block device or a regular file",
            ));
        }
        let mut opts = OpenOptions::new();
        opts.read(true);
        if is_block_device {
            opts.custom_flags(nix::fcntl::OFlag::O_DIRECT.bits());
        }
        let mut file = opts.open(path)?;
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Source {
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
}

impl ReadAt for Source {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.file.read_exact_at(buf, offset)
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
