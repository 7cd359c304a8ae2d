//! `--compress auto`: the compression that keeps the link busy, chosen
//! while the delta is written. The stream says zstd (format version 4);
//! each batch of records (a GROUP, or a piece of at most 1 MiB of an
//! extent) is compressed at the level of the moment, from raw (stored as
//! it is: as fast as the data can be read) through zstd's fast levels to
//! level 3 (where it starts; 6 through a remote shell) and up to 9 when
//! the link is much slower. After every [`WINDOW`] bytes of input
//! the writer compares how fast the encoders turned input into records at
//! that level with how fast the sink (the ssh pipe, throttled to
//! `--bwlimit`, or a file) took them, and steps to a faster level when the
//! encoders kept the sink waiting, or to a stronger one when the sink kept
//! the encoders waiting and the stronger level is fast enough for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::stream::Compression;

/// What `--compress` asks for: a codec, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    Fixed(Compression),
    Auto,
}

impl Compress {
    /// What the stream's header says: zstd for auto (its records may be
    /// zstd at any level, or raw).
    pub fn header(self) -> Compression {
        match self {
            Compress::Fixed(c) => c,
            Compress::Auto => Compression::ZSTD,
        }
    }

    /// A fresh controller when this is auto.
    pub fn controller(self) -> Option<Arc<Auto>> {
        (self == Compress::Auto).then(|| Arc::new(Auto::new()))
    }
}

impl From<Compression> for Compress {
    fn from(c: Compression) -> Compress {
        Compress::Fixed(c)
    }
}

impl std::fmt::Display for Compress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compress::Fixed(c) => c.fmt(f),
            Compress::Auto => f.write_str("auto"),
        }
    }
}

impl std::str::FromStr for Compress {
    type Err = String;

    /// `auto`, or what [`Compression`] reads.
    fn from_str(s: &str) -> Result<Compress, String> {
        if s == "auto" {
            return Ok(Compress::Auto);
        }
        s.parse::<Compression>()
            .map(Compress::Fixed)
            .map_err(|e| e.replace("give lz4,", "give auto, lz4,"))
    }
}

/// The levels auto steps through, fastest first: `None` stores records
/// raw, `Some(l)` compresses them with zstd at level `l` (negative levels
/// are zstd's fast ones, near lz4's speed).
pub const LADDER: [Option<i32>; 7] = [None, Some(-5), Some(-1), Some(1), Some(3), Some(6), Some(9)];

/// Where auto starts: zstd level 3, zstd's default, which compresses
/// groups of small records at about 280 MB/s on 2 cores, faster than most
/// links, and writes about a tenth fewer bytes than level 1 on them. A
/// short delta over a slow link (a few windows) is then mostly sent at it
/// rather than at level 1, and on a fast output auto steps down after the
/// first window.
pub const START: usize = 4;

/// Where auto starts through a remote shell: zstd level 6, about 125 MB/s
/// of data on 2 cores, so it keeps a link of up to about 300 Mbit/s busy
/// (the links off-site backups cross are mostly slower), and writes about
/// 6% fewer bytes than level 3 of real files. Until the buffers of the
/// pipe, ssh and the sockets are full (5 MB and more), no output says how
/// fast the link is, and the encoders work several batches ahead of the
/// output: a short delta goes mostly at the level auto starts at. On a
/// faster link, auto steps down once [`BUFFERED`] bytes went out.
pub const START_REMOTE: usize = 5;

/// Input bytes between two decisions.
pub const WINDOW: u64 = 8 << 20;

/// Record bytes an output may take before it says anything of the speed
/// of what is behind it: more than a pipe (1 MiB), ssh's channel window
/// (2 MiB and more) and the sockets' buffers hold together.
pub const BUFFERED: u64 = 16 << 20;

/// How a level name reads: `raw`, `zstd:-5`, `zstd:3`.
pub fn level_name(step: usize) -> String {
    match LADDER[step] {
        None => "raw".into(),
        Some(l) => format!("zstd:{l}"),
    }
}

/// What one window measured at one level.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Input (changed data) bytes encoded, and the record bytes they made.
    pub input: u64,
    pub output: u64,
    /// Seconds the encoders spent encoding, summed over the threads, and
    /// the threads that encode.
    pub encode_secs: f64,
    pub threads: usize,
    /// Seconds the writer spent handing records to the sink (blocked on a
    /// full pipe, or held back by --bwlimit).
    pub sink_secs: f64,
}

impl Window {
    /// Input bytes per second the encoders make records of, all together.
    pub fn encode_rate(&self) -> f64 {
        self.input as f64 * self.threads.max(1) as f64 / self.encode_secs.max(1e-9)
    }

