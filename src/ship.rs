//! Shipping a delta to a destination: the sending half (start the apply at
//! DEST, through the remote shell or as a local process, read its hello,
//! check the delta's base against DEST's state, resume a transfer DEST
//! confirmed partway, stream the delta with a stall watchdog, check the
//! report) and the receiving half (`apply --remote`: open DEST, say hello
//! with its state, apply, say it is alive while it syncs, report).
//!
//! The protocol, on top of the delta stream itself:
//!
//! 1. The sender runs `RSH [user@]host 'lvmsync-rs' 'apply' '--remote'
//!    '--expect-format' 'F' [--create] [--force] '--' '-' 'DEST'`, every
//!    word quoted for the remote shell, `F` being the format version of
//!    the delta it writes (2, or 3 with zstd). The far end refuses at once
//!    when it does not read version `F`.
//! 2. The far end opens and checks DEST, then writes one line on its
//!    stdout: `LVMSYNC-APPLY <protocol> <format version F> <dest size>
//!    <state>`, the state being DEST's state file as one line of JSON, or
//!    `-`. The sender waits for it (`--timeout`) before it sends a byte,
//!    stops when the protocol or the format differs, refuses a delta for
//!    another base, and resumes a transfer the state says is partway.
//! 3. The delta goes to the far end's stdin, exactly as `send -o -` writes
//!    it. The far end reads its header and checks the version again.
//! 4. From the END record on, while it syncs DEST, the far end says
//!    [`ALIVE`] every [`ALIVE_EVERY`]; the sender stops it when it says
//!    nothing for `--timeout`.
//! 5. Once DEST is synced, the far end writes `LVMSYNC-APPLIED {json}` (a
//!    [`Receipt`]) and exits 0. The sender checks it against what it sent.

use std::io::{self, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::apply::{self, ApplyError, OpenDest};
use crate::files::{self, DeltaInput, DELTA_READ_BUF};
use crate::progress::{Progress, Style};
use crate::send::{Delta, SendError};
use crate::state::State;
use crate::stream::Totals;
use crate::throttle::Throttled;
use crate::transport::{
    Connection, Echo, Expect, Hello, Launch, Location, TransportError, Watchdog,
};
use crate::Error;

/// The version of the exchange around the delta (hello, keepalive and
/// report lines).
pub const PROTOCOL: u32 = 3;
/// The first word of the far end's hello line.
pub const HELLO: &str = "LVMSYNC-APPLY";
/// The first word of the far end's report line.
const REPORT: &str = "LVMSYNC-APPLIED";
/// The line the far end says every [`ALIVE_EVERY`] once it has read the
/// END record, while it syncs DEST before its report.
pub const ALIVE: &str = "LVMSYNC-ALIVE";
/// How often the far end says [`ALIVE`]: well within the shortest
/// `--timeout` (1 s).
const ALIVE_EVERY: Duration = Duration::from_millis(250);
/// How the far end says hello to a sender of deltas of format version
/// `format`.
pub fn expect(format: u32) -> Expect {
    Expect {
        word: HELLO,
        protocol: PROTOCOL,
        format,
        what: "delta format version",
        role: "apply",
    }
}
/// The buffer in front of the remote shell's stdin: a few records, so that
/// the encoding threads rarely wait for the pipe.
const SHIP_BUF: usize = 1 << 20;

/// The far end's hello line, to a sender of format version `format`, for
/// a DEST of `dest_size` bytes whose state is `state`.
fn hello_line(format: u32, dest_size: u64, state: Option<&State>) -> String {
    let rest = match state {
        Some(st) => serde_json::to_string(st).expect("plain fields serialize"),
        None => "-".into(),
    };
    Hello {
        protocol: PROTOCOL,
        format,
        dest_size,
        rest,
    }
    .line(HELLO)
}

/// DEST's state, as a hello line carries it; none when it says `-`, or
/// when what it says cannot be read.
fn hello_state(hello: &Hello) -> Option<State> {
    match hello.rest.as_str() {
        "" | "-" => None,
        text => serde_json::from_str(text).ok(),
    }
}

/// What the far end applied, as its report line says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Receipt {
    pub records: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub payload_bytes: u64,
    /// The delta's length, END record included.
    pub stream_bytes: u64,
    /// The END record's digest that the far end checked, as 32 hex digits.
    pub digest: String,
}

