//! `lvmsync-rs send`: the changes since a snapshot was taken, as a delta
//! stream written to a file or to stdout.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::blockdev::Source;
use crate::commands::list::{self, Listing, Target};
use crate::extents::Extent;
use crate::lvm;
use crate::send::{check_source_size, send_changes, SendError};
use crate::stream::{Compression, Header, PointInTime, SourceInfo, SourceKind, ThinSource, Writer};
use crate::units::human;
use crate::Error;

/// Where the delta goes.
pub enum Output {
    Stdout,
    File(PathBuf),
}

pub struct Args {
    /// The change table: a snapshot, or a COW image (`origin_size` may be
    /// unknown: it then is the data source's size).
    pub target: Target,
    /// Where the changed chunks' data is read; for a snapshot, its origin
    /// when not given.
    pub data_source: Option<PathBuf>,
    pub output: Output,
    pub compression: Compression,
}

/// Refuses to write a binary stream to a terminal.
pub fn refuse_terminal(stdout_is_terminal: bool) -> Result<(), Error> {
    if stdout_is_terminal {
        return Err(Error::Usage(
            "refusing to write a binary delta to a terminal: redirect it (-o - > FILE, or -o - | lvmsync-rs apply - DEST), or give -o FILE".into(),
        ));
    }
    Ok(())
}

/// What a delta is made from: the change table, the opened data source,
/// and the header that describes them.
pub struct Prepared {
    pub listing: Listing,
    pub source: Source,
    pub header: Header,
}

impl Prepared {
    /// Reads the change table and opens the data source.
    pub fn new(
        target: &Target,
        data_source: Option<&Path>,
        compression: Compression,
    ) -> Result<Prepared, Error> {
        let (listing, source) = read_inputs(target, data_source)?;
        let origin_size = listing.origin_size().unwrap_or(source.size());
        check_source_size(&source, origin_size)?;
        let source_info = source_info(&listing, &source);
        // The delta applies to a copy of the origin as it was when the
        // snapshot was taken.
        let base = point_in_time(&source_info);
        let (table_key, table_path) = match &listing {
            Listing::Cow(l) => ("cow", l.cow_path.display().to_string()),
            Listing::Thin(l) => ("thin-metadata", l.metadata.display().to_string()),
        };
        let header = Header {
            origin_size,
            chunk_size: listing.chunk_size(),
            target: target_point_in_time(&listing, &source_info)
                .or_else(|| data_source.and_then(|p| later_snapshot(&source_info, p))),
            source: source_info,
            compression,
            tool: crate::TOOL.to_string(),
            base,
            resume_from: 0,
            properties: BTreeMap::from([
                (table_key.to_string(), table_path),
                (
                    "data-source".to_string(),
                    source.path().display().to_string(),
                ),
            ]),
        };
        Ok(Prepared {
            listing,
            source,
            header,
        })
    }

    /// The snapshot, the COW image or the metadata, as messages name it.
    pub fn name(&self) -> String {
        self.listing.name()
    }
}

pub fn run(args: Args) -> Result<(), Error> {
    if let Output::Stdout = args.output {
        refuse_terminal(io::stdout().is_terminal())?;
    }
    let prepared = Prepared::new(&args.target, args.data_source.as_deref(), args.compression)?;
    let Prepared {
        listing,
        source,
        header,
    } = &prepared;
    let changes = listing.changes();
    let (totals, len, shown) = match &args.output {
        Output::Stdout => {
            crate::commands::grow_pipe(io::stdout());
            let out = BufWriter::with_capacity(256 << 10, io::stdout().lock());
            let mut w = Writer::new(out, header).map_err(Error::Output)?;
            send_changes(source, changes, &mut w, |_| {}).map_err(stdout_error)?;
            let (_, totals, len) = w.finish().map_err(Error::Output)?;
            (totals, len, "stdout".to_string())
        }
        Output::File(path) => {
            let file = OutFile::create(path)?;
            let write_err = |source| Error::Write {
                path: path.display().to_string(),
                source,
            };
            let out =
                BufWriter::with_capacity(256 << 10, file.file.try_clone().map_err(write_err)?);
            let mut w = Writer::new(out, header).map_err(write_err)?;
            send_changes(source, changes, &mut w, |_| {}).map_err(|e| match e {
                SendError::Write(source) => write_err(source),
                other => other.into(),
            })?;
            let (_, totals, len) = w.finish().map_err(write_err)?;
            file.commit().map_err(write_err)?;
            (totals, len, path.display().to_string())
        }
    };
    eprintln!(
        "lvmsync-rs send: {} records from {}: {} of data and {} of zeroes, written as a delta of {} bytes ({}) to {}",
        totals.records,
        prepared.name(),
        human(totals.data_bytes),
        human(totals.zero_bytes),
        len,
        human(len),
        shown
    );
    Ok(())
}

fn stdout_error(e: SendError) -> Error {
    match e {
        SendError::Write(source) => Error::Output(source),
        other => other.into(),
    }
}

