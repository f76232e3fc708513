//! The system calls the mount plan needs, behind a trait so a mount sequence
//! can be run against a recorder in tests.

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
    /// Copies a directory tree (ownership, modes, symlinks, device nodes).
    /// Replaces `to` if it exists.
    fn copy_tree(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
}

/// The real thing, via rustix.
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

    fn copy_tree(&self, from: &Path, to: &Path) -> io::Result<()> {
        if to.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(to)?;
        }
        crate::copy::copy_tree(from, to)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
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
}

/// Records calls instead of making them; paths listed in `existing` exist,
/// calls whose target is listed in `failing` fail with the given errno.
#[derive(Default)]
pub struct RecordingSyscall {
    pub calls: RefCell<Vec<Call>>,
    pub existing: RefCell<Vec<PathBuf>>,
    pub failing: Vec<(PathBuf, i32)>,
    /// Paths under which mkdir fails with EROFS (read-only image).
    pub read_only: Vec<PathBuf>,
}

impl RecordingSyscall {
    fn check(&self, target: &Path) -> io::Result<()> {
        match self.failing.iter().find(|(p, _)| p == target) {
            Some((_, errno)) => Err(io::Error::from_raw_os_error(*errno)),
            None => Ok(()),
        }
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        _flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        self.check(target)?;
        self.calls.borrow_mut().push(Call::Mount {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            data: data.into(),
        });
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
        self.calls.borrow_mut().push(Call::Rename {
            from: from.into(),
            to: to.into(),
        });
        self.existing.borrow_mut().push(to.into());
        Ok(())
    }
}

fn libc_erofs() -> i32 {
    rustix::io::Errno::ROFS.raw_os_error()
}