    /// Record bytes per second the sink takes.
    pub fn sink_rate(&self) -> f64 {
        self.output as f64 / self.sink_secs.max(1e-9)
    }

    /// Input bytes per second the sink takes at this window's ratio.
    pub fn sink_input_rate(&self) -> f64 {
        self.sink_rate() * self.input as f64 / self.output.max(1) as f64
    }
}

/// Why auto moved (or stayed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The encoders were slower than the sink: a faster level.
    EncoderBound,
    /// The sink was slower than the encoders, which the stronger level
    /// (as last measured, or not yet tried) can keep up with.
    LinkBound,
    /// Each keeps up with the other, or the next level would not.
    Balanced,
}

/// The next step of the ladder after a window at `step`, and why:
/// `measured[i]` is the encode rate last measured at step `i` (0 when not
/// tried). The decision:
/// - the encoders made less input per second than the sink takes (with
///   10% to spare): one step faster;
/// - the sink takes less than half of what the encoders make, and the
///   next stronger level, as last measured, would still make more than
///   the sink takes (or is not measured yet): one step stronger; two
///   when the sink takes less than an eighth and the level two steps up
///   passes the same test (a short delta over a slow link would
///   otherwise be mostly over before auto got there);
/// - otherwise: stay.
pub fn decide(step: usize, w: &Window, measured: &[f64; LADDER.len()]) -> (usize, Reason) {
    let encode = w.encode_rate();
    let sink = w.sink_input_rate();
    if encode < sink * 1.1 && step > 0 {
        return (step - 1, Reason::EncoderBound);
    }
    // The stronger level keeps about the same ratio's worth of input
    // flowing only if it encodes faster than the link takes it.
    let fast_enough = |s: usize| measured[s] == 0.0 || measured[s] > sink * 1.5;
    if sink * 8.0 < encode
        && step + 2 < LADDER.len()
        && fast_enough(step + 1)
        && fast_enough(step + 2)
    {
        return (step + 2, Reason::LinkBound);
    }
    if sink * 2.0 < encode && step + 1 < LADDER.len() && fast_enough(step + 1) {
        return (step + 1, Reason::LinkBound);
    }
    (step, Reason::Balanced)
}

/// The state of a run with `--compress auto`: the current step, shared
/// with the encoders, and what was measured, for the summary.
#[derive(Debug)]
pub struct Auto {
    step: AtomicUsize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    window: Window,
    measured: [f64; LADDER.len()],
    /// Input bytes encoded at each step.
    input_at: [u64; LADDER.len()],
    last: Option<(Window, Reason)>,
    changes: u32,
    /// Record bytes handed to the output so far.
    output: u64,
}

impl Default for Auto {
    fn default() -> Auto {
        Auto::new()
    }
}

impl Auto {
    pub fn new() -> Auto {
        Auto {
            step: AtomicUsize::new(START),
            state: Mutex::new(State::default()),
        }
    }

    /// Starts at [`START_REMOTE`] instead, for an output through a remote
    /// shell; only before the first piece was counted.
    pub fn start_remote(&self) {
        if let Ok(s) = self.state.lock() {
            if s.input_at.iter().all(|&b| b == 0) && s.window.input == 0 {
                self.step.store(START_REMOTE, Ordering::Relaxed);
            }
        }
    }

    /// The level to encode the next piece at.
    pub fn level(&self) -> Option<i32> {
        LADDER[self.step.load(Ordering::Relaxed).min(LADDER.len() - 1)]
    }

    /// Counts a piece appended to the stream: `input` bytes of changed
    /// data that made `output` bytes of records, encoded in `encode_secs`
    /// (one thread's) at `level`, handed to the sink in `sink_secs`; after
    /// a [`WINDOW`], decides the next step.
    pub fn piece(
        &self,
        level: Option<i32>,
        input: u64,
        output: u64,
        encode_secs: f64,
        sink_secs: f64,
        threads: usize,
    ) {
        let Ok(mut s) = self.state.lock() else { return };
        let step = self.step.load(Ordering::Relaxed);
        if let Some(i) = LADDER.iter().position(|l| *l == level) {
            s.input_at[i] += input;
        }
        // A piece encoded before the last move counts for the time and
        // bytes of the sink, not for the new level's speed.
        let w = &mut s.window;
        w.input += input;
        w.output += output;
        w.sink_secs += sink_secs;
        w.threads = threads;
        if LADDER[step] == level {
            w.encode_secs += encode_secs;
        }
        if w.input < WINDOW || w.encode_secs <= 0.0 {
            return;
        }
        let w = std::mem::take(&mut s.window);
        s.measured[step] = w.encode_rate();
        let (mut next, mut reason) = decide(step, &w, &s.measured);
        // Until the output's buffers (a pipe, ssh's channel window, the
        // sockets') are full, they take the records as fast as they come,
        // whatever the link: that says nothing of its speed, so no step
        // down before [`BUFFERED`] bytes went out.
        s.output += w.output;
        if s.output < BUFFERED && reason == Reason::EncoderBound {
            (next, reason) = (step, Reason::Balanced);
        }
        if next != step {
            s.changes += 1;
        }
        s.last = Some((w, reason));
        self.step.store(next, Ordering::Relaxed);
    }

