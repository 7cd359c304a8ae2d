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
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Crypt(#[from] crate::crypt::CryptError),
    #[error("{0}")]
    Usage(String),
    #[error("the sender writes delta format version {theirs}, but this lvmsync-rs ({}) reads versions {} to {ours} only: install the same version on both hosts", crate::TOOL, crate::stream::OLDEST_VERSION)]
    FormatVersion { theirs: u32, ours: u32 },
    #[error("writing output: {0}")]
    Output(#[source] io::Error),
}

/// What kind of failure an error is: a script can tell them apart by the
/// exit status, or by `error_kind` in `--json` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Anything else: an I/O error, a system tool that failed. Exit 1.
    Failed,
    /// The command line is wrong. Exit 2.
    Usage,
    /// The copies differ (verify), or an archive is damaged (archive
    /// check): a result, not an error. Exit 3.
    Differ,
    /// DEST, the archive or the far end refuses, and nothing was written:
    /// a delta for another base or of another format version, a device
    /// in use, another writer, DEST too small or one of the delta's inputs,
    /// a restricted far end, a point or volume that is not there. Exit 4.
    Refused,
    /// A delta, an archive object or a far end's report fails its checks.
    /// Exit 5.
    Damaged,
    /// The far end or the object store cannot be reached or logged in to,
    /// or the far program is missing. Exit 6.
    Unreachable,
    /// A transfer was cut or stalled midway: the same command completes
    /// it. Exit 7.
    Interrupted,
    /// The snapshot (or COW image, or thin metadata) cannot be read as
    /// asked: not a snapshot, invalidated, merging, a damaged table. Exit 8.
    Source,
}

impl Kind {
    /// The exit status of a command that ends with this kind of failure.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Failed => 1,
            Kind::Usage => 2,
            Kind::Differ => 3,
            Kind::Refused => 4,
            Kind::Damaged => 5,
            Kind::Unreachable => 6,
            Kind::Interrupted => 7,
            Kind::Source => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::Usage => "usage",
            Kind::Differ => "differ",
            Kind::Refused => "refused",
            Kind::Damaged => "damaged",
            Kind::Unreachable => "unreachable",
            Kind::Interrupted => "interrupted",
            Kind::Source => "source",
        }
    }
}