impl Receipt {
    pub fn new(totals: &Totals, stream_bytes: u64, digest: u128) -> Receipt {
        Receipt {
            records: totals.records,
            data_bytes: totals.data_bytes,
            zero_bytes: totals.zero_bytes,
            payload_bytes: totals.payload_bytes,
            stream_bytes,
            digest: format!("{digest:032x}"),
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{REPORT} {}",
            serde_json::to_string(self).expect("plain fields serialize")
        )
    }

    /// `None` when `line` is not a report line; `Some(None)` when it is one
    /// that cannot be read.
    pub fn parse(line: &str) -> Option<Option<Receipt>> {
        let rest = line.strip_prefix(REPORT)?.strip_prefix(' ')?;
        Some(serde_json::from_str(rest).ok())
    }

    /// The first difference from `sent`.
    fn differs(&self, sent: &Receipt) -> Option<(&'static str, String, String)> {
        let n = |what, a: u64, b: u64| (a != b).then(|| (what, a.to_string(), b.to_string()));
        n("records", self.records, sent.records)
            .or_else(|| n("data bytes", self.data_bytes, sent.data_bytes))
            .or_else(|| n("zero bytes", self.zero_bytes, sent.zero_bytes))
            .or_else(|| n("payload bytes", self.payload_bytes, sent.payload_bytes))
            .or_else(|| n("delta bytes", self.stream_bytes, sent.stream_bytes))
            .or_else(|| {
                (self.digest != sent.digest)
                    .then(|| ("the digest", self.digest.clone(), sent.digest.clone()))
            })
    }
}

/// The words of the far end's command: `program` (one or more words, such
/// as `sudo lvmsync-rs`), then the options (`format`: the delta's format
/// version), then `--`, so that a DEST starting with `-` is a path.
fn apply_words(
    program: &[String],
    format: u32,
    create: bool,
    force: bool,
    dest: &str,
) -> Vec<String> {
    let mut words = program.to_vec();
    words.extend(["apply", "--remote", "--expect-format", &format.to_string()].map(String::from));
    if create {
        words.push("--create".into());
    }
    if force {
        words.push("--force".into());
    }
    words.extend(["--", "-", dest].map(String::from));
    words
}

/// How to reach DEST and run the apply there.
#[derive(Debug, Clone)]
pub struct Link {
    /// The remote shell, as one string (split into words).
    pub rsh: String,
    /// The far end's lvmsync-rs program.
    pub remote_path: String,
    /// Create DEST as a regular file when it does not exist.
    pub create: bool,
    /// Apply even when DEST's state names another base.
    pub force: bool,
    /// How long to wait for the hello, for the far end to take more data,
    /// and for it to say it is alive while it syncs.
    pub timeout: Duration,
    /// How progress is shown on stderr.
    pub progress: Style,
    /// The command progress lines name.
    pub command: &'static str,
    /// At most this many bytes per second to DEST (`--bwlimit`).
    pub bwlimit: Option<u64>,
}

impl Default for Link {
    /// `ssh`, `lvmsync-rs` in the remote PATH, a minute's timeout, nothing
    /// created or forced, no progress, no limit.
    fn default() -> Link {
        Link {
            rsh: "ssh".into(),
            remote_path: "lvmsync-rs".into(),
            create: false,
            force: false,
            timeout: Duration::from_secs(60),
            progress: Style::Hidden,
            command: "",
            bwlimit: None,
        }
    }
}

