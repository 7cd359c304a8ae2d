//! The restricted far end, for the backup host's `authorized_keys`:
//!
//! ```text
//! command="lvmsync-rs serve --restrict-to /dev/backupvg --restrict-to /srv/copies",restrict ssh-ed25519 AAAA... root@source
//! ```
//!
//! sshd then runs `serve` whatever the client asked for, and puts what it
//! asked for in `SSH_ORIGINAL_COMMAND`. `serve` accepts only the far ends
//! of this tool's own sessions (`apply --remote` for sync and backup,
//! `verify --remote-side` for verify, `status --remote-side` for status
//! and dry runs), and only on paths under the named
//! prefixes, so the sending host no longer needs a root shell on the
//! backup host.
//!
//! A path is allowed when:
//! - it has no `..` component;
//! - it is, or will be (`--create`), a regular file whose real path
//!   (symlinks resolved) lies under the real path of a prefix;
//! - or it is a block device named under a prefix that lies in `/dev`
//!   (`/dev/backupvg/copy` under `/dev/backupvg`) and whose real path is
//!   in `/dev` too. Device prefixes are where udev and lvm2 make names,
//!   which only root can change; a symlink to a device planted in a
//!   directory of files (`/srv/copies/x -> /dev/sda`) is refused.

use std::fs;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::transport;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("--restrict-to {path}: {why}")]
    BadPrefix { path: String, why: String },
    #[error("no command: serve is run by sshd for a key whose authorized_keys line names it (command=\"lvmsync-rs serve --restrict-to ...\"); the client's command comes in SSH_ORIGINAL_COMMAND")]
    NoCommand,
    #[error("refused: this key only runs the far end of lvmsync-rs sync, backup, verify and status (apply --remote, verify --remote-side, status --remote-side); it asked for {asked:?}")]
    NotAllowed { asked: String },
    #[error("refused: {path}: {why}; this key may write only under {prefixes}")]
    Outside {
        path: String,
        why: String,
        prefixes: String,
    },
}

/// The subcommands a client may ask for.
pub const ALLOWED: &[&str] = &["apply", "verify", "status"];

/// The prefixes paths must lie under.
#[derive(Debug, Clone)]
pub struct Restriction {
    /// As given, and with symlinks resolved.
    prefixes: Vec<(PathBuf, PathBuf)>,
}

impl Restriction {
    /// Each prefix must exist.
    pub fn new(prefixes: &[PathBuf]) -> Result<Restriction, ServeError> {
        let mut out = Vec::new();
        for p in prefixes {
            let bad = |why: String| ServeError::BadPrefix {
                path: p.display().to_string(),
                why,
            };
            if !p.is_absolute() || has_dot_dot(p) {
                return Err(bad("name it by an absolute path without '..'".into()));
            }
            let real = fs::canonicalize(p).map_err(|e| bad(e.to_string()))?;
            out.push((p.clone(), real));
        }
        Ok(Restriction { prefixes: out })
    }

    fn shown(&self) -> String {
        self.prefixes
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks `path` (to be created when `create` and missing); returns
    /// the path to open: its real path for a file, the path as given for a
    /// device.
    pub fn check(&self, path: &Path, create: bool) -> Result<PathBuf, ServeError> {
        let refuse = |why: &str| ServeError::Outside {
            path: path.display().to_string(),
            why: why.into(),
            prefixes: self.shown(),
        };
        if has_dot_dot(path) {
            return Err(refuse("a path with '..' is never allowed"));
        }
        match fs::metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) => {
                let real = fs::canonicalize(path).map_err(|e| refuse(&e.to_string()))?;
                let named = absolute(path);
                let allowed = real.starts_with("/dev")
                    && self.prefixes.iter().any(|(given, real_prefix)| {
                        real_prefix.starts_with("/dev")
                            && (named.starts_with(given) || named.starts_with(real_prefix))
                    });
                if allowed {
                    Ok(path.to_path_buf())
                } else {
                    Err(refuse("a block device outside the device prefixes"))
                }
            }
            Ok(m) if m.is_file() => {
                let real = fs::canonicalize(path).map_err(|e| refuse(&e.to_string()))?;
                self.under_a_prefix(&real)
                    .then_some(real)
                    .ok_or_else(|| refuse("resolves outside the prefixes"))
            }
            Ok(_) => Err(refuse("not a regular file or a block device")),
            Err(_) if create => {
                let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                    return Err(refuse("not a path to a file"));
                };
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                let real = fs::canonicalize(parent)
                    .map_err(|e| refuse(&format!("its directory: {e}")))?
                    .join(name);
                self.under_a_prefix(&real)
                    .then_some(real)
                    .ok_or_else(|| refuse("resolves outside the prefixes"))
            }
            Err(e) => Err(refuse(&e.to_string())),
        }
    }

    fn under_a_prefix(&self, real: &Path) -> bool {
        self.prefixes
            .iter()
            .any(|(_, prefix)| real.starts_with(prefix))
    }
}

