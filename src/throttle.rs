//! A bandwidth limit on what is sent (`--bwlimit`), so that a nightly sync
//! does not fill a shared link: a writer that lets bytes through at a
//! given rate, smoothly (in pieces of a tenth of a second's worth, never a
//! burst of more than a quarter of a second after a pause).

use std::io::{self, Write};
use std::time::{Duration, Instant};

/// The longest burst let through after a pause, in seconds of the rate.
const BURST: f64 = 0.25;
/// The largest piece written at once, in seconds of the rate.
const PIECE: f64 = 0.1;

/// Parses a rate as rsync's `--bwlimit` reads it: a plain number is KiB
/// per second; with a unit (`500k`, `10M`, `1G`), bytes per second in
/// powers of 1024. At least 1 KiB/s.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("ps"))
        .unwrap_or(t);
    let bytes = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1024))
            .ok_or_else(|| format!("{text:?} is too large"))?
    } else {
        crate::units::parse_size(t).map_err(|_| {
            format!(
                "{text:?} is not a rate: give KiB/s (500), or bytes/s with a unit (500k, 10M, 1G)"
            )
        })?
    };
    if bytes < 1024 {
        return Err(format!("{text:?}: a rate of at least 1 KiB/s"));
    }
    Ok(bytes)
}

/// Writes to `inner` at most `rate` bytes per second on average.
pub struct Throttled<W> {
    inner: W,
    rate: f64,
    /// Bytes that may go now.
    allowance: f64,
    last: Instant,
    /// Called after each piece went through (a stall watchdog is told
    /// that the far end takes data, however slowly it is let through).
    on_piece: Box<dyn Fn() + Send>,
}

impl<W: Write> Throttled<W> {
    pub fn new(inner: W, rate: u64, on_piece: Box<dyn Fn() + Send>) -> Throttled<W> {
        Throttled {
            inner,
            rate: rate.max(1) as f64,
            allowance: 0.0,
            last: Instant::now(),
            on_piece,
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Waits until `want` bytes may go; how many may go now.
    fn wait_for(&mut self, want: usize) -> usize {
        let piece = ((self.rate * PIECE) as usize).max(512);
        let want = want.min(piece);
        loop {
            let now = Instant::now();
            let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
            self.allowance = (self.allowance + earned).min(self.rate * BURST);
            self.last = now;
            if self.allowance >= want as f64 {
                return want;
            }
            let short = want as f64 - self.allowance;
            std::thread::sleep(Duration::from_secs_f64(short / self.rate));
        }
    }
}

impl<W: Write> Write for Throttled<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.wait_for(buf.len());
        let written = self.inner.write(&buf[..n])?;
        self.allowance -= written as f64;
        (self.on_piece)();
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_rsync_reads_them() {
        assert_eq!(parse_rate("500"), Ok(500 * 1024));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("512k"), Ok(512 << 10));
        assert_eq!(parse_rate("1G/s"), Ok(1 << 30));
        for bad in ["", "fast", "-5", "0", "10X", "100B"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_rate_holds_and_pieces_are_small() {
        let rate = 400 << 10;
        let pieces = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = pieces.clone();
        let mut t = Throttled::new(
            Vec::new(),
            rate,
            Box::new(move || {
                p.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
        );
        let started = Instant::now();
        t.write_all(&vec![7u8; 200 << 10]).unwrap();
        let secs = started.elapsed().as_secs_f64();
        // 200 KiB at 400 KiB/s: half a second, less the first burst at most.
        assert!(secs >= 0.5 - BURST - 0.05, "{secs}");
        assert_eq!(t.get_ref().len(), 200 << 10);
        // In pieces of at most a tenth of a second's worth.
        assert!(pieces.load(std::sync::atomic::Ordering::Relaxed) >= 5);
    }
}