impl Link {
    /// How the apply at `dest` is started, for a delta of format version
    /// `format`: through the remote shell, or as this program on this host.
    pub fn launch(&self, dest: &Location, format: u32) -> Result<Launch, Error> {
        let expect = expect(format);
        Ok(match dest {
            Location::Remote { host, path } => {
                Launch::remote_with(&self.rsh, host, &self.remote_path, expect, |p| {
                    apply_words(p, format, self.create, self.force, path)
                })?
            }
            Location::Local(path) => {
                let me = std::env::current_exe().map_err(|source| TransportError::Spawn {
                    program: "lvmsync-rs".into(),
                    source,
                })?;
                Launch::local_with(&me.display().to_string(), expect, "local apply", |p| {
                    apply_words(p, format, self.create, self.force, path)
                })
            }
        })
    }
}

/// What a transfer did: what `sync --json` prints.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Transfer {
    pub result: &'static str,
    pub error: Option<String>,
    /// The kind of failure (see [`crate::error::Kind`]) and its exit status.
    pub error_kind: Option<&'static str>,
    pub exit_code: Option<u8>,
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
    /// What `--compress` asked for (`lz4`, `zstd:3`, `auto`...).
    pub compression: String,
    /// With `--compress auto`: what it chose and why.
    pub auto: Option<crate::adapt::AutoReport>,
}

impl Transfer {
    fn count(&mut self, totals: &Totals, on_wire: u64) {
        self.bytes_read = totals.data_bytes + totals.zero_bytes;
        self.data_bytes = totals.data_bytes;
        self.zero_bytes = totals.zero_bytes;
        self.records = totals.records;
        self.bytes_on_wire = on_wire;
    }
}

/// A running apply at DEST, after its hello, and the progress shown.
pub struct Session {
    conn: Connection,
    name: String,
    /// DEST's recorded state, as the hello said.
    state: Option<State>,
    /// How long the far end may take no data before the run stops.
    stall: Duration,
    bwlimit: Option<u64>,
    progress: Progress,
    /// Whether a remote shell runs the apply.
    remote: bool,
}

impl Session {
    /// Starts the apply at `dest` for a delta of format version `format`
    /// (see [`crate::stream::Compression::version`]) and waits for its
    /// hello.
    pub fn connect(
        dest: &Location,
        link: &Link,
        format: u32,
        transfer: &mut Transfer,
    ) -> Result<Session, Error> {
        if let Location::Remote { host, .. } = dest {
            transfer.remote_host = Some(host.clone());
        }
        let launch = link.launch(dest, format)?;
        let progress = Progress::new(link.progress, link.command, "sending", 0);
        let echo: Echo = progress.printer();
        let conn = Connection::start(&launch, link.timeout, echo)?;
        let state = hello_state(&conn.hello);
        Ok(Session {
            conn,
            name: launch.name.clone(),
            state,
            stall: link.timeout,
            bwlimit: link.bwlimit,
            progress,
            remote: launch.remote,
        })
    }

    /// DEST's recorded state, as its hello said.
    pub fn dest_state(&self) -> Option<&State> {
        self.state.as_ref()
    }

    /// Where `delta` can start (see [`resume_point`]).
    pub fn resume_point(&self, delta: &Delta) -> u64 {
        resume_point(self.dest_state(), delta)
    }

    /// Refuses, before any data is sent, a delta that DEST's state says is
    /// not for it (the far end checks again). `force` skips this.
    pub fn check_base(&mut self, dest: &str, delta: &Delta, force: bool) -> Result<(), Error> {
        if force {
            return Ok(());
        }
        if let Err(e) = crate::state::check(dest, self.dest_state(), &delta.header) {
            self.conn.stop();
            return Err(ApplyError::State(e).into());
        }
        Ok(())
    }

