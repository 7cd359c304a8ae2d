//! Reaching the far end of `sync`, `backup` and `verify`: where a
//! destination is (`[user@]host:PATH` or a local path), the remote shell's
//! command line and its quoting, starting the far end (through the remote
//! shell, or as a local process), waiting for its hello line, relaying
//! what it says on stderr, and telling a failed login, a missing program,
//! a refusal and a cut connection apart.
//!
//! A far end is an `lvmsync-rs` run with hidden options (`apply --remote`,
//! `verify --remote-side`). Before anything else it writes one hello line
//! on its stdout, `WORD PROTOCOL FORMAT SIZE REST`, once it has opened
//! and checked its copy; [`Expect`] says which word, protocol and format
//! the caller speaks, and the caller stops at once when they differ.
//! After the hello its stdout is the caller's ([`Connection::take_stdout`]):
//! lines for the apply of a delta (see [`crate::ship`]), binary block
//! hashes for a comparison (see [`crate::verify`]).
//!
//! The far end's stderr comes back prefixed with the host's name; an error
//! line of the far `lvmsync-rs` becomes the reason in the caller's error.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

/// How long the sender waits for the remote shell to end once the
/// connection is known to be broken.
const WIND_DOWN: Duration = Duration::from_secs(10);
/// The prefix of the one-line error an `lvmsync-rs` ends with.
const ERROR_PREFIX: &str = "lvmsync-rs: error: ";
/// The reason when the remote said nothing.
const SILENT: &str = "it said nothing on stderr";
/// The longest line read from a far end (its hello with DEST's state, its
/// report, a line of its stderr): longer ones are cut, or refused before
/// the hello.
const MAX_LINE: usize = 64 << 10;
/// Lines of the remote's stderr kept to explain a failure.
const KEEP_LINES: usize = 4;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("--rsh {0:?}: {1}")]
    BadRsh(String, &'static str),
    #[error("{0:?}: name the destination path after the host: HOST:PATH")]
    NoRemotePath(String),
    #[error("cannot run {program}: {source}; name the remote shell with -e/--rsh")]
    Spawn { program: String, source: io::Error },
    #[error("{host}: the remote shell could not connect or log in ({status}): {reason}")]
    Login {
        host: String,
        status: String,
        reason: String,
    },
    #[error("{host}: the remote command {program} was not found or cannot be run ({status}): {reason}; install lvmsync-rs there, or name it with --remote-path")]
    RemoteMissing {
        host: String,
        program: String,
        status: String,
        reason: String,
    },
    #[error("{host}: the {role} refused: {reason}")]
    Refused {
        host: String,
        role: &'static str,
        reason: String,
    },
    #[error("{host}: the remote command ended before the handshake ({status}): {reason}")]
    NoHello {
        host: String,
        status: String,
        reason: String,
    },
    #[error("{host}: the remote command sent a line of more than {} KiB before its handshake: it is not the lvmsync-rs this one expects; nothing was sent", MAX_LINE >> 10)]
    LineTooLong { host: String },
    #[error("{0:?}: {1}")]
    BadHost(String, &'static str),
    #[error("{host}: no handshake within {} s: the remote command said nothing; nothing was sent", .after.as_secs())]
    HelloTimeout { host: String, after: Duration },
    #[error("{host}: the remote lvmsync-rs speaks protocol {protocol} and {what} {format}, this one protocol {ours_protocol} and {what} {ours_format}: install the same version on both hosts; nothing was sent")]
    Mismatch {
        host: String,
        what: &'static str,
        protocol: u32,
        format: u32,
        ours_protocol: u32,
        ours_format: u32,
    },
    #[error("{host}: the connection ended after {sent} bytes of the delta were sent ({status}): {reason}; records can be applied again: run the same command again to complete the sync")]
    Cut {
        host: String,
        sent: u64,
        status: String,
        reason: String,
    },
    #[error("{host}: the remote took no data for {} s after {sent} bytes of the delta: it stopped reading (a hung disk or connection); stopped it. Records can be applied again: run the same command again to complete the sync", .after.as_secs())]
    Stalled {
        host: String,
        sent: u64,
        after: Duration,
    },
    #[error("{host}: the remote said nothing for {} s after the whole delta was sent, while it should have been syncing DEST: a hung disk or connection; stopped it. DEST's state keeps what was confirmed: run the same command again to complete the sync", .after.as_secs())]
    Unfinished { host: String, after: Duration },
    #[error("{host}: the {role} failed ({status}): {reason}")]
    Failed {
        host: String,
        role: &'static str,
        status: String,
        reason: String,
    },
    #[error("{host}: {what} ({status}): {reason}")]
    Broken {
        host: String,
        what: String,
        status: String,
        reason: String,
    },
    #[error("{host}: the apply ended without reporting what it applied ({status}); run the same command again")]
    NoReport { host: String, status: String },
    #[error("{host}: the apply reports {what} {applied}, but the sender sent {sent}; run the same command again")]
    ReportMismatch {
        host: String,
        what: &'static str,
        applied: String,
        sent: String,
    },
}

/// Where a copy is: on this host, or `[user@]host` and the path there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(String),
    /// `[user@]host` and the path there.
    Remote {
        host: String,
        path: String,
    },
}

