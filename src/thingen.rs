//! Builds thin pool metadata for tests and benchmarks, without a kernel: a
//! snapshot and a newer device whose mappings differ in known ways, written
//! as the XML that `thin_restore` (thin-provisioning-tools) turns into a
//! metadata image, which `thin_delta` then reads like a pool's.

use std::io::{self, Write};
use std::path::Path;
use std::process::Command;

use crate::cowgen::Rng;
use crate::extents::{Extent, ExtentSet};

/// Two thin devices of one pool: `old` (the snapshot) and `new` (its origin
/// later). Each maps thin block `i` to a data block, or not at all.
#[derive(Debug, Clone)]
pub struct ThinPair {
    /// The data block size in 512-byte sectors.
    pub block_sectors: u64,
    pub old: Vec<Option<u64>>,
    pub new: Vec<Option<u64>>,
    next_data: u64,
}

impl ThinPair {
    /// `blocks` thin blocks, the first `mapped` of them mapped alike in
    /// both devices (a snapshot just taken).
    pub fn new(block_sectors: u64, blocks: u64, mapped: u64) -> ThinPair {
        let old: Vec<Option<u64>> = (0..blocks).map(|b| (b < mapped).then_some(b)).collect();
        ThinPair {
            block_sectors,
            new: old.clone(),
            old,
            next_data: mapped,
        }
    }

    /// A write to block `b` of the new device: a new data block.
    pub fn write(&mut self, b: u64) {
        self.new[b as usize] = Some(self.next_data);
        self.next_data += 1;
    }

    /// A discard of block `b` of the new device: unmapped.
    pub fn discard(&mut self, b: u64) {
        self.new[b as usize] = None;
    }

    /// Writes `n` random blocks (some in runs of up to 16) and discards
    /// `discards` random ones.
    pub fn scatter(&mut self, rng: &mut Rng, n: u64, discards: u64) {
        let blocks = self.old.len() as u64;
        let mut written = 0;
        while written < n {
            let run = if rng.below(4) == 0 {
                1 + rng.below(16)
            } else {
                1
            };
            let start = rng.below(blocks);
            for b in start..(start + run).min(blocks) {
                self.write(b);
                written += 1;
            }
        }
        for _ in 0..discards {
            self.discard(rng.below(blocks));
        }
    }

    /// What must be sent, in bytes: the blocks whose mapping differs and
    /// that are mapped in the new device (their data), and the blocks
    /// mapped in the old device only (zeroes now), clipped to `limit`.
    pub fn expected(&self, limit: u64) -> (ExtentSet, ExtentSet) {
        let bs = self.block_sectors * 512;
        let (mut data, mut zero) = (Vec::new(), Vec::new());
        for (i, (o, n)) in self.old.iter().zip(&self.new).enumerate() {
            let list = match (o, n) {
                (Some(_), None) => &mut zero,
                (_, Some(_)) if o != n => &mut data,
                _ => continue,
            };
            let offset = i as u64 * bs;
            if offset < limit {
                list.push(Extent {
                    offset,
                    length: bs.min(limit - offset),
                });
            }
        }
        (ExtentSet::from_extents(data), ExtentSet::from_extents(zero))
    }

    /// The metadata as `thin_restore` reads it: `old` is device `old_id`,
    /// `new` is device `new_id`.
    fn write_xml(&self, out: &mut impl Write, old_id: u64, new_id: u64) -> io::Result<()> {
        writeln!(
            out,
            "<superblock uuid=\"\" time=\"1\" transaction=\"1\" data_block_size=\"{}\" nr_data_blocks=\"{}\">",
            self.block_sectors,
            self.next_data.max(1)
        )?;
        for (id, map) in [(old_id, &self.old), (new_id, &self.new)] {
            let mapped = map.iter().flatten().count();
            writeln!(
                out,
                "  <device dev_id=\"{id}\" mapped_blocks=\"{mapped}\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">"
            )?;
            // Runs of consecutive thin blocks on consecutive data blocks.
            let mut run: Option<(u64, u64, u64)> = None;
            let flush = |out: &mut dyn Write, r: (u64, u64, u64)| {
                writeln!(
                    out,
                    "    <range_mapping origin_begin=\"{}\" data_begin=\"{}\" length=\"{}\" time=\"0\"/>",
                    r.0, r.1, r.2
                )
            };
            for (i, m) in map.iter().enumerate() {
                let i = i as u64;
                match (m, &mut run) {
                    (Some(d), Some(r)) if r.0 + r.2 == i && r.1 + r.2 == *d => r.2 += 1,
                    (Some(d), _) => {
                        if let Some(r) = run.replace((i, *d, 1)) {
                            flush(out, r)?;
                        }
                    }
                    (None, _) => {
                        if let Some(r) = run.take() {
                            flush(out, r)?;
                        }
                    }
                }
            }
            if let Some(r) = run {
                flush(out, r)?;
            }
            writeln!(out, "  </device>")?;
        }
        writeln!(out, "</superblock>")
    }

    /// A metadata image at `path` (made by `thin_restore` from the XML,
    /// written next to it as `PATH.xml`), of `size` bytes.
    pub fn restore(&self, path: &Path, old_id: u64, new_id: u64, size: u64) -> io::Result<()> {
        let mut xml_path = path.as_os_str().to_owned();
        xml_path.push(".xml");
        let mut xml = io::BufWriter::new(std::fs::File::create(&xml_path)?);
        self.write_xml(&mut xml, old_id, new_id)?;
        xml.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::File::create(path)?.set_len(size)?;
        let out = Command::new("thin_restore")
            .arg("-i")
            .arg(&xml_path)
            .arg("-o")
            .arg(path)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "thin_restore failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}
