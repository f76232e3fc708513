//! Everything the tool prints goes through [`outln!`] and [`errln!`]: a
//! write error (the reader of a pipe gone, a closed terminal) is dropped.
//! `outln!` panics on one, which aborts an upgrade between its steps and
//! skips the restore of the boot state; a vanished reader is no reason to
//! give up a slot. SIGPIPE does not kill the tool either: the Rust runtime
//! ignores it, so writes return EPIPE.

/// `outln!` that ignores write errors.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `errln!` that ignores write errors.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Prints what immuboot's library crates log (`log`): the OCI crate's
/// registry mirrors that did not serve an image, its warnings about
/// registries.conf. On stderr, as the tool's own warnings, also with
/// `--json` (stdout stays JSON). Records of other crates (the HTTP stack)
/// are not shown.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info && metadata.target().starts_with("immuboot")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match record.level() {
            log::Level::Error => errln!("immuboot: error: {}", record.args()),
            log::Level::Warn => errln!("immuboot: warning: {}", record.args()),
            _ => errln!("immuboot: {}", record.args()),
        }
    }

    fn flush(&self) {}
}

/// Installs [`StderrLogger`] (once; later calls change nothing).
pub(crate) fn install_logger() {
    static LOGGER: StderrLogger = StderrLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
