//! Sync: send a snapshot's changes (or, for a first copy, all of a device
//! or image) to an apply at DEST, here or on another host, in one go and
//! without a file on either side; resume a transfer DEST confirmed
//! partway, and refuse a delta DEST's state says is not for it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::adapt::Compress;
use crate::apply;
use crate::blockdev::Source;
use crate::changes::ChangeSource;
use crate::send::Delta;
use crate::ship::{self, Link, Session, Transfer};
use crate::status::{self, DestStatus};
use crate::stream::PointInTime;
use crate::transport::Location;
use crate::Error;

/// What is sent.
#[derive(Debug, Clone)]
pub enum What {
    /// The changes `source` lists, their data read from `data_source`
    /// (for a snapshot, its origin when none is given).
    Changes {
        source: ChangeSource,
        data_source: Option<PathBuf>,
    },
    /// All of a device or an image: the first copy (the seed).
    Full(PathBuf),
}

/// A sync to do.
#[derive(Debug, Clone)]
pub struct Request {
    pub what: What,
    pub compression: Compress,
    /// `[user@]host:PATH`, or a local path.
    pub dest: String,
    pub link: Link,
}

/// Sends what `req` names to its DEST and has it applied there; `transfer`
/// says what was done, also when it fails.
pub fn sync(req: &Request, transfer: &mut Transfer) -> Result<(), Error> {
    transfer.dest = req.dest.clone();
    let dest = Location::parse(&req.dest)?;
    // Local inputs first: a missing snapshot needs no connection.
    let mut delta = delta_of(req)?;
    transfer.source = Some(delta.name.clone());
    if let Location::Local(path) = &dest {
        delta.check_dest(Path::new(path))?;
    }
    let format = delta.header.compression.version();
    let mut session = Session::connect(&dest, &req.link, format, transfer)?;
    if let What::Changes { .. } = req.what {
        let resume = session.resume_point(&delta);
        delta.resume_from(resume);
    }
    session.check_base(&req.dest, &delta, req.link.force)?;
    session.ship(&delta, transfer)
}

/// The delta `req` names, its data not read yet.
fn delta_of(req: &Request) -> Result<Delta, Error> {
    Ok(match &req.what {
        What::Full(path) => {
            let source = Source::open(path).map_err(|source| Error::Open {
                path: path.display().to_string(),
                source,
            })?;
            Delta::full_copy(source, req.compression.header())
        }
        What::Changes {
            source,
            data_source,
        } => Delta::of_changes(source, data_source.as_deref(), req.compression.header())?,
    })
    .map(|mut delta| {
        delta.compress(req.compression);
        delta
    })
}

/// What a sync would do (`sync --dry-run`): nothing is sent, DEST is only
/// looked at.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub source: String,
    pub dest: String,
    /// `changes` or `full`.
    pub kind: &'static str,
    /// The extents to send and their bytes, past `resume_from`: what is
    /// read; blocks of zeroes among them go without data, the rest
    /// compressed.
    pub extents: usize,
    pub bytes: u64,
    /// Where a transfer DEST confirmed partway would resume.
    pub resume_from: u64,
    /// The point in time the delta applies to, and the one it brings DEST
    /// to, when known.
    pub base: Option<PointInTime>,
    pub target: Option<PointInTime>,
    pub origin_size: u64,
    /// What DEST is and holds.
    pub dest_status: DestStatus,
}

/// Reads the change table and looks at DEST, and checks what the apply
/// would check before writing: that DEST exists (or `--create`), is not
/// in use, is large enough, and holds the delta's base. Reads no data,
/// sends nothing, changes nothing.
pub fn preview(req: &Request) -> Result<Preview, Error> {
    let dest = Location::parse(&req.dest)?;
    let mut delta = delta_of(req)?;
    if let Location::Local(path) = &dest {
        delta.check_dest(Path::new(path))?;
    }
    let status = status::query(&req.dest, &req.link)?;
    if let What::Changes { .. } = req.what {
        delta.resume_from(ship::resume_point(status.state().as_ref(), &delta));
    }
    apply::would_apply(&status, &delta.header, req.link.create, req.link.force)?;
    let changes = delta.changes.as_changes();
    Ok(Preview {
        source: delta.name.clone(),
        dest: req.dest.clone(),
        kind: match req.what {
            What::Changes { .. } => "changes",
            What::Full(_) => "full",
        },
        extents: changes.in_order().count(),
        bytes: changes.total_bytes(),
        resume_from: delta.header.resume_from,
        base: delta.header.base.clone(),
        target: delta.header.target.clone(),
        origin_size: delta.header.origin_size,
        dest_status: status,
    })
}