/// The change table and the opened data source.
fn read_inputs(target: &Target, data_source: Option<&Path>) -> Result<(Listing, Source), Error> {
    match target {
        Target::Snapshot(_) => {
            let listing = list::read_with(target, data_source)?;
            let path = match (data_source, &listing) {
                (Some(path), _) => path.to_path_buf(),
                (None, Listing::Cow(l)) => match &l.snapshot {
                    Some(snap) => lvm::origin_device(snap),
                    None => return Err(need_data_source()),
                },
                (None, Listing::Thin(l)) => match &l.snapshot {
                    Some(snap) => snap.origin.device.path(),
                    None => return Err(need_data_source()),
                },
            };
            let source = open_source(&path)?;
            Ok((listing, source))
        }
        Target::Cow { path, origin_size } => {
            let Some(data) = data_source else {
                return Err(Error::Usage(
                    "--cow needs --data-source PATH: the device or image holding the origin's new contents".into(),
                ));
            };
            let source = open_source(data)?;
            let origin_size = origin_size.unwrap_or(source.size());
            check_source_size(&source, origin_size)?;
            let listing = list::read(&Target::Cow {
                path: path.clone(),
                origin_size: Some(origin_size),
            })?;
            Ok((listing, source))
        }
        Target::ThinMetadata {
            path,
            thin1,
            thin2,
            origin_size,
        } => {
            let Some(data) = data_source else {
                return Err(Error::Usage(
                    "--thin-metadata needs --data-source PATH: the device or image holding the new contents".into(),
                ));
            };
            let source = open_source(data)?;
            let origin_size = origin_size.unwrap_or(source.size());
            check_source_size(&source, origin_size)?;
            let listing = list::read(&Target::ThinMetadata {
                path: path.clone(),
                thin1: *thin1,
                thin2: *thin2,
                origin_size: Some(origin_size),
            })?;
            Ok((listing, source))
        }
    }
}

fn need_data_source() -> Error {
    Error::Usage(
        "give --data-source PATH: the device or image holding the origin's new contents".into(),
    )
}

fn open_source(path: &Path) -> Result<Source, Error> {
    Source::open(path).map_err(|source| Error::Open {
        path: path.display().to_string(),
        source,
    })
}

/// The delta of a full copy of `source` (a seed): one extent over all of
/// it, all-zero blocks becoming ZERO records as they are read. No base (it
/// applies to any content) and no target; `backup` sets the target.
pub fn full_copy(source: &Source, compression: Compression) -> (Header, Vec<Extent>) {
    let size = source.size();
    let path = source.path().display().to_string();
    let header = Header {
        origin_size: size,
        chunk_size: crate::send::READ_LEN as u64,
        source: SourceInfo {
            origin: Some(path.clone()),
            ..SourceInfo::of_kind(SourceKind::Full)
        },
        compression,
        tool: crate::TOOL.to_string(),
        base: None,
        target: None,
        resume_from: 0,
        properties: BTreeMap::from([("data-source".to_string(), path)]),
    };
    let extents = if size > 0 {
        vec![Extent {
            offset: 0,
            length: size,
        }]
    } else {
        Vec::new()
    };
    (header, extents)
}

/// The point in time the data source froze, when it is a classic snapshot
/// of the same origin (a later one): applying the delta then brings a copy
/// to exactly that snapshot.
fn later_snapshot(s: &SourceInfo, data_source: &Path) -> Option<PointInTime> {
    if s.kind != SourceKind::Classic {
        return None;
    }
    let lv = lvm::lv_at(data_source)?;
    let is_snapshot = matches!(lv.lv_attr.chars().next(), Some('s'));
    let same_origin = s.vg.as_deref() == Some(lv.vg_name.as_str())
        && s.origin.as_deref() == Some(lv.origin.as_str());
    (is_snapshot && same_origin && !lv.lv_uuid.is_empty())
        .then(|| PointInTime {
            origin_uuid: s.origin_uuid.clone().unwrap_or_default(),
            snapshot_uuid: lv.lv_uuid.clone(),
            snapshot: lv.full_name(),
            time: lv.lv_time.clone(),
        })
        .filter(|p| !p.origin_uuid.is_empty())
}

/// The point in time a snapshot froze, when LVM names both volumes.
pub fn point_in_time(s: &SourceInfo) -> Option<PointInTime> {
    let vg = s.vg.as_deref()?;
    Some(PointInTime {
        origin_uuid: s.origin_uuid.clone()?,
        snapshot_uuid: s.snapshot_uuid.clone()?,
        snapshot: format!("{vg}/{}", s.snapshot.as_deref()?),
        time: s.snapshot_time.clone().unwrap_or_default(),
    })
}

