//! The `lvmsync-rs` command: parses arguments, runs a command (see
//! [`commands`]), and turns an error into one line on stderr and a
//! non-zero exit status.

mod commands;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use lvmsync::error::Kind;
use lvmsync::Error;

#[derive(Parser)]
#[command(
    name = "lvmsync-rs",
    version,
    about = "Ship the changes of LVM snapshots to a backup copy, checked end to end",
    long_about = "Ship the changes of LVM snapshots to a backup copy, checked end to end.\n\n\
        lvmsync-rs reads the kernel's record of which chunks changed since a snapshot \
        was taken, so the cost of a sync grows with the changed data, not with the device.",
    after_help = after_help()
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the byte ranges of the origin that changed since SNAPSHOT was taken
    #[command(
        override_usage = "lvmsync-rs list [OPTIONS] SNAPSHOT\n       \
            lvmsync-rs list [OPTIONS] --cow PATH [--origin-size BYTES]\n       \
            lvmsync-rs list [OPTIONS] --thin-metadata PATH --thin1 ID --thin2 ID [--origin-size BYTES]",
        after_help = "SNAPSHOT may be written vg/lv, /dev/vg/lv, /dev/mapper/vg-lv or a dm name.\n\
            Only the COW table (for a thin snapshot, the pool's metadata, through thin_delta) is \
            read, never the data.\n\n\
            Examples:\n  lvmsync-rs list vg/root-snap\n  lvmsync-rs list --json /dev/mapper/vg-root--snap\n  \
            lvmsync-rs list --cow cow.img --origin-size 20G"
    )]
    List(commands::list::Args),
    /// Write the changes since SNAPSHOT was taken as a delta stream
    #[command(
        override_usage = "lvmsync-rs send [OPTIONS] SNAPSHOT -o FILE|-\n       \
            lvmsync-rs send [OPTIONS] --cow PATH --data-source PATH [--origin-size BYTES] -o FILE|-\n       \
            lvmsync-rs send [OPTIONS] --thin-metadata PATH --thin1 ID --thin2 ID --data-source PATH -o FILE|-",
        after_help = "The changed extents come from the snapshot's COW table, or for a thin snapshot \
            from the pool's metadata; their data from the \
            origin (or --data-source), read now.\n\
            Every record carries checksums and the stream ends with an END record, so \
            `apply` notices any damage or truncation.\n\n\
            Examples:\n  lvmsync-rs send vg/root-snap -o root.lvd\n  \
            lvmsync-rs send vg/root-snap --data-source /dev/vg/root-snap2 -o - | ssh backup lvmsync-rs apply - /dev/vg/root-copy\n  \
            lvmsync-rs send --cow cow.img --data-source new.img -o delta.lvd"
    )]
    Send(commands::send::Args),
    /// Replay a delta on the backup copy, checking every record before writing it
    #[command(
        after_help = "DELTA may be `-` for stdin. DEST is a regular file (extended to the origin's \
            size when shorter) or a block device (at least the origin's size).\n\
            A damaged or truncated delta stops the apply before the bad record; applying an \
            intact copy of the whole delta again completes the job.\n\n\
            Examples:\n  lvmsync-rs apply root.lvd /dev/vg/root-copy\n  \
            lvmsync-rs apply --snapback undo.lvd root.lvd copy.img"
    )]
    Apply(commands::apply::Args),
    /// Send the changes since SNAPSHOT was taken to DEST and apply them there, over ssh
    #[command(
        override_usage = "lvmsync-rs sync [OPTIONS] SNAPSHOT DEST\n       \
            lvmsync-rs sync --full [OPTIONS] SOURCE DEST\n       \
            lvmsync-rs sync [OPTIONS] --cow PATH --data-source PATH DEST\n       \
            lvmsync-rs sync [OPTIONS] --thin-metadata PATH --thin1 ID --thin2 ID --data-source PATH DEST\n       \
            lvmsync-rs SNAPSHOT DEST",
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
    Sync(commands::sync::Args),
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
            lvmsync-rs backup --snapshot-size 5G vg/data /srv/data.img --create\n  \
            lvmsync-rs backup -n vg/root backup:/dev/vg/root-copy\n  \
            lvmsync-rs backup -q --config /etc/lvmsync-rs/backup.toml"
    )]
    Backup(commands::backup::Args),
    /// Compare SRC and DEST block by block (DEST here or over ssh); with
    /// --repair, send the blocks that differ
    #[command(
        override_usage = "lvmsync-rs verify [OPTIONS] SRC DEST",
        mut_arg("timeout", |a| a.help(
            "How long to wait (90, 90s, 5m, 1h; a plain number is seconds) for the remote to \
            log in, open DEST and answer; with --repair, also for it to take more of the \
            repair delta, and to say it is alive while it syncs DEST"
        )),
        after_help = "SRC is a block device, an LV or snapshot (vg/lv means /dev/vg/lv), or an \
            image file. DEST is a local \
            PATH or [user@]host:PATH (hashed on that host by `lvmsync-rs verify`, run through \
            ssh; only the block hashes cross the network).\n\
            Both sides read their copy once, sequentially, and hash blocks of --block-size \
            bytes with XXH3-128; the ranges that differ are printed, joined when adjacent. \
            Copies of different sizes differ by the tail of the longer one.\n\n\
            Exit status: 0 when the copies are identical (or were made so by --repair), 3 when \
            they differ; see lvmsync-rs --help for the others.\n\n\
            Examples:\n  lvmsync-rs verify vg/root-snap backup:/dev/vg/root-copy\n  \
            lvmsync-rs verify --json --block-size 4M disk.img copy.img\n  \
            lvmsync-rs verify --repair -e 'ssh -p 2222' vg/root-snap root@backup:/srv/root.img"
    )]
    Verify(commands::verify::Args),
    /// Show what a copy holds (here or over ssh), without changing it;
    /// with --origin, what the next backup would do
    #[command(
        after_help = "Says which point in time DEST holds and since when, a transfer left partway             (which the same sync or backup resumes), whether another program is writing it, and             what uses a block device. With --origin VG/LV, also what `backup VG/LV DEST` would do             now (the same as `backup --dry-run`). Nothing is opened for writing and nothing is             locked.

            Examples:
  lvmsync-rs status /srv/copies/root.img
              lvmsync-rs status --json backup:/dev/vg/root-copy
              lvmsync-rs status --origin vg/root backup:/dev/vg/root-copy"
    )]
    Status(commands::status::Args),
    /// Show what a delta holds and check it, without writing anything
    #[command(
        after_help = "DELTA may be `-` for stdin. Exits 5 if the delta is damaged or \
        incomplete, after showing what could be read."
    )]
    Inspect(commands::inspect::Args),
    /// Restore a point in time of a volume from an archive onto a device
    /// or file
    #[command(
        after_help = "Each byte needed is read once: for every extent, from the newest delta up to the \
            point that wrote it. Every record is checked before it is written. When DEST's state \
            says it holds another point of the same volume, only what differs is restored.\n\n\
            Examples:\n  lvmsync-rs restore /srv/archive db1/vg0/data /dev/vg0/data-restored\n  \
            lvmsync-rs restore s3://backups/lvm db1/vg0/data@12 data.img --create"
    )]
    Restore(commands::restore::Args),
    /// List, check and prune an archive of points in time
    #[command(subcommand)]
    Archive(commands::archive::Args),
    /// Make a key file for encrypted deltas
    #[command(
        subcommand,
        after_help = "Examples:\n  lvmsync-rs key new /root/lvmsync.key\n  \
            lvmsync-rs send --encrypt --key-file /root/lvmsync.key vg/root-snap -o root.lvd"
    )]
    Key(commands::key::Args),
    /// The far end for a backup host's authorized_keys: only the far ends
    /// of sync, backup and verify, only on paths under --restrict-to
    #[command(
        after_help = "Put it in the backup host's ~/.ssh/authorized_keys, on the line of the sending \
            host's key; sshd then runs it whatever the client asks, and hands what the client \
            asked for over in SSH_ORIGINAL_COMMAND:\n\n  \
            command=\"lvmsync-rs serve --restrict-to /dev/backupvg --restrict-to /srv/copies\",restrict ssh-ed25519 AAAA... root@source\n\n\
            Only `apply --remote` (sync and backup), `verify --remote-side` (verify) and \
            `status --remote-side` (status, dry runs) are run, \
            and only on a regular file whose real path is under a prefix, or a block device named \
            under a prefix in /dev. Anything else is refused with one line."
    )]
    Serve(commands::serve::Args),
    /// Print the shell completion script for bash, zsh or fish on stdout
    #[command(after_help = "Examples:\n  \
            lvmsync-rs completions bash > /etc/bash_completion.d/lvmsync-rs\n  \
            lvmsync-rs completions zsh > /usr/local/share/zsh/site-functions/_lvmsync-rs\n  \
            lvmsync-rs completions fish > /etc/fish/completions/lvmsync-rs.fish")]
    Completions(commands::man::CompletionArgs),
    /// Write the manual pages: lvmsync-rs.1 and one page per subcommand
    #[command(
        after_help = "Without DIR, the main page (lvmsync-rs.1) is printed on stdout. With DIR \
            (created if missing), lvmsync-rs.1 and a page per subcommand (lvmsync-rs-sync.1, \
            lvmsync-rs-archive-prune.1, ...) are written there, each replaced whole.\n\n\
            Examples:\n  lvmsync-rs man | man -l -\n  \
            lvmsync-rs man /usr/local/share/man/man1"
    )]
    Man(commands::man::ManArgs),
}

