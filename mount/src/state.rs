//! The one write path of the boot state, used by the init, the `immuboot`
//! tool (every command, the upgrade included) and the dracut mode:
//! [`with_writable`] makes COS_STATE writable for the time of a change, and
//! [`commit`] writes both copies of the environment block and checkpoints
//! the journal so GRUB, which does not replay it, reads the new state.

use crate::plan::MountFlags;
use crate::syscall::Syscall;
use anyhow::{Context, Result};
use immuboot_assess::grubenv::GrubEnv;
use immuboot_assess::{store, BootState};
use std::path::Path;

/// Runs `change` with the file system of `dir` writable: remounted
/// read-write first if it is mounted read-only, and read-only again after,
/// whatever `change` returned. When both the change and the read-only
/// remount fail, the error names both.
pub fn with_writable<T>(
    sys: &dyn Syscall,
    dir: &Path,
    change: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let read_only = sys
        .is_read_only(dir)
        .with_context(|| format!("cannot tell whether {} is read-only", dir.display()))?;
    if read_only {
        sys.remount(dir, MountFlags::RW)
            .with_context(|| format!("cannot remount {} read-write", dir.display()))?;
    }
    let result = change();
    if !read_only {
        return result;
    }
    let back = sys.remount(dir, MountFlags::RO);
    match (result, back) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(e)) => Err(anyhow::Error::new(e).context(format!(
            "the change was written, but {} cannot be remounted read-only again",
            dir.display()
        ))),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(r)) => Err(e.context(format!(
            "and {} cannot be remounted read-only again ({r})",
            dir.display()
        ))),
    }
}

/// Writes `state` (keeping the other variables of `env`) into both copies
/// of the boot state under `dir`, then checkpoints the journal. `between`
/// runs after the backup copy and before the primary (a crash test pauses
/// there). `dir` must be writable: see [`with_writable`].
pub fn commit(dir: &Path, env: &GrubEnv, state: &BootState, between: impl FnOnce()) -> Result<()> {
    store::save_with(dir, env, state, between)?;
    // GRUB reads ext4 without replaying the journal: without this it still
    // sees the old file (the remount read-only would checkpoint too, but a
    // state write must not depend on that succeeding).
    crate::journal::checkpoint(dir)
}

/// [`commit`] inside [`with_writable`]: one complete state update.
pub fn update(sys: &dyn Syscall, dir: &Path, env: &GrubEnv, state: &BootState) -> Result<()> {
    with_writable(sys, dir, || commit(dir, env, state, || {}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};
    use immuboot_assess::{Health, Slot};
    use std::path::PathBuf;

    fn state_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("immuboot-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("grub")).unwrap();
        d
    }

    fn trial_b() -> BootState {
        let mut s = BootState::default();
        s.activate_on_trial(Slot::B, 3);
        s
    }

    #[test]
    fn a_read_only_state_is_remounted_around_the_commit() {
        let d = state_dir("ro");
        let sys = RecordingSyscall::default();
        sys.read_only_mounts.borrow_mut().push(d.clone());
        update(&sys, &d, &GrubEnv::new(), &trial_b()).unwrap();
        assert_eq!(
            sys.recorded(),
            vec![
                Call::Remount {
                    target: d.clone(),
                    flags: MountFlags::RW
                },
                Call::Remount {
                    target: d.clone(),
                    flags: MountFlags::RO
                },
            ]
        );
        assert_eq!(store::load(&d).state.b, Health::Trial { tries: 3 });
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_writable_state_is_not_remounted() {
        let d = state_dir("rw");
        let sys = RecordingSyscall::default();
        update(&sys, &d, &GrubEnv::new(), &trial_b()).unwrap();
        assert!(sys.recorded().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_remount_read_write_changes_nothing() {
        let d = state_dir("norw");
        let sys = RecordingSyscall::failing_call(1, 30); // EROFS
        sys.read_only_mounts.borrow_mut().push(d.clone());
        let e = update(&sys, &d, &GrubEnv::new(), &trial_b()).unwrap_err();
        assert!(format!("{e:#}").contains("read-write"), "{e:#}");
        assert!(!store::primary(&d).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn both_errors_are_reported_when_the_change_and_the_remount_fail() {
        let d = state_dir("both");
        let sys = RecordingSyscall::failing_call(2, 16); // EBUSY on the remount read-only
        sys.read_only_mounts.borrow_mut().push(d.clone());
        let e =
            with_writable(&sys, &d, || -> Result<()> { anyhow::bail!("disk full") }).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("disk full") && text.contains("read-only again"),
            "{text}"
        );
        // A successful change with a failed remount is still reported.
        let sys = RecordingSyscall::failing_call(2, 16);
        sys.read_only_mounts.borrow_mut().push(d.clone());
        let e = with_writable(&sys, &d, || Ok(())).unwrap_err();
        assert!(format!("{e:#}").contains("was written"), "{e:#}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
