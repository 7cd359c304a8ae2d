//! Where the list of changed extents comes from, without reading any data:
//! a classic snapshot's COW table, a thin snapshot's pool metadata (through
//! `thin_delta`, under a metadata snapshot reserved for the time it runs),
//! a COW image, or a thin metadata image; and the changes themselves, as
//! extents whose data is to be read and extents known to read as zeroes.

use std::path::{Path, PathBuf};

use crate::blockdev::Source;
use crate::cow::{self, CowTable};
use crate::extents::{Extent, ExtentSet};
use crate::lvm::{self, Found, Snapshot, ThinSnapshot, ThinVolume};
use crate::thin::{self, MetadataSnap, ThinDiff};
use crate::Error;

/// What the user named as the source of the change table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeSource {
    /// An LVM (or plain dm) snapshot, classic or thin, as the user named it.
    Snapshot(String),
    /// A COW device or an image of one, with the origin size if known.
    CowImage {
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

impl ChangeSource {
    /// The same source with the origin's size known (a COW or metadata
    /// image whose data source gives it).
    pub fn with_origin_size(&self, size: u64) -> ChangeSource {
        match self {
            ChangeSource::Snapshot(_) => self.clone(),
            ChangeSource::CowImage { path, origin_size } => ChangeSource::CowImage {
                path: path.clone(),
                origin_size: Some(origin_size.unwrap_or(size)),
            },
            ChangeSource::ThinMetadata {
                path,
                thin1,
                thin2,
                origin_size,
            } => ChangeSource::ThinMetadata {
                path: path.clone(),
                thin1: *thin1,
                thin2: *thin2,
                origin_size: Some(origin_size.unwrap_or(size)),
            },
        }
    }
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

    /// What changed.
    pub fn changes(&self) -> Changes<'_> {
        match self {
            Listing::Cow(l) => Changes::read(l.table.extents.as_slice()),
            Listing::Thin(l) => Changes {
                read: l.data.as_slice(),
                zero: l.zero.as_slice(),
            },
        }
    }

    /// What changed, taken out of the listing.
    pub fn into_change_set(self) -> ChangeSet {
        match self {
            Listing::Cow(l) => ChangeSet {
                read: l.table.extents,
                zero: ExtentSet::default(),
            },
            Listing::Thin(l) => ChangeSet {
                read: l.data,
                zero: l.zero,
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

/// Reads the change table that `source` names. A thin snapshot is compared
/// with `data_source` when that is a thin volume of the same pool (see
/// [`lvm::thin_data_source`]), else with its origin.
pub fn read(source: &ChangeSource, data_source: Option<&Path>) -> Result<Listing, Error> {
    match source {
        ChangeSource::Snapshot(spec) => match lvm::find(spec)? {
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
        ChangeSource::CowImage { path, origin_size } => {
            let table = read_cow(path, *origin_size)?;
            Ok(Listing::Cow(Box::new(CowListing {
                snapshot: None,
                cow_path: path.clone(),
                origin_size: *origin_size,
                table,
            })))
        }
        ChangeSource::ThinMetadata {
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

/// What to send: the extents whose new data is read from the data source,
/// and the extents known to read as zeroes now (a thin snapshot's blocks
/// that the compared device no longer maps), which become ZERO records
/// without a read. Each list is sorted and disjoint, and no extent of one
/// overlaps an extent of the other.
#[derive(Debug, Clone, Copy)]
pub struct Changes<'a> {
    pub read: &'a [Extent],
    pub zero: &'a [Extent],
}

impl<'a> Changes<'a> {
    /// Extents that are all read from the data source.
    pub fn read(extents: &'a [Extent]) -> Changes<'a> {
        Changes {
            read: extents,
            zero: &[],
        }
    }

    /// Bytes of the origin the changes cover.
    pub fn total_bytes(&self) -> u64 {
        self.read.iter().chain(self.zero).map(|e| e.length).sum()
    }

    /// Every extent with whether it is known zero, in offset order.
    pub fn in_order(&self) -> impl Iterator<Item = (Extent, bool)> + 'a {
        let (mut read, mut zero) = (self.read.iter().peekable(), self.zero.iter().peekable());
        std::iter::from_fn(move || match (read.peek(), zero.peek()) {
            (Some(r), Some(z)) if z.offset < r.offset => zero.next().map(|e| (*e, true)),
            (Some(_), _) => read.next().map(|e| (*e, false)),
            (None, _) => zero.next().map(|e| (*e, true)),
        })
    }
}

/// [`Changes`] that own their extents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub read: ExtentSet,
    pub zero: ExtentSet,
}

impl ChangeSet {
    /// Extents that are all read from the data source.
    pub fn read(extents: ExtentSet) -> ChangeSet {
        ChangeSet {
            read: extents,
            zero: ExtentSet::default(),
        }
    }

    pub fn as_changes(&self) -> Changes<'_> {
        Changes {
            read: self.read.as_slice(),
            zero: self.zero.as_slice(),
        }
    }

    /// The changes at or after `from`: what is left to send when a
    /// transfer resumes there.
    pub fn from_offset(&self, from: u64) -> ChangeSet {
        ChangeSet {
            read: self.read.from_offset(from),
            zero: self.zero.from_offset(from),
        }
    }
}
