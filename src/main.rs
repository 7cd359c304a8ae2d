//! The `lvmsync-rs` command: parses arguments, runs a command, and turns an
//! error into one line on stderr and a non-zero exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use lvmsync::commands::list;
use lvmsync::units::parse_size;
use lvmsync::Error;

#[derive(Parser)]
#[command(
    name = "lvmsync-rs",
    version,
    about = "Ship the changes of LVM snapshots to a backup copy, checked end to end",
    long_about = "Ship the changes of LVM snapshots to a backup copy, checked end to end.\n\n\
        lvmsync-rs reads the kernel's record of which chunks changed since a snapshot \
        was taken, so the cost of a sync grows with the changed data, not with the device."
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
            Only the COW table is read, never the data.\n\n\
            Examples:\n  lvmsync-rs list vg/root-snap\n  lvmsync-rs list --json /dev/mapper/vg-root--snap\n  \
            lvmsync-rs list --cow cow.img --origin-size 20G"
    )]
    List {
        /// The snapshot (a classic LVM snapshot)
        #[arg(required_unless_present = "cow", conflicts_with = "cow")]
        snapshot: Option<String>,
        /// Read the table from this COW device or image instead, without LVM
        #[arg(long, value_name = "PATH")]
        cow: Option<PathBuf>,
        /// With --cow: the origin's size (bytes, or with k/M/G/T), to check
        /// that no entry lies past its end
        #[arg(long, value_name = "BYTES", value_parser = parse_size)]
        origin_size: Option<u64>,
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List {
            snapshot,
            cow,
            origin_size,
            json,
        } => {
            let target = match (snapshot, cow) {
                (_, Some(path)) => list::Target::Cow { path, origin_size },
                (Some(_), None) if origin_size.is_some() => usage_error(
                    "--origin-size goes with --cow; a snapshot's origin size comes from its table",
                ),
                (Some(spec), None) => list::Target::Snapshot(spec),
                (None, None) => usage_error("name a SNAPSHOT, or a COW image with --cow"),
            };
            list::run(list::Args { target, json })
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