impl Location {
    /// `[user@]host:PATH` is remote; a path that starts with `/`, `./` or
    /// `../`, has no `:`, or has a `/` before its first `:` is local.
    /// `[user@][v6addr]:PATH` names an IPv6 address.
    pub fn parse(s: &str) -> Result<Location, TransportError> {
        if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") {
            return Ok(Location::Local(s.to_string()));
        }
        let split = match s.find("[") {
            // user@[addr]:path or [addr]:path
            Some(open) if open == 0 || s[..open].ends_with('@') => {
                s[open..].find("]:").map(|close| {
                    let host = format!("{}{}", &s[..open], &s[open + 1..open + close]);
                    (host, &s[open + close + 2..])
                })
            }
            _ => s
                .find(':')
                .filter(|&colon| colon > 0 && !s[..colon].contains('/'))
                .map(|colon| (s[..colon].to_string(), &s[colon + 1..])),
        };
        match split {
            None => Ok(Location::Local(s.to_string())),
            Some((_, "")) => Err(TransportError::NoRemotePath(s.to_string())),
            Some((host, path)) => {
                check_host(&host).map_err(|why| TransportError::BadHost(s.to_string(), why))?;
                Ok(Location::Remote {
                    host,
                    path: path.to_string(),
                })
            }
        }
    }
}

/// Refuses a `[user@]host` that the remote shell could read as something
/// else: an option (`-oProxyCommand=...`), an empty user or host, white
/// space or control characters.
fn check_host(host: &str) -> Result<(), &'static str> {
    let (user, name) = match host.rsplit_once('@') {
        Some((user, name)) => (Some(user), name),
        None => (None, host),
    };
    if name.is_empty() {
        return Err("no host before the ':'; write [user@]host:PATH");
    }
    if user == Some("") {
        return Err("no user before the '@'; write [user@]host:PATH");
    }
    if host.starts_with('-') || name.starts_with('-') {
        return Err("a host cannot start with '-' (the remote shell would read it as an option)");
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a host cannot contain white space or control characters");
    }
    Ok(())
}

/// Splits a command into words as a shell would, for the simple cases:
/// whitespace separates words; `'...'` and `"..."` quote (a backslash
/// escapes `"` and `\` inside double quotes); a backslash outside quotes
/// escapes the next character.
pub fn split_words(cmd: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a single quote is not closed"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("a double quote is not closed"),
                        },
                        Some(c) => word.push(c),
                        None => return Err("a double quote is not closed"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("it ends with a backslash"),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err("it is empty");
    }
    Ok(words)
}

/// `word` quoted for a POSIX shell: in single quotes, each `'` written as
/// `'\''`. The shell reads it back as exactly `word`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// What a launched program says hello with, and what it must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The first word of its hello line.
    pub word: &'static str,
    /// The protocol and the version of what follows the hello.
    pub protocol: u32,
    pub format: u32,
    /// What `format` is the version of, for messages.
    pub what: &'static str,
    /// What the program is called in messages: `apply`, `verify`.
    pub role: &'static str,
}

/// A far end's hello line: `WORD PROTOCOL FORMAT SIZE REST`, REST being
/// whatever each kind of far end adds (the apply: DEST's state; verify:
/// its block size and kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    pub format: u32,
    /// The size of the far end's copy (0 for a file about to be created).
    pub dest_size: u64,
    /// The rest of the line, after the size and one space.
    pub rest: String,
}

