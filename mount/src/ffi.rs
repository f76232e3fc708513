//! The only unsafe code of the project: loop device and watchdog ioctls,
//! which have no safe wrapper in rustix or nix.

use std::os::fd::{AsRawFd, BorrowedFd};

// From <linux/loop.h>.
const LOOP_SET_FD: u32 = 0x4C00;
const LOOP_CTL_GET_FREE: u32 = 0x4C82;

nix::ioctl_none_bad!(loop_ctl_get_free_raw, LOOP_CTL_GET_FREE);
nix::ioctl_write_int_bad!(loop_set_fd_raw, LOOP_SET_FD);

/// Asks /dev/loop-control for the number of a free loop device.
pub fn loop_ctl_get_free(control: BorrowedFd<'_>) -> nix::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number;
    // the fd is a valid open descriptor borrowed for the call.
    let n = unsafe { loop_ctl_get_free_raw(control.as_raw_fd())? };
    Ok(n as u32)
}

/// Attaches `backing` to the loop device `loop_dev`.
pub fn loop_set_fd(loop_dev: BorrowedFd<'_>, backing: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: LOOP_SET_FD takes the backing file descriptor as an integer
    // argument; both descriptors are valid and borrowed for the call. The
    // kernel takes its own reference to the backing file.
    unsafe { loop_set_fd_raw(loop_dev.as_raw_fd(), backing.as_raw_fd())? };
    Ok(())
}

// From <linux/watchdog.h>: WDIOC_SETTIMEOUT = _IOWR('W', 6, int).
nix::ioctl_readwrite!(wdioc_settimeout_raw, b'W', 6, nix::libc::c_int);

/// Sets a watchdog's timeout; returns the timeout the driver chose (it may
/// round to what its hardware supports).
pub fn watchdog_set_timeout(dev: BorrowedFd<'_>, seconds: i32) -> nix::Result<i32> {
    let mut value: nix::libc::c_int = seconds;
    // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the pointer,
    // which points to a live local for the duration of the call; the fd is a
    // valid open descriptor borrowed for the call.
    unsafe { wdioc_settimeout_raw(dev.as_raw_fd(), &mut value)? };
    Ok(value)
}

// From <linux/fs.h>: FIFREEZE = _IOWR('X', 119, int), FITHAW = _IOWR('X', 120, int).
nix::ioctl_readwrite!(fifreeze_raw, b'X', 119, nix::libc::c_int);
nix::ioctl_readwrite!(fithaw_raw, b'X', 120, nix::libc::c_int);

/// Freezes the file system of `dir` (the kernel writes out everything,
/// ext4 checkpoints its journal) and thaws it again at once.
pub fn freeze_thaw(dir: BorrowedFd<'_>) -> nix::Result<()> {
    let mut unused: nix::libc::c_int = 0;
    // SAFETY: FIFREEZE and FITHAW take an int argument the kernel ignores;
    // the pointer is to a live local, the fd a valid descriptor borrowed for
    // both calls.
    unsafe { fifreeze_raw(dir.as_raw_fd(), &mut unused)? };
    // SAFETY: as above.
    unsafe { fithaw_raw(dir.as_raw_fd(), &mut unused)? };
    Ok(())
}
