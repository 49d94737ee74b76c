//! A progress line on a terminal (records, bytes, rate, ETA), redrawn at most five times a
//! second; nothing when stderr is not a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const REDRAW: Duration = Duration::from_millis(200);

pub struct Progress {
    verb: &'static str,
    started: Instant,
    drawn: Option<Instant>,
    tty: bool,
}

impl Progress {
    pub fn new(verb: &'static str) -> Self {
        Self { verb, started: Instant::now(), drawn: None, tty: std::io::stderr().is_terminal() }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Redraws the line: `records` and `bytes` so far, and the share `done` (0 to 1) when
    /// the whole is known.
    pub fn show(&mut self, records: u64, bytes: u64, done: Option<f64>) {
        if !self.tty || self.drawn.is_some_and(|at| at.elapsed() < REDRAW) {
            return;
        }
        self.drawn = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let eta = match done {
            Some(done) if done > 0.0 && done < 1.0 => format!(", about {:.0} s left", secs / done * (1.0 - done)),
            _ => String::new(),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{} {} records, {}, {}/s{eta}",
            self.verb,
            records,
            human(bytes),
            human((bytes as f64 / secs) as u64)
        );
        let _ = err.flush();
    }

    /// Clears the line before the summary.
    pub fn clear(&self) {
        if self.tty && self.drawn.is_some() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

/// Bytes in B, KiB, MiB or GiB.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.2} GiB", b / 1_073_741_824.0),
    }
}