fn has_dot_dot(path: &Path) -> bool {
    path.components().any(|c| c == Component::ParentDir)
}

/// `path` made absolute against the current directory, without resolving
/// symlinks (`.` components dropped).
fn absolute(path: &Path) -> PathBuf {
    let base = if path.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().unwrap_or_default()
    };
    base.join(
        path.components()
            .filter(|c| *c != Component::CurDir)
            .collect::<PathBuf>(),
    )
}

/// The words the client asked for (`SSH_ORIGINAL_COMMAND`), from its
/// subcommand on: the words before it named the program, and are not run.
pub fn requested(original: Option<&str>) -> Result<Vec<String>, ServeError> {
    let original = original.ok_or(ServeError::NoCommand)?;
    let words = transport::split_words(original).map_err(|_| ServeError::NotAllowed {
        asked: original.to_string(),
    })?;
    let start = words
        .iter()
        .position(|w| ALLOWED.contains(&w.as_str()))
        .filter(|&i| i > 0)
        .ok_or_else(|| ServeError::NotAllowed {
            asked: original.to_string(),
        })?;
    Ok(words[start..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subcommand_follows_the_program_words() {
        let w = requested(Some("'lvmsync-rs' 'apply' '--remote' '--' '-' '/srv/a b'")).unwrap();
        assert_eq!(w, ["apply", "--remote", "--", "-", "/srv/a b"]);
        let w = requested(Some("sudo /usr/bin/lvmsync-rs verify --remote-side -- x")).unwrap();
        assert_eq!(w[0], "verify");
        let w = requested(Some(
            "lvmsync-rs status --remote-side --protocol 1 -- /srv/a",
        ))
        .unwrap();
        assert_eq!(w[0], "status");
        for bad in [
            "sh -c 'rm -rf /'",
            "apply --remote",
            "",
            "lvmsync-rs list vg/x",
            "'x",
        ] {
            assert!(requested(Some(bad)).is_err(), "{bad}");
        }
        assert!(matches!(requested(None), Err(ServeError::NoCommand)));
    }

    #[test]
    fn files_must_resolve_under_a_prefix() {
        let dir = std::env::temp_dir().join(format!("lvmsync-serve-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let allowed = dir.join("copies");
        let other = dir.join("other");
        fs::create_dir_all(&allowed).unwrap();
        fs::create_dir_all(&other).unwrap();
        fs::write(allowed.join("a.img"), b"x").unwrap();
        fs::write(other.join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(other.join("secret"), allowed.join("link")).unwrap();
        std::os::unix::fs::symlink(&other, allowed.join("dirlink")).unwrap();
        let r = Restriction::new(std::slice::from_ref(&allowed)).unwrap();
        assert_eq!(
            r.check(&allowed.join("a.img"), false).unwrap(),
            fs::canonicalize(allowed.join("a.img")).unwrap()
        );
        assert!(r.check(&allowed.join("new.img"), true).is_ok());
        assert!(r.check(&allowed.join("new.img"), false).is_err());
        for bad in [
            other.join("secret"),
            allowed.join("link"),
            allowed.join("dirlink/secret"),
            allowed.join("../other/secret"),
            allowed.join("dirlink/new.img"),
        ] {
            let err = r.check(&bad, true).unwrap_err().to_string();
            assert!(err.starts_with("refused: "), "{err}");
        }
        // A device outside /dev prefixes.
        if Path::new("/dev/null").exists() {
            assert!(r.check(Path::new("/dev/null"), false).is_err());
        }
        assert!(Restriction::new(&[PathBuf::from("relative")]).is_err());
        assert!(Restriction::new(&[dir.join("missing")]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
