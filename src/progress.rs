//! Progress on long work: a bar with rate and ETA on a terminal, a log line
//! every few seconds otherwise (journald, CI, pipes).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    started: Instant,
    last_line: Instant,
    bytes: bool,
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// `bytes`: whether positions are bytes (else items).
    pub fn new(what: &'static str, total: u64, bytes: bool, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let template = if bytes {
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
            } else {
                "{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}"
            };
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(template) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(what);
            b
        });
        Progress {
            bar,
            what,
            started: Instant::now(),
            last_line: Instant::now(),
            bytes,
        }
    }

    pub fn set(&mut self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        } else if self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let rate = done as f64 / secs;
            let eta = if rate > 0.0 {
                (total.saturating_sub(done)) as f64 / rate
            } else {
                0.0
            };
            if self.bytes {
                tracing::info!(
                    "{}: {done}/{total} bytes, {:.1} MiB/s, ETA {eta:.0}s",
                    self.what,
                    rate / 1048576.0
                );
            } else {
                tracing::info!("{}: {done}/{total}, {rate:.1}/s, ETA {eta:.0}s", self.what);
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
