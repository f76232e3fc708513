//! Switching from the initramfs to the new root, as util-linux's switch_root
//! does: move the API file systems, free the initramfs, make the new root `/`
//! and exec its init.

use anyhow::{bail, Context, Result};
use rustix::fs::{statfs, Dev};
use std::convert::Infallible;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

const RAMFS_MAGIC: i64 = 0x858458f6;
const TMPFS_MAGIC: i64 = 0x01021994;

pub fn switch_root(new_root: &Path, init: &str) -> Result<Infallible> {
    let target_init = new_root.join(init.trim_start_matches('/'));
    if target_init.symlink_metadata().is_err() {
        bail!("{init} does not exist in the new root (is this an OS image with systemd?)");
    }
    for api in ["/dev", "/proc", "/sys", "/run"] {
        let to = new_root.join(api.trim_start_matches('/'));
        rustix::mount::mount_move(api, &to)
            .with_context(|| format!("cannot move {api} to {}", to.display()))?;
    }
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
