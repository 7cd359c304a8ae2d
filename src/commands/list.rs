//! `lvmsync-rs list`: the byte ranges of the origin that changed since the
//! snapshot was taken, read from the snapshot's COW table, or for a thin
//! snapshot from its pool's metadata.

use std::io::{self, BufWriter, Write};

use serde::Serialize;

use lvmsync::changes::{self, Changes, CowListing, Listing, ThinListing};
use lvmsync::extents::Extent;
use lvmsync::lvm::{Snapshot, ThinSnapshot};
use lvmsync::units::{counted, human};
use lvmsync::Error;

use super::ChangeArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub changes: ChangeArgs,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
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
    let source = args.changes.change_source("list", false, false);
    let listing = changes::read(&source, None)?;
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
        "changed:     {} bytes ({}{share}) in {}; {} bytes of it read as zeroes now",
        changed,
        human(changed),
        counted(all.len() as u64, "extent"),
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
        "table:       {} in {}",
        counted(t.exceptions, "entry"),
        counted(t.areas, "metadata area")
    )?;
    let changed = t.extents.total_bytes();
    let share = share_of_origin(changed, l.origin_size);
    writeln!(
        out,
        "changed:     {} bytes ({}{share}) in {}",
        changed,
        human(changed),
        counted(t.extents.len() as u64, "extent")
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
