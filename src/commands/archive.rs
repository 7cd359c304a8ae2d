//! `lvmsync-rs archive list|check|prune ARCHIVE`: what an archive holds,
//! whether it is whole, and retention (see [`lvmsync::archive`]).

use std::io::Write;

use serde::Serialize;

use lvmsync::archive::catalog::Catalog;
use lvmsync::archive::prune::{self, Keep};
use lvmsync::archive::{check, Archive};
use lvmsync::units::{counted, human};
use lvmsync::Error;

use super::{usage_error, StoreArgs};

#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Make a new archive; with --encryption, one whose objects are all
    /// encrypted with a new random key
    #[command(
        after_help = "With --encryption, the archive's key is kept wrapped by a passphrase \
        in the archive (--passphrase-file FILE, --passphrase-fd N or LVMSYNC_PASSPHRASE), \
        in a new key file (--key-file FILE), or both; keep a copy of either away from the \
        archive: without one, nothing in it can be read.\n\n\
        Examples:\n  lvmsync-rs archive init --encryption --key-file /root/archive.key s3://backups/lvm\n  \
        LVMSYNC_PASSPHRASE=... lvmsync-rs archive init --encryption /srv/archive"
    )]
    Init {
        /// The archive: a directory, file:///PATH, or s3://BUCKET[/PREFIX]
        archive: String,
        /// Encrypt every object of the archive
        #[arg(long)]
        encryption: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// An encrypted archive's key
    #[command(subcommand)]
    Key(KeyArgs),
    /// The volumes an archive holds and their points in time
    List {
        /// The archive: a directory, file:///PATH, or s3://BUCKET[/PREFIX]
        archive: String,
        /// Only this volume
        volume: Option<String>,
        /// Print one JSON object instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check that every object is there and every chain whole; with
    /// --read-data, every checksum
    Check {
        archive: String,
        /// Only this volume
        volume: Option<String>,
        /// Read every delta through and check every record, END record and
        /// digest
        #[arg(long)]
        read_data: bool,
        #[arg(long)]
        json: bool,
        /// Print only the volumes that are damaged, and their problems
        #[arg(short, long, conflicts_with = "json")]
        quiet: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Drop points by retention rules; the deltas of dropped points are
    /// merged into the next kept one
    Prune {
        archive: String,
        /// Only this volume (default: every volume)
        volume: Option<String>,
        /// Keep the N latest points
        #[arg(long, value_name = "N")]
        keep_last: Option<u64>,
        /// Keep the latest point of each of the N latest days that have one
        #[arg(long, value_name = "N")]
        keep_daily: Option<u64>,
        /// Keep the latest point of each of the N latest weeks that have one
        #[arg(long, value_name = "N")]
        keep_weekly: Option<u64>,
        /// Keep the latest point of each of the N latest months that have one
        #[arg(long, value_name = "N")]
        keep_monthly: Option<u64>,
        /// Say what would be kept and dropped, change nothing
        #[arg(short = 'n', long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Print nothing unless something fails
        #[arg(short, long, conflicts_with_all = ["json", "dry_run"])]
        quiet: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `archive key ...`
#[derive(clap::Subcommand, Debug)]
pub enum KeyArgs {
    /// Write an encrypted archive's key to a new key file (-o FILE), or to
    /// stdout, for your safe; the archive is opened with its passphrase
    /// (or a key file)
    Export {
        archive: String,
        /// The new key file (created, mode 0600; never overwritten)
        #[arg(short, long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl Args {
    /// Whether `--json` was asked for.
    pub fn json(&self) -> bool {
        match self {
            Args::List { json, .. }
            | Args::Check { json, .. }
            | Args::Prune { json, .. }
            | Args::Init { json, .. } => *json,
            Args::Key(_) => false,
        }
    }
}

#[derive(Serialize)]
struct Listed {
    volume: String,
    origin: String,
    host: String,
    origin_size: u64,
    points: Vec<ListedPoint>,
}

#[derive(Serialize)]
struct ListedPoint {
    number: u64,
    time: String,
    snapshot: String,
    kind: String,
    base: Option<u64>,
    delta_bytes: u64,
    data_bytes: u64,
    zero_bytes: u64,
}

fn listed(c: &Catalog) -> Listed {
    Listed {
        volume: c.volume.clone(),
        origin: c.origin.name.clone(),
        host: c.origin.host.clone(),
        origin_size: c.origin_size,
        points: c
            .points
            .iter()
            .map(|p| ListedPoint {
                number: p.number,
                time: p.time.clone(),
                snapshot: p.point.snapshot.clone(),
                kind: p.delta.kind.clone(),
                base: p.delta.base,
                delta_bytes: p.delta.bytes,
                data_bytes: p.delta.data_bytes,
                zero_bytes: p.delta.zero_bytes,
            })
            .collect(),
    }
}

/// The volumes named, or all.
fn volumes(archive: &Archive, volume: Option<String>) -> Result<Vec<String>, Error> {
    Ok(match volume {
        Some(v) => vec![v],
        None => archive.volumes()?,
    })
}

/// Runs the subcommand; `Ok(false)` when a check found problems.
pub fn run(args: Args) -> Result<bool, Error> {
    match args {
        Args::Init {
            archive,
            encryption,
            json,
            store,
        } => {
            let secrets = store.keys.secrets();
            let keys = if encryption {
                let passphrase = secrets.passphrase()?;
                if passphrase.is_none() && store.keys.key_file.is_none() {
                    usage_error(
                        "archive init",
                        "--encryption needs somewhere to keep the key: --key-file FILE (a new file), or a passphrase (--passphrase-file FILE, --passphrase-fd N or LVMSYNC_PASSPHRASE), or both",
                    );
                }
                Some(lvmsync::archive::NewKeys {
                    key_file: store.keys.key_file.clone(),
                    passphrase,
                })
            } else {
                if store.keys.key_file.is_some() || store.keys.passphrase_named() {
                    usage_error(
                        "archive init",
                        "a key file or passphrase is for --encryption: give --encryption to encrypt the archive",
                    );
                }
                None
            };
            let (location, key_id) = Archive::init(&archive, &store.options(), keys.as_ref())?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"command": "archive init", "result": "ok", "archive": location, "encrypted": key_id.is_some(), "key_id": key_id})
                );
            } else if let (Some(id), Some(keys)) = (&key_id, &keys) {
                let mut kept = Vec::new();
                if keys.passphrase.is_some() {
                    kept.push("wrapped by the passphrase in the archive".to_string());
                }
                if let Some(p) = &keys.key_file {
                    kept.push(format!("in {}", p.display()));
                }
                eprintln!(
                    "lvmsync-rs archive init: {location} is a new encrypted archive; its key (id {id}) is kept {}. Keep a copy of the key file or the passphrase away from the archive: without one, nothing in it can be read",
                    kept.join(" and ")
                );
            } else {
                eprintln!("lvmsync-rs archive init: {location} is a new archive (not encrypted)");
            }
            Ok(true)
        }
        Args::Key(KeyArgs::Export {
            archive,
            output,
            store,
        }) => {
            let archive = Archive::open(&archive, &store.options(), false)?;
            let Some(key) = archive.key() else {
                return Err(Error::Usage(format!(
                    "{}: not an encrypted archive: it has no key",
                    archive.location()
                )));
            };
            match output {
                Some(path) => {
                    lvmsync::crypt::write_key_file(&path, key)?;
                    eprintln!(
                        "lvmsync-rs archive key export: {} holds the key of {} (id {}); keep it away from the archive",
                        path.display(),
                        archive.location(),
                        lvmsync::crypt::hex(&key.id())
                    );
                }
                None => {
                    let text = lvmsync::crypt::key_file_text(key);
                    let mut o = std::io::stdout().lock();
                    o.write_all(text.as_bytes())
                        .and_then(|()| o.flush())
                        .map_err(Error::Output)?;
                }
            }
            Ok(true)
        }
        Args::List {
            archive,
            volume,
            json,
            store,
        } => {
            let archive = Archive::open(&archive, &store.options(), false)?;
            let mut out = Vec::new();
            for v in volumes(&archive, volume)? {
                out.push(listed(&lvmsync::archive::restore::catalog_of(
                    &archive, &v,
                )?));
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "archive": archive.location(), "volumes": out })
                );
                return Ok(true);
            }
            let mut o = std::io::stdout().lock();
            let print = |o: &mut std::io::StdoutLock| -> std::io::Result<()> {
                writeln!(o, "archive: {}", archive.location())?;
                if out.is_empty() {
                    writeln!(o, "no volumes")?;
                }
                for v in &out {
                    writeln!(o)?;
                    writeln!(
                        o,
                        "{}: {} on {}, {} ({}), {} point{}",
                        v.volume,
                        v.origin,
                        v.host,
                        v.origin_size,
                        human(v.origin_size),
                        v.points.len(),
                        if v.points.len() == 1 { "" } else { "s" }
                    )?;
                    writeln!(
                        o,
                        "{:>8}  {:<20}  {:<11}  {:>12}  snapshot",
                        "point", "time", "kind", "stored"
                    )?;
                    for p in &v.points {
                        writeln!(
                            o,
                            "{:>8}  {:<20}  {:<11}  {:>12}  {}",
                            p.number,
                            p.time,
                            p.kind,
                            human(p.delta_bytes),
                            p.snapshot
                        )?;
                    }
                }
                Ok(())
            };
            print(&mut o).map_err(Error::Output)?;
            Ok(true)
        }
        Args::Check {
            archive,
            volume,
            read_data,
            json,
            quiet,
            store,
        } => {
            let archive = Archive::open(&archive, &store.options(), false)?;
            let mut all = Vec::new();
            for v in volumes(&archive, volume)? {
                all.push(check::check(&archive, &v, read_data)?);
            }
            let whole = all.iter().all(|c| c.problems.is_empty());
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "archive": archive.location(), "whole": whole, "volumes": all })
                );
            } else {
                for c in all.iter().filter(|c| !quiet || !c.problems.is_empty()) {
                    let read = if read_data {
                        format!(
                            ", {} ({}) read and checked",
                            counted(c.deltas_read, "delta"),
                            human(c.bytes_read)
                        )
                    } else {
                        String::new()
                    };
                    let verdict = if c.problems.is_empty() {
                        "whole"
                    } else {
                        "DAMAGED"
                    };
                    println!(
                        "{}: {}{read}, {} no catalogue names: {verdict}",
                        c.volume,
                        counted(c.points, "point"),
                        counted(c.unnamed_objects, "object")
                    );
                    for p in &c.problems {
                        println!("  {}", lvmsync::units::printable(p));
                    }
                }
                if all.is_empty() && !quiet {
                    println!("{}: no volumes", archive.location());
                }
            }
            Ok(whole)
        }
        Args::Prune {
            archive,
            volume,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            dry_run,
            json,
            quiet,
            store,
        } => {
            let keep = Keep {
                last: keep_last,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
            };
            if keep.is_empty() {
                usage_error("archive prune", "say what to keep: --keep-last N, --keep-daily N, --keep-weekly N or --keep-monthly N");
            }
            let archive = Archive::open(&archive, &store.options(), false)?;
            let mut all = Vec::new();
            for v in volumes(&archive, volume)? {
                all.push(prune::prune(&archive, &v, &keep, dry_run)?);
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "archive": archive.location(), "dry_run": dry_run, "volumes": all })
                );
                return Ok(true);
            }
            if quiet {
                return Ok(true);
            }
            let list = |v: &[u64]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
                }
            };
            for p in &all {
                eprintln!(
                    "lvmsync-rs archive prune: {}: {}kept {}; dropped {}; merged into {}; {} → {} of deltas{}",
                    p.volume,
                    if dry_run { "would have " } else { "" },
                    list(&p.kept),
                    list(&p.dropped),
                    list(&p.merged),
                    human(p.bytes_before),
                    if dry_run { "?".to_string() } else { human(p.bytes_after) },
                    if dry_run {
                        String::new()
                    } else {
                        format!(
                            ", {} removed",
                            counted(p.removed_objects, "object")
                        )
                    }
                );
            }
            Ok(true)
        }
    }
}
