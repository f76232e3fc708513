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

/// Mounts bpffs on /sys/fs/bpf as systemd would (nosuid, nodev, noexec,
/// mode 0700), for systemd to find it there and leave it. Each bpffs mount
/// asks the kernel for a module (`bpf_preload`) Debian's kernels do not
/// have: in the new root the kernel starts /sbin/modprobe for it and
/// systemd waits for that process before its first line (0.05–0.06 s under
/// QEMU's TCG); in the initramfs, which has no modprobe, the request fails
/// at once. Returns whether it mounted; a kernel without bpffs leaves the
/// mount to systemd, which then fails as it would have anyway.
pub fn mount_bpffs(sys: &std::path::Path) -> std::io::Result<bool> {
    use rustix::mount::{mount, MountFlags as F};
    let target = sys.join("fs/bpf");
    if !target.is_dir() {
        return Ok(false);
    }
    match mount(
        "bpf",
        &target,
        "bpf",
        F::NOSUID | F::NODEV | F::NOEXEC,
        Some(c"mode=0700"),
    ) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::NODEV) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
