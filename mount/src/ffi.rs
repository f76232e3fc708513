//! The only unsafe code of the project: ioctls that rustix has no safe
//! wrapper for, issued through `rustix::ioctl`. Each function here is a safe
//! wrapper around exactly these requests:
//!
//! - loop devices (<linux/loop.h>): `LOOP_CTL_GET_FREE` on /dev/loop-control,
//!   `LOOP_SET_FD` on /dev/loopN;
//! - watchdogs (<linux/watchdog.h>): `WDIOC_SETTIMEOUT`;
//! - file system freeze (<linux/fs.h>): `FIFREEZE`, `FITHAW`.
//!
//! Every other system call of the project goes through rustix's safe API
//! (mount, reboot, init_module, ...).

use rustix::io;
use rustix::ioctl::{ioctl, opcode, IntegerSetter, Ioctl, IoctlOutput, Opcode, Updater};
use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, BorrowedFd};

// From <linux/loop.h>: plain numbers, not built with _IO().
const LOOP_SET_FD: Opcode = 0x4C00;
const LOOP_CTL_GET_FREE: Opcode = 0x4C82;
// From <linux/watchdog.h>: WDIOC_SETTIMEOUT = _IOWR('W', 6, int).
const WDIOC_SETTIMEOUT: Opcode = opcode::read_write::<c_int>(b'W', 6);
// From <linux/fs.h>: FIFREEZE = _IOWR('X', 119, int), FITHAW = _IOWR('X', 120, int).
const FIFREEZE: Opcode = opcode::read_write::<c_int>(b'X', 119);
const FITHAW: Opcode = opcode::read_write::<c_int>(b'X', 120);

/// An ioctl without argument whose answer is the syscall's return value
/// (how LOOP_CTL_GET_FREE returns a device number); rustix's `NoArg`
/// discards that value.
struct ReturnsInt<const OPCODE: Opcode>;

// SAFETY: the argument is a null pointer and nothing is read through it;
// the output is the (non-negative) return value of the syscall, which needs
// no memory access. Used only with opcodes that take no argument.
unsafe impl<const OPCODE: Opcode> Ioctl for ReturnsInt<OPCODE> {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        OPCODE
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::null_mut()
    }

    unsafe fn output_from_ptr(output: IoctlOutput, _: *mut c_void) -> io::Result<IoctlOutput> {
        Ok(output)
    }
}

/// Asks /dev/loop-control for the number of a free loop device.
pub fn loop_ctl_get_free(control: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number;
    // the fd is a valid open descriptor borrowed for the call.
    let n = unsafe { ioctl(control, ReturnsInt::<LOOP_CTL_GET_FREE>)? };
    Ok(n as u32)
}

/// Attaches `backing` to the loop device `loop_dev`.
pub fn loop_set_fd(loop_dev: BorrowedFd<'_>, backing: BorrowedFd<'_>) -> io::Result<()> {
    // A borrowed descriptor is never negative, so the conversion is lossless.
    let backing_fd = backing.as_raw_fd() as usize;
    // SAFETY: LOOP_SET_FD takes the backing file descriptor as an integer
    // argument; both descriptors are valid and borrowed for the call. The
    // kernel takes its own reference to the backing file.
    unsafe {
        ioctl(
            loop_dev,
            IntegerSetter::<LOOP_SET_FD>::new_usize(backing_fd),
        )
    }
}

/// Sets a watchdog's timeout; returns the timeout the driver chose (it may
/// round to what its hardware supports).
pub fn watchdog_set_timeout(dev: BorrowedFd<'_>, seconds: i32) -> io::Result<i32> {
    let mut value: c_int = seconds;
    // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the pointer,
    // which points to a live local for the duration of the call; the fd is a
    // valid open descriptor borrowed for the call.
    unsafe { ioctl(dev, Updater::<WDIOC_SETTIMEOUT, c_int>::new(&mut value))? };
    Ok(value)
}

/// Freezes the file system of `dir` (the kernel writes out everything,
/// ext4 checkpoints its journal) and thaws it again at once.
pub fn freeze_thaw(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mut unused: c_int = 0;
    // SAFETY: FIFREEZE and FITHAW take an int argument the kernel ignores;
    // the pointer is to a live local, the fd a valid descriptor borrowed for
    // both calls.
    unsafe { ioctl(dir, Updater::<FIFREEZE, c_int>::new(&mut unused))? };
    // SAFETY: as above.
    unsafe { ioctl(dir, Updater::<FITHAW, c_int>::new(&mut unused)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request numbers built with `opcode` must equal the kernel
    /// headers' values (x86_64/aarch64 encoding), or the kernel would see
    /// a different request.
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(WDIOC_SETTIMEOUT, 0xC004_5706);
        assert_eq!(FIFREEZE, 0xC004_5877);
        assert_eq!(FITHAW, 0xC004_5878);
    }
}
