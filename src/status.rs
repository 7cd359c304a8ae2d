//! What a copy holds, read without changing it: `lvmsync-rs status DEST`,
//! and what `--dry-run` checks a transfer against.
//!
//! A local DEST is looked at here; a remote one by `lvmsync-rs status
//! --remote-side PATH` launched through the remote shell like the apply of
//! `sync` (see [`crate::transport`]), which says one hello line:
//!
//! ```text
//! LVMSYNC-STATUS <protocol> <status version> <size> {json}
//! ```
//!
//! and exits 0. The JSON is a [`DestStatus`]. Nothing is opened for
//! writing, no lock is kept, no state is changed.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::apply;
use crate::blockdev;
use crate::state::{self, Applying};
use crate::stream::PointInTime;
use crate::transport::{Connection, Expect, Hello, Launch, Location};
use crate::Error;

/// The first word of the remote side's hello line.
pub const HELLO: &str = "LVMSYNC-STATUS";
/// The version of the exchange: the command line and the hello line.
pub const PROTOCOL: u32 = 1;
/// The version of the JSON the hello carries.
const STATUS_VERSION: u32 = 1;
/// How the remote side says hello.
pub const EXPECT: Expect = Expect {
    word: HELLO,
    protocol: PROTOCOL,
    format: STATUS_VERSION,
    what: "status version",
    role: "status",
};

/// What a copy is and holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestStatus {
    /// DEST as given.
    pub dest: String,
    /// The host, for a remote DEST.
    pub host: Option<String>,
    pub exists: bool,
    /// `file` or `device`; none when it does not exist.
    pub kind: Option<String>,
    pub size: Option<u64>,
    /// Where its state is kept; none for a device without a stable name
    /// (it keeps no state) or a missing DEST.
    pub state_file: Option<String>,
    /// Whether the state file exists.
    pub has_state: bool,
    /// The point in time DEST holds, when its state says so.
    pub holds: Option<PointInTime>,
    /// A transfer partway, when one was interrupted.
    pub applying: Option<Applying>,
    /// When the state was last written (RFC 3339, UTC): when DEST was
    /// brought to what it holds, or last confirmed a transfer.
    pub state_updated: Option<String>,
    /// Why the state cannot be read, when it cannot.
    pub state_error: Option<String>,
    /// Who writes DEST now (a process holding its lock), if anyone.
    pub writer: Option<String>,
    /// What else uses a block device (mounts, stacked devices, swap).
    pub users: Vec<String>,
}

impl DestStatus {
    /// Whether what DEST holds is known: a state without a transfer
    /// partway and without an error.
    pub fn known(&self) -> bool {
        self.state_error.is_none()
    }

    /// The state as `apply` would read it.
    pub fn state(&self) -> Option<state::State> {
        self.has_state.then(|| state::State {
            holds: self.holds.clone(),
            applying: self.applying.clone(),
        })
    }
}

/// Looks at the local copy `path` (shown as `dest`).
pub fn local(path: &Path, dest: &str) -> DestStatus {
    let mut s = DestStatus {
        dest: dest.to_string(),
        ..DestStatus::default()
    };
    let Ok(meta) = fs::metadata(path) else {
        return s;
    };
    s.exists = true;
    if meta.file_type().is_block_device() {
        s.kind = Some("device".into());
        s.size = blockdev::Source::open(path).ok().map(|d| d.size());
        s.users = blockdev::users_of(meta.rdev());
    } else if meta.is_file() {
        s.kind = Some("file".into());
        s.size = Some(meta.len());
    } else {
        s.kind = Some("other".into());
        return s;
    }
    s.writer = apply::writer_of(path);
    match state::location(path) {
        Ok(Some(file)) => {
            s.state_file = Some(file.display().to_string());
            match state::load(&file) {
                Ok(Some(st)) => {
                    s.has_state = true;
                    s.holds = st.holds;
                    s.applying = st.applying;
                    s.state_updated = fs::symlink_metadata(&file)
                        .ok()
                        .map(|m| crate::time::rfc3339(m.mtime()));
                }
                Ok(None) => {}
                Err(e) => s.state_error = Some(e.to_string()),
            }
        }
        Ok(None) => {}
        Err(e) => s.state_error = Some(e.to_string()),
    }
    s
}

/// What a remote side is asked to look at.
pub struct Side<'a> {
    pub path: &'a Path,
    /// The protocol the asking side speaks.
    pub protocol: u32,
}

/// The remote side: looks at PATH, says the one hello line.
pub fn serve(side: &Side<'_>) -> Result<(), Error> {
    if side.protocol != PROTOCOL {
        return Err(Error::Usage(format!(
            "status --remote-side: protocol {} asked, this lvmsync-rs speaks {PROTOCOL}",
            side.protocol
        )));
    }
    let shown = side.path.display().to_string();
    let status = local(side.path, &shown);
    let hello = Hello {
        protocol: PROTOCOL,
        format: STATUS_VERSION,
        dest_size: status.size.unwrap_or(0),
        rest: serde_json::to_string(&status).expect("plain fields serialize"),
    };
    let mut out = io::stdout().lock();
    writeln!(out, "{}", hello.line(HELLO))
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

/// The words of the remote side's command.
fn words(program: &[String], path: &str) -> Vec<String> {
    let mut words = program.to_vec();
    words.extend(
        [
            "status",
            "--remote-side",
            "--protocol",
            &PROTOCOL.to_string(),
            "--",
            path,
        ]
        .map(String::from),
    );
    words
}

/// Looks at `dest` (`[user@]host:PATH` or a local path), through `link`
/// when it is remote.
pub fn query(dest: &str, link: &crate::ship::Link) -> Result<DestStatus, Error> {
    match Location::parse(dest)? {
        Location::Local(path) => Ok(local(Path::new(&path), dest)),
        Location::Remote { host, path } => {
            let launch = Launch::remote_with(&link.rsh, &host, &link.remote_path, EXPECT, |p| {
                words(p, &path)
            })?;
            let echo: crate::transport::Echo = Arc::new(|line: &str| eprintln!("{line}"));
            let conn = Connection::start(&launch, link.timeout, echo)?;
            let parsed = serde_json::from_str::<DestStatus>(&conn.hello.rest);
            let mut status = match parsed {
                Ok(s) => s,
                Err(e) => {
                    return Err(conn
                        .broken(format!("its status is not what lvmsync-rs says: {e}"))
                        .into())
                }
            };
            conn.end()?;
            status.dest = dest.to_string();
            status.host = Some(host);
            Ok(status)
        }
    }
}