/// The text after the options in `lvmsync-rs --help`: the shorthand for
/// sync, the exit statuses, and what `--json` prints on failure.
fn after_help() -> String {
    let mut text = format!("{SHORTHAND}\n\nExit status, and error_kind with --json:\n");
    for (code, kind, what) in commands::man::exit_statuses() {
        text.push_str(&format!("  {code}  {:<12} {what}\n", kind.unwrap_or("")));
    }
    text.push('\n');
    text.push_str(JSON_FAILURE);
    text
}

const SHORTHAND: &str =
    "`lvmsync-rs SNAPSHOT [user@]host:DEST` is short for `lvmsync-rs sync SNAPSHOT [user@]host:DEST`.";

const JSON_FAILURE: &str = "With --json, a failure prints {\"result\": \"failed\", \"error\", \
    \"error_kind\", \"exit_code\"} on stdout.";

/// A first argument that is neither a subcommand nor an option, nor a
/// snapshot that exists, but a subcommand mistyped.
struct Typo {
    word: String,
    command: String,
}

/// `lvmsync-rs SNAPSHOT DEST` is `lvmsync-rs sync SNAPSHOT DEST`; a first
/// argument that reads as a mistyped subcommand is refused instead.
fn with_subcommand(mut args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, Typo> {
    let mut names: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    names.push("help".into());
    let implicit = match args.get(1).and_then(|a| a.to_str()) {
        Some("-h" | "--help" | "-V" | "--version") => false,
        Some(a) if names.iter().any(|n| n == a) => false,
        Some(a) => {
            if let Some(command) = mistyped(a, &names) {
                return Err(Typo {
                    word: a.to_string(),
                    command,
                });
            }
            true
        }
        None => args.len() > 1,
    };
    if implicit {
        args.insert(1, "sync".into());
    }
    Ok(args)
}

/// The subcommand `word` is a typo of: a word with no `/` or `:` (which a
/// snapshot or DEST could have), not an option, naming no file here nor
/// device-mapper device, within an edit or two of a subcommand's name.
fn mistyped(word: &str, names: &[String]) -> Option<String> {
    if word.is_empty() || word.starts_with('-') || word.contains(['/', ':']) {
        return None;
    }
    let path = std::path::Path::new(word);
    if path.exists() || std::path::Path::new("/dev/mapper").join(word).exists() {
        return None;
    }
    let word = word.to_lowercase();
    let close = |d: usize| d <= 1 || (d == 2 && word.chars().count() >= 5);
    names
        .iter()
        .map(|n| (edit_distance(&word, n), n))
        .filter(|&(d, _)| close(d))
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n.clone())
}

