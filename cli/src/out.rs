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
