//! Making a write visible to GRUB. GRUB reads ext4 without replaying its
//! journal, so a file replaced by rename is, to GRUB, still the old one until
//! the journal is checkpointed — and GRUB's `save_env` would then write into
//! the old file's (freed, maybe reused) blocks. A freeze/thaw of the file
//! system checkpoints the journal, like the remount read-only that ends
//! every state update does.

use anyhow::{Context, Result};
use std::os::fd::AsFd;
use std::path::Path;

/// Whether `path` is the root of a mounted file system (statx
/// `STATX_ATTR_MOUNT_ROOT`); false when it cannot be told.
pub fn is_mount_root(path: &Path) -> bool {
    rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::BASIC_STATS,
    )
    .map(|st| {
        st.stx_attributes_mask
            .contains(rustix::fs::StatxAttributes::MOUNT_ROOT)
            && st
                .stx_attributes
                .contains(rustix::fs::StatxAttributes::MOUNT_ROOT)
    })
    .unwrap_or(false)
}

/// Checkpoints the journal of the file system mounted at `mount_root`.
/// Does nothing when `mount_root` is not the root of a mount (a test
/// directory): freezing a host's file system is never wanted there.
pub fn checkpoint(mount_root: &Path) -> Result<()> {
    if !is_mount_root(mount_root) {
        return Ok(());
    }
    let dir = std::fs::File::open(mount_root)
        .with_context(|| format!("cannot open {}", mount_root.display()))?;
    crate::ffi::freeze_thaw(dir.as_fd())
        .with_context(|| format!("cannot checkpoint the journal of {}", mount_root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_a_mount_root_and_a_fresh_directory_is_not() {
        assert!(is_mount_root(Path::new("/")));
        let d = std::env::temp_dir().join(format!("immuboot-mountroot-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert!(!is_mount_root(&d));
        assert!(!is_mount_root(&d.join("missing")));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
