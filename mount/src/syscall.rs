//! The system calls of the boot, behind a trait so a boot sequence (the
//! mount plan, mounting the image, writing the boot state and facts) can be
//! run against a recorder in tests, with any call made to fail.

use crate::plan::MountFlags;
use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

pub trait Syscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()>;
    fn bind(&self, source: &Path, target: &Path) -> io::Result<()>;
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// What `path` itself is (a symlink is not followed); `None` if nothing.
    fn file_kind(&self, path: &Path) -> Option<FileKind>;
    /// Copies a directory tree (ownership, modes, symlinks, device nodes).
    /// Replaces `to` if it exists.
    fn copy_tree(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Changes a mounted file system between read-only and read-write.
    fn remount(&self, target: &Path, flags: MountFlags) -> io::Result<()>;
    /// Whether the file system holding `path` is mounted read-only (statvfs).
    fn is_read_only(&self, path: &Path) -> io::Result<bool>;
    /// Attaches an image file to a free loop device, read-only; returns the
    /// device.
    fn attach_loop(&self, image: &Path) -> io::Result<PathBuf>;
    /// Writes a whole file (boot facts, fstab in the new root).
    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()>;
    /// Moves a mount to another place (switch_root moves /dev, /proc, /sys
    /// and /run into the new root).
    fn move_mount(&self, from: &Path, to: &Path) -> io::Result<()>;
}

/// What a path is, for the checks before a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    /// A symbolic link, and where it points.
    Symlink(PathBuf),
    /// A regular file, device node, socket or FIFO.
    Other,
}

