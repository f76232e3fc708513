//! Attaching an image file to a read-only loop device.

use crate::ffi;
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Attaches `image` read-only to a free loop device and returns its path.
/// The backing file is opened read-only, so the kernel makes the loop device
/// read-only too.
pub fn attach_read_only(image: &Path) -> Result<PathBuf> {
    let backing =
        File::open(image).with_context(|| format!("cannot open image {}", image.display()))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .context("cannot open /dev/loop-control (is the loop module loaded?)")?;
    // Another process may take the same free device between the two calls.
    let mut last_err = None;
    for _ in 0..8 {
        let n = ffi::loop_ctl_get_free(control.as_fd()).context("no free loop device")?;
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let loop_file = match OpenOptions::new().read(true).open(&dev) {
            Ok(f) => f,
            Err(e) => {
                last_err =
                    Some(anyhow::Error::new(e).context(format!("cannot open {}", dev.display())));
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
        };
        match ffi::loop_set_fd(loop_file.as_fd(), backing.as_fd()) {
            Ok(()) => return Ok(dev),
            Err(rustix::io::Errno::BUSY) => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot attach {} to {}",
                    image.display(),
                    dev.display()
                )))
            }
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("all loop devices were busy")))
        .with_context(|| format!("cannot attach {} to a loop device", image.display()))
}
