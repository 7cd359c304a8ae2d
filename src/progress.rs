//! How far a long command is, on stderr: a bar on a terminal, otherwise a
//! line every few seconds that a log keeps (timestamped, plain or JSON),
//! or nothing (`-q`).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::units::human;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Hidden,
    /// A bar that redraws itself: for a terminal.
    Bar,
    /// A line every `every`, plain (`TIME lvmsync-rs COMMAND: ...`) or
    /// one JSON object each: for a log.
    Lines {
        every: Duration,
        json: bool,
    },
}

impl Style {
    /// A bar when stderr is a terminal and the log format is plain, lines
    /// otherwise; nothing when `quiet`.
    pub fn for_stderr(quiet: bool, json: bool, every: Duration) -> Style {
        use std::io::IsTerminal;
        if quiet {
            Style::Hidden
        } else if !json && std::io::stderr().is_terminal() {
            Style::Bar
        } else {
            Style::Lines { every, json }
        }
    }
}

struct Shared {
    command: &'static str,
    what: String,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// The progress of one long step. Dropping it stops it.
pub struct Progress {
    shared: Arc<Shared>,
    bar: Option<ProgressBar>,
    lines: Option<JoinHandle<()>>,
}

impl Progress {
    /// Progress of `command` doing `what` (`sending`, `comparing`, ...),
    /// `total` bytes when known (0: unknown).
    pub fn new(style: Style, command: &'static str, what: &str, total: u64) -> Progress {
        let shared = Arc::new(Shared {
            command,
            what: what.to_string(),
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started: Instant::now(),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let (bar, lines) = match style {
            Style::Hidden => (None, None),
            Style::Bar => (Some(bar(total)), None),
            Style::Lines { every, json } => {
                let s = shared.clone();
                (
                    None,
                    Some(std::thread::spawn(move || log_lines(&s, every, json))),
                )
            }
        };
        Progress { shared, bar, lines }
    }

    /// A progress that shows nothing.
    pub fn hidden() -> Progress {
        Progress::new(Style::Hidden, "", "", 0)
    }

    /// `done` bytes of the total are done.
    pub fn set(&self, done: u64) {
        self.shared.done.store(done, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    pub fn set_total(&self, total: u64) {
        self.shared.total.store(total, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// Runs `f` with the bar out of the way, so that what it prints is not
    /// drawn over.
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Something that prints a line on stderr out of the bar's way, from
    /// any thread.
    pub fn printer(&self) -> Arc<dyn Fn(&str) + Send + Sync> {
        let bar = self.bar.clone();
        Arc::new(move |line: &str| match &bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        })
    }

    /// A handle that sets the progress from another thread.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
            bar: self.bar.clone(),
        }
    }

    fn stop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(t) = self.lines.take() {
            if let Ok(mut stopped) = self.shared.stopped.lock() {
                *stopped = true;
            }
            self.shared.wake.notify_all();
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sets a [`Progress`] from another thread.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    bar: Option<ProgressBar>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("done", &self.shared.done.load(Ordering::Relaxed))
            .finish()
    }
}

impl Handle {
    pub fn set(&self, done: u64) {
        self.shared.done.store(done, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }
}

fn bar(total: u64) -> ProgressBar {
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

/// Writes a line every `every` until stopped.
fn log_lines(s: &Shared, every: Duration, json: bool) {
    let Ok(mut stopped) = s.stopped.lock() else {
        return;
    };
    // A stop that came before this thread waited is seen at once.
    while !*stopped {
        let Ok((guard, timeout)) = s.wake.wait_timeout_while(stopped, every, |stop| !*stop) else {
            return;
        };
        stopped = guard;
        if timeout.timed_out() {
            let line = progress_line(s, json);
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }
}

/// One progress line, plain or JSON.
fn progress_line(s: &Shared, json: bool) -> String {
    let done = s.done.load(Ordering::Relaxed);
    let total = s.total.load(Ordering::Relaxed);
    let secs = s.started.elapsed().as_secs_f64().max(1e-3);
    let rate = (done as f64 / secs) as u64;
    let left = (total > done && rate > 0).then(|| (total - done) / rate);
    let time = crate::time::rfc3339(crate::time::now());
    if json {
        return serde_json::json!({
            "time": time,
            "command": s.command,
            "what": s.what,
            "done_bytes": done,
            "total_bytes": (total > 0).then_some(total),
            "bytes_per_second": rate,
            "seconds_left": left,
        })
        .to_string();
    }
    let mut line = format!(
        "{time} lvmsync-rs {}: {}: {}",
        s.command,
        s.what,
        human(done)
    );
    if total > 0 {
        line.push_str(&format!(
            " of {} ({:.0}%)",
            human(total),
            done as f64 * 100.0 / total as f64
        ));
    }
    line.push_str(&format!(", {}/s", human(rate)));
    if let Some(left) = left {
        line.push_str(&format!(", {left} s left"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_how_far_and_how_fast() {
        let p = Progress::new(Style::Hidden, "verify", "comparing", 4 << 30);
        p.set(1 << 30);
        let plain = progress_line(&p.shared, false);
        assert!(
            plain.contains("lvmsync-rs verify: comparing: 1 GiB of 4 GiB (25%)"),
            "{plain}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&progress_line(&p.shared, true)).unwrap();
        assert_eq!(json["done_bytes"], 1u64 << 30);
        assert_eq!(json["total_bytes"], 4u64 << 30);
        assert_eq!(json["command"], "verify");
    }

    #[test]
    fn stopping_does_not_wait_for_the_next_line() {
        let started = Instant::now();
        let p = Progress::new(
            Style::Lines {
                every: Duration::from_secs(60),
                json: false,
            },
            "apply",
            "applying",
            0,
        );
        drop(p);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