    /// Streams `delta` and checks the apply's report.
    pub fn ship(mut self, delta: &Delta, transfer: &mut Transfer) -> Result<(), Error> {
        let conn = &mut self.conn;
        self.progress
            .set_total(delta.changes.as_changes().total_bytes());
        transfer.resumed_from = delta.header.resume_from;
        transfer.compression = delta.compression_name();
        if let (Some(auto), true) = (&delta.auto, self.remote) {
            auto.start_remote();
        }
        let Some(stdin) = conn.take_stdin() else {
            return Err(TransportError::Cut {
                host: self.name.clone(),
                sent: 0,
                status: "no stdin".into(),
                reason: "the remote shell's stdin is closed".into(),
            }
            .into());
        };
        files::grow_pipe(&stdin);
        let watchdog = conn.watchdog(self.stall);
        // Unlimited, the rate is one that is never reached.
        let rate = self.bwlimit.unwrap_or(u64::MAX / 4);
        let out = BufWriter::with_capacity(
            SHIP_BUF.min(rate as usize),
            Throttled::new(stdin, rate, watchdog.ticker()),
        );
        let mut w = match delta.writer(out) {
            Ok(w) => w,
            Err(_) => return Err(self.conn.cut(0).into()),
        };
        let progress = self.progress.handle();
        let sent = delta.send(&mut w, |w| {
            watchdog.tick();
            let t = w.totals();
            progress.set(t.data_bytes + t.zero_bytes);
        });
        // What reached the remote shell: the buffer's content did not.
        let position = w.position() - w.get_ref().buffer().len() as u64;
        transfer.count(w.totals(), position);
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
        transfer.count(&totals, len);
        transfer.auto = delta.auto.as_ref().map(|a| a.report());
        await_receipt(self.conn, &Receipt::new(&totals, len, digest), self.stall)?;
        Ok(())
    }

    /// Ends the apply without sending a delta.
    pub fn stop(mut self) {
        self.conn.stop();
    }
}

/// After the whole delta was written and stdin closed: waits for the
/// report and the end of the apply, and checks the report against `sent`.
/// The apply says [`ALIVE`] while it finishes; when it says nothing for
/// `quiet`, it is stopped.
fn await_receipt(
    mut conn: Connection,
    sent: &Receipt,
    quiet: Duration,
) -> Result<Receipt, TransportError> {
    /// A line the far end ends with.
    enum Last {
        Alive,
        Report(Option<Receipt>),
    }
    let host = conn.name().to_string();
    let watchdog: Watchdog = conn.watchdog(quiet);
    let ended = conn.wait_for_end(|line| {
        watchdog.tick();
        if line == ALIVE {
            Some(Last::Alive)
        } else {
            Receipt::parse(line).map(Last::Report)
        }
    });
    let hung = watchdog.fired();
    drop(watchdog);
    if hung {
        return Err(TransportError::Unfinished { host, after: quiet });
    }
    let (said, shown) = ended?;
    let report = said.into_iter().rev().find_map(|s| match s {
        Last::Alive => None,
        Last::Report(r) => Some(r),
    });
    let Some(Some(receipt)) = report else {
        return Err(TransportError::NoReport {
            host,
            status: shown,
        });
    };
    if let Some((what, applied, sent)) = receipt.differs(sent) {
        return Err(TransportError::ReportMismatch {
            host,
            what,
            applied,
            sent,
        });
    }
    Ok(receipt)
}