impl Hello {
    /// The line, starting with `word`.
    pub fn line(&self, word: &str) -> String {
        let mut line = format!(
            "{word} {} {} {}",
            self.protocol, self.format, self.dest_size
        );
        if !self.rest.is_empty() {
            line.push(' ');
            line.push_str(&self.rest);
        }
        line
    }

    /// `None` when `line` is not a hello line starting with `word`. The
    /// protocol and format are read first, whatever follows, so that
    /// another version is told apart from garbage.
    pub fn parse(line: &str, word: &str) -> Option<Hello> {
        let mut fields = line.splitn(5, ' ');
        if fields.next() != Some(word) {
            return None;
        }
        Some(Hello {
            protocol: fields.next()?.parse().ok()?,
            format: fields.next()?.parse().ok()?,
            dest_size: fields.next()?.trim().parse().ok()?,
            rest: fields.next().unwrap_or("").trim().to_string(),
        })
    }

    /// The words of the rest of the line.
    pub fn words(&self) -> Vec<&str> {
        self.rest.split_ascii_whitespace().collect()
    }
}

/// How a program that runs the apply (or another far end) is started.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The program and its arguments, as given to exec.
    pub argv: Vec<String>,
    /// The name messages and the remote's stderr lines are prefixed with.
    pub name: String,
    /// The remote lvmsync-rs program (for messages).
    pub program: String,
    /// Whether a remote shell runs it (its exit status 255 is then a
    /// failed connection or login).
    pub remote: bool,
    /// Its hello line.
    pub expect: Expect,
}

impl Launch {
    /// `rsh` (split into words) to `host`, running the words `words` makes
    /// from `program` (split into words), every remote word quoted; the
    /// program says hello as `expect` says.
    pub fn remote_with(
        rsh: &str,
        host: &str,
        program: &str,
        expect: Expect,
        words: impl FnOnce(&[String]) -> Vec<String>,
    ) -> Result<Launch, TransportError> {
        let mut argv = split_words(rsh).map_err(|e| TransportError::BadRsh(rsh.into(), e))?;
        let program_words =
            split_words(program).map_err(|e| TransportError::BadRsh(program.into(), e))?;
        let line = words(&program_words)
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ");
        argv.push(host.to_string());
        argv.push(line);
        Ok(Launch {
            argv,
            name: host.to_string(),
            program: program.to_string(),
            remote: true,
            expect,
        })
    }

    /// The words `words` makes from `program` on this host, without a
    /// shell; the program says hello as `expect` says.
    pub fn local_with(
        program: &str,
        expect: Expect,
        name: &str,
        words: impl FnOnce(&[String]) -> Vec<String>,
    ) -> Launch {
        Launch {
            argv: words(&[program.to_string()]),
            name: name.into(),
            program: program.to_string(),
            remote: false,
            expect,
        }
    }
}

/// What the remote's stderr said.
#[derive(Default)]
struct RemoteStderr {
    /// Set once the hello arrived: lines are then echoed as they come.
    established: bool,
    /// Lines held back until the hello.
    held: Vec<String>,
    /// The last few lines.
    recent: VecDeque<String>,
    /// The remote lvmsync-rs's error, without its prefix.
    error: Option<String>,
}

impl RemoteStderr {
    /// A line to show once the hello arrived.
    fn hold(&mut self, line: String) {
        self.held.push(line.clone());
        self.remember(line);
    }

    fn remember(&mut self, line: String) {
        self.recent.push_back(line);
        if self.recent.len() > KEEP_LINES {
            self.recent.pop_front();
        }
    }

    fn reason(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        let lines: Vec<&str> = self
            .recent
            .iter()
            .map(String::as_str)
            .filter(|l| !l.trim().is_empty())
            .collect();
        if lines.is_empty() {
            SILENT.into()
        } else {
            lines.join("; ")
        }
    }
}

/// Where echoed lines go: each is already prefixed.
pub type Echo = Arc<dyn Fn(&str) + Send + Sync>;

/// A running apply, after a successful handshake.
pub struct Connection {
    child: Child,
    name: String,
    stdin: Option<ChildStdin>,
    /// The program's stdout after its hello line.
    stdout: Option<BufReader<ChildStdout>>,
    /// What it is called in messages.
    role: &'static str,
    stderr_log: Arc<Mutex<RemoteStderr>>,
    stderr_done: mpsc::Receiver<()>,
    readers: Vec<JoinHandle<()>>,
    echo: Echo,
    /// Whether a remote shell runs the apply.
    remote: bool,
    /// What the hello said.
    pub hello: Hello,
}