    /// What auto chose and why, for the summary: the level most of the
    /// data went at, the share of it, and the last window's rates.
    pub fn report(&self) -> AutoReport {
        let s = match self.state.lock() {
            Ok(s) => s,
            Err(e) => e.into_inner(),
        };
        let total: u64 = s.input_at.iter().sum();
        let (most, bytes) = s
            .input_at
            .iter()
            .enumerate()
            .max_by_key(|(_, b)| **b)
            .map_or((START, 0), |(i, b)| (i, *b));
        let (encode, sink, reason) = match s.last {
            Some((w, r)) => (w.encode_rate(), w.sink_input_rate(), Some(r)),
            None => (0.0, 0.0, None),
        };
        AutoReport {
            chose: level_name(most),
            share: if total > 0 {
                bytes as f64 / total as f64
            } else {
                1.0
            },
            changes: s.changes,
            encode_rate: encode,
            sink_rate: sink,
            why: match reason {
                None => "too little data to measure: the starting level".into(),
                Some(_) if LADDER[most].is_none() => {
                    "the link took data faster than zstd compressed it: stored raw".into()
                }
                Some(Reason::EncoderBound) => {
                    "the link took data faster than the encoders compressed it".into()
                }
                Some(_) if encode > sink * 1.1 => "the link was the bottleneck".into(),
                Some(_) => "the encoders kept up with the link".into(),
            },
        }
    }
}

/// What `--compress auto` chose, for the summary and `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AutoReport {
    /// The level most of the data was compressed at (`raw`, `zstd:L`).
    pub chose: String,
    /// The share of the data compressed at it.
    pub share: f64,
    /// How many times the level changed.
    pub changes: u32,
    /// Input bytes per second, in the last window measured: what the
    /// encoders made records of, and what the sink took.
    pub encode_rate: f64,
    pub sink_rate: f64,
    pub why: String,
}

