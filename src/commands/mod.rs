//! One module per subcommand: its arguments, one call into the library,
//! and what it prints. The arguments several commands share are here, each
//! checked once.

pub mod apply;
pub mod archive;
pub mod backup;
pub mod inspect;
pub mod key;
pub mod list;
pub mod man;
pub mod restore;
pub mod send;
pub mod serve;
pub mod status;
pub mod sync;
pub mod verify;

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, ValueEnum};

use lvmsync::adapt::Compress;
use lvmsync::changes::ChangeSource;
use lvmsync::progress::Style;
use lvmsync::ship::Link;
use lvmsync::units::{parse_duration, parse_size};

/// The one JSON object a command prints on stdout when it fails and was
/// asked for `--json`.
pub fn print_failure(command: &str, e: &lvmsync::Error) {
    let kind = e.kind();
    println!(
        "{}",
        serde_json::json!({
            "command": command,
            "result": "failed",
            "error": e.to_string().replace('\n', " "),
            "error_kind": kind.name(),
            "exit_code": kind.exit_code(),
        })
    );
}

/// Exits as the argument parser does for a usage error (status 2), with
/// the usage of `command` (a subcommand's name, or names: "archive prune").
pub fn usage_error(command: &str, message: &str) -> ! {
    let mut cli = crate::Cli::command();
    // Built, the subcommands know their full names for the usage line.
    cli.build();
    let mut cmd = &mut cli;
    for name in command.split_whitespace() {
        cmd = cmd
            .find_subcommand_mut(name)
            .expect("usage_error names a subcommand");
    }
    cmd.error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// Where a change table comes from other than a snapshot: the options of
/// list, send and sync.
#[derive(clap::Args, Debug)]
pub struct TableArgs {
    /// Read the table from this COW device or image instead, without LVM
    /// (send and sync need --data-source)
    #[arg(long, value_name = "PATH")]
    pub cow: Option<PathBuf>,
    /// Compare two thin devices in this thin pool metadata (an image, or a
    /// metadata device no active pool uses) instead, without LVM (send and
    /// sync need --data-source)
    #[arg(long, value_name = "PATH", conflicts_with = "cow", requires_all = ["thin1", "thin2"])]
    pub thin_metadata: Option<PathBuf>,
    /// With --thin-metadata: the thin device id of the snapshot (the old state)
    #[arg(long, value_name = "ID", requires = "thin_metadata")]
    pub thin1: Option<u64>,
    /// With --thin-metadata: the thin device id of the new state
    #[arg(long, value_name = "ID", requires = "thin_metadata")]
    pub thin2: Option<u64>,
    /// With --cow or --thin-metadata: the origin's size (bytes, or with
    /// k/M/G/T), to clip the last extent to it (with --cow, also to check
    /// that no entry lies past its end); the data source's size when not
    /// given
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub origin_size: Option<u64>,
}

impl TableArgs {
    /// The change source these options and `snapshot` name; `data_source`
    /// says whether one was given, for the commands that read data
    /// (`reads_data`). A usage error otherwise.
    pub fn change_source(
        self,
        snapshot: Option<String>,
        reads_data: bool,
        data_source: bool,
    ) -> Result<ChangeSource, String> {
        let table = if self.thin_metadata.is_some() {
            "--thin-metadata"
        } else {
            "--cow"
        };
        if (self.cow.is_some() || self.thin_metadata.is_some()) && reads_data && !data_source {
            return Err(format!(
                "{table} needs --data-source PATH: the device or image holding the origin's new contents"
            ));
        }
        match (snapshot, self.cow, self.thin_metadata) {
            (_, _, Some(path)) => match (self.thin1, self.thin2) {
                (Some(thin1), Some(thin2)) => Ok(ChangeSource::ThinMetadata {
                    path,
                    thin1,
                    thin2,
                    origin_size: self.origin_size,
                }),
                _ => Err("--thin-metadata needs --thin1 ID and --thin2 ID".into()),
            },
            (_, Some(path), None) => Ok(ChangeSource::CowImage {
                path,
                origin_size: self.origin_size,
            }),
            (Some(_), None, None) if self.origin_size.is_some() => Err(
                "--origin-size goes with --cow or --thin-metadata; a snapshot's origin size comes from its table".into(),
            ),
            (Some(spec), None, None) => Ok(ChangeSource::Snapshot(spec)),
            (None, None, None) => Err("name a SNAPSHOT, or a COW image with --cow".into()),
        }
    }

    /// Whether a table other than a snapshot's is named.
    pub fn names_a_table(&self) -> bool {
        self.cow.is_some() || self.thin_metadata.is_some()
    }
}

/// Where the changes come from, for list and send: a snapshot, or a table
/// read without LVM.
#[derive(clap::Args, Debug)]
pub struct ChangeArgs {
    /// The snapshot (a classic or a thin LVM snapshot)
    #[arg(required_unless_present_any = ["cow", "thin_metadata"], conflicts_with_all = ["cow", "thin_metadata"])]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub table: TableArgs,
}

impl ChangeArgs {
    /// The change source named (see [`TableArgs::change_source`]); a
    /// usage error of `command` ends the program.
    pub fn change_source(self, command: &str, reads_data: bool, data_source: bool) -> ChangeSource {
        self.table
            .change_source(self.snapshot, reads_data, data_source)
            .unwrap_or_else(|e| usage_error(command, &e))
    }
}

/// How a delta is shipped to DEST and what is said: the options of sync
/// and backup.
#[derive(clap::Args, Debug)]
pub struct Shipping {
    /// Compress DATA records: lz4, zstd[:LEVEL] (LEVEL 1 to 19, 3 by
    /// default), none, or auto (zstd at the level that keeps the link busy,
    /// chosen as the delta is sent); each is stored raw when that does not
    /// make it smaller
    #[arg(long, value_name = "HOW", default_value = "lz4")]
    pub compress: Compress,
    /// Create DEST as a regular file when it does not exist
    #[arg(long)]
    pub create: bool,
    #[command(flatten)]
    pub remote: RemoteShell,
    /// No progress and no summary; errors only
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a summary object on stdout at the end (on failure too)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub log: LogArgs,
    /// Send at most RATE to DEST, smoothly: KiB per second (500), or
    /// bytes per second with a unit (500k, 10M, 1G), as rsync reads it
    #[arg(long, value_name = "RATE", value_parser = lvmsync::throttle::parse_rate)]
    pub bwlimit: Option<u64>,
}

impl Shipping {
    /// How DEST is reached, for `command`.
    pub fn link(&self, force: bool, command: &'static str) -> Link {
        Link {
            create: self.create,
            force,
            progress: self.log.style(self.quiet),
            command,
            bwlimit: self.bwlimit,
            ..self.remote.link()
        }
    }
}

/// How progress is reported on stderr when it is not a terminal.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Progress lines on stderr as plain text or one JSON object each (a
    /// bar is drawn instead when stderr is a terminal and this is plain)
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// Time between progress lines when stderr is not a terminal (90,
    /// 90s, 5m, 1h; a plain number is seconds)
    #[arg(long, value_name = "DURATION", default_value_t = 10, value_parser = parse_duration)]
    pub progress_every: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

impl LogArgs {
    /// How progress is shown; nothing when `quiet`.
    pub fn style(&self, quiet: bool) -> Style {
        Style::for_stderr(
            quiet,
            self.log_format == LogFormat::Json,
            Duration::from_secs(self.progress_every),
        )
    }
}

/// How to reach a remote DEST: the options of sync, backup and verify.
#[derive(clap::Args, Debug)]
pub struct RemoteShell {
    /// The remote shell, split into words like a shell does
    #[arg(short = 'e', long, value_name = "CMD", default_value = "ssh")]
    pub rsh: String,
    /// The lvmsync-rs program on the remote host (a path, or a name in its PATH)
    #[arg(long, value_name = "PATH", default_value = "lvmsync-rs")]
    pub remote_path: String,
    /// How long to wait (90, 90s, 5m, 1h; a plain number is seconds) for
    /// the remote to log in, open DEST and answer; then, while the delta is
    /// sent, for it to take more data; then, while it syncs DEST, for it to
    /// say it is alive
    #[arg(long, value_name = "DURATION", default_value_t = 60, value_parser = parse_duration)]
    pub timeout: u64,
}

impl RemoteShell {
    /// How DEST is reached, to compare it (nothing is created or forced,
    /// no progress is shown).
    pub fn link(&self) -> Link {
        Link {
            rsh: self.rsh.clone(),
            remote_path: self.remote_path.clone(),
            create: false,
            force: false,
            timeout: Duration::from_secs(self.timeout),
            progress: Style::Hidden,
            command: "verify",
            bwlimit: None,
        }
    }
}

/// How to reach an archive on S3-compatible storage: the options of
/// backup, restore and archive. Credentials come from the environment
/// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or ~/.aws (AWS_PROFILE).
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// The S3 endpoint (MinIO, Ceph RGW, Garage...: path-style addressing
    /// is then used); AWS_ENDPOINT_URL otherwise, else AWS
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The S3 region; AWS_REGION otherwise, else us-east-1
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// What opens an encrypted archive
    #[command(flatten)]
    pub keys: KeyArgs,
}