fn describe_status(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        None => "still running, stopped".into(),
    }
}

impl Connection {
    /// Starts the apply and waits for its hello. Lines of its stderr are
    /// passed to `echo`, prefixed with the launch's name, once the hello
    /// has arrived (those before with it); an `lvmsync-rs` error line is
    /// kept for the error instead.
    pub fn start(
        launch: &Launch,
        hello_timeout: Duration,
        echo: Echo,
    ) -> Result<Connection, TransportError> {
        let mut child = Command::new(&launch.argv[0])
            .args(&launch.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| TransportError::Spawn {
                program: launch.argv[0].clone(),
                source,
            })?;
        let stderr_log = Arc::new(Mutex::new(RemoteStderr::default()));
        let (line_tx, lines) = mpsc::channel();
        let (done_tx, stderr_done) = mpsc::channel();
        let mut readers = Vec::new();
        let word = launch.expect.word;
        if let Some(out) = child.stdout.take() {
            // Lines until the hello; then stdout goes back to the caller,
            // with whatever was read after the hello still in its buffer.
            readers.push(std::thread::spawn(move || {
                let mut out = BufReader::new(out);
                while let Some(line) = read_line(&mut out) {
                    if line.cut {
                        let _ = line_tx.send(BeforeHello::TooLong);
                        return;
                    }
                    let line = line.text;
                    let hello = Hello::parse(&line, word);
                    if line_tx.send(BeforeHello::Line(line)).is_err() {
                        return;
                    }
                    if let Some(hello) = hello {
                        let _ = line_tx.send(BeforeHello::Hello(Box::new(hello), out));
                        return;
                    }
                }
            }));
        }
        if let Some(err) = child.stderr.take() {
            let (stderr_log, echo, name) = (stderr_log.clone(), echo.clone(), launch.name.clone());
            readers.push(std::thread::spawn(move || {
                for line in lines_of(err) {
                    let Ok(mut h) = stderr_log.lock() else { return };
                    if let Some(e) = line.strip_prefix(ERROR_PREFIX) {
                        h.error = Some(e.to_string());
                        continue;
                    }
                    if h.established {
                        echo(&format!("{name}: {}", crate::units::printable(&line)));
                        h.remember(line);
                    } else {
                        h.hold(line);
                    }
                }
                let _ = done_tx.send(());
            }));
        }
        let mut conn = Connection {
            child,
            name: launch.name.clone(),
            stdin: None,
            stdout: None,
            role: launch.expect.role,
            stderr_log,
            stderr_done,
            readers,
            echo,
            remote: launch.remote,
            hello: Hello {
                protocol: 0,
                format: 0,
                dest_size: 0,
                rest: String::new(),
            },
        };
        let deadline = Instant::now() + hello_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(BeforeHello::Hello(hello, out)) => {
                    conn.hello = *hello;
                    conn.stdout = Some(out);
                    break;
                }
                // The hello line itself is not kept.
                Ok(BeforeHello::Line(line)) if Hello::parse(&line, word).is_some() => {}
                // Something the login printed: held with the stderr
                // lines, to explain a failure or to be shown later.
                Ok(BeforeHello::Line(line)) => {
                    if let Ok(mut h) = conn.stderr_log.lock() {
                        h.hold(line);
                    }
                }
                Ok(BeforeHello::TooLong) => {
                    conn.stop();
                    return Err(TransportError::LineTooLong {
                        host: launch.name.clone(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    conn.stop();
                    return Err(TransportError::HelloTimeout {
                        host: launch.name.clone(),
                        after: hello_timeout,
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = conn.wind_down();
                    return Err(conn.before_hello(launch, status));
                }
            }
        }
        let expect = launch.expect;
        if conn.hello.protocol != expect.protocol || conn.hello.format != expect.format {
            conn.stop();
            return Err(TransportError::Mismatch {
                host: launch.name.clone(),
                what: expect.what,
                protocol: conn.hello.protocol,
                format: conn.hello.format,
                ours_protocol: expect.protocol,
                ours_format: expect.format,
            });
        }
        if let Ok(mut h) = conn.stderr_log.lock() {
            h.established = true;
            for line in std::mem::take(&mut h.held) {
                (conn.echo)(&format!(
                    "{}: {}",
                    conn.name,
                    crate::units::printable(&line)
                ));
            }
        }
        conn.stdin = conn.child.stdin.take();
        Ok(conn)
    }

    /// The apply's stdin, for the delta (once).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// The program's stdout after its hello line (once), for a far end
    /// that answers in binary.
    pub fn take_stdout(&mut self) -> Option<BufReader<ChildStdout>> {
        self.stdout.take()
    }

    /// The name messages use for the far end.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the stderr said, once the program ended (or after a while).
    fn reason(&self) -> String {
        let _ = self.stderr_done.recv_timeout(Duration::from_secs(2));
        self.stderr_log
            .lock()
            .map(|h| h.reason())
            .unwrap_or_else(|_| "unknown".into())
    }

    /// The error for a program that ended before its hello.
    fn before_hello(&self, launch: &Launch, status: Option<ExitStatus>) -> TransportError {
        let reason = self.reason();
        let error_line = self
            .stderr_log
            .lock()
            .map(|h| h.error.is_some())
            .unwrap_or(false);
        let host = launch.name.clone();
        let shown = describe_status(status);
        match status.and_then(|s| s.code()) {
            _ if error_line => TransportError::Refused {
                host,
                role: launch.expect.role,
                reason,
            },
            Some(255) if launch.remote => TransportError::Login {
                host,
                status: shown,
                reason,
            },
            Some(126 | 127) => TransportError::RemoteMissing {
                host,
                program: launch.program.clone(),
                status: shown,
                reason,
            },
            _ => TransportError::NoHello {
                host,
                status: shown,
                reason,
            },
        }
    }

    /// Closes the apply's stdin and waits a while for it to end; kills it
    /// if it does not.
    fn wind_down(&mut self) -> Option<ExitStatus> {
        drop(self.stdin.take());
        drop(self.child.stdin.take());
        let deadline = Instant::now() + WIND_DOWN;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    self.stop();
                    return None;
                }
            }
        }
    }

