//! Files and pipes the tool reads and writes besides the copy itself: a
//! delta to read (a file or stdin), files it creates (a delta, a state
//! file), and the small things every writer needs (syncing the directory
//! that holds a new name, reading a buffer full).
//!
//! Files are created so that nobody else's file is ever written: under a
//! new random name in the target's directory, with `O_EXCL | O_NOFOLLOW`
//! (a planted file or symlink makes the creation fail rather than be
//! followed), synced, and renamed over the target only once complete, the
//! directory synced after. A rename replaces a symlink planted at the
//! target itself, never the file it points to.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The directory that holds `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Syncs the directory holding `path`, so that a name just made or
/// changed in it survives a crash.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}

/// Fills `buf` from `r` as far as it goes: the bytes read (fewer than
/// asked at the end of the input), and the error that stopped it early, if
/// one did. An interrupted read is retried.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

/// Reads the regular file at `path`, which someone else may have planted
/// or replaced: not through a symlink, not a FIFO or a device (opened
/// without blocking, then checked), at most `cap` bytes. `Ok(None)` when
/// there is no such file.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(io::Error::other(
                "is a symbolic link; refusing to follow it",
            ))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > cap {
        return Err(io::Error::other(format!(
            "{} bytes, more than the {cap} such a file can hold",
            meta.len()
        )));
    }
    let mut body = Vec::new();
    file.take(cap + 1).read_to_end(&mut body)?;
    if body.len() as u64 > cap {
        return Err(io::Error::other(format!(
            "more than the {cap} bytes such a file can hold"
        )));
    }
    Ok(Some(body))
}

/// A name no one can guess, for a new file beside `path`:
/// `.NAME.RANDOM.partial` in the same directory.
fn temp_name(path: &Path) -> PathBuf {
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_else(|| "file".as_ref()));
    name.push(format!(".{:016x}.partial", h.finish()));
    parent_dir(path).join(name)
}

/// A file being written under a temporary name, to be given its real name
/// once complete ([`NewFile::commit`]); removed if dropped before.
#[derive(Debug)]
pub struct NewFile {
    file: File,
    temp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl NewFile {
    /// Creates a new file that becomes `path` on [`NewFile::commit`], with
    /// permission bits `mode` (before the umask).
    pub fn create(path: &Path, mode: u32) -> io::Result<NewFile> {
        let mut tries = 0;
        loop {
            let temp = temp_name(path);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(NewFile {
                        file,
                        temp,
                        path: path.to_path_buf(),
                        committed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Syncs the file, gives it its name (replacing what had it) and syncs
    /// the directory.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.sync_all()?;
        fs::rename(&self.temp, &self.path)?;
        self.committed = true;
        sync_parent(&self.path)
    }
}

impl Write for NewFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes `body` to `path` atomically and durably (see [`NewFile`]).
pub fn replace(path: &Path, body: &[u8], mode: u32) -> io::Result<()> {
    let mut f = NewFile::create(path, mode)?;
    f.write_all(body)?;
    f.commit()
}

/// Makes a pipe on `fd` (stdin or stdout) hold 1 MiB, the most an
/// unprivileged process may ask for by default, so a record crosses it in
/// one go rather than in 16 wake-ups. Anything that is not a pipe, or a
/// refusal, is left as it is.
pub fn grow_pipe(fd: impl AsFd) {
    use nix::sys::stat::{fstat, SFlag};
    let raw = fd.as_fd().as_raw_fd();
    let is_fifo = fstat(raw)
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO)
        .unwrap_or(false);
    if is_fifo {
        let _ = nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
    }
}

/// Read buffer for a delta. Small on purpose: a payload read larger than
/// the buffer bypasses it, so record data is not copied twice.
pub const DELTA_READ_BUF: usize = 64 << 10;

/// A delta to read: a file, or stdin (`-`).
#[derive(Debug, Clone)]
pub enum DeltaInput {
    Stdin,
    File(PathBuf),
}

impl DeltaInput {
    /// `-` is stdin, anything else a path.
    pub fn from_arg(arg: &str) -> DeltaInput {
        if arg == "-" {
            DeltaInput::Stdin
        } else {
            DeltaInput::File(PathBuf::from(arg))
        }
    }

    /// The name messages use.
    pub fn name(&self) -> String {
        match self {
            DeltaInput::Stdin => "stdin".to_string(),
            DeltaInput::File(p) => p.display().to_string(),
        }
    }

    /// Opens it; stdin is refused when it is a terminal.
    pub fn open(&self) -> Result<Box<dyn Read>, DeltaInputError> {
        match self {
            DeltaInput::Stdin => {
                if io::stdin().is_terminal() {
                    return Err(DeltaInputError::Terminal);
                }
                grow_pipe(io::stdin());
                Ok(Box::new(io::stdin().lock()))
            }
            DeltaInput::File(path) => {
                let open_err = |source| DeltaInputError::Open {
                    path: path.display().to_string(),
                    source,
                };
                if path.is_dir() {
                    return Err(open_err(io::Error::other("is a directory")));
                }
                Ok(Box::new(File::open(path).map_err(open_err)?))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaInputError {
    #[error("refusing to read a binary delta from a terminal: pipe it in (lvmsync-rs send ... -o - | lvmsync-rs apply - DEST), or name the file")]
    Terminal,
    #[error("{path}: cannot open: {source}")]
    Open { path: String, source: io::Error },
}

/// Whether `path` names a block device (following links, as opening it
/// would).
pub fn is_block_device(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lvmsync-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_new_file_appears_whole_under_its_name_or_not_at_all() {
        let dir = scratch("new");
        let path = dir.join("out.lvd");
        let mut f = NewFile::create(&path, 0o644).unwrap();
        f.write_all(b"abc").unwrap();
        assert!(!path.exists());
        f.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        // Dropped before commit: nothing left, the old file kept.
        let mut f = NewFile::create(&path, 0o644).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = scratch("link");
        let victim = dir.join("victim");
        fs::write(&victim, b"keep me").unwrap();
        let path = dir.join("state");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        replace(&path, b"new", 0o644).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn capped_reads_refuse_links_fifos_and_big_files() {
        let dir = scratch("capped");
        let file = dir.join("f");
        fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_capped(&file, 10).unwrap().unwrap(), b"0123456789");
        assert!(read_capped(&file, 9).is_err());
        assert!(read_capped(&dir.join("none"), 9).unwrap().is_none());
        let link = dir.join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = read_capped(&link, 100).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let fifo = dir.join("p");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_capped(&fifo, 100).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(read_capped(Path::new("/dev/zero"), 100).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_full_reads_across_short_reads() {
        let data = [7u8; 100];
        let mut r = io::Cursor::new(&data[..]).chain(io::Cursor::new(&data[..]));
        let mut buf = [0u8; 150];
        assert_eq!(read_full(&mut r, &mut buf).0, 150);
        assert_eq!(read_full(&mut r, &mut buf).0, 50);
    }
}
