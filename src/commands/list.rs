//! `lvmsync-rs list`: the byte ranges of the origin that changed since the
//! snapshot was taken, read from the snapshot's COW table.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::blockdev::Source;
use crate::cow::{self, CowTable};
use crate::extents::Extent;
use crate::lvm::{self, Snapshot};
use crate::units::human;
use crate::Error;

/// Where the table comes from.
pub enum Target {
    /// An LVM (or plain dm) snapshot, as the user named it.
    Snapshot(String),
    /// A COW device or an image of one, with the origin size if known.
    Cow {
        path: PathBuf,
        origin_size: Option<u64>,
    },
}

pub struct Args {
    pub target: Target,
    pub json: bool,
}

/// What was listed, and from where.
pub struct Listing {
    pub snapshot: Option<Snapshot>,
    pub cow_path: PathBuf,
    pub origin_size: Option<u64>,
    pub table: CowTable,
}

/// Reads the change table that `target` names.
pub fn read(target: &Target) -> Result<Listing, Error> {
    let (snapshot, cow_path, origin_size) = match target {
        Target::Snapshot(spec) => {
            let snap = lvm::find_snapshot(spec)?;
            let path = snap.cow.path();
            let size = snap.origin_size;
            (Some(snap), path, Some(size))
        }
        Target::Cow { path, origin_size } => (None, path.clone(), *origin_size),
    };
    let table = read_cow(&cow_path, origin_size)?;
    Ok(Listing {
        snapshot,
        cow_path,
        origin_size,
        table,
    })
}

fn read_cow(path: &Path, origin_size: Option<u64>) -> Result<CowTable, Error> {
    let shown = path.display().to_string();
    let source = Source::open(path).map_err(|source| Error::Open {
        path: shown.clone(),
        source,
    })?;
    cow::read_table(&source, source.size(), origin_size).map_err(|source| Error::Cow {
        path: shown,
        source,
    })
}

#[derive(Serialize)]
struct JsonListing<'a> {
    snapshot: Option<String>,
    origin: Option<String>,
    lv_uuid: Option<&'a str>,
    cow: String,
    cow_size: u64,
    chunk_size: u64,
    origin_size: Option<u64>,
    exceptions: u64,
    metadata_areas: u64,
    extent_count: usize,
    changed_bytes: u64,
    extents: &'a [Extent],
}

pub fn run(args: Args) -> Result<(), Error> {
    let listing = read(&args.target)?;
    let stdout = io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 16, stdout);
    if args.json {
        write_json(&listing, &mut out)
    } else {
        write_text(&listing, &mut out)
    }
    .and_then(|_| out.flush())
    .map_err(Error::Output)
}

fn write_json(l: &Listing, out: &mut impl Write) -> io::Result<()> {
    let t = &l.table;
    let snap = l.snapshot.as_ref();
    let doc = JsonListing {
        snapshot: snap.map(Snapshot::display_name),
        origin: snap.and_then(|s| {
            s.lv.as_ref()
                .filter(|lv| !lv.origin.is_empty())
                .map(|lv| format!("{}/{}", lv.vg_name, lv.origin))
        }),
        lv_uuid: snap
            .and_then(|s| s.lv.as_ref())
            .map(|lv| lv.lv_uuid.as_str()),
        cow: l.cow_path.display().to_string(),
        cow_size: t.cow_size,
        chunk_size: t.chunk_size,
        origin_size: l.origin_size,
        exceptions: t.exceptions,
        metadata_areas: t.areas,
        extent_count: t.extents.len(),
        changed_bytes: t.extents.total_bytes(),
        extents: t.extents.as_slice(),
    };
    serde_json::to_writer(&mut *out, &doc)?;
    writeln!(out)
}

fn write_text(l: &Listing, out: &mut impl Write) -> io::Result<()> {
    let t = &l.table;
    if let Some(s) = &l.snapshot {
        writeln!(out, "snapshot:    {}", s.display_name())?;
    }
    writeln!(
        out,
        "cow:         {} ({})",
        l.cow_path.display(),
        human(t.cow_size)
    )?;
    writeln!(
        out,
        "chunk size:  {} ({})",
        t.chunk_size,
        human(t.chunk_size)
    )?;
    match l.origin_size {
        Some(size) => writeln!(out, "origin size: {size} ({})", human(size))?,
        None => writeln!(
            out,
            "origin size: unknown (give --origin-size to check the table against it)"
        )?,
    }
    writeln!(
        out,
        "table:       {} entries in {} metadata area{}",
        t.exceptions,
        t.areas,
        if t.areas == 1 { "" } else { "s" }
    )?;
    let changed = t.extents.total_bytes();
    let share = match l.origin_size {
        Some(size) if size > 0 => format!(
            ", {:.2}% of the origin",
            changed as f64 * 100.0 / size as f64
        ),
        _ => String::new(),
    };
    writeln!(
        out,
        "changed:     {} bytes ({}{share}) in {} extent{}",
        changed,
        human(changed),
        t.extents.len(),
        if t.extents.len() == 1 { "" } else { "s" }
    )?;
    if !t.extents.is_empty() {
        writeln!(out)?;
        writeln!(out, "{:>20} {:>20}", "offset", "length")?;
        for e in t.extents.iter() {
            writeln!(out, "{:>20} {:>20}", e.offset, e.length)?;
        }
    }
    Ok(())
}