    /// Stops the apply: it gets no END record, so it applies nothing more.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the stderr said, or what a silent end means.
    fn reason_for(&self, status: Option<ExitStatus>) -> String {
        let reason = self.reason();
        if reason == SILENT && self.remote && status.and_then(|s| s.code()) == Some(255) {
            "the remote command was killed, or the connection was lost".into()
        } else {
            reason
        }
    }

    /// A watchdog that stops the apply when the delta makes no progress
    /// (see [`Watchdog`]) for `stall`.
    pub fn watchdog(&self, stall: Duration) -> Watchdog {
        Watchdog::start(self.child.id(), stall)
    }

    /// After writing to the apply failed (having sent `sent` bytes): the
    /// error, with the remote's reason.
    pub fn cut(mut self, sent: u64) -> TransportError {
        let status = self.wind_down();
        let reason = self.reason_for(status);
        TransportError::Cut {
            host: self.name.clone(),
            sent,
            status: describe_status(status),
            reason,
        }
    }

    /// When the far end stopped short (its stdout ended early, say):
    /// waits for its end and gives the error, `what` happened with its
    /// exit status and reason.
    pub fn broken(mut self, what: String) -> TransportError {
        let status = self.wind_down();
        let reason = self.reason_for(status);
        TransportError::Broken {
            host: self.name.clone(),
            what,
            status: describe_status(status),
            reason,
        }
    }

    /// Waits for the program to end, echoing what else it says on stdout;
    /// an error unless it exits 0. Returns the lines `keep` picks, and the
    /// exit status as messages show it.
    pub fn wait_for_end<T>(
        &mut self,
        mut keep: impl FnMut(&str) -> Option<T>,
    ) -> Result<(Vec<T>, String), TransportError> {
        drop(self.stdin.take());
        let mut kept = Vec::new();
        if let Some(out) = self.stdout.take() {
            for line in lines_of(out) {
                match keep(&line) {
                    Some(k) => kept.push(k),
                    None => (self.echo)(&format!(
                        "{}: {}",
                        self.name,
                        crate::units::printable(&line)
                    )),
                }
            }
        }
        let status = self.child.wait().ok();
        let shown = describe_status(status);
        if !status.is_some_and(|s| s.success()) {
            return Err(TransportError::Failed {
                host: self.name.clone(),
                role: self.role,
                status: shown,
                reason: self.reason_for(status),
            });
        }
        Ok((kept, shown))
    }

