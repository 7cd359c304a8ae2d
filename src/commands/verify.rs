//! `lvmsync-rs verify SRC DEST`: compares two copies block by block, here
//! or with DEST on another host, prints the ranges that differ, and with
//! `--repair` sends exactly those ranges of SRC to DEST as a delta that is
//! applied like any other. With the hidden `--remote-side`, the far side
//! of a remote comparison.

use std::io::{self, Write};

use lvmsync::ship::Link;
use lvmsync::stream::Compression;
use lvmsync::units::{counted, human};
use lvmsync::verify::{self, remote, Comparison};
use lvmsync::Error;

use super::{usage_error, LogArgs, RemoteShell};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A block device, LV or snapshot (vg/lv), or an image file
    #[arg(value_name = "SRC", required = true)]
    pub src: String,
    /// [user@]host:PATH, or a local PATH
    #[arg(value_name = "DEST")]
    pub dest: Option<String>,
    /// Bytes per hashed block: a power of two from 4k to 64M; the
    /// differences are found to this granularity
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = verify::parse_block_size)]
    pub block_size: u64,
    /// Send the blocks of SRC that differ to DEST and apply them there,
    /// every record checked before it is written; a shorter DEST file is
    /// extended, a longer one cut to SRC's size
    #[arg(long)]
    pub repair: bool,
    /// With --repair: compare and say what the repair would send, without
    /// sending it (the exit status is then 3 when the copies differ)
    #[arg(short = 'n', long, requires = "repair")]
    pub dry_run: bool,
    /// With --repair: compress the repair's DATA records: lz4,
    /// zstd[:LEVEL] (LEVEL 1 to 19, 3 by default) or none; each is stored
    /// raw when that does not make it smaller
    #[arg(long, value_name = "HOW", default_value = "lz4", requires = "repair")]
    pub compress: Compression,
    #[command(flatten)]
    pub remote: RemoteShell,
    /// Print one JSON object instead of text (on failure too)
    #[arg(long)]
    pub json: bool,
    /// Print nothing: the exit status says whether the copies are the same
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub log: LogArgs,
    /// The far side of a remote verify: open PATH, say hello on stdout,
    /// stream its block hashes
    #[arg(long, hide = true, requires_all = ["protocol", "src_size"])]
    pub remote_side: bool,
    /// With --remote-side: the protocol the local side speaks
    #[arg(long, hide = true, value_name = "VERSION", requires = "remote_side")]
    pub protocol: Option<u32>,
    /// With --remote-side: SRC's size (the bytes past it are not hashed)
    #[arg(long, hide = true, value_name = "BYTES", requires = "remote_side")]
    pub src_size: Option<u64>,
}

/// Compares; `Ok(true)` when SRC and DEST are identical at the end.
/// SRC and DEST as given: one name or two.
fn names(args: &Args) -> Vec<String> {
    std::iter::once(args.src.clone())
        .chain(args.dest.clone())
        .collect()
}

pub fn run(args: Args) -> Result<bool, Error> {
    let names = names(&args);
    let (src, dest) = match (names.as_slice(), args.remote_side) {
        ([path], true) => {
            let (Some(protocol), Some(src_size)) = (args.protocol, args.src_size) else {
                usage_error("verify", "--remote-side takes one PATH")
            };
            remote::serve(&remote::Side {
                path: path.into(),
                block_size: args.block_size,
                src_size,
                protocol,
            })?;
            return Ok(true);
        }
        (_, true) => usage_error("verify", "--remote-side takes one PATH"),
        ([src, dest], false) => (src, dest),
        _ => usage_error(
            "verify",
            "name SRC and DEST ([user@]host:PATH or a local PATH)",
        ),
    };
    let request = verify::Request {
        src: src.into(),
        dest: dest.clone(),
        block_size: args.block_size,
        repair: args.repair && !args.dry_run,
        link: Link {
            progress: args.log.style(args.quiet),
            ..args.remote.link()
        },
        target: None,
        compression: args.compress,
    };
    let mut comparison = Comparison::default();
    verify::verify(&request, &mut comparison)?;
    if args.json {
        let mut doc = serde_json::to_value(&comparison).expect("plain fields serialize");
        if args.dry_run {
            doc["dry_run"] = true.into();
        }
        println!("{doc}");
    } else if !args.quiet {
        print_text(&comparison).map_err(Error::Output)?;
        if args.dry_run && !comparison.identical {
            println!(
                "dry run: --repair would send these {} bytes ({}) of SRC to DEST; nothing was sent",
                comparison.differing_bytes,
                human(comparison.differing_bytes)
            );
        }
    }
    Ok(comparison.identical_now)
}