impl Error {
    /// Whether the error is a closed output pipe (`| head`), which ends the
    /// command quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> Kind {
        use crate::apply::ApplyError as A;
        use crate::archive::ArchiveError as Ar;
        use crate::send::SendError as S;
        use crate::state::StateError as St;
        use crate::store::StoreError as So;
        use crate::transport::TransportError as T;
        use crate::verify::VerifyError as V;
        let state = |e: &St| match e {
            St::Refused(_) | St::Damaged { .. } | St::NoStableName { .. } => Kind::Refused,
            St::Read { .. } => Kind::Refused,
            St::Write { .. } => Kind::Failed,
        };
        let store = |e: &So| match e {
            So::BadLocation { .. } | So::BadKey { .. } | So::BadSettings { .. } => Kind::Usage,
            So::NoCredentials { .. }
            | So::AccessDenied { .. }
            | So::NoSuchBucket { .. }
            | So::Unreachable { .. } => Kind::Unreachable,
            So::NotFound { .. }
            | So::TooLarge { .. }
            | So::OutOfRange { .. }
            | So::Changed { .. } => Kind::Damaged,
            So::NoSuchDirectory { .. } | So::NotADirectory { .. } | So::Exists { .. } => {
                Kind::Refused
            }
            _ => Kind::Failed,
        };
        let send = |e: &S| match e {
            S::SourceTooSmall { .. } | S::ExtentPastSource { .. } => Kind::Source,
            S::DestIsInput { .. } => Kind::Refused,
            S::Read { .. } | S::Write(_) => Kind::Failed,
        };
        match self {
            Error::Usage(_) => Kind::Usage,
            Error::Crypt(e) => e.kind(),
            Error::Config(crate::config::ConfigError::Invalid { .. }) => Kind::Usage,
            Error::Config(_) => Kind::Failed,
            Error::FormatVersion { .. } => Kind::Refused,
            Error::Lvm(crate::lvm::LvmError::Tool(_)) => Kind::Failed,
            Error::Lvm(_) | Error::Cow { .. } | Error::Thin(_) => Kind::Source,
            Error::Open { .. } | Error::Create { .. } | Error::Write { .. } | Error::Output(_) => {
                Kind::Failed
            }
            Error::Send(e) => send(e),
            // A delta of another format version is not damaged: this
            // lvmsync-rs cannot read it, and writes nothing.
            Error::Stream {
                source: StreamError::UnknownVersion { .. },
                ..
            } => Kind::Refused,
            Error::Stream { .. } => Kind::Damaged,
            Error::Apply(e) => match e {
                A::Stream {
                    source: StreamError::UnknownVersion { .. },
                    ..
                } => Kind::Refused,
                A::Stream { .. } => Kind::Damaged,
                A::DestMissing { .. }
                | A::DestDirectory { .. }
                | A::DestKind { .. }
                | A::DestTooSmall { .. }
                | A::DestTooShort { .. }
                | A::DestBusy { .. }
                | A::DestLocked { .. }
                | A::SameFile { .. }
                | A::SnapbackExists { .. } => Kind::Refused,
                A::State(e) => state(e),
                A::StateUpdate { source, .. } => state(source),
                _ => Kind::Failed,
            },
            Error::Transport(e) => match e {
                T::BadRsh(..) | T::NoRemotePath(_) | T::BadHost(..) => Kind::Usage,
                T::Spawn { .. }
                | T::Login { .. }
                | T::RemoteMissing { .. }
                | T::NoHello { .. }
                | T::HelloTimeout { .. }
                | T::LineTooLong { .. } => Kind::Unreachable,
                T::Mismatch { .. } | T::Refused { .. } => Kind::Refused,
                T::Cut { .. } | T::Stalled { .. } | T::Unfinished { .. } | T::Broken { .. } => {
                    Kind::Interrupted
                }
                T::NoReport { .. } | T::ReportMismatch { .. } => Kind::Damaged,
                T::Failed { .. } => Kind::Failed,
            },
            Error::Verify(e) => match e {
                V::Read { .. } | V::Stopped { .. } => Kind::Failed,
                _ => Kind::Refused,
            },
            Error::Backup(_) => Kind::Refused,
            Error::Input(crate::files::DeltaInputError::Terminal) => Kind::Usage,
            Error::Input(_) => Kind::Failed,
            Error::Serve(crate::serve::ServeError::NoCommand) => Kind::Usage,
            Error::Serve(crate::serve::ServeError::BadPrefix { .. }) => Kind::Usage,
            Error::Serve(_) => Kind::Refused,
            Error::Store(e) => store(e),
            Error::Archive(e) => match e {
                Ar::Store(e) => store(e),
                Ar::Send(e) => send(e),
                Ar::BadVolumeName { .. } => Kind::Usage,
                Ar::NotAnArchive { .. }
                | Ar::NoSuchVolume { .. }
                | Ar::NoSuchPoint { .. }
                | Ar::OtherOrigin { .. } => Kind::Refused,
                Ar::Concurrent { .. } => Kind::Interrupted,
                Ar::Crypt(e) => e.kind(),
                Ar::Sealed { .. } => Kind::Damaged,
                Ar::Exists { .. } => Kind::Refused,
                Ar::BadMarker { .. }
                | Ar::DamagedCatalog { .. }
                | Ar::DamagedIndex { .. }
                | Ar::DamagedDelta { .. }
                | Ar::Mismatch { .. }
                | Ar::BrokenChain { .. } => Kind::Damaged,
            },
        }
    }
}
