//! Sync: send a snapshot's changes (or, for a first copy, all of a device
//! or image) to an apply at DEST, here or on another host, in one go and
//! without a file on either side; resume a transfer DEST confirmed
//! partway, and refuse a delta DEST's state says is not for it.

use std::path::{Path, PathBuf};

use crate::blockdev::Source;
use crate::changes::ChangeSource;
use crate::send::Delta;
use crate::ship::{Link, Session, Transfer};
use crate::stream::Compression;
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
    pub compression: Compression,
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
    let mut delta = match &req.what {
        What::Full(path) => {
            let source = Source::open(path).map_err(|source| Error::Open {
                path: path.display().to_string(),
                source,
            })?;
            Delta::full_copy(source, req.compression)
        }
        What::Changes {
            source,
            data_source,
        } => Delta::of_changes(source, data_source.as_deref(), req.compression)?,
    };
    transfer.source = Some(delta.name.clone());
    if let Location::Local(path) = &dest {
        delta.check_dest(Path::new(path))?;
    }
    let mut session = Session::connect(&dest, &req.link, transfer)?;
    if let What::Changes { .. } = req.what {
        let resume = session.resume_point(&delta);
        delta.resume_from(resume);
    }
    session.check_base(&req.dest, &delta, req.link.force)?;
    session.ship(&delta, transfer)
}
