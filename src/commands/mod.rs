//! One module per subcommand: each takes its parsed arguments, calls the
//! library and prints.

pub mod apply;
pub mod backup;
pub mod inspect;
pub mod list;
pub mod send;
pub mod sync;
pub mod verify;

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use crate::Error;

/// Read buffer for a delta. Small on purpose: a payload read larger than
/// the buffer bypasses it, so record data is not copied twice.
pub const DELTA_READ_BUF: usize = 64 << 10;

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

/// Refuses to wait for a binary delta typed on a terminal.
pub fn refuse_terminal_input(stdin_is_terminal: bool) -> Result<(), Error> {
    if stdin_is_terminal {
        return Err(Error::Usage(
            "refusing to read a binary delta from a terminal: pipe it in (lvmsync-rs send ... -o - | lvmsync-rs apply - DEST), or name the file".into(),
        ));
    }
    Ok(())
}

/// A delta to read: a file, or stdin (`-`).
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

    pub fn open(&self) -> Result<Box<dyn Read>, Error> {
        match self {
            DeltaInput::Stdin => {
                refuse_terminal_input(io::stdin().is_terminal())?;
                grow_pipe(io::stdin());
                Ok(Box::new(io::stdin().lock()))
            }
            DeltaInput::File(path) => {
                let open_err = |source| Error::Open {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_on_stdin_is_refused() {
        let err = refuse_terminal_input(true).unwrap_err();
        assert!(err
            .to_string()
            .contains("refusing to read a binary delta from a terminal"));
        assert!(refuse_terminal_input(false).is_ok());
    }
}
