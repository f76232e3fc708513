//! The one write path of the boot state, used by the init, the `immuboot`
//! tool (every command, the upgrade included) and the dracut mode:
//! [`with_writable`] makes COS_STATE writable for the time of a change, and
//! [`commit`] writes both copies of the environment block and checkpoints
//! the journal so GRUB, which does not replay it, reads the new state.
//! Every read-modify-write of the state goes through [`transaction`], which
//! holds [`lock`] from the read to the end of the write, so two writers
//! (the tool run twice, an upgrade beside `next-boot`) cannot lose each
//! other's change or mix their copies.

use crate::plan::MountFlags;
use crate::syscall::Syscall;
use anyhow::{Context, Result};
use immuboot_assess::grubenv::GrubEnv;
use immuboot_assess::{store, BootState};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long [`transaction`] waits for another writer of the boot state.
/// A state change takes milliseconds; the image writes of an upgrade are
/// never done under the lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(5);

/// An exclusive lock on the boot state directory, released when dropped
/// (or when the process ends, whatever way it ends).
#[derive(Debug)]
pub struct StateLock {
    _dir: File,
}

/// Takes the exclusive lock of the boot state under `dir`: `flock` on the
/// directory itself, so it works on a read-only mount, needs no lock file
/// and is shared by every process and thread (each call opens its own
/// descriptor). Waits up to `wait`, then fails naming the directory.
pub fn lock(dir: &Path, wait: Duration) -> Result<StateLock> {
    let file = File::open(dir)
        .with_context(|| format!("cannot open {} to lock the boot state", dir.display()))?;
    let start = Instant::now();
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(StateLock { _dir: file }),
            Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot lock the boot state in {}", dir.display())))
            }
        }
        if start.elapsed() >= wait {
            anyhow::bail!(
                "the boot state in {} is being changed by another process (still locked after {:.1} s); try again",
                dir.display(),
                start.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// One read-modify-write of the boot state under `dir`, under [`lock`]:
/// loads both copies, lets `change` edit what was loaded, and — when the
/// state or the environment changed, or the copies need repair — commits
/// it with the file system writable for the time of it ([`update`]).
/// Nothing is written when `change` fails.
pub fn transaction<T>(
    sys: &dyn Syscall,
    dir: &Path,
    change: impl FnOnce(&mut store::Loaded) -> Result<T>,
) -> Result<T> {
    transaction_with(sys, dir, || {}, change)
}

/// [`transaction`] with [`commit`]'s `between` hook.
pub fn transaction_with<T>(
    sys: &dyn Syscall,
    dir: &Path,
    between: impl FnOnce(),
    change: impl FnOnce(&mut store::Loaded) -> Result<T>,
) -> Result<T> {
    let _lock = lock(dir, LOCK_WAIT)?;
    let mut loaded = store::load(dir);
    let (env, state) = (loaded.env.clone(), loaded.state.clone());
    let out = change(&mut loaded)?;
    if loaded.env != env || loaded.state != state || loaded.needs_repair() {
        with_writable(sys, dir, || {
            commit(dir, &loaded.env, &loaded.state, between)
        })?;
    }
    Ok(out)
}

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
    crate::journal::checkpoint(dir)?;
    immuboot_assess::crashpoint::reach("state-checkpointed");
    Ok(())
}

/// [`commit`] inside [`with_writable`], under [`lock`]: one complete state
/// update of a state read earlier (the init, alone at boot; changes made
/// from a fresh read go through [`transaction`]).
pub fn update(sys: &dyn Syscall, dir: &Path, env: &GrubEnv, state: &BootState) -> Result<()> {
    let _lock = lock(dir, LOCK_WAIT)?;
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

    fn count(env: &GrubEnv, name: &str) -> u32 {
        env.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Two writers at once, many rounds: no change reported done is lost,
    /// and the two copies are equal after every round.
    #[test]
    fn concurrent_transactions_lose_no_update() {
        let d = state_dir("concurrent");
        const ROUNDS: u32 = 30;
        const PER_ROUND: u32 = 10;
        for round in 1..=ROUNDS {
            let writers: Vec<_> = ["count_x", "count_y"]
                .into_iter()
                .map(|name| {
                    let d = d.clone();
                    std::thread::spawn(move || {
                        let sys = RecordingSyscall::default();
                        for _ in 0..PER_ROUND {
                            transaction(&sys, &d, |l| {
                                let n = count(&l.env, name);
                                l.env.set(name, &(n + 1).to_string())
                            })
                            .unwrap();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            let loaded = store::load(&d);
            for name in ["count_x", "count_y"] {
                assert_eq!(
                    count(&loaded.env, name),
                    round * PER_ROUND,
                    "{name}, round {round}"
                );
            }
            assert_eq!(
                std::fs::read(store::primary(&d)).unwrap(),
                std::fs::read(store::backup(&d)).unwrap(),
                "round {round}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_held_lock_fails_after_the_wait_naming_the_directory() {
        let d = state_dir("held");
        let held = lock(&d, LOCK_WAIT).unwrap();
        let e = lock(&d, Duration::from_millis(50)).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains(&d.display().to_string()) && text.contains("locked after"),
            "{text}"
        );
        drop(held);
        lock(&d, Duration::from_millis(50)).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unchanged_state_is_not_written_and_a_failed_change_writes_nothing() {
        let d = state_dir("unchanged");
        let sys = RecordingSyscall::default();
        update(&sys, &d, &GrubEnv::new(), &trial_b()).unwrap();
        let before = std::fs::metadata(store::primary(&d))
            .unwrap()
            .modified()
            .unwrap();
        sys.read_only_mounts.borrow_mut().push(d.clone());
        transaction(&sys, &d, |_| Ok(())).unwrap();
        let e = transaction(&sys, &d, |l| -> Result<()> {
            l.state.next_entry = Some(immuboot_assess::Mode::Recovery);
            anyhow::bail!("refused")
        });
        assert!(e.is_err());
        assert!(sys.recorded().is_empty(), "{:?}", sys.recorded());
        let after = std::fs::metadata(store::primary(&d))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
        assert_eq!(store::load(&d).state.next_entry, None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