fn print_text(r: &Comparison) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "src:        {} ({} bytes, {})",
        r.src,
        r.src_size,
        human(r.src_size)
    )?;
    writeln!(
        out,
        "dest:       {} ({} bytes, {})",
        r.dest,
        r.dest_size,
        human(r.dest_size)
    )?;
    writeln!(
        out,
        "block size: {} ({}), {}",
        r.block_size,
        human(r.block_size),
        r.hash
    )?;
    if r.src_size != r.dest_size {
        writeln!(
            out,
            "sizes differ: the last {} of {} {} as a difference",
            counted(r.src_size.abs_diff(r.dest_size), "byte"),
            if r.src_size > r.dest_size {
                "SRC"
            } else {
                "DEST"
            },
            if r.src_size.abs_diff(r.dest_size) == 1 {
                "counts"
            } else {
                "count"
            }
        )?;
    }
    let read = format!(
        "{} read on each side in {:.1} s ({}/s per side)",
        human(r.src_bytes_read),
        r.compare_seconds,
        human((r.src_bytes_read as f64 / r.compare_seconds.max(1e-3)) as u64)
    );
    let wire = match r.bytes_on_wire {
        Some(n) => format!("; {n} bytes ({}) from the remote", human(n)),
        None => String::new(),
    };
    if r.identical {
        writeln!(out, "identical: {read}{wire}")?;
        return out.flush();
    }
    writeln!(out)?;
    writeln!(out, "{:>20} {:>20}", "offset", "length")?;
    for d in &r.differences {
        writeln!(
            out,
            "{:>20} {:>20}   {} at {}",
            d.offset,
            d.length,
            human(d.length),
            human(d.offset)
        )?;
    }
    writeln!(out)?;
    let n = r.differences.len();
    writeln!(
        out,
        "differ: {} ({}) in {}; {read}{wire}",
        counted(r.differing_bytes, "byte"),
        human(r.differing_bytes),
        counted(n as u64, "range")
    )?;
    if let Some(p) = &r.repaired {
        let mut line = format!(
            "repaired: {} ({} of data, {} of zeroes) sent as a delta of {} bytes ({}), applied to {} and checked",
            counted(p.records, "record"),
            human(p.data_bytes),
            human(p.zero_bytes),
            p.delta_bytes,
            human(p.delta_bytes),
            r.dest
        );
        if p.dest_size_after > p.dest_size_before {
            line.push_str(&format!(
                "; DEST was extended from {} to {} bytes",
                p.dest_size_before, p.dest_size_after
            ));
        } else if p.dest_size_after < p.dest_size_before {
            line.push_str(&format!(
                "; DEST was cut from {} to {} bytes",
                p.dest_size_before, p.dest_size_after
            ));
        }
        writeln!(out, "{line}")?;
        if r.identical_now {
            writeln!(out, "DEST is now identical to SRC")?;
        } else {
            writeln!(
                out,
                "DEST is a block device larger than SRC: its last {} {}",
                counted(p.dest_size_after - r.src_size, "byte"),
                if p.dest_size_after - r.src_size == 1 {
                    "remains"
                } else {
                    "remain"
                }
            )?;
        }
    }
    out.flush()
}