impl StoreArgs {
    pub fn options(&self) -> lvmsync::store::StoreOptions {
        lvmsync::store::StoreOptions {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            secrets: self.keys.secrets(),
            ..lvmsync::store::StoreOptions::default()
        }
    }
}

/// The key or passphrase that opens encrypted deltas and archives: never a
/// secret on the command line, where other users see it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// The key file that opens (or, with --encrypt, seals) encrypted data
    /// (`lvmsync-rs key new FILE` makes one)
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Read the passphrase from FILE (less a trailing newline); else from
    /// LVMSYNC_PASSPHRASE
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_fd")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the passphrase from file descriptor N (less a trailing newline)
    #[arg(long, value_name = "N")]
    pub passphrase_fd: Option<i32>,
}

impl KeyArgs {
    pub fn secrets(&self) -> lvmsync::crypt::Secrets {
        use lvmsync::crypt::PassphraseFrom;
        lvmsync::crypt::Secrets {
            key_file: self.key_file.clone(),
            passphrase: match (&self.passphrase_file, self.passphrase_fd) {
                (Some(path), _) => PassphraseFrom::File(path.clone()),
                (None, Some(fd)) => PassphraseFrom::Fd(fd),
                (None, None) => PassphraseFrom::Env,
            },
        }
    }

    /// Whether a passphrase was asked for on the command line.
    pub fn passphrase_named(&self) -> bool {
        self.passphrase_file.is_some() || self.passphrase_fd.is_some()
    }
}
