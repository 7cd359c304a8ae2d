//! `lvmsync-rs list`: the byte ranges of the origin that changed since the
//! snapshot was taken, read from the snapshot's COW table, or for a thin
//! snapshot from its pool's metadata.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::blockdev::Source;
use crate::cow::{self, CowTable};
use crate::extents::{Extent, ExtentSet};
use crate::lvm::{self, Found, Snapshot, ThinSnapshot, ThinVolume};
use crate::send::Changes;
use crate::thin::{self, MetadataSnap, ThinDiff};
use crate::units::human;
use crate::Error;

/// Where the table comes from.
pub enum Target {
    /// An LVM (or plain dm) snapshot, classic or thin, as the user named it.
    Snapshot(String),
    /// A COW device or an image of one, with the origin size if known.
    Cow {
        path: PathBuf,
        origin_size: Option<u64>,
    },
    /// A thin pool's metadata (an image, or a metadata device no pool is
    /// using) and the two thin device ids to compare, without LVM.
    ThinMetadata {
        path: PathBuf,
        thin1: u64,
        thin2: u64,
        origin_size: Option<u64>,
    },
}

pub struct Args {
    pub target: Target,
    pub json: bool,
}

/// What was listed, and from where.
pub enum Listing {
    Cow(Box<CowListing>),
    Thin(Box<ThinListing>),
}

/// The changes of a classic snapshot, or of a COW image.
pub struct CowListing {
    pub snapshot: Option<Snapshot>,
    pub cow_path: PathBuf,
    pub origin_size: Option<u64>,
    pub table: CowTable,
}

/// The changes between two thin devices of one pool.
pub struct ThinListing {
    /// The thin snapshot, when named through LVM.
    pub snapshot: Option<ThinSnapshot>,
    /// The thin volume it was compared with, when not its origin (a later
    /// snapshot given as the data source).
    pub compared: Option<ThinVolume>,
    /// The metadata read.
    pub metadata: PathBuf,
    pub thin1: u64,
    pub thin2: u64,
    pub origin_size: Option<u64>,
    /// thin_delta's report: block size, blocks of each kind.
    pub diff: ThinDiff,
    /// Changed ranges whose new data is to be read.
    pub data: ExtentSet,
    /// Changed ranges that read as zeroes now (unmapped in the compared
    /// device).
    pub zero: ExtentSet,
}

impl Listing {
    /// The origin's size, when known.
    pub fn origin_size(&self) -> Option<u64> {
        match self {
            Listing::Cow(l) => l.origin_size,
            Listing::Thin(l) => l.origin_size,
        }
    }

    /// The unit of change: the COW chunk or the pool's data block, in bytes.
    pub fn chunk_size(&self) -> u64 {
        match self {
            Listing::Cow(l) => l.table.chunk_size,
            Listing::Thin(l) => l.diff.block_size(),
        }
    }

    /// What to send.
    pub fn changes(&self) -> Changes<'_> {
        match self {
            Listing::Cow(l) => Changes::read(l.table.extents.as_slice()),
            Listing::Thin(l) => Changes {
                read: l.data.as_slice(),
                zero: l.zero.as_slice(),
            },
        }
    }

    /// The snapshot, the COW image or the metadata, as messages name it.
    pub fn name(&self) -> String {
        match self {
            Listing::Cow(l) => l
                .snapshot
                .as_ref()
                .map(Snapshot::display_name)
                .unwrap_or_else(|| l.cow_path.display().to_string()),
            Listing::Thin(l) => l
                .snapshot
                .as_ref()
                .map(ThinSnapshot::display_name)
                .unwrap_or_else(|| l.metadata.display().to_string()),
        }
    }
}

/// Reads the change table that `target` names.
pub fn read(target: &Target) -> Result<Listing, Error> {
    read_with(target, None)
}

