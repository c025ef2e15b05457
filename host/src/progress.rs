//! What `pull` tells a person while it works, on stderr only (stdout stays the result):
//! on a terminal, one indicatif bar per downloading layer (bytes, rate) and a line per phase;
//! with `--progress` on a non-terminal, plain lines; otherwise nothing.

use std::fmt::Display;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::size::human;

enum Mode {
    Lines,
    Bars(MultiProgress),
}

/// A cheap handle shared by the pull, the sources and the downloads.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<Mode>>);

impl Progress {
    /// `requested` (`--progress`) or a terminal on stderr without `--json`: report. Bars only
    /// when stderr is a terminal.
    pub fn new(requested: bool, json: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        if !(requested || (tty && !json)) {
            return Self(None);
        }
        if tty && std::env::var_os("TERM").is_none_or(|t| t != "dumb") {
            let m = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            Self(Some(Arc::new(Mode::Bars(m))))
        } else {
            Self(Some(Arc::new(Mode::Lines)))
        }
    }

    /// One line: `rootbox: MSG`.
    pub fn line(&self, msg: impl Display) {
        let msg = msg.to_string();
        let msg = rootbox_proto::text::printable(&msg, false);
        match self.0.as_deref() {
            None => {}
            Some(Mode::Lines) => eprintln!("rootbox: {msg}"),
            Some(Mode::Bars(m)) if m.println(format!("rootbox: {msg}")).is_err() => {
                eprintln!("rootbox: {msg}");
            }
            Some(Mode::Bars(_)) => {}
        }
    }

    /// One line `rootbox: MSG` whether or not progress is reported (above the bars if any).
    pub fn note(&self, msg: impl Display) {
        match self.0.as_deref() {
            Some(Mode::Bars(m)) if m.println(format!("rootbox: {msg}")).is_ok() => {}
            _ => eprintln!("rootbox: {msg}"),
        }
    }

    /// A download of `total` bytes named `label` (`layer 2 of 5 (sha256:0123…)`).
    pub fn download(&self, label: String, total: u64) -> Download {
        let bar = match self.0.as_deref() {
            Some(Mode::Bars(m)) => {
                let style = ProgressStyle::with_template(
                    "{prefix} [{bar:28}] {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                let b = m.add(ProgressBar::new(total).with_style(style).with_prefix(label.clone()));
                b.enable_steady_tick(Duration::from_millis(250));
                Some(b)
            }
            Some(Mode::Lines) => {
                eprintln!("rootbox: downloading {label}, {}", human(total));
                None
            }
            None => None,
        };
        Download {
            bar,
            lines: matches!(self.0.as_deref(), Some(Mode::Lines)),
            label,
            total,
            start: Instant::now(),
        }
    }
}

/// One blob being downloaded.
pub struct Download {
    bar: Option<ProgressBar>,
    lines: bool,
    label: String,
    total: u64,
    start: Instant,
}

impl Download {
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// A retry restarts at `pos`.
    pub fn set(&self, pos: u64, note: &str) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.set_message(note.to_string());
        } else if self.lines && !note.is_empty() {
            eprintln!("rootbox: {}: {}", self.label, rootbox_proto::text::printable(note, false));
        }
    }

    pub fn done(self) {
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = human((self.total as f64 / secs) as u64);
        if let Some(b) = &self.bar {
            b.set_message("done");
            b.finish();
        } else if self.lines {
            eprintln!(
                "rootbox: downloaded {}, {} in {secs:.1} s ({rate}/s)",
                self.label,
                human(self.total)
            );
        }
    }

    pub fn failed(self) {
        if let Some(b) = &self.bar {
            b.abandon_with_message("failed");
        }
    }
}
