//! `lvmsync-rs sync` (and `lvmsync-rs SNAPSHOT [user@]host:DEST`): sends the
//! changes since a snapshot was taken to an `apply` on the backup host,
//! through ssh, and checks its report; no file is written on either side.

use std::io::{self, BufWriter, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::apply::ApplyError;
use crate::blockdev::Source;
use crate::commands::list::Target;
use crate::commands::send::Prepared;
use crate::extents::Extent;
use crate::send::{send_changes, Changes, SendError};
use crate::state::State;
use crate::stream::{Compression, Header, Writer};
use crate::transport::{Applied, Connection, Dest, Echo, Launch, TransportError};
use crate::units::human;
use crate::Error;

/// The buffer in front of the remote shell's stdin: a few records, so that
/// the encoding threads rarely wait for the pipe.
pub const SHIP_BUF: usize = 1 << 20;

pub struct Args {
    /// The change table, or, with `full`, nothing: then `data_source` is
    /// copied whole.
    pub target: Target,
    /// Copy all of `data_source` (a seed) instead of a snapshot's changes.
    pub full: bool,
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
    /// Apply even when DEST's state names another base.
    pub force: bool,
}

/// The summary `--json` prints.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub result: &'static str,
    pub error: Option<String>,
    pub source: Option<String>,
    pub remote_host: Option<String>,
    pub dest: String,
    /// Bytes of changed extents read from the data source.
    pub bytes_read: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub records: u64,
    /// The delta's length: what went to the remote shell.
    pub bytes_on_wire: u64,
    /// Where the delta started: past what DEST had confirmed of the same
    /// transfer, after an interruption; 0 for a whole delta.
    pub resumed_from: u64,
    pub seconds: f64,
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
    if result.is_ok() && !args.quiet && report.resumed_from > 0 {
        eprintln!(
            "lvmsync-rs sync: {} had confirmed this transfer up to byte {}: resumed from there",
            args.dest, report.resumed_from
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
    if args.full {
        let path = args.data_source.as_deref().unwrap_or(Path::new(""));
        let source = Source::open(path).map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
        report.source = Some(path.display().to_string());
        let (header, extents) = crate::commands::send::full_copy(&source, args.compression);
        let mut session = Session::connect(&dest, &args.link(), args.quiet, report)?;
        session.check_base(&args.dest, &header, args.force)?;
        return session.ship(&header, &source, Changes::read(&extents), report);
    }
    // Local inputs first: a missing snapshot needs no connection.
    let mut prepared = Prepared::new(&args.target, args.data_source.as_deref(), args.compression)?;
    report.source = Some(prepared.name());
    let link = args.link();
    let mut session = Session::connect(&dest, &link, args.quiet, report)?;
    let resume = session.resume_point(&prepared.header);
    prepared.header.resume_from = resume;
    session.check_base(&args.dest, &prepared.header, args.force)?;
    let changes = prepared.listing.changes();
    let (read, zero) = (clip(changes.read, resume), clip(changes.zero, resume));
    let changes = Changes {
        read: &read,
        zero: &zero,
    };
    session.ship(&prepared.header, &prepared.source, changes, report)
}

/// How to reach DEST and run the apply there.
pub struct Link {
    pub rsh: String,
    pub remote_path: String,
    pub create: bool,
    pub force: bool,
    pub hello_timeout: Duration,
}

impl Args {
    fn link(&self) -> Link {
        Link {
            rsh: self.rsh.clone(),
            remote_path: self.remote_path.clone(),
            create: self.create,
            force: self.force,
            hello_timeout: self.hello_timeout,
        }
    }
}

/// A running apply at DEST, after its hello, and the progress bar.
pub struct Session {
    conn: Connection,
    name: String,
    /// How long the remote may take no data before the run stops.
    stall: Duration,
    bar: ProgressBar,
    _clear: ClearOnDrop,
}

impl Session {
    /// Starts the apply at `dest` (through the remote shell, or as a local
    /// process) and waits for its hello.
    pub fn connect(
        dest: &Dest,
        link: &Link,
        quiet: bool,
        report: &mut Report,
    ) -> Result<Session, Error> {
        let launch = match dest {
            Dest::Remote { host, path } => {
                report.remote_host = Some(host.clone());
                Launch::remote(
                    &link.rsh,
                    host,
                    &link.remote_path,
                    link.create,
                    link.force,
                    path,
                )?
            }
            Dest::Local(path) => {
                let me = std::env::current_exe().map_err(|source| TransportError::Spawn {
                    program: "lvmsync-rs".into(),
                    source,
                })?;
                Launch::local(&me.display().to_string(), link.create, link.force, path)
            }
        };
        let bar = progress_bar(!quiet && io::stderr().is_terminal());
        let echo: Echo = {
            let bar = bar.clone();
            Arc::new(move |line: &str| bar.suspend(|| eprintln!("{line}")))
        };
        let conn = Connection::start(&launch, link.hello_timeout, echo)?;
        Ok(Session {
            conn,
            name: launch.name.clone(),
            stall: link.hello_timeout,
            // Off the terminal before the summary or the error line,
            // whatever happens.
            _clear: ClearOnDrop(bar.clone()),
            bar,
        })
    }

    /// DEST's recorded state, as its hello said.
    pub fn dest_state(&self) -> Option<&State> {
        self.conn.hello.state.as_ref()
    }

    /// Where a delta with `header` can start: past what DEST confirmed of
    /// the same transfer (same base, same target point in time), else 0.
    pub fn resume_point(&self, header: &Header) -> u64 {
        let (Some(a), Some(target)) = (
            self.dest_state().and_then(|s| s.applying.as_ref()),
            header.target.as_ref(),
        ) else {
            return 0;
        };
        if a.is(header.base.as_ref(), target) {
            a.confirmed.min(header.origin_size)
        } else {
            0
        }
    }

    /// Refuses, before any data is sent, a delta that DEST's state says is
    /// not for it (the remote checks again). `force` skips this.
    pub fn check_base(&mut self, dest: &str, header: &Header, force: bool) -> Result<(), Error> {
        if force {
            return Ok(());
        }
        if let Err(e) = crate::state::check(dest, self.dest_state(), header) {
            self.conn.stop();
            return Err(ApplyError::State(e).into());
        }
        Ok(())
    }

    /// Streams the delta of `header` with `changes` (their data read from
    /// `source`), and checks the apply's report.
    pub fn ship(
        mut self,
        header: &Header,
        source: &Source,
        changes: Changes<'_>,
        report: &mut Report,
    ) -> Result<(), Error> {
        let conn = &mut self.conn;
        let total = changes.total_bytes();
        self.bar.set_length(total);
        report.resumed_from = header.resume_from;
        let Some(stdin) = conn.take_stdin() else {
            return Err(TransportError::Cut {
                host: self.name.clone(),
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
            Err(_) => return Err(self.conn.cut(0).into()),
        };
        let bar = self.bar.clone();
        let watchdog = conn.watchdog(self.stall);
        let sent = send_changes(source, changes, &mut w, |w| {
            watchdog.tick();
            let t = w.totals();
            bar.set_position(t.data_bytes + t.zero_bytes);
        });
        // What reached the remote shell: the buffer's content did not.
        let position = w.position() - w.get_ref().buffer().len() as u64;
        let t = *w.totals();
        report.bytes_read = t.data_bytes + t.zero_bytes;
        report.data_bytes = t.data_bytes;
        report.zero_bytes = t.zero_bytes;
        report.records = t.records;
        report.bytes_on_wire = position;
        let flushed = match sent {
            Ok(()) => w.flush().map_err(SendError::Write),
            Err(e) => Err(e),
        };
        let stalled = watchdog.fired();
        drop(watchdog);
        if stalled {
            self.conn.stop();
            return Err(TransportError::Stalled {
                host: self.name.clone(),
                sent: position,
                after: self.stall,
            }
            .into());
        }
        match flushed {
            Ok(()) => {}
            Err(SendError::Write(_)) => return Err(self.conn.cut(position).into()),
            Err(other) => {
                // The apply gets no END record: it applies nothing more.
                self.conn.stop();
                return Err(other.into());
            }
        }
        let digest = w.digest();
        let (out, totals, len) = match w.finish() {
            Ok(done) => done,
            Err(_) => return Err(self.conn.cut(position).into()),
        };
        if out.into_inner().is_err() {
            return Err(self.conn.cut(len).into());
        }
        self.bar.finish_and_clear();
        report.bytes_read = totals.data_bytes + totals.zero_bytes;
        report.data_bytes = totals.data_bytes;
        report.zero_bytes = totals.zero_bytes;
        report.records = totals.records;
        report.bytes_on_wire = len;
        self.conn
            .finish(&Applied::new(&totals, len, digest), self.stall)?;
        Ok(())
    }

    /// Ends the apply without sending a delta.
    pub fn stop(mut self) {
        self.conn.stop();
    }
}

/// The parts of `extents` at or after `from`.
pub fn clip(extents: &[Extent], from: u64) -> Vec<Extent> {
    extents
        .iter()
        .filter(|e| e.offset + e.length > from)
        .map(|e| {
            let start = e.offset.max(from);
            Extent {
                offset: start,
                length: e.offset + e.length - start,
            }
        })
        .collect()
}

struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Bytes of changed data sent of the total, the rate and the time left, on
/// stderr when it is a terminal (`shown`); a hidden bar otherwise.
fn progress_bar(shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{bytes:>10} of {total_bytes} [{bar:30}] {bytes_per_sec:>12}, {eta} left",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
