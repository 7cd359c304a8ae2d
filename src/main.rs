//! The `lvmsync-rs` command: parses arguments, runs a command, and turns an
//! error into one line on stderr and a non-zero exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use lvmsync::commands::{apply, backup, inspect, list, send, sync, verify, DeltaInput};
use lvmsync::snapshots::{SnapshotSize, DEFAULT_SNAPSHOT_SIZE};
use lvmsync::stream::Compression;
use lvmsync::units::parse_size;
use lvmsync::Error;

#[derive(Parser)]
#[command(
    name = "lvmsync-rs",
    version,
    about = "Ship the changes of LVM snapshots to a backup copy, checked end to end",
    long_about = "Ship the changes of LVM snapshots to a backup copy, checked end to end.\n\n\
        lvmsync-rs reads the kernel's record of which chunks changed since a snapshot \
        was taken, so the cost of a sync grows with the changed data, not with the device.",
    after_help = "`lvmsync-rs SNAPSHOT [user@]host:DEST` is short for `lvmsync-rs sync SNAPSHOT [user@]host:DEST`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the byte ranges of the origin that changed since SNAPSHOT was taken
    #[command(
        after_help = "SNAPSHOT may be written vg/lv, /dev/vg/lv, /dev/mapper/vg-lv or a dm name.\n\
            Only the COW table (for a thin snapshot, the pool's metadata, through thin_delta) is \
            read, never the data.\n\n\
            Examples:\n  lvmsync-rs list vg/root-snap\n  lvmsync-rs list --json /dev/mapper/vg-root--snap\n  \
            lvmsync-rs list --cow cow.img --origin-size 20G"
    )]
    List {
        /// The snapshot (a classic or a thin LVM snapshot)
        #[arg(required_unless_present_any = ["cow", "thin_metadata"], conflicts_with_all = ["cow", "thin_metadata"])]
        snapshot: Option<String>,
        /// Read the table from this COW device or image instead, without LVM
        #[arg(long, value_name = "PATH")]
        cow: Option<PathBuf>,
        /// Compare two thin devices in this thin pool metadata (an image,
        /// or a metadata device no active pool uses) instead, without LVM
        #[arg(long, value_name = "PATH", conflicts_with = "cow", requires_all = ["thin1", "thin2"])]
        thin_metadata: Option<PathBuf>,
        /// With --thin-metadata: the thin device id of the snapshot (the old state)
        #[arg(long, value_name = "ID", requires = "thin_metadata")]
        thin1: Option<u64>,
        /// With --thin-metadata: the thin device id of the new state
        #[arg(long, value_name = "ID", requires = "thin_metadata")]
        thin2: Option<u64>,
        /// With --cow or --thin-metadata: the origin's size (bytes, or with
        /// k/M/G/T), to clip the last extent to it (with --cow, also to
        /// check that no entry lies past its end)
        #[arg(long, value_name = "BYTES", value_parser = parse_size)]
        origin_size: Option<u64>,
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },
    /// Write the changes since SNAPSHOT was taken as a delta stream
    #[command(
        after_help = "The changed extents come from the snapshot's COW table, or for a thin snapshot \
            from the pool's metadata; their data from the \
            origin (or --data-source), read now.\n\
            Every record carries checksums and the stream ends with an END record, so \
            `apply` notices any damage or truncation.\n\n\
            Examples:\n  lvmsync-rs send vg/root-snap -o root.lvd\n  \
            lvmsync-rs send vg/root-snap --data-source /dev/vg/root-snap2 -o - | ssh backup lvmsync-rs apply - /dev/vg/root-copy\n  \
            lvmsync-rs send --cow cow.img --data-source new.img -o delta.lvd"
    )]
    Send {
        /// The snapshot (a classic or a thin LVM snapshot)
        #[arg(required_unless_present_any = ["cow", "thin_metadata"], conflicts_with_all = ["cow", "thin_metadata"])]
        snapshot: Option<String>,
        /// Read the table from this COW device or image instead, without LVM
        /// (needs --data-source)
        #[arg(long, value_name = "PATH")]
        cow: Option<PathBuf>,
        /// Compare two thin devices in this thin pool metadata (an image,
        /// or a metadata device no active pool uses) instead, without LVM
        /// (needs --data-source)
        #[arg(long, value_name = "PATH", conflicts_with = "cow", requires_all = ["thin1", "thin2"])]
        thin_metadata: Option<PathBuf>,
        /// With --thin-metadata: the thin device id of the snapshot (the old state)
        #[arg(long, value_name = "ID", requires = "thin_metadata")]
        thin1: Option<u64>,
        /// With --thin-metadata: the thin device id of the new state
        #[arg(long, value_name = "ID", requires = "thin_metadata")]
        thin2: Option<u64>,
        /// Read the changed chunks' data from PATH (a later snapshot, or any
        /// device or image of the origin's size) instead of the origin
        #[arg(long, value_name = "PATH")]
        data_source: Option<PathBuf>,
        /// With --cow or --thin-metadata: the origin's size (bytes, or with
        /// k/M/G/T); the data source's size when not given
        #[arg(long, value_name = "BYTES", value_parser = parse_size)]
        origin_size: Option<u64>,
        /// Write the delta to FILE, or to stdout with `-o -`
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Compress DATA records (each is stored raw when lz4 does not make it smaller)
        #[arg(long, value_enum, value_name = "HOW", default_value_t = Compress::Lz4)]
        compress: Compress,
    },
    /// Replay a delta on the backup copy, checking every record before writing it
    #[command(
        after_help = "DELTA may be `-` for stdin. DEST is a regular file (extended to the origin's \
            size when shorter) or a block device (at least the origin's size).\n\
            A damaged or truncated delta stops the apply before the bad record; applying an \
            intact copy of the whole delta again completes the job.\n\n\
            Examples:\n  lvmsync-rs apply root.lvd /dev/vg/root-copy\n  \
            lvmsync-rs apply --snapback undo.lvd root.lvd copy.img"
    )]
    Apply {
        /// The delta (`-` for stdin)
        delta: String,
        /// The copy to update: a regular file or a block device
        dest: PathBuf,
        /// Create DEST as a regular file when it does not exist
        #[arg(long)]
        create: bool,
        /// Save the old contents of every range written to FILE (a new
        /// file), as a delta that restores them
        #[arg(long, value_name = "FILE")]
        snapback: Option<PathBuf>,
        /// The far end of `sync`: open DEST, say hello on stdout, apply,
        /// report on stdout
        #[arg(long, hide = true, requires = "expect_format")]
        remote: bool,
        /// With --remote: the delta format version the sender writes
        #[arg(long, hide = true, value_name = "VERSION", requires = "remote")]
        expect_format: Option<u32>,
        /// Apply even when DEST's recorded state says it holds another point
        /// in time than the one the delta applies to
        #[arg(long)]
        force: bool,
    },
    /// Send the changes since SNAPSHOT was taken to DEST and apply them there, over ssh
    #[command(
        after_help = "DEST is [user@]host:PATH (applied on that host by `lvmsync-rs apply`, run \
            through ssh) or a local PATH (a PATH starting with / or ./ is local even with a `:`).\n\
            Nothing is written to a temporary file on either side. Before any data is sent, the \
            remote opens DEST and both sides check that they speak the same delta format; at the \
            end the remote reports what it applied and checked, and that report must match what \
            was sent. Records can be applied again, so after a failure the same command \
            completes the sync.\n\n\
            `lvmsync-rs SNAPSHOT DEST` is short for `lvmsync-rs sync SNAPSHOT DEST`.\n\n\
            Examples:\n  lvmsync-rs vg/root-snap backup:/dev/vg/root-copy\n  \
            lvmsync-rs sync vg/root-snap --data-source /dev/vg/root-snap2 root@backup:/dev/vg/root-copy\n  \
            lvmsync-rs sync -e 'ssh -p 2222 -i /root/.ssh/backup' --remote-path /usr/local/bin/lvmsync-rs vg/root-snap backup:/srv/root.img"
    )]
    Sync {
        /// SNAPSHOT (a classic or thin LVM snapshot; not with --cow), then DEST:
        /// [user@]host:PATH or a local PATH
        #[arg(value_name = "SNAPSHOT DEST", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Copy all of SNAPSHOT, which may then be any device or image,
        /// instead of its changes: the first copy (the seed). Blocks of
        /// zeroes go as ZERO records, without data
        #[arg(long, conflicts_with_all = ["cow", "data_source", "origin_size"])]
        full: bool,
        /// Read the table from this COW device or image instead, without LVM
        /// (needs --data-source)
        #[arg(long, value_name = "PATH")]
        cow: Option<PathBuf>,
        /// Read the changed chunks' data from PATH (a later snapshot, or any
        /// device or image of the origin's size) instead of the origin
        #[arg(long, value_name = "PATH")]
        data_source: Option<PathBuf>,
        /// With --cow: the origin's size (bytes, or with k/M/G/T); the data
        /// source's size when not given
        #[arg(long, value_name = "BYTES", value_parser = parse_size)]
        origin_size: Option<u64>,
        #[command(flatten)]
        ship: Shipping,
        /// Apply even when DEST's recorded state says it holds another point
        /// in time than the one the delta applies to
        #[arg(long)]
        force: bool,
    },
    /// Back up ORIGIN to DEST: take a snapshot, send what changed since the
    /// last one, keep the new one as the next base
    #[command(
        after_help = "The first run copies the whole snapshot (all-zero blocks are not sent); \
            later runs send the blocks the previous snapshot recorded as changed, read from a new \
            snapshot, so DEST becomes exactly that snapshot while the origin keeps running. \
            The snapshots backup creates are named ORIGIN-lvmsync-DATE and carry an LVM tag \
            lvmsync_rs_HASH naming DEST; no other snapshot is ever touched. An interrupted \
            run is recovered and resumed by the next one.\n\n\
            Examples:\n  lvmsync-rs backup vg/root backup:/dev/vg/root-copy\n  \
            lvmsync-rs backup --snapshot-size 5G vg/data /srv/data.img --create"
    )]
    Backup {
        /// The volume to back up: VG/LV
        origin: String,
        /// [user@]host:PATH or a local PATH: a block device or a regular file
        dest: String,
        /// COW space of each classic snapshot: bytes (with k/M/G/T) or
        /// N%ORIGIN, N%VG, N%FREE (thin snapshots need none)
        #[arg(long, value_name = "SIZE", default_value = DEFAULT_SNAPSHOT_SIZE, value_parser = SnapshotSize::parse)]
        snapshot_size: SnapshotSize,
        /// Copy the whole volume, whatever DEST holds
        #[arg(long)]
        reseed: bool,
        #[command(flatten)]
        ship: Shipping,
    },
    /// Compare SRC and DEST block by block (DEST here or over ssh); with
    /// --repair, send the blocks that differ
    #[command(
        after_help = "SRC is a block device, an LV or snapshot (vg/lv means /dev/vg/lv), or an \
            image file. DEST is a local \
            PATH or [user@]host:PATH (hashed on that host by `lvmsync-rs verify`, run through \
            ssh; only the block hashes cross the network).\n\
            Both sides read their copy once, sequentially, and hash blocks of --block-size \
            bytes with XXH3-128; the ranges that differ are printed, joined when adjacent. \
            Copies of different sizes differ by the tail of the longer one.\n\n\
            Exit status: 0 when the copies are identical (or were made so by --repair), 3 when \
            they differ, 1 on an error, 2 for a usage error.\n\n\
            Examples:\n  lvmsync-rs verify vg/root-snap backup:/dev/vg/root-copy\n  \
            lvmsync-rs verify --json --block-size 4M disk.img copy.img\n  \
            lvmsync-rs verify --repair -e 'ssh -p 2222' vg/root-snap root@backup:/srv/root.img"
    )]
    Verify {
        /// SRC, then DEST: [user@]host:PATH or a local PATH
        #[arg(value_name = "SRC DEST", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Bytes per hashed block: a power of two from 4k to 64M; the
        /// differences are found to this granularity
        #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = lvmsync::verify::parse_block_size)]
        block_size: u64,
        /// Send the blocks of SRC that differ to DEST and apply them there,
        /// every record checked before it is written; a shorter DEST file is
        /// extended, a longer one cut to SRC's size
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        remote: RemoteShell,
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
        /// The far side of a remote verify: open PATH, say hello on stdout,
        /// stream its block hashes
        #[arg(long, hide = true, requires_all = ["protocol", "src_size"])]
        remote_side: bool,
        /// With --remote-side: the protocol the local side speaks
        #[arg(long, hide = true, value_name = "VERSION", requires = "remote_side")]
        protocol: Option<u32>,
        /// With --remote-side: SRC's size (the bytes past it are not hashed)
        #[arg(long, hide = true, value_name = "BYTES", requires = "remote_side")]
        src_size: Option<u64>,
    },
    /// Show what a delta holds and check it, without writing anything
    #[command(
        after_help = "DELTA may be `-` for stdin. Exits 1 if the delta is damaged or \
        incomplete, after showing what could be read."
    )]
    Inspect {
        /// The delta (`-` for stdin)
        delta: String,
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },
}