/// Where `delta` can start on a DEST whose state is `state`: past what
/// DEST confirmed of the same transfer (same base, same target point in
/// time), else 0.
pub fn resume_point(state: Option<&State>, delta: &Delta) -> u64 {
    let header = &delta.header;
    let (Some(a), Some(target)) = (
        state.and_then(|s| s.applying.as_ref()),
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

/// The receiving half: what `apply --remote` is asked to do.
#[derive(Debug, Clone)]
pub struct Receive {
    pub delta: DeltaInput,
    pub dest: std::path::PathBuf,
    pub create: bool,
    pub force: bool,
    /// The delta format version the sender writes.
    pub format: u32,
}

/// The far end of a shipment: checks that it reads the sender's format
/// version, opens DEST, says hello on stdout (with that version), applies
/// the delta from stdin, says it is alive while it syncs DEST, and
/// reports what it applied.
pub fn receive(args: &Receive) -> Result<(), Error> {
    if !(crate::stream::OLDEST_VERSION..=crate::stream::VERSION).contains(&args.format) {
        return Err(Error::FormatVersion {
            theirs: args.format,
            ours: crate::stream::VERSION,
        });
    }
    if let DeltaInput::File(path) = &args.delta {
        apply::check_distinct(path, &args.dest)?;
    }
    let dest = OpenDest::open(&args.dest, args.create, None, args.force)?;
    let say = |line: String| {
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(Error::Output)
    };
    say(hello_line(args.format, dest.size(), dest.state.as_ref()))?;
    let input = BufReader::with_capacity(DELTA_READ_BUF, args.delta.open()?);
    let finishing = Arc::new(AtomicBool::new(false));
    let name = args.delta.name();
    let options = apply::Options {
        create: args.create,
        snapback: None,
        force: args.force,
        finishing: Some(finishing.clone()),
        progress: None,
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let applied = std::thread::scope(|scope| {
        // After the last byte, the sender waits for the report while this
        // side finishes (syncs DEST): it says it is alive meanwhile, so
        // that the sender can tell a slow end from a hung one.
        scope.spawn(move || loop {
            match stopped.recv_timeout(ALIVE_EVERY) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            if finishing.load(Ordering::SeqCst) && say(ALIVE.to_string()).is_err() {
                return;
            }
        });
        let result = match apply::open_stream(input, &name, Path::new(&args.dest)) {
            Ok(reader) => apply::apply_to(reader, &name, dest, &options),
            // A DEST made for this delta goes again when its header fails.
            Err(e) => {
                dest.discard();
                Err(e)
            }
        };
        drop(stop);
        result
    })?;
    say(Receipt::new(&applied.totals, applied.stream_len, applied.digest).line())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_command_ends_with_a_path_after_the_options() {
        let link = Link {
            rsh: "ssh -p 22".into(),
            create: true,
            ..Link::default()
        };
        let l = link
            .launch(
                &Location::Remote {
                    host: "root@h".into(),
                    path: "-x y".into(),
                },
                2,
            )
            .unwrap();
        assert_eq!(
            l.argv,
            [
                "ssh",
                "-p",
                "22",
                "root@h",
                "'lvmsync-rs' 'apply' '--remote' '--expect-format' '2' '--create' '--' '-' '-x y'"
            ]
        );
    }

    #[test]
    fn hello_and_report_lines_read_back() {
        let line = hello_line(2, 4096, None);
        assert_eq!(line, "LVMSYNC-APPLY 3 2 4096 -");
        let h = Hello::parse(&line, HELLO).unwrap();
        assert_eq!((h.protocol, h.format, h.dest_size), (3, 2, 4096));
        assert_eq!(hello_state(&h), None);
        let state = State {
            holds: Some(crate::stream::PointInTime {
                origin_uuid: "o".into(),
                snapshot_uuid: "s".into(),
                snapshot: "vg/a b".into(),
                time: "2026-11-26 08:00:00 +0000".into(),
            }),
            applying: None,
        };
        let h = Hello::parse(&hello_line(3, 4096, Some(&state)), HELLO).unwrap();
        assert_eq!(h.format, 3);
        assert_eq!(hello_state(&h), Some(state));
        let totals = Totals {
            records: 3,
            data_bytes: 10,
            zero_bytes: 20,
            payload_bytes: 5,
        };
        let a = Receipt::new(&totals, 500, 0xabc);
        assert_eq!(a.digest, "00000000000000000000000000000abc");
        assert_eq!(Receipt::parse(&a.line()), Some(Some(a.clone())));
        assert_eq!(Receipt::parse("LVMSYNC-APPLIED {"), Some(None));
        assert_eq!(Receipt::parse("other"), None);
        let mut b = a.clone();
        assert_eq!(b.differs(&a), None);
        b.digest = "0".into();
        assert_eq!(b.differs(&a).unwrap().0, "the digest");
        b.records = 4;
        assert_eq!(b.differs(&a).unwrap().0, "records");
    }
}
