//! immuboot's init: PID 1 of the initramfs. The boot sequence is in [`boot`].
#![forbid(unsafe_code)]

pub mod boot;
pub mod cmdline;
pub mod config;
pub mod fatal;
pub mod generator;
pub mod logger;
pub mod switch_root;

/// Mounts /proc, /sys, /dev and /run in the initramfs. Runs before logging
/// can reach /dev/kmsg, so errors are returned for the caller to report.
pub fn mount_api_filesystems() -> anyhow::Result<()> {
    use anyhow::Context;
    use rustix::mount::{mount, MountFlags as F};
    let mounts: [(&str, &str, F, &std::ffi::CStr); 4] = [
        ("proc", "/proc", F::NOSUID | F::NODEV | F::NOEXEC, c""),
        ("sysfs", "/sys", F::NOSUID | F::NODEV | F::NOEXEC, c""),
        ("devtmpfs", "/dev", F::NOSUID, c"mode=0755"),
        ("tmpfs", "/run", F::NOSUID | F::NODEV, c"mode=0755"),
    ];
    for (fstype, target, flags, data) in mounts {
        std::fs::create_dir_all(target).with_context(|| format!("cannot create {target}"))?;
        match mount(fstype, target, fstype, flags, Some(data)) {
            Ok(()) => {}
            // Already mounted (e.g. devtmpfs by the kernel).
            Err(rustix::io::Errno::BUSY) => {}
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot mount {fstype} on {target}"))
                )
            }
        }
    }
    Ok(())
}