    /// Once the far end's answer was read: waits for its end; an error
    /// unless it exits 0.
    pub fn end(mut self) -> Result<(), TransportError> {
        self.wait_for_end(|_| None::<()>).map(|_| ())
    }
}

/// Stops a running apply that takes no data for a while, so that a remote
/// that stopped reading ends the run instead of blocking it forever: the
/// process running the remote shell is killed, and the blocked write fails.
/// [`Watchdog::tick`] says that data went through.
pub struct Watchdog {
    last: Arc<Mutex<Instant>>,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub after: Duration,
}

impl Watchdog {
    pub fn start(pid: u32, after: Duration) -> Watchdog {
        let last = Arc::new(Mutex::new(Instant::now()));
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = {
            let (last, stalled) = (last.clone(), stalled.clone());
            std::thread::spawn(move || loop {
                let idle = last.lock().map(|l| l.elapsed()).unwrap_or_default();
                if idle >= after {
                    stalled.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return;
                }
                let wait = (after - idle).min(Duration::from_millis(500));
                match stopped.recv_timeout(wait) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })
        };
        Watchdog {
            last,
            stalled,
            stop: Some(stop),
            thread: Some(thread),
            after,
        }
    }

    /// Data went through.
    pub fn tick(&self) {
        if let Ok(mut l) = self.last.lock() {
            *l = Instant::now();
        }
    }

    /// Something that says data went through, from another place.
    pub fn ticker(&self) -> Box<dyn Fn() + Send> {
        let last = self.last.clone();
        Box::new(move || {
            if let Ok(mut l) = last.lock() {
                *l = Instant::now();
            }
        })
    }

    /// Whether it stopped the apply.
    pub fn fired(&self) -> bool {
        self.stalled.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .finish()
    }
}

/// What the stdout reader hands over before the hello.
enum BeforeHello {
    Line(String),
    /// A line longer than [`MAX_LINE`]: not a far end that speaks this
    /// protocol.
    TooLong,
    /// The hello, and stdout after it.
    Hello(Box<Hello>, BufReader<ChildStdout>),
}

/// A line read from a far end.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    /// Without its line end, invalid UTF-8 replaced, at most [`MAX_LINE`]
    /// bytes of it.
    text: String,
    /// Whether the line went on past [`MAX_LINE`] bytes (the rest is not
    /// read yet: see [`skip_line`]).
    cut: bool,
}

/// The next line of `r`; `None` at the end. Memory stays bounded whatever
/// the far end sends: a longer line is cut at [`MAX_LINE`] bytes.
fn read_line(r: &mut impl BufRead) -> Option<Line> {
    let mut buf = Vec::new();
    let mut cut = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok([]) => break,
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let room = MAX_LINE - buf.len();
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) if i <= room => {
                buf.extend_from_slice(&chunk[..i]);
                r.consume(i + 1);
                return Some(finish_line(buf, false));
            }
            _ if chunk.len() > room => {
                buf.extend_from_slice(&chunk[..room]);
                r.consume(room);
                cut = true;
                break;
            }
            _ => {
                let n = chunk.len();
                buf.extend_from_slice(chunk);
                r.consume(n);
            }
        }
    }
    if buf.is_empty() && !cut {
        return None;
    }
    Some(finish_line(buf, cut))
}

fn finish_line(mut buf: Vec<u8>, cut: bool) -> Line {
    while buf.last().is_some_and(|&b| b == b'\r') {
        buf.pop();
    }
    Line {
        text: String::from_utf8_lossy(&buf).into_owned(),
        cut,
    }
}

/// Reads and drops the rest of a line [`read_line`] cut.
fn skip_line(r: &mut impl BufRead) {
    loop {
        let (n, done) = match r.fill_buf() {
            Ok([]) | Err(_) => return,
            Ok(chunk) => match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            },
        };
        r.consume(n);
        if done {
            return;
        }
    }
}

