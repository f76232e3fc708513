//! `log` backend writing to /dev/kmsg, so the init's lines appear on the
//! console (as the kernel's console log level allows) and, after the switch
//! to systemd, in the journal. Each line is prefixed `immuboot:`. Until /dev
//! is mounted, lines go to standard error (the console).
//!
//! /dev/kmsg is opened for each record: the kernel rate-limits writes per
//! open file (10 lines in 5 s unless `printk.devkmsg=on`), and a boot logs
//! more than that in its first second.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub struct KmsgLogger {
    kmsg: AtomicBool,
    /// Keeps records whole when threads log at once.
    write: Mutex<()>,
}

static LOGGER: KmsgLogger = KmsgLogger {
    kmsg: AtomicBool::new(false),
    write: Mutex::new(()),
};

/// Syslog priority used in the kmsg record. Debug lines are only logged
/// when `immuboot.debug` asks for them, and then shown like info lines (the
/// kernel's default console level would hide priority 7).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info | Level::Debug | Level::Trace => 6,
    }
}

/// One kmsg record: `<prio>immuboot: message`, on one line.
pub fn format_record(level: Level, message: &str) -> String {
    let tag = if level >= Level::Debug { "debug: " } else { "" };
    format!(
        "<{}>immuboot: {tag}{}\n",
        priority(level),
        message.replace('\n', " | ")
    )
}

pub fn install() {
    // Only fails if a logger is set already, which then keeps working.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

/// Logs to /dev/kmsg from now on (once /dev is mounted).
pub fn attach_kmsg() {
    LOGGER.kmsg.store(true, Ordering::Relaxed);
}

pub fn set_debug(debug: bool) {
    log::set_max_level(if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    });
}

impl Log for KmsgLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_record(record.level(), &record.args().to_string());
        let _guard = match self.write.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let written = self.kmsg.load(Ordering::Relaxed)
            && OpenOptions::new()
                .write(true)
                .open("/dev/kmsg")
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .is_ok();
        if !written {
            // Strip the priority prefix for a human reading the console.
            let plain = line.split_once('>').map(|(_, rest)| rest).unwrap_or(&line);
            let _ = std::io::stderr().write_all(plain.as_bytes());
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_prefixed_single_lines() {
        assert_eq!(
            format_record(Level::Error, "bad\nthing"),
            "<3>immuboot: bad | thing\n"
        );
        assert_eq!(format_record(Level::Info, "ok"), "<6>immuboot: ok\n");
        assert_eq!(format_record(Level::Debug, "x"), "<6>immuboot: debug: x\n");
    }
}
