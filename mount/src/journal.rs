//! Making a write visible to GRUB. GRUB reads ext4 without replaying its
//! journal, so a file replaced by rename is, to GRUB, still the old one until
//! the journal is checkpointed — and GRUB's `save_env` would then write into
//! the old file's (freed, maybe reused) blocks. A freeze/thaw of the file
//! system checkpoints the journal, like the remount read-only that ends
//! every state update does.

use anyhow::{Context, Result};
use std::os::fd::AsFd;
use std::path::Path;

/// Checkpoints the journal of the file system mounted at `mount_root`.
/// Does nothing when `mount_root` is not the root of a mount (a test
/// directory): freezing a host's file system is never wanted there.
pub fn checkpoint(mount_root: &Path) -> Result<()> {
    let is_mount_root = rustix::fs::statx(
        rustix::fs::CWD,
        mount_root,
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
    .unwrap_or(false);
    if !is_mount_root {
        return Ok(());
    }
    let dir = std::fs::File::open(mount_root)
        .with_context(|| format!("cannot open {}", mount_root.display()))?;
    crate::ffi::freeze_thaw(dir.as_fd())
        .with_context(|| format!("cannot checkpoint the journal of {}", mount_root.display()))
}