/// How a delta is shipped to DEST and what is said: the options of sync
/// and backup.
#[derive(clap::Args)]
struct Shipping {
    /// Compress DATA records (each is stored raw when lz4 does not make it smaller)
    #[arg(long, value_enum, value_name = "HOW", default_value_t = Compress::Lz4)]
    compress: Compress,
    /// Create DEST as a regular file when it does not exist
    #[arg(long)]
    create: bool,
    #[command(flatten)]
    remote: RemoteShell,
    /// No progress and no summary; errors only
    #[arg(short, long)]
    quiet: bool,
    /// Print a summary object on stdout at the end (on failure too)
    #[arg(long)]
    json: bool,
}

/// How to reach a remote DEST: the options of sync, backup and verify.
#[derive(clap::Args)]
struct RemoteShell {
    /// The remote shell, split into words like a shell does
    #[arg(short = 'e', long, value_name = "CMD", default_value = "ssh")]
    rsh: String,
    /// The lvmsync-rs program on the remote host (a path, or a name in its PATH)
    #[arg(long, value_name = "PATH", default_value = "lvmsync-rs")]
    remote_path: String,
    /// Seconds to wait for the remote to log in, open DEST and answer; then,
    /// while a delta is sent, for it to take more data; then, while it
    /// syncs DEST, for it to say it is alive
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Compress {
    Lz4,
    None,
}

impl From<Compress> for Compression {
    fn from(c: Compress) -> Compression {
        match c {
            Compress::Lz4 => Compression::Lz4,
            Compress::None => Compression::None,
        }
    }
}

/// Subcommands; any other first argument (a snapshot, or an option) means
/// `sync`.
const SUBCOMMANDS: &[&str] = &[
    "list", "send", "apply", "inspect", "sync", "backup", "verify", "help",
];

/// `lvmsync-rs SNAPSHOT DEST` is `lvmsync-rs sync SNAPSHOT DEST`.
fn with_subcommand(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let implicit = match args.get(1).and_then(|a| a.to_str()) {
        Some("-h" | "--help" | "-V" | "--version") => false,
        Some(a) => !SUBCOMMANDS.contains(&a),
        None => args.len() > 1,
    };
    if implicit {
        args.insert(1, "sync".into());
    }
    args
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(with_subcommand(std::env::args_os().collect()));
    let result = match cli.command {
        Command::List {
            snapshot,
            cow,
            thin_metadata,
            thin1,
            thin2,
            origin_size,
            json,
        } => {
            let target = match (snapshot, cow) {
                _ if thin_metadata.is_some() => thin_target(thin_metadata, thin1, thin2, origin_size),
                (_, Some(path)) => list::Target::Cow { path, origin_size },
                (Some(_), None) if origin_size.is_some() => usage_error(
                    "--origin-size goes with --cow or --thin-metadata; a snapshot's origin size comes from its table",
                ),
                (Some(spec), None) => list::Target::Snapshot(spec),
                (None, None) => usage_error("name a SNAPSHOT, or a COW image with --cow"),
            };
            list::run(list::Args { target, json })
        }
        Command::Send {
            snapshot,
            cow,
            thin_metadata,
            thin1,
            thin2,
            data_source,
            origin_size,
            output,
            compress,
        } => {
            let target = match (snapshot, cow) {
                _ if thin_metadata.is_some() && data_source.is_none() => usage_error(
                    "--thin-metadata needs --data-source PATH: the device or image holding the new contents",
                ),
                _ if thin_metadata.is_some() => thin_target(thin_metadata, thin1, thin2, origin_size),
                (_, Some(_)) if data_source.is_none() => usage_error(
                    "--cow needs --data-source PATH: the device or image holding the origin's new contents",
                ),
                (_, Some(path)) => list::Target::Cow { path, origin_size },
                (Some(_), None) if origin_size.is_some() => usage_error(
                    "--origin-size goes with --cow or --thin-metadata; a snapshot's origin size comes from its table",
                ),
                (Some(spec), None) => list::Target::Snapshot(spec),
                (None, None) => usage_error("name a SNAPSHOT, or a COW image with --cow"),
            };
            let output = match output {
                Some(path) if path.as_os_str() == "-" => send::Output::Stdout,
                Some(path) => send::Output::File(path),
                None => usage_error(
                    "say where the delta goes: -o FILE, or -o - for stdout (to pipe it into apply or ssh)",
                ),
            };
            send::run(send::Args {
                target,
                data_source,
                output,
                compression: compress.into(),
            })
        }
        Command::Apply {
            delta,
            dest,
            create,
            snapback,
            remote,
            expect_format,
            force,
        } => apply::run(apply::Args {
            delta: DeltaInput::from_arg(&delta),
            dest,
            create,
            snapback,
            remote: expect_format.filter(|_| remote),
            force,
        }),
        Command::Sync {
            args,
            full,
            cow,
            data_source,
            origin_size,
            ship,
            force,
        } => {
            let mut data_source = data_source;
            let (target, dest) = match (args.as_slice(), cow) {
                ([src, dest], None) if full => {
                    data_source = Some(PathBuf::from(src));
                    (list::Target::Snapshot(src.clone()), dest.clone())
                }
                ([dest], Some(path)) if data_source.is_some() => {
                    (list::Target::Cow { path, origin_size }, dest.clone())
                }
                (_, Some(_)) if data_source.is_none() => usage_error(
                    "--cow needs --data-source PATH: the device or image holding the origin's new contents",
                ),
                (_, Some(_)) => usage_error("with --cow, name only DEST"),
                ([_, _], None) if origin_size.is_some() => usage_error(
                    "--origin-size goes with --cow or --thin-metadata; a snapshot's origin size comes from its table",
                ),
                ([snapshot, dest], None) => (list::Target::Snapshot(snapshot.clone()), dest.clone()),
                _ => usage_error("name a SNAPSHOT and a DEST ([user@]host:PATH or a local PATH)"),
            };
            sync::run(sync::Args {
                target,
                full,
                data_source,
                compression: ship.compress.into(),
                dest,
                create: ship.create,
                rsh: ship.remote.rsh,
                remote_path: ship.remote.remote_path,
                hello_timeout: std::time::Duration::from_secs(ship.remote.timeout),
                quiet: ship.quiet,
                json: ship.json,
                force,
            })
        }
        Command::Backup {
            origin,
            dest,
            snapshot_size,
            reseed,
            ship,
        } => backup::run(backup::Args {
            origin,
            dest,
            snapshot_size,
            compression: ship.compress.into(),
            create: ship.create,
            rsh: ship.remote.rsh,
            remote_path: ship.remote.remote_path,
            hello_timeout: std::time::Duration::from_secs(ship.remote.timeout),
            reseed,
            quiet: ship.quiet,
            json: ship.json,
        }),
        Command::Inspect { delta, json } => inspect::run(inspect::Args {
            delta: DeltaInput::from_arg(&delta),
            json,
        }),
        Command::Verify {
            args,
            block_size,
            repair,
            remote,
            json,
            remote_side,
            protocol,
            src_size,
        } => {
            let result = match (args.as_slice(), remote_side, protocol, src_size) {
                ([path], true, Some(protocol), Some(src_size)) => {
                    verify::run_remote(verify::RemoteArgs {
                        path: path.into(),
                        block_size,
                        src_size,
                        protocol,
                    })
                    .map(|()| true)
                }
                (_, true, _, _) => usage_error("--remote-side takes one PATH"),
                ([src, dest], false, _, _) => verify::run(verify::Args {
                    src: src.into(),
                    dest: dest.clone(),
                    block_size,
                    repair,
                    rsh: remote.rsh,
                    remote_path: remote.remote_path,
                    hello_timeout: std::time::Duration::from_secs(remote.timeout),
                    json,
                    target: None,
                }),
                _ => usage_error("name SRC and DEST ([user@]host:PATH or a local PATH)"),
            };
            match result {
                Ok(true) => Ok(()),
                // The copies differ: a result, not an error.
                Ok(false) => return ExitCode::from(DIFFER),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::from(141),
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// The target of `--thin-metadata PATH --thin1 A --thin2 B`.
fn thin_target(
    path: Option<PathBuf>,
    thin1: Option<u64>,
    thin2: Option<u64>,
    origin_size: Option<u64>,
) -> list::Target {
    match (path, thin1, thin2) {
        (Some(path), Some(thin1), Some(thin2)) => list::Target::ThinMetadata {
            path,
            thin1,
            thin2,
            origin_size,
        },
        _ => usage_error("--thin-metadata needs --thin1 ID and --thin2 ID"),
    }
}

/// The exit status of `verify` when the copies differ.
const DIFFER: u8 = 3;

/// Exits as the argument parser does for a usage error (status 2).
fn usage_error(message: &str) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

fn report(e: &Error) {
    // One line, whatever the message's sources contain.
    let text = e.to_string().replace('\n', " ");
    eprintln!("lvmsync-rs: error: {text}");
}