/// The edits (a character inserted, removed, replaced, or two neighbours
/// swapped) that turn `a` into `b`: the optimal string alignment distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

impl Command {
    /// The subcommand's name, as `--json` output names it.
    fn name(&self) -> &'static str {
        match self {
            Command::List(_) => "list",
            Command::Send(_) => "send",
            Command::Apply(_) => "apply",
            Command::Sync(_) => "sync",
            Command::Backup(_) => "backup",
            Command::Verify(_) => "verify",
            Command::Inspect(_) => "inspect",
            Command::Status(_) => "status",
            Command::Restore(_) => "restore",
            Command::Archive(_) => "archive",
            Command::Key(_) => "key",
            Command::Serve(_) => "serve",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
        }
    }

    /// Whether `--json` was asked for, and whether the command then prints
    /// its own object on failure too (with what it did before it failed).
    fn json(&self) -> (bool, bool) {
        match self {
            Command::List(a) => (a.json, false),
            Command::Send(a) => (a.json, false),
            Command::Apply(a) => (a.json, false),
            Command::Sync(a) => (a.ship.json, true),
            Command::Backup(a) => (a.ship.json, true),
            Command::Verify(a) => (a.json, false),
            Command::Inspect(a) => (a.json, true),
            Command::Status(a) => (a.json, false),
            Command::Restore(a) => (a.json, false),
            Command::Archive(a) => (a.json(), false),
            Command::Key(_) | Command::Serve(_) | Command::Completions(_) | Command::Man(_) => {
                (false, false)
            }
        }
    }
}

