//! `lvmsync-rs sync` (and `lvmsync-rs SNAPSHOT [user@]host:DEST`): sends the
//! changes since a snapshot was taken to an `apply` on the backup host,
//! through ssh, and checks its report; no file is written on either side.

use std::io::{self, BufWriter, IsTerminal};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::blockdev::Source;
use crate::commands::list::Target;
use crate::commands::send::Prepared;
use crate::extents::Extent;
use crate::send::{send_extents_with_progress, SendError};
use crate::stream::{Compression, Header, Writer};
use crate::transport::{Applied, Connection, Dest, Echo, Launch, TransportError};
use crate::units::human;
use crate::Error;

/// The buffer in front of the remote shell's stdin: a few records, so that
/// the encoding threads rarely wait for the pipe.
pub const SHIP_BUF: usize = 1 << 20;

pub struct Args {
    pub target: Target,
    pub data_source: Option<PathBuf>,
    pub compression: Compression,
    /// `[user@]host:PATH`, or a local path.
    pub dest: String,
    pub create: bool,
    /// The remote shell, as one string (split into words).
    pub rsh: String,
    /// The remote lvmsync-rs.
    pub remote_path: String,
    /// How long to wait for the remote's hello.
    pub hello_timeout: Duration,
    pub quiet: bool,
    pub json: bool,
}

/// The summary `--json` prints.
#[derive(Debug, Default, Serialize)]
struct Report {
    result: &'static str,
    error: Option<String>,
    source: Option<String>,
    remote_host: Option<String>,
    dest: String,
    /// Bytes of changed extents read from the data source.
    bytes_read: u64,
    data_bytes: u64,
    zero_bytes: u64,
    records: u64,
    /// The delta's length: what went to the remote shell.
    bytes_on_wire: u64,
    seconds: f64,
}

pub fn run(args: Args) -> Result<(), Error> {
    let started = Instant::now();
    let mut report = Report {
        result: "failed",
        ..Report::default()
    };
    let result = sync(&args, &mut report);
    report.seconds = started.elapsed().as_secs_f64();
    if let Err(e) = &result {
        report.error = Some(e.to_string().replace('\n', " "));
    } else {
        report.result = "ok";
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("plain fields serialize")
        );
    }
    if result.is_ok() && !args.quiet {
        eprintln!(
            "lvmsync-rs sync: {} records from {}: {} of data and {} of zeroes, sent as a delta of {} bytes ({}) in {:.1} s ({}/s) to {}, applied and checked there; the copy is synced",
            report.records,
            report.source.as_deref().unwrap_or("?"),
            human(report.data_bytes),
            human(report.zero_bytes),
            report.bytes_on_wire,
            human(report.bytes_on_wire),
            report.seconds,
            human((report.bytes_read as f64 / report.seconds.max(1e-3)) as u64),
            args.dest
        );
    }
    result
}

fn sync(args: &Args, report: &mut Report) -> Result<(), Error> {
    report.dest = args.dest.clone();
    let dest = Dest::parse(&args.dest)?;
    // Local inputs first: a missing snapshot needs no connection.
    let prepared = Prepared::new(&args.target, args.data_source.as_deref(), args.compression)?;
    report.source = Some(prepared.name());
    let launch = match &dest {
        Dest::Remote { host, path } => {
            report.remote_host = Some(host.clone());
            Launch::remote(&args.rsh, host, &args.remote_path, args.create, path)?
        }
        Dest::Local(path) => {
            let me = std::env::current_exe().map_err(|source| TransportError::Spawn {
                program: "lvmsync-rs".into(),
                source,
            })?;
            Launch::local(&me.display().to_string(), args.create, path)
        }
    };
    let extents = prepared.listing.table.extents.as_slice();
    let total: u64 = extents.iter().map(|e| e.length).sum();
    let bar = progress_bar(total, !args.quiet && io::stderr().is_terminal());
    // Off the terminal before the summary or the error line, whatever happens.
    let _clear = ClearOnDrop(bar.clone());
    let echo: Echo = {
        let bar = bar.clone();
        Arc::new(move |line: &str| bar.suspend(|| eprintln!("{line}")))
    };
    let conn = Connection::start(&launch, args.hello_timeout, echo)?;
    let mut shipped = Shipped::default();
    let result = ship(
        conn,
        &prepared.source,
        &prepared.header,
        extents,
        |done| bar.set_position(done),
        &mut shipped,
    );
    report.bytes_read = shipped.data_bytes + shipped.zero_bytes;
    report.data_bytes = shipped.data_bytes;
    report.zero_bytes = shipped.zero_bytes;
    report.records = shipped.records;
    report.bytes_on_wire = shipped.bytes_on_wire;
    result?;
    bar.finish_and_clear();
    Ok(())
}

/// What [`ship`] sent, so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct Shipped {
    pub records: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// The delta's bytes that reached the far end's stdin.
    pub bytes_on_wire: u64,
}

/// Writes a delta of `extents` (read from `source`, described by `header`)
/// to the apply `conn` runs, and checks its report. `progress` gets the
/// bytes of extents sent so far; `shipped` says what was sent, on failure
/// too.
pub fn ship(
    mut conn: Connection,
    source: &Source,
    header: &Header,
    extents: &[Extent],
    mut progress: impl FnMut(u64),
    shipped: &mut Shipped,
) -> Result<Applied, Error> {
    let Some(stdin) = conn.take_stdin() else {
        return Err(TransportError::Cut {
            host: conn.name().to_string(),
            sent: 0,
            status: "no stdin".into(),
            reason: "the remote shell's stdin is closed".into(),
        }
        .into());
    };
    crate::commands::grow_pipe(&stdin);
    let out = BufWriter::with_capacity(SHIP_BUF, stdin);
    let mut w = match Writer::new(out, header) {
        Ok(w) => w,
        Err(_) => return Err(conn.cut(0).into()),
    };
    let sent = send_extents_with_progress(source, extents, &mut w, |w| {
        let t = w.totals();
        progress(t.data_bytes + t.zero_bytes);
    });
    // What reached the remote shell: the buffer's content did not.
    let position = w.position() - w.get_ref().buffer().len() as u64;
    let t = *w.totals();
    shipped.data_bytes = t.data_bytes;
    shipped.zero_bytes = t.zero_bytes;
    shipped.records = t.records;
    shipped.bytes_on_wire = position;
    match sent {
        Ok(()) => {}
        Err(SendError::Write(_)) => return Err(conn.cut(position).into()),
        Err(other) => {
            // The apply gets no END record: it applies nothing more.
            conn.stop();
            return Err(other.into());
        }
    }
    let digest = w.digest();
    let (out, totals, len) = match w.finish() {
        Ok(done) => done,
        Err(_) => return Err(conn.cut(position).into()),
    };
    if out.into_inner().is_err() {
        return Err(conn.cut(len).into());
    }
    shipped.data_bytes = totals.data_bytes;
    shipped.zero_bytes = totals.zero_bytes;
    shipped.records = totals.records;
    shipped.bytes_on_wire = len;
    Ok(conn.finish(&Applied::new(&totals, len, digest))?)
}

struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Bytes of changed data sent of `total`, the rate and the time left, on
/// stderr when it is a terminal (`shown`); a hidden bar otherwise.
fn progress_bar(total: u64, shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{bytes:>10} of {total_bytes} [{bar:30}] {bytes_per_sec:>12}, {eta} left",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