/// Reads the change table that `target` names. A thin snapshot is compared
/// with `data_source` when that is a thin volume of the same pool (see
/// [`lvm::thin_data_source`]), else with its origin.
pub fn read_with(target: &Target, data_source: Option<&Path>) -> Result<Listing, Error> {
    match target {
        Target::Snapshot(spec) => match lvm::find(spec)? {
            Found::Classic(snap) => {
                let path = snap.cow.path();
                let size = snap.origin_size;
                let table = read_cow(&path, Some(size))?;
                Ok(Listing::Cow(Box::new(CowListing {
                    snapshot: Some(*snap),
                    cow_path: path,
                    origin_size: Some(size),
                    table,
                })))
            }
            Found::Thin(snap) => {
                let compared = match data_source {
                    Some(path) => lvm::thin_data_source(&snap, path)?,
                    None => None,
                };
                read_thin(*snap, compared).map(|l| Listing::Thin(Box::new(l)))
            }
        },
        Target::Cow { path, origin_size } => {
            let table = read_cow(path, *origin_size)?;
            Ok(Listing::Cow(Box::new(CowListing {
                snapshot: None,
                cow_path: path.clone(),
                origin_size: *origin_size,
                table,
            })))
        }
        Target::ThinMetadata {
            path,
            thin1,
            thin2,
            origin_size,
        } => {
            let diff = thin::thin_delta(path, *thin1, *thin2, false)?;
            Ok(Listing::Thin(Box::new(thin_listing(
                None,
                None,
                path.clone(),
                (*thin1, *thin2),
                *origin_size,
                diff,
            ))))
        }
    }
}

/// Compares thin snapshot `snap` with `compared` (its origin when none)
/// through the pool's metadata snapshot, reserved for the time thin_delta
/// runs.
fn read_thin(snap: ThinSnapshot, compared: Option<ThinVolume>) -> Result<ThinListing, Error> {
    let against = compared.as_ref().unwrap_or(&snap.origin);
    let ids = (snap.snapshot.thin_id, against.thin_id);
    let origin_size = against.size;
    let metadata = snap.pool.metadata.path();
    let reservation = MetadataSnap::reserve(&snap.pool.device.name)?;
    let diff = thin::thin_delta(&metadata, ids.0, ids.1, true);
    let released = reservation.release();
    let diff = diff?;
    released?;
    Ok(thin_listing(
        Some(snap),
        compared,
        metadata,
        ids,
        Some(origin_size),
        diff,
    ))
}

fn thin_listing(
    snapshot: Option<ThinSnapshot>,
    compared: Option<ThinVolume>,
    metadata: PathBuf,
    (thin1, thin2): (u64, u64),
    origin_size: Option<u64>,
    diff: ThinDiff,
) -> ThinListing {
    let (data, zero) = diff.extents(origin_size);
    ThinListing {
        snapshot,
        compared,
        metadata,
        thin1,
        thin2,
        origin_size,
        diff,
        data,
        zero,
    }
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
    kind: &'static str,
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

#[derive(Serialize)]
struct JsonThinBlocks {
    same: u64,
    different: u64,
    left_only: u64,
    right_only: u64,
}

#[derive(Serialize)]
struct JsonThinListing<'a> {
    kind: &'static str,
    snapshot: Option<String>,
    origin: Option<String>,
    lv_uuid: Option<&'a str>,
    compared: Option<String>,
    pool: Option<String>,
    pool_uuid: Option<&'a str>,
    metadata: String,
    thin_id: u64,
    compared_id: u64,
    block_size: u64,
    chunk_size: u64,
    origin_size: Option<u64>,
    blocks: JsonThinBlocks,
    extent_count: usize,
    changed_bytes: u64,
    zero_bytes: u64,
    extents: &'a [Extent],
    zero_extents: &'a [Extent],
}

pub fn run(args: Args) -> Result<(), Error> {
    let listing = read(&args.target)?;
    let stdout = io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 16, stdout);
    match (&listing, args.json) {
        (Listing::Cow(l), true) => write_json(l, &mut out),
        (Listing::Cow(l), false) => write_text(l, &mut out),
        (Listing::Thin(l), true) => write_thin_json(l, &mut out),
        (Listing::Thin(l), false) => write_thin_text(l, &mut out),
    }
    .and_then(|_| out.flush())
    .map_err(Error::Output)
}