/// How a command ended without an error.
enum Done {
    Ok,
    /// The copies differ (verify), or the archive is damaged (archive
    /// check): a result, not an error.
    Differ,
    /// Failures that were reported as they came (backup --config), with
    /// the exit status they add up to.
    Reported(u8),
}

fn main() -> ExitCode {
    let args = match with_subcommand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(Typo { word, command }) => {
            eprintln!(
                "lvmsync-rs: error: unknown command '{}'; did you mean '{command}'?",
                lvmsync::units::printable(&word)
            );
            return ExitCode::from(Kind::Usage.exit_code());
        }
    };
    let cli = Cli::parse_from(args);
    let name = cli.command.name();
    let (json, prints_own) = cli.command.json();
    let as_done =
        |same: Result<bool, Error>| same.map(|same| if same { Done::Ok } else { Done::Differ });
    let result = match cli.command {
        Command::List(args) => commands::list::run(args).map(|()| Done::Ok),
        Command::Send(args) => commands::send::run(args).map(|()| Done::Ok),
        Command::Apply(args) => commands::apply::run(args).map(|()| Done::Ok),
        Command::Sync(args) => commands::sync::run(args).map(|()| Done::Ok),
        Command::Backup(args) => commands::backup::run(args).map(|code| match code {
            0 => Done::Ok,
            code => Done::Reported(code),
        }),
        Command::Inspect(args) => commands::inspect::run(args).map(|()| Done::Ok),
        Command::Status(args) => commands::status::run(args).map(|()| Done::Ok),
        Command::Verify(args) => as_done(commands::verify::run(args)),
        Command::Restore(args) => commands::restore::run(args).map(|()| Done::Ok),
        Command::Archive(args) => as_done(commands::archive::run(args)),
        Command::Key(args) => commands::key::run(args).map(|()| Done::Ok),
        Command::Serve(args) => as_done(commands::serve::run(args)),
        Command::Completions(args) => commands::man::completions(args).map(|()| Done::Ok),
        Command::Man(args) => commands::man::man(args).map(|()| Done::Ok),
    };
    match result {
        Ok(Done::Ok) => ExitCode::SUCCESS,
        Ok(Done::Differ) => ExitCode::from(Kind::Differ.exit_code()),
        Ok(Done::Reported(code)) => ExitCode::from(code),
        Err(e) if e.is_broken_pipe() => ExitCode::from(141),
        Err(e) => {
            let kind = e.kind();
            if json && !prints_own {
                commands::print_failure(name, &e);
            }
            report(&e);
            ExitCode::from(kind.exit_code())
        }
    }
}

fn report(e: &Error) {
    // One line, whatever the message's sources contain, and nothing a
    // terminal would act on.
    let text = e.to_string().replace('\n', " ");
    eprintln!("lvmsync-rs: error: {}", lvmsync::units::printable(&text));
}