/// The lines of `r`, each cut at [`MAX_LINE`] bytes (the rest dropped,
/// `[...]` shown in its place).
fn lines_of(r: impl Read) -> impl Iterator<Item = String> {
    let mut r = BufReader::new(r);
    std::iter::from_fn(move || {
        let line = read_line(&mut r)?;
        if line.cut {
            skip_line(&mut r);
            return Some(format!("{} [...]", line.text));
        }
        Some(line.text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_remote_only_with_a_host() {
        let remote = |h: &str, p: &str| Location::Remote {
            host: h.into(),
            path: p.into(),
        };
        assert_eq!(
            Location::parse("root@backup:/dev/vg/copy").unwrap(),
            remote("root@backup", "/dev/vg/copy")
        );
        assert_eq!(
            Location::parse("backup:copy.img").unwrap(),
            remote("backup", "copy.img")
        );
        assert_eq!(Location::parse("h:a:b").unwrap(), remote("h", "a:b"));
        assert_eq!(Location::parse("[::1]:/x").unwrap(), remote("::1", "/x"));
        assert_eq!(
            Location::parse("u@[fe80::1]:/x").unwrap(),
            remote("u@fe80::1", "/x")
        );
        for local in ["/tmp/a:b", "./a:b", "../a:b", "copy.img", "dir/a:b", ":x"] {
            assert_eq!(
                Location::parse(local).unwrap(),
                Location::Local(local.into()),
                "{local}"
            );
        }
        assert!(Location::parse("backup:").is_err());
        for bad in [
            "-oProxyCommand=touch x:/dest",
            "user@-oProxyCommand=x:/dest",
            "user@:/x",
            "@host:/x",
            "ho st:/x",
            "h\u{1b}x:/x",
        ] {
            let err = Location::parse(bad).unwrap_err();
            assert!(matches!(err, TransportError::BadHost(..)), "{bad}: {err}");
        }
    }

    #[test]
    fn far_end_lines_are_cut_and_control_characters_escaped() {
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("short\r\n{long}\nafter\nlast");
        let mut r = BufReader::with_capacity(4096, input.as_bytes());
        assert_eq!(
            read_line(&mut r).unwrap(),
            Line {
                text: "short".into(),
                cut: false
            }
        );
        let cut = read_line(&mut r).unwrap();
        assert!(cut.cut && cut.text.len() == MAX_LINE);
        skip_line(&mut r);
        assert_eq!(read_line(&mut r).unwrap().text, "after");
        assert_eq!(read_line(&mut r).unwrap().text, "last");
        assert_eq!(read_line(&mut r), None);
        let lines: Vec<String> = lines_of(input.as_bytes()).collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].ends_with(" [...]") && lines[1].len() == MAX_LINE + 6);
    }

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            split_words("ssh -p 2222  -i 'my key' -o \"A=b c\" x\\ y").unwrap(),
            ["ssh", "-p", "2222", "-i", "my key", "-o", "A=b c", "x y"]
        );
        assert_eq!(split_words("a''b \"\"").unwrap(), ["ab", ""]);
        assert!(split_words("ssh 'x").is_err());
        assert!(split_words("  ").is_err());
    }

    #[test]
    fn quoted_words_read_back_as_they_were() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let words = ["a b;$(touch x)'y\"", "-x", "", "\\", "*"];
        let line = words.map(shell_quote).join(" ");
        assert_eq!(split_words(&line).unwrap(), words);
    }

    #[test]
    fn hello_lines_read_back_and_other_versions_are_told_apart() {
        let h = Hello {
            protocol: 3,
            format: 2,
            dest_size: 4096,
            rest: "{\"a\": \"b c\"}".into(),
        };
        assert_eq!(h.line("WORD"), "WORD 3 2 4096 {\"a\": \"b c\"}");
        assert_eq!(Hello::parse(&h.line("WORD"), "WORD"), Some(h.clone()));
        assert_eq!(Hello::parse(&h.line("WORD"), "OTHER"), None);
        let bare = Hello::parse("WORD 1 3 0", "WORD").unwrap();
        assert_eq!((bare.protocol, bare.format, bare.rest.as_str()), (1, 3, ""));
        assert_eq!(
            Hello::parse("WORD 7 1 0 extra words", "WORD")
                .unwrap()
                .words(),
            ["extra", "words"]
        );
        assert_eq!(Hello::parse("hello", "WORD"), None);
        assert_eq!(Hello::parse("WORD 1", "WORD"), None);
        assert_eq!(Hello::parse("WORD x 1 0", "WORD"), None);
    }
}
