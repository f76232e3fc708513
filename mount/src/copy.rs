//! Recursive copy that keeps what a root file system needs: ownership, modes,
//! symlinks, device nodes and FIFOs (extended attributes are not copied).

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    copy_entry(from, to, &meta)
}

fn copy_entry(from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let ft = meta.file_type();
    if ft.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            let child_meta = entry.metadata()?;
            copy_entry(&entry.path(), &to.join(entry.file_name()), &child_meta)?;
        }
    } else if ft.is_symlink() {
        symlink(fs::read_link(from)?, to)?;
    } else if ft.is_file() {
        fs::copy(from, to)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
        use rustix::fs::{FileType, Mode};
        let kind = FileType::from_raw_mode(meta.mode());
        rustix::fs::mknodat(
            rustix::fs::CWD,
            to,
            kind,
            Mode::from_raw_mode(meta.mode() & 0o7777),
            meta.rdev(),
        )?;
    }
    lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !ft.is_symlink() {
        // After chown, which clears set-id bits.
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_dirs_symlinks_and_modes() {
        let base = std::env::temp_dir().join(format!("immuboot-copy-{}", std::process::id()));
        let src = base.join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/file"), b"data").unwrap();
        fs::set_permissions(src.join("sub/file"), fs::Permissions::from_mode(0o640)).unwrap();
        symlink("sub/file", src.join("link")).unwrap();
        copy_tree(&src, &base.join("dst")).unwrap();
        assert_eq!(fs::read(base.join("dst/sub/file")).unwrap(), b"data");
        let mode = fs::metadata(base.join("dst/sub/file")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            fs::read_link(base.join("dst/link")).unwrap(),
            Path::new("sub/file")
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