/// The point in time the data source holds, when it is a later snapshot of
/// the same origin in the same thin pool (compared with the snapshot
/// directly): a copy holds exactly that snapshot once the delta is applied.
fn target_point_in_time(listing: &Listing, s: &SourceInfo) -> Option<PointInTime> {
    let Listing::Thin(l) = listing else {
        return None;
    };
    let later = l.compared.as_ref()?.lv.as_ref()?;
    let snap = l.snapshot.as_ref()?;
    // The origin itself is live, no point in time.
    if l.thin2 == snap.origin.thin_id || later.origin.is_empty() || later.lv_uuid.is_empty() {
        return None;
    }
    Some(PointInTime {
        origin_uuid: s.origin_uuid.clone()?,
        snapshot_uuid: later.lv_uuid.clone(),
        snapshot: later.full_name(),
        time: later.lv_time.clone(),
    })
}

fn source_info(listing: &Listing, data: &Source) -> SourceInfo {
    let known = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match listing {
        Listing::Cow(l) => match &l.snapshot {
            Some(snap) => {
                let lv = snap.lv.as_ref();
                let origin_lv = lvm::origin_lv(snap);
                SourceInfo {
                    kind: SourceKind::Classic,
                    vg: lv.map(|lv| lv.vg_name.clone()),
                    snapshot: Some(
                        lv.map(|lv| lv.lv_name.clone())
                            .unwrap_or_else(|| snap.device.name.clone()),
                    ),
                    snapshot_uuid: lv.and_then(|lv| known(&lv.lv_uuid)),
                    snapshot_time: lv.and_then(|lv| known(&lv.lv_time)),
                    origin: lv
                        .and_then(|lv| known(&lv.origin))
                        .or_else(|| Some(snap.origin.name.clone())),
                    origin_uuid: origin_lv.and_then(|lv| known(&lv.lv_uuid)),
                    thin: None,
                }
            }
            None => SourceInfo {
                snapshot: Some(l.cow_path.display().to_string()),
                origin: Some(data.path().display().to_string()),
                ..SourceInfo::of_kind(SourceKind::Image)
            },
        },
        Listing::Thin(l) => {
            let snap = l.snapshot.as_ref();
            let lv = snap.and_then(|s| s.snapshot.lv.as_ref());
            let origin_lv = snap.and_then(|s| s.origin.lv.as_ref());
            let pool = snap.map(|s| &s.pool);
            SourceInfo {
                kind: SourceKind::Thin,
                vg: lv.map(|lv| lv.vg_name.clone()),
                snapshot: Some(match snap {
                    Some(s) => lv
                        .map(|lv| lv.lv_name.clone())
                        .unwrap_or_else(|| s.snapshot.device.name.clone()),
                    None => l.metadata.display().to_string(),
                }),
                snapshot_uuid: lv.and_then(|lv| known(&lv.lv_uuid)),
                snapshot_time: lv.and_then(|lv| known(&lv.lv_time)),
                origin: match snap {
                    Some(s) => Some(
                        origin_lv
                            .map(|lv| lv.lv_name.clone())
                            .unwrap_or_else(|| s.origin.device.name.clone()),
                    ),
                    None => Some(data.path().display().to_string()),
                },
                origin_uuid: origin_lv.and_then(|lv| known(&lv.lv_uuid)),
                thin: Some(ThinSource {
                    pool: pool
                        .map(|p| p.display_name())
                        .unwrap_or_else(|| l.metadata.display().to_string()),
                    pool_uuid: pool
                        .and_then(|p| p.lv.as_ref())
                        .and_then(|lv| known(&lv.lv_uuid)),
                    block_size: l.diff.block_size(),
                    snapshot_id: l.thin1,
                    compared_id: l.thin2,
                }),
            }
        }
    }
}

/// The output file. A regular file is written as `FILE.partial` and renamed
/// to FILE once complete and synced, so FILE is never a partial delta; the
/// partial file is removed if the command fails. Anything else (a FIFO, a
/// character device) is written directly.
struct OutFile {
    file: File,
    partial: Option<(PathBuf, PathBuf)>,
}

impl OutFile {
    fn create(path: &Path) -> Result<OutFile, Error> {
        let create_err = |source| Error::Create {
            path: path.display().to_string(),
            source,
        };
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => Err(create_err(io::Error::other("is a directory"))),
            Ok(m) if !m.is_file() => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(create_err)?;
                Ok(OutFile {
                    file,
                    partial: None,
                })
            }
            _ => {
                let mut name = path.as_os_str().to_owned();
                name.push(".partial");
                let partial = PathBuf::from(name);
                let file = File::create(&partial).map_err(create_err)?;
                Ok(OutFile {
                    file,
                    partial: Some((partial, path.to_path_buf())),
                })
            }
        }
    }

    /// Syncs the delta and gives it its name.
    fn commit(mut self) -> io::Result<()> {
        self.file.flush()?;
        if let Some((partial, path)) = &self.partial {
            self.file.sync_all()?;
            fs::rename(partial, path)?;
            let path = path.clone();
            self.partial = None;
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        if let Some((partial, _)) = &self.partial {
            let _ = fs::remove_file(partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_is_refused() {
        let err = refuse_terminal(true).unwrap_err();
        assert!(err
            .to_string()
            .contains("refusing to write a binary delta to a terminal"));
        assert!(refuse_terminal(false).is_ok());
    }
}
