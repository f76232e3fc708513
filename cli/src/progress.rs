//! What the upgrade tells its user: a progress bar with throughput on a
//! terminal (indicatif), plain lines otherwise, JSON lines with `--json`.
//! Nothing here fails on a closed output: the lines go through `outln!`/
//! `errln!`, and indicatif drops its draw errors in the calls used here
//! (`set_position`, `set_message`, `finish`; not `set_tab_width`, which
//! unwraps one).

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Terminal,
    Plain,
    Json,
}

pub struct Reporter {
    style: Style,
    bar: Option<ProgressBar>,
    task: String,
    total: Option<u64>,
    started: Instant,
    next_plain: u64,
    last_line: Option<u64>,
}

impl Reporter {
    pub fn new(json: bool) -> Reporter {
        let style = if json {
            Style::Json
        } else if std::io::stderr().is_terminal() {
            Style::Terminal
        } else {
            Style::Plain
        };
        Reporter {
            style,
            bar: None,
            task: String::new(),
            total: None,
            started: Instant::now(),
            next_plain: 0,
            last_line: None,
        }
    }

    /// A named step of the upgrade.
    pub fn step(&mut self, msg: &str) {
        match self.style {
            Style::Json => outln!("{}", json!({"event": "step", "message": msg})),
            _ => errln!("immuboot: {msg}"),
        }
    }

    /// Starts a byte-counted task (`total` if known).
    pub fn start(&mut self, task: &str, total: Option<u64>) {
        self.task = task.to_string();
        self.total = total;
        self.started = Instant::now();
        self.next_plain = 0;
        self.last_line = None;
        if self.style == Style::Terminal {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
            } else {
                "{msg:>12} {spinner} {bytes} {binary_bytes_per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(task.to_string());
            self.bar = Some(bar);
        }
    }

    pub fn bytes(&mut self, done: u64) {
        match self.style {
            Style::Terminal => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
                }
            }
            Style::Plain | Style::Json => {
                // A line per tenth (or per 64 MiB when the total is unknown).
                let step = self.total.map(|t| (t / 10).max(1)).unwrap_or(64 << 20);
                if done >= self.next_plain {
                    self.next_plain = done + step;
                    self.line(done);
                }
            }
        }
    }

    pub fn finish(&mut self, done: u64) {
        if let Some(bar) = self.bar.take() {
            bar.set_position(done);
            bar.finish();
        } else if self.last_line != Some(done) {
            self.line(done);
        }
    }

    fn line(&mut self, done: u64) {
        self.last_line = Some(done);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let mbps = done as f64 / secs / (1 << 20) as f64;
        match self.style {
            Style::Json => outln!(
                "{}",
                json!({"event": "progress", "task": self.task, "bytes": done, "total": self.total, "mib_per_s": (mbps * 10.0).round() / 10.0})
            ),
            _ => match self.total {
                Some(t) => errln!(
                    "immuboot: {}: {} of {} MiB ({:.0}%), {:.1} MiB/s",
                    self.task,
                    done >> 20,
                    t >> 20,
                    done as f64 * 100.0 / t.max(1) as f64,
                    mbps
                ),
                None => errln!(
                    "immuboot: {}: {} MiB, {:.1} MiB/s",
                    self.task,
                    done >> 20,
                    mbps
                ),
            },
        }
    }

    /// The final result, once.
    pub fn result(&mut self, value: serde_json::Value, human: &str) {
        match self.style {
            Style::Json => outln!("{}", json!({"event": "done", "result": value})),
            _ => outln!("{human}"),
        }
    }
}