fn write_json(l: &CowListing, out: &mut impl Write) -> io::Result<()> {
    let t = &l.table;
    let snap = l.snapshot.as_ref();
    let doc = JsonListing {
        kind: if snap.is_some() { "classic" } else { "image" },
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

fn write_thin_json(l: &ThinListing, out: &mut impl Write) -> io::Result<()> {
    let all = l.data.union(&l.zero);
    let snap = l.snapshot.as_ref();
    let [same, different, left_only, right_only] = l.diff.blocks;
    let doc = JsonThinListing {
        kind: "thin",
        snapshot: snap.map(ThinSnapshot::display_name),
        origin: snap.map(|s| s.origin.display_name()),
        lv_uuid: snap
            .and_then(|s| s.snapshot.lv.as_ref())
            .map(|lv| lv.lv_uuid.as_str()),
        compared: snap.map(|s| l.compared.as_ref().unwrap_or(&s.origin).display_name()),
        pool: snap.map(|s| s.pool.display_name()),
        pool_uuid: snap
            .and_then(|s| s.pool.lv.as_ref())
            .map(|lv| lv.lv_uuid.as_str()),
        metadata: l.metadata.display().to_string(),
        thin_id: l.thin1,
        compared_id: l.thin2,
        block_size: l.diff.block_size(),
        chunk_size: l.diff.block_size(),
        origin_size: l.origin_size,
        blocks: JsonThinBlocks {
            same,
            different,
            left_only,
            right_only,
        },
        extent_count: all.len(),
        changed_bytes: all.total_bytes(),
        zero_bytes: l.zero.total_bytes(),
        extents: all.as_slice(),
        zero_extents: l.zero.as_slice(),
    };
    serde_json::to_writer(&mut *out, &doc)?;
    writeln!(out)
}

fn write_thin_text(l: &ThinListing, out: &mut impl Write) -> io::Result<()> {
    let bs = l.diff.block_size();
    match &l.snapshot {
        Some(s) => {
            let against = l.compared.as_ref().unwrap_or(&s.origin);
            writeln!(
                out,
                "snapshot:    {} (thin, id {})",
                s.display_name(),
                s.snapshot.thin_id
            )?;
            writeln!(
                out,
                "compared:    {} (id {}{})",
                against.display_name(),
                against.thin_id,
                if l.compared.is_some() {
                    ", a later snapshot"
                } else {
                    ", its origin"
                }
            )?;
            writeln!(out, "pool:        {}", s.pool.display_name())?;
        }
        None => writeln!(out, "thin ids:    {} compared with {}", l.thin1, l.thin2)?,
    }
    writeln!(out, "metadata:    {}", l.metadata.display())?;
    writeln!(out, "block size:  {bs} ({})", human(bs))?;
    match l.origin_size {
        Some(size) => writeln!(out, "origin size: {size} ({})", human(size))?,
        None => writeln!(
            out,
            "origin size: unknown (give --origin-size to clip the last block to it)"
        )?,
    }
    let [same, different, left_only, right_only] = l.diff.blocks;
    writeln!(
        out,
        "blocks:      {different} different, {right_only} mapped in the newer device only, {left_only} in the snapshot only (read as zeroes now), {same} the same"
    )?;
    let all = l.data.union(&l.zero);
    let changed = all.total_bytes();
    let share = share_of_origin(changed, l.origin_size);
    writeln!(
        out,
        "changed:     {} bytes ({}{share}) in {} extent{}; {} bytes of it read as zeroes now",
        changed,
        human(changed),
        all.len(),
        if all.len() == 1 { "" } else { "s" },
        l.zero.total_bytes()
    )?;
    let changes = Changes {
        read: l.data.as_slice(),
        zero: l.zero.as_slice(),
    };
    if changes.total_bytes() > 0 {
        writeln!(out)?;
        writeln!(out, "{:>20} {:>20}  now", "offset", "length")?;
        for (e, zero) in changes.in_order() {
            let now = if zero { "zeroes" } else { "data" };
            writeln!(out, "{:>20} {:>20}  {now}", e.offset, e.length)?;
        }
    }
    Ok(())
}

fn write_text(l: &CowListing, out: &mut impl Write) -> io::Result<()> {
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
    let share = share_of_origin(changed, l.origin_size);
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

/// `, N.NN% of the origin` when the origin's size is known, else nothing.
fn share_of_origin(changed: u64, origin_size: Option<u64>) -> String {
    match origin_size {
        Some(size) if size > 0 => format!(
            ", {:.2}% of the origin",
            changed as f64 * 100.0 / size as f64
        ),
        _ => String::new(),
    }
}
