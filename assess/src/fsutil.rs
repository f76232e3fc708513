//! Crash-safe file replacement: write a temporary file, fsync it, rename it
//! over the old one, fsync the directory. A power cut leaves the old or the
//! new content, never a mix.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being replaced (a dot file
/// beside it, so leftovers of an interrupted write are easy to find).
pub fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.new"))
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with_points(path, bytes, None)
}

/// [`write_atomic`] with the crash-test points `NAME-written` (temporary
/// written and fsynced) and `NAME-renamed` (renamed, directory not fsynced)
/// when `points` is `Some(NAME)` (see [`crate::crashpoint`]).
pub fn write_atomic_with_points(path: &Path, bytes: &[u8], points: Option<&str>) -> Result<()> {
    let reach = |step: &str| {
        if let Some(name) = points {
            crate::crashpoint::reach(&format!("{name}-{step}"));
        }
    };
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let tmp = temporary(path);
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
    drop(file);
    reach("written");
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
        .inspect_err(|_| {
            // E.g. an immutable target: the temporary must not stay behind.
            let _ = std::fs::remove_file(&tmp);
        })?;
    reach("renamed");
    fsync_dir(dir)
}

/// Whether `e` (or an error in its chain) says the file system is full
/// or the quota is used up.
pub fn is_out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        })
    })
}

/// Overwrites `path` in place with `bytes`, which must be exactly as long as
/// the file, and fsyncs it: no block is allocated, so this works on a full
/// file system. Not atomic: a power cut can leave the file torn.
pub fn overwrite_in_place(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {} to rewrite it in place", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    anyhow::ensure!(
        len == bytes.len() as u64,
        "cannot rewrite {} in place: it has {len} bytes, the new content {}",
        path.display(),
        bytes.len()
    );
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot rewrite {} in place", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("immuboot-fsutil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.sha256");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert!(!temporary(&f).exists());
        assert_eq!(temporary(&f), dir.join(".x.sha256.new"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_rename_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("immuboot-fsutil-rn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The target is a non-empty directory: the rename fails.
        let f = dir.join("grubenv");
        std::fs::create_dir_all(f.join("inside")).unwrap();
        let e = write_atomic(&f, b"x").unwrap_err();
        assert!(format!("{e:#}").contains("cannot rename"), "{e:#}");
        assert!(
            !temporary(&f).exists(),
            "{} left behind",
            temporary(&f).display()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