/// The real thing, via rustix.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        use rustix::mount::MountFlags as F;
        let mut f = F::empty();
        if flags.read_only {
            f |= F::RDONLY;
        }
        if flags.nosuid {
            f |= F::NOSUID;
        }
        if flags.nodev {
            f |= F::NODEV;
        }
        let data = std::ffi::CString::new(data).map_err(io::Error::other)?;
        rustix::mount::mount(source, target, fstype, f, Some(data.as_c_str()))?;
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path) -> io::Result<()> {
        rustix::mount::mount_bind(source, target)?;
        Ok(())
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }

    fn file_kind(&self, path: &Path) -> Option<FileKind> {
        let meta = path.symlink_metadata().ok()?;
        Some(if meta.is_dir() {
            FileKind::Directory
        } else if meta.file_type().is_symlink() {
            FileKind::Symlink(std::fs::read_link(path).unwrap_or_default())
        } else {
            FileKind::Other
        })
    }

    fn copy_tree(&self, from: &Path, to: &Path) -> io::Result<()> {
        if to.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(to)?;
        }
        crate::copy::copy_tree(from, to)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remount(&self, target: &Path, flags: MountFlags) -> io::Result<()> {
        let f = if flags.read_only {
            rustix::mount::MountFlags::RDONLY
        } else {
            rustix::mount::MountFlags::empty()
        };
        rustix::mount::mount_remount(target, f, c"")?;
        Ok(())
    }

    fn is_read_only(&self, path: &Path) -> io::Result<bool> {
        let st = rustix::fs::statvfs(path)?;
        Ok(st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
    }

    fn attach_loop(&self, image: &Path) -> io::Result<PathBuf> {
        crate::loopdev::attach_read_only(image).map_err(|e| io::Error::other(format!("{e:#}")))
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        std::fs::write(path, contents)
    }

    fn move_mount(&self, from: &Path, to: &Path) -> io::Result<()> {
        rustix::mount::mount_move(from, to)?;
        Ok(())
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
        flags: MountFlags,
        data: String,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
    },
    MkdirAll(PathBuf),
    CopyTree {
        from: PathBuf,
        to: PathBuf,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remount {
        target: PathBuf,
        flags: MountFlags,
    },
    AttachLoop {
        image: PathBuf,
        device: PathBuf,
    },
    WriteFile {
        path: PathBuf,
        contents: Vec<u8>,
    },
    MoveMount {
        from: PathBuf,
        to: PathBuf,
    },
}

/// Records calls instead of making them; paths listed in `existing` exist,
/// calls whose target is listed in `failing` fail with the given errno, and
/// `fail_nth` makes the Nth call (counting from 1, recorded or not) fail.
#[derive(Default)]
pub struct RecordingSyscall {
    pub calls: RefCell<Vec<Call>>,
    pub existing: RefCell<Vec<PathBuf>>,
    /// Paths that are not directories: symlinks (with their target) and
    /// files (`FileKind::Other`); they exist too. Other existing paths are
    /// directories.
    pub not_directories: Vec<(PathBuf, FileKind)>,
    pub failing: Vec<(PathBuf, i32)>,
    /// Paths under which mkdir fails with EROFS (read-only image).
    pub read_only: Vec<PathBuf>,
    /// The call number that fails, and its errno.
    pub fail_nth: Option<(usize, i32)>,
    /// File systems mounted read-only, as `is_read_only` reports them
    /// (a remount changes it).
    pub read_only_mounts: RefCell<Vec<PathBuf>>,
    /// Calls made so far (for `fail_nth`).
    pub attempts: std::cell::Cell<usize>,
}

impl RecordingSyscall {
    fn check(&self, target: &Path) -> io::Result<()> {
        let n = self.attempts.get() + 1;
        self.attempts.set(n);
        if let Some((nth, errno)) = self.fail_nth {
            if nth == n {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        match self.failing.iter().find(|(p, _)| p == target) {
            Some((_, errno)) => Err(io::Error::from_raw_os_error(*errno)),
            None => Ok(()),
        }
    }

    /// A recorder whose Nth call fails with `errno`.
    pub fn failing_call(nth: usize, errno: i32) -> RecordingSyscall {
        RecordingSyscall {
            fail_nth: Some((nth, errno)),
            ..Default::default()
        }
    }

    /// The recorded calls so far.
    pub fn recorded(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        self.check(target)?;
        self.calls.borrow_mut().push(Call::Mount {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            flags,
            data: data.into(),
        });
        if flags.read_only {
            self.read_only_mounts.borrow_mut().push(target.into());
        }
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path) -> io::Result<()> {
        self.check(target)?;
        self.calls.borrow_mut().push(Call::Bind {
            source: source.into(),
            target: target.into(),
        });
        Ok(())
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        if self.read_only.iter().any(|ro| path.starts_with(ro)) {
            return Err(io::Error::from_raw_os_error(libc_erofs()));
        }
        self.check(path)?;
        self.calls.borrow_mut().push(Call::MkdirAll(path.into()));
        self.existing.borrow_mut().push(path.into());
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        self.existing.borrow().iter().any(|p| p == path)
            || self.not_directories.iter().any(|(p, _)| p == path)
    }

    fn file_kind(&self, path: &Path) -> Option<FileKind> {
        match self.not_directories.iter().find(|(p, _)| p == path) {
            Some((_, kind)) => Some(kind.clone()),
            None => self.exists(path).then_some(FileKind::Directory),
        }
    }

    fn copy_tree(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(to)?;
        self.calls.borrow_mut().push(Call::CopyTree {
            from: from.into(),
            to: to.into(),
        });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(to)?;
        self.calls.borrow_mut().push(Call::Rename {
            from: from.into(),
            to: to.into(),
        });
        self.existing.borrow_mut().push(to.into());
        Ok(())
    }

    fn remount(&self, target: &Path, flags: MountFlags) -> io::Result<()> {
        self.check(target)?;
        self.calls.borrow_mut().push(Call::Remount {
            target: target.into(),
            flags,
        });
        let mut ro = self.read_only_mounts.borrow_mut();
        ro.retain(|p| p != target);
        if flags.read_only {
            ro.push(target.into());
        }
        Ok(())
    }

    fn is_read_only(&self, path: &Path) -> io::Result<bool> {
        Ok(self
            .read_only_mounts
            .borrow()
            .iter()
            .any(|m| path.starts_with(m)))
    }

    fn attach_loop(&self, image: &Path) -> io::Result<PathBuf> {
        self.check(image)?;
        let device = PathBuf::from(format!("/dev/loop{}", self.calls.borrow().len()));
        self.calls.borrow_mut().push(Call::AttachLoop {
            image: image.into(),
            device: device.clone(),
        });
        Ok(device)
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        self.check(path)?;
        self.calls.borrow_mut().push(Call::WriteFile {
            path: path.into(),
            contents: contents.to_vec(),
        });
        Ok(())
    }
    fn move_mount(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(to)?;
        self.calls.borrow_mut().push(Call::MoveMount {
            from: from.into(),
            to: to.into(),
        });
        Ok(())
    }
}

fn libc_erofs() -> i32 {
    rustix::io::Errno::ROFS.raw_os_error()
}
