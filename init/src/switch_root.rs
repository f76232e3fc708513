//! Switching from the initramfs to the new root, as util-linux's switch_root
//! does: move the API file systems, free the initramfs, make the new root `/`
//! and exec its init.

use anyhow::{bail, Context, Result};
use immuboot_mount::syscall::Syscall;
use rustix::fs::{statfs, Dev};
use std::convert::Infallible;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

const RAMFS_MAGIC: i64 = 0x858458f6;
const TMPFS_MAGIC: i64 = 0x01021994;

/// The API file systems the new root takes over from the initramfs.
const API_FILESYSTEMS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];

/// Checks that the new root has `init` and moves the API file systems into
/// it; the part of the switch that comes back on failure.
pub fn prepare(sys: &dyn Syscall, new_root: &Path, init: &str) -> Result<()> {
    let target_init = new_root.join(init.trim_start_matches('/'));
    if !sys.exists(&target_init) {
        bail!("{init} does not exist in the new root (is this an OS image with systemd?)");
    }
    for api in API_FILESYSTEMS {
        let to = new_root.join(api.trim_start_matches('/'));
        sys.move_mount(Path::new(api), &to)
            .with_context(|| format!("cannot move {api} to {}", to.display()))?;
    }
    Ok(())
}

/// [`prepare`], then frees the initramfs, makes the new root `/` and execs
/// its init. Returns only on failure.
pub fn switch_root(sys: &dyn Syscall, new_root: &Path, init: &str) -> Result<Infallible> {
    prepare(sys, new_root, init)?;
    rustix::process::chdir(new_root)
        .with_context(|| format!("cannot chdir to {}", new_root.display()))?;

    // Free the initramfs' memory; never on a disk-backed root.
    let fs = statfs("/").context("statfs /")?;
    let magic = fs.f_type as i64;
    if magic == RAMFS_MAGIC || magic == TMPFS_MAGIC {
        let root_dev = std::fs::metadata("/").context("stat /")?.dev();
        remove_tree(Path::new("/"), root_dev, new_root);
    } else {
        log::warn!("/ is not an initramfs (magic {magic:#x}); not deleting its contents");
    }

    rustix::mount::mount_move(".", "/").context("cannot move the new root to /")?;
    log::info!("switching root to {}, starting {init}", new_root.display());
    rustix::process::chroot(".").context("chroot to the new root")?;
    rustix::process::chdir("/").context("chdir /")?;
    let err = std::process::Command::new(init).arg0(init).exec();
    Err(anyhow::Error::new(err).context(format!("cannot execute {init} in the new root")))
}

/// Deletes everything on the initramfs below `dir`, staying on its device and
/// sparing `keep`. Errors are ignored: this only frees memory.
fn remove_tree(dir: &Path, root_dev: Dev, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            if meta.dev() != root_dev {
                continue;
            }
            remove_tree(&path, root_dev, keep);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use immuboot_mount::syscall::{Call, RecordingSyscall};

    #[test]
    fn moves_the_api_file_systems_into_the_new_root() {
        let sys = RecordingSyscall::default();
        sys.existing.borrow_mut().push("/sysroot/sbin/init".into());
        prepare(&sys, Path::new("/sysroot"), "/sbin/init").unwrap();
        let moved: Vec<(String, String)> = sys
            .recorded()
            .into_iter()
            .filter_map(|c| match c {
                Call::MoveMount { from, to } => {
                    Some((from.display().to_string(), to.display().to_string()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            moved,
            [
                ("/dev", "/sysroot/dev"),
                ("/proc", "/sysroot/proc"),
                ("/sys", "/sysroot/sys"),
                ("/run", "/sysroot/run")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn a_root_without_init_or_a_failed_move_is_an_error_naming_it() {
        let sys = RecordingSyscall::default();
        let e = prepare(&sys, Path::new("/sysroot"), "/sbin/init").unwrap_err();
        assert!(
            format!("{e:#}").contains("/sbin/init does not exist"),
            "{e:#}"
        );
        let sys = RecordingSyscall::failing_call(2, 22); // EINVAL moving /proc
        sys.existing.borrow_mut().push("/sysroot/sbin/init".into());
        let e = prepare(&sys, Path::new("/sysroot"), "/sbin/init").unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot move /proc to /sysroot/proc"),
            "{e:#}"
        );
    }
}
