//! Arming a watchdog before the init hands over to systemd: a slot that
//! hangs after switch_root (PID 1 stuck, systemd never starting) resets the
//! machine, and the boot counters make the next boot fall back. systemd
//! takes the device over when `RuntimeWatchdogSec=` is set in the image.

use anyhow::{Context, Result};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// The first watchdog device, if a driver registered one.
pub fn first_device(dev: &Path) -> Option<PathBuf> {
    let path = dev.join("watchdog0");
    path.exists().then_some(path)
}

/// Identity of a watchdog device from sysfs (e.g. "i6300ESB timer").
pub fn identity(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/watchdog/{name}/identity"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Starts the watchdog with `seconds` and closes it without the magic
/// character, so it keeps running until someone pets or stops it. Returns
/// the timeout the driver applied.
pub fn arm(device: &Path, seconds: u32) -> Result<i32> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .with_context(|| format!("cannot open {}", device.display()))?;
    let applied =
        crate::ffi::watchdog_set_timeout(file.as_fd(), seconds.min(i32::MAX as u32) as i32)
            .with_context(|| format!("cannot set the timeout of {}", device.display()))?;
    // Any write pets it: the countdown starts now, with the new timeout.
    file.write_all(b"\0")
        .with_context(|| format!("cannot start {}", device.display()))?;
    Ok(applied)
}
