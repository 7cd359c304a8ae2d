//! The error a command ends with: one line that names the thing and what is
//! wrong with it.

use std::io;

use thiserror::Error;

use crate::apply::ApplyError;
use crate::backup::BackupError;
use crate::cow::CowError;
use crate::files::DeltaInputError;
use crate::lvm::LvmError;
use crate::send::SendError;
use crate::stream::StreamError;
use crate::thin::ThinError;
use crate::transport::TransportError;
use crate::verify::VerifyError;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Lvm(#[from] LvmError),
    #[error("{path}: {source}")]
    Cow { path: String, source: CowError },
    #[error("{path}: cannot open: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path}: cannot create: {source}")]
    Create { path: String, source: io::Error },
    #[error("{path}: write error: {source}")]
    Write { path: String, source: io::Error },
    #[error(transparent)]
    Send(#[from] SendError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{path}: {source}")]
    Stream { path: String, source: StreamError },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Thin(#[from] ThinError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Input(#[from] DeltaInputError),
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Usage(String),
    #[error("writing output: {0}")]
    Output(#[source] io::Error),
}

impl Error {
    /// Whether the error is a closed output pipe (`| head`), which ends the
    /// command quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}