impl AutoReport {
    /// One line: `zstd:3 for 97% of the data (2 changes): the link was the
    /// bottleneck (it took 11.9 MB/s, zstd compressed 240 MB/s)`.
    pub fn line(&self) -> String {
        format!(
            "{} for {:.0}% of the data ({} change{}): {} (it took {:.1} MB/s of data, the encoders made {:.1} MB/s)",
            self.chose,
            self.share * 100.0,
            self.changes,
            if self.changes == 1 { "" } else { "s" },
            self.why,
            self.sink_rate / 1e6,
            self.encode_rate / 1e6
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step of zstd level 1.
    const ONE: usize = 3;

    /// A window of 8 MiB of input at `ratio`, the encoders making
    /// `encode` MB/s in all, the sink taking `sink` MB/s of records.
    fn window(ratio: f64, encode: f64, sink: f64) -> Window {
        let input = WINDOW;
        let output = (input as f64 * ratio) as u64;
        Window {
            input,
            output,
            encode_secs: input as f64 * 2.0 / (encode * 1e6),
            threads: 2,
            sink_secs: output as f64 / (sink * 1e6),
        }
    }

    #[test]
    fn a_slow_link_gets_stronger_compression() {
        // 100 Mbit/s: 12.5 MB/s of records; zstd:1 makes 300 MB/s.
        let w = window(0.55, 300.0, 12.5);
        let measured = [0.0; LADDER.len()];
        // The link takes less than an eighth of what zstd:1 makes: two
        // steps.
        assert_eq!(decide(ONE, &w, &measured), (ONE + 2, Reason::LinkBound));
        // Half of it: one.
        let half = window(0.55, 300.0, 60.0);
        assert_eq!(decide(ONE, &half, &measured), (ONE + 1, Reason::LinkBound));
        // Up the ladder while the stronger level still outruns the link.
        let mut m = measured;
        m[ONE + 2] = 150e6;
        assert_eq!(decide(ONE + 1, &w, &m), (ONE + 3, Reason::LinkBound));
        // Not two steps past a level measured too slow for it.
        m[ONE + 2] = 30e6;
        assert_eq!(decide(ONE, &w, &m), (ONE + 1, Reason::LinkBound));
        m[ONE + 2] = 150e6;
        // Not to a level measured too slow for it.
        m[ONE + 3] = 15e6;
        assert_eq!(decide(ONE + 2, &w, &m), (ONE + 2, Reason::Balanced));
    }

    #[test]
    fn a_fast_link_gets_faster_compression_down_to_raw() {
        // A local pipe taking 2 GB/s; zstd:1 makes 300 MB/s.
        let w = window(0.55, 300.0, 2000.0);
        let m = [0.0; LADDER.len()];
        assert_eq!(decide(ONE, &w, &m), (ONE - 1, Reason::EncoderBound));
        assert_eq!(decide(1, &w, &m), (0, Reason::EncoderBound));
        // Raw is the fastest there is.
        let raw = window(1.0, 5000.0, 2000.0);
        let mut m = [0.0; LADDER.len()];
        m[1] = 900e6;
        assert_eq!(decide(0, &raw, &m), (0, Reason::Balanced));
    }

    #[test]
    fn a_balanced_pair_stays() {
        // The encoders make 200 MB/s, the link takes 150 MB/s of input.
        let w = window(0.5, 200.0, 75.0);
        assert_eq!(
            decide(ONE, &w, &[0.0; LADDER.len()]),
            (ONE, Reason::Balanced)
        );
        // The top of the ladder stays on a slow link.
        let slow = window(0.5, 60.0, 1.0);
        let top = LADDER.len() - 1;
        assert_eq!(
            decide(top, &slow, &[0.0; LADDER.len()]),
            (top, Reason::Balanced)
        );
    }

    #[test]
    fn a_fast_output_is_believed_once_its_buffers_are_full() {
        let auto = Auto::new();
        // A local pipe taking 2 GB/s, zstd:3 making 280 MB/s: until 16 MiB
        // went out, that could be the output's buffers filling.
        let out = (WINDOW as f64 * 0.4) as u64;
        let fast = |auto: &Auto| {
            let level = auto.level();
            auto.piece(
                level,
                WINDOW,
                out,
                WINDOW as f64 * 2.0 / 280e6,
                out as f64 / 2e9,
                2,
            );
        };
        let mut sent = 0;
        while sent + out < BUFFERED {
            fast(&auto);
            sent += out;
            assert_eq!(auto.level(), LADDER[START], "{sent} bytes out");
        }
        fast(&auto);
        assert_eq!(auto.level(), LADDER[START - 1]);
    }

    #[test]
    fn the_controller_moves_after_a_window_and_reports_why() {
        let auto = Auto::new();
        assert_eq!(auto.level(), Some(3));
        // Half a window: no move.
        let half = WINDOW / 2;
        let slow_sink = |auto: &Auto, level| {
            // 0.55 ratio, 300 MB/s of encoding, 12.5 MB/s of link.
            let out = (half as f64 * 0.55) as u64;
            auto.piece(
                level,
                half,
                out,
                half as f64 * 2.0 / 300e6,
                out as f64 / 12.5e6,
                2,
            );
        };
        slow_sink(&auto, Some(3));
        assert_eq!(auto.level(), Some(3));
        slow_sink(&auto, Some(3));
        // The link takes far less than the encoders make: two steps.
        assert_eq!(auto.level(), Some(9));
        for _ in 0..20 {
            let level = auto.level();
            slow_sink(&auto, level);
        }
        let r = auto.report();
        assert_eq!(r.why, "the link was the bottleneck");
        assert!(
            r.line().contains("the link was the bottleneck"),
            "{}",
            r.line()
        );
        assert!(r.changes >= 1);
        assert!((r.sink_rate / 1e6 - 12.5 / 0.55).abs() < 0.5, "{r:?}");
    }

    #[test]
    fn through_a_remote_shell_auto_starts_stronger_before_any_piece() {
        let auto = Auto::new();
        assert_eq!(auto.level(), Some(3));
        auto.start_remote();
        assert_eq!(auto.level(), LADDER[START_REMOTE]);
        assert_eq!(auto.level(), Some(6));
        // Not once it has counted a piece: it decides from then on.
        let auto = Auto::new();
        auto.piece(Some(3), 1 << 20, 1 << 19, 0.004, 0.0, 2);
        auto.start_remote();
        assert_eq!(auto.level(), Some(3));
    }

    #[test]
    fn names() {
        assert_eq!(level_name(0), "raw");
        assert_eq!(level_name(START), "zstd:3");
        assert_eq!(level_name(ONE), "zstd:1");
        assert_eq!(level_name(1), "zstd:-5");
    }
}
