//! `lvmsync-rs apply`: replays a delta on the backup copy, each record only
//! after it has passed its checks, and says what it did on stderr.

use std::io::{self, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use crate::apply::{self, check_distinct, describe_source, Summary};
use crate::commands::{DeltaInput, DELTA_READ_BUF};
use crate::transport::{Applied, Hello, ALIVE, ALIVE_EVERY};
use crate::units::human;
use crate::Error;

pub struct Args {
    pub delta: DeltaInput,
    pub dest: PathBuf,
    pub create: bool,
    pub snapback: Option<PathBuf>,
    /// The far end of `lvmsync-rs sync`: the delta format version the
    /// sender writes. DEST is opened before the delta is read, a hello line
    /// goes to stdout, and a report line ends the apply (see
    /// [`crate::transport`]).
    pub remote: Option<u32>,
    /// Apply even when the destination's state names another base.
    pub force: bool,
}

pub fn run(args: Args) -> Result<(), Error> {
    if let DeltaInput::File(path) = &args.delta {
        check_distinct(path, &args.dest)?;
    }
    if let Some(format) = args.remote {
        return run_remote(&args, format);
    }
    let input = BufReader::with_capacity(DELTA_READ_BUF, args.delta.open()?);
    let options = apply::Options {
        create: args.create,
        snapback: args.snapback,
        force: args.force,
        finishing: None,
    };
    let summary = apply::apply(input, &args.delta.name(), &args.dest, &options)?;
    eprintln!("{}", describe(&args.delta.name(), &summary));
    Ok(())
}

/// The far end of `sync`: checks the sender's format version, opens DEST,
/// says hello, applies, and reports what it applied, on stdout.
fn run_remote(args: &Args, format: u32) -> Result<(), Error> {
    if format != crate::stream::VERSION {
        return Err(Error::Usage(format!(
            "the sender writes delta format version {format}, but this lvmsync-rs ({}) reads version {} only: install the same version on both hosts",
            crate::TOOL,
            crate::stream::VERSION
        )));
    }
    let target = apply::Target::open(&args.dest, args.create, None, args.force)?;
    let said = |line: String| {
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(Error::Output)
    };
    said(Hello::ours(target.size(), target.state.clone()).line())?;
    let input = BufReader::with_capacity(DELTA_READ_BUF, args.delta.open()?);
    let finishing = Arc::new(AtomicBool::new(false));
    let name = args.delta.name();
    let options = apply::Options {
        create: args.create,
        snapback: args.snapback.clone(),
        force: args.force,
        finishing: Some(finishing.clone()),
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let s = std::thread::scope(|scope| {
        // After the last byte, the sender waits for the report while this
        // side finishes (syncs DEST): it says it is alive meanwhile, so
        // that the sender can tell a slow end from a hung one.
        scope.spawn(move || loop {
            match stopped.recv_timeout(ALIVE_EVERY) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            if finishing.load(Ordering::SeqCst) && said(ALIVE.to_string()).is_err() {
                return;
            }
        });
        let result = apply::open_stream(input, &name, &args.dest)
            .and_then(|reader| apply::apply_to(reader, &name, target, &options));
        drop(stop);
        result
    })?;
    said(Applied::new(&s.totals, s.stream_len, s.digest).line())
}

/// The paragraph printed after a successful apply.
pub fn describe(delta: &str, s: &Summary) -> String {
    let t = &s.totals;
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    let mut text = format!(
        "lvmsync-rs apply: applied {delta} to {}: {} record{}, {} of data in {} DATA record{} and {} of zeroes in {} ZERO record{}, from a delta of {} bytes ({}",
        s.dest,
        t.records,
        plural(t.records),
        human(t.data_bytes),
        s.data_records,
        plural(s.data_records),
        human(t.zero_bytes),
        s.zero_records,
        plural(s.zero_records),
        s.stream_len,
        human(s.stream_len),
    );
    if t.data_bytes > 0 {
        text.push_str(&format!(
            "; payload {} bytes, {:.1}% of the data",
            t.payload_bytes,
            t.payload_bytes as f64 * 100.0 / t.data_bytes as f64
        ));
    }
    text.push_str(&format!(
        "). Every record's checksums, the END record and the stream digest matched; {} is synced.",
        s.dest
    ));
    if s.extended {
        text.push_str(&format!(
            " {} was extended from {} to the origin's size, {} bytes.",
            s.dest,
            s.dest_size_before
                .map(|n| format!("{n} bytes"))
                .unwrap_or_else(|| "nothing (created)".to_string()),
            s.header.origin_size
        ));
    } else if let Some(before) = s.truncated_from {
        text.push_str(&format!(
            " {} was cut from {before} bytes to the origin's size, {} bytes, as the delta asks.",
            s.dest, s.header.origin_size
        ));
    } else if s.dest_size_before.is_some_and(|n| n > s.header.origin_size) {
        text.push_str(&format!(
            " {} is larger than the origin ({} bytes); its bytes past that were left as they were.",
            s.dest, s.header.origin_size
        ));
    }
    text.push_str(&format!(
        " The delta is of {} (from {}, origin of {} bytes), written by {}.",
        describe_source(&s.header.source).unwrap_or_else(|| "an unnamed source".to_string()),
        s.header.source.kind.describe(),
        s.header.origin_size,
        s.header.tool
    ));
    if let Some((path, st, len)) = &s.snapback {
        text.push_str(&format!(
            " Snapback: {} holds the old contents ({} record{}, {} bytes) and is synced; `lvmsync-rs apply {} {}` restores them.",
            path.display(),
            st.records,
            plural(st.records),
            len,
            path.display(),
            s.dest
        ));
    }
    text
}
