//! The boot state on disk: two copies of the GRUB environment block, so a
//! torn or garbled write never loses the state. Writers replace the backup
//! first, then the primary, each atomically; readers take the primary if it
//! is valid, else the backup, else defaults, and say which.

use crate::crashpoint;
use crate::fsutil;
use crate::grubenv::{self, GrubEnv};
use crate::{BootState, GRUBENV_PATH};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub fn primary(state_dir: &Path) -> PathBuf {
    state_dir.join(GRUBENV_PATH.trim_start_matches('/'))
}

pub fn backup(state_dir: &Path) -> PathBuf {
    let mut p = primary(state_dir).into_os_string();
    p.push(".bak");
    PathBuf::from(p)
}

/// Where the state came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Source {
    Primary,
    /// The primary was unreadable; the backup was used.
    Backup {
        primary_error: String,
    },
    /// Neither copy was readable; defaults were used.
    Defaults {
        error: String,
    },
}

pub struct Loaded {
    pub env: GrubEnv,
    pub state: BootState,
    pub warnings: Vec<String>,
    pub source: Source,
    /// The backup differs from the primary (e.g. GRUB counted a try, which
    /// it writes to the primary only).
    pub backup_stale: bool,
}

impl Loaded {
    /// Whether the files need rewriting to be two valid, equal copies.
    pub fn needs_repair(&self) -> bool {
        self.source != Source::Primary || self.backup_stale
    }
}

pub fn load(state_dir: &Path) -> Loaded {
    let backup_env = grubenv::read(&backup(state_dir));
    let (env, source) = match grubenv::read(&primary(state_dir)) {
        Ok(env) => (env, Source::Primary),
        Err(pe) => match &backup_env {
            Ok(env) => (
                env.clone(),
                Source::Backup {
                    primary_error: format!("{pe:#}"),
                },
            ),
            Err(be) => (
                GrubEnv::new(),
                Source::Defaults {
                    error: format!("{pe:#}; {be:#}"),
                },
            ),
        },
    };
    let backup_stale = match &backup_env {
        Ok(b) => *b != env,
        Err(_) => true,
    };
    let (state, warnings) = BootState::from_env(&env);
    Loaded {
        env,
        state,
        warnings,
        source,
        backup_stale,
    }
}

/// Stores `state` (keeping other variables of `env`) in both copies.
pub fn save(state_dir: &Path, env: &GrubEnv, state: &BootState) -> Result<()> {
    save_with(state_dir, env, state, || {})
}

/// [`save`], calling `between` after the backup and before the primary copy
/// (a crash test pauses there). The crash-test points of a state commit
/// ([`crate::crashpoint::STATE_COMMIT`]) up to `state-saved` are here.
pub fn save_with(
    state_dir: &Path,
    env: &GrubEnv,
    state: &BootState,
    between: impl FnOnce(),
) -> Result<()> {
    let mut env = env.clone();
    state.store(&mut env)?;
    write_copy(&backup(state_dir), &env, "state-backup")?;
    crashpoint::reach("state-backup-saved");
    between();
    write_copy(&primary(state_dir), &env, "state-primary")?;
    crashpoint::reach("state-saved");
    Ok(())
}

/// Writes one copy of the state: replaced atomically by a new file; when
/// the file system has no room for one, overwritten in place, as GRUB's
/// `save_env` does. A full COS_STATE must not stop the state from being
/// written: a boot that cannot clear its count would, three boots later,
/// give up a healthy slot. In place a power cut can tear the copy being
/// written; the other one, written and fsynced before it, is whole.
fn write_copy(path: &Path, env: &GrubEnv, points: &str) -> Result<()> {
    write_copy_with(path, env, points, grubenv::write_atomic_with_points)
}

fn write_copy_with(
    path: &Path,
    env: &GrubEnv,
    points: &str,
    replace: impl FnOnce(&Path, &GrubEnv, &str) -> Result<()>,
) -> Result<()> {
    match replace(path, env, points) {
        Err(e) if fsutil::is_out_of_space(&e) => fsutil::overwrite_in_place(path, &env.to_block()?)
            .with_context(|| format!("{e:#}, and rewriting it in place failed")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Health, Slot};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("immuboot-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("grub")).unwrap();
        d
    }

    fn no_space(_: &Path, _: &GrubEnv, _: &str) -> Result<()> {
        Err(
            anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::StorageFull))
                .context("cannot write .grubenv.new"),
        )
    }

    #[test]
    fn a_full_file_system_gets_the_copy_rewritten_in_place() {
        let d = dir("full");
        let mut s = BootState::default();
        save(&d, &GrubEnv::new(), &s).unwrap();
        s.activate_on_trial(Slot::B, 3);
        let mut env = GrubEnv::new();
        s.store(&mut env).unwrap();
        write_copy_with(&primary(&d), &env, "state-primary", no_space).unwrap();
        assert_eq!(load(&d).state.b, Health::Trial { tries: 3 });
        // Any other failure is reported and nothing is written.
        let before = std::fs::read(primary(&d)).unwrap();
        let e = write_copy_with(&primary(&d), &GrubEnv::new(), "state-primary", |_, _, _| {
            anyhow::bail!("cannot rename: operation not permitted")
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("not permitted"), "{e:#}");
        assert_eq!(std::fs::read(primary(&d)).unwrap(), before);
        // In place only over a copy of the same size: never a shorter or
        // longer file (that would need blocks, or leave a torn tail).
        std::fs::write(backup(&d), b"# GRUB Environment Block\n").unwrap();
        let e = write_copy_with(&backup(&d), &env, "state-backup", no_space).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("rewriting it in place failed") && msg.contains("1024"),
            "{msg}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn saves_two_copies_and_loads_the_primary() {
        let d = dir("two");
        let mut s = BootState::default();
        s.activate_on_trial(Slot::B, 3);
        save(&d, &GrubEnv::new(), &s).unwrap();
        let l = load(&d);
        assert_eq!(
            (l.state.b, l.source.clone(), l.needs_repair()),
            (Health::Trial { tries: 3 }, Source::Primary, false)
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn garbage_primary_falls_back_to_backup() {
        let d = dir("garbage");
        let s = BootState {
            active_slot: Slot::B,
            ..Default::default()
        };
        save(&d, &GrubEnv::new(), &s).unwrap();
        std::fs::write(primary(&d), vec![0x5a; 1024]).unwrap();
        let l = load(&d);
        assert_eq!(l.state.active_slot, Slot::B);
        assert!(matches!(l.source, Source::Backup { .. }));
        assert!(l.needs_repair());
        save(&d, &l.env, &l.state).unwrap();
        assert_eq!(load(&d).source, Source::Primary);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn both_unreadable_gives_defaults() {
        let d = dir("none");
        std::fs::write(primary(&d), b"torn").unwrap();
        let l = load(&d);
        assert!(matches!(l.source, Source::Defaults { .. }));
        assert_eq!(l.state, BootState::default());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_try_counted_by_grub_makes_the_backup_stale() {
        let d = dir("stale");
        let mut s = BootState::default();
        s.activate_on_trial(Slot::B, 3);
        save(&d, &GrubEnv::new(), &s).unwrap();
        // GRUB's save_env rewrites the primary in place.
        let mut env = grubenv::read(&primary(&d)).unwrap();
        env.set("immuboot_b_tries", "2").unwrap();
        std::fs::write(primary(&d), env.to_block().unwrap()).unwrap();
        let l = load(&d);
        assert_eq!(l.state.b, Health::Trial { tries: 2 });
        assert!(l.backup_stale && l.needs_repair());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// (a) `grub-editenv grubenv set immuboot_b_tries=1 vendor_note=caf\xe9`:
    /// GRUB's counted try is read from the primary, and our save keeps the
    /// foreign variable byte for byte.
    #[test]
    fn a_non_utf8_foreign_variable_keeps_the_primary() {
        let d = dir("nonutf8");
        let mut s = BootState::default();
        s.activate_on_trial(Slot::B, 3);
        save(&d, &GrubEnv::new(), &s).unwrap();
        grubenv::tests::editenv(
            &primary(&d),
            &[b"set", b"immuboot_b_tries=1", b"vendor_note=caf\xe9"],
        );
        let l = load(&d);
        assert_eq!(
            (l.state.b, l.source.clone()),
            (Health::Trial { tries: 1 }, Source::Primary)
        );
        save(&d, &l.env, &l.state).unwrap();
        for copy in [primary(&d), backup(&d)] {
            let list = grubenv::tests::editenv(&copy, &[b"list"]);
            assert!(
                list.windows(17).any(|w| w == b"vendor_note=caf\xe9\n"),
                "{}: {}",
                copy.display(),
                String::from_utf8_lossy(&list)
            );
            assert!(list.windows(19).any(|w| w == b"immuboot_b_tries=1\n"));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// (b) The same byte in both copies: still the primary and the real state.
    #[test]
    fn a_non_utf8_byte_in_both_copies_is_not_a_reset() {
        let d = dir("nonutf8both");
        let mut s = BootState::default();
        s.activate_on_trial(Slot::B, 3);
        save(&d, &GrubEnv::new(), &s).unwrap();
        for copy in [backup(&d), primary(&d)] {
            grubenv::tests::editenv(&copy, &[b"set", b"vendor_note=caf\xe9"]);
        }
        let l = load(&d);
        assert_eq!(l.source, Source::Primary);
        assert_eq!(
            (l.state.active_slot, l.state.b),
            (Slot::B, Health::Trial { tries: 3 })
        );
        assert!(!l.needs_repair());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// (c) A 4096-byte block (grub-editenv keeps a pre-sized file's size)
    /// loads, and our save keeps it 4096 bytes and readable by grub-editenv.
    #[test]
    fn a_4096_byte_block_loads_and_keeps_its_size() {
        let d = dir("4k");
        let p = primary(&d);
        grubenv::tests::editenv(&p, &[b"create"]);
        let mut block = std::fs::read(&p).unwrap();
        block.resize(4096, b'#');
        std::fs::write(&p, &block).unwrap();
        grubenv::tests::editenv(&p, &[b"set", b"immuboot_active_slot=b", b"vendor=x"]);
        std::fs::copy(&p, backup(&d)).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096);
        let mut l = load(&d);
        assert_eq!(
            (l.source.clone(), l.state.active_slot),
            (Source::Primary, Slot::B)
        );
        l.state.activate_on_trial(Slot::A, 2);
        save(&d, &l.env, &l.state).unwrap();
        for copy in [primary(&d), backup(&d)] {
            assert_eq!(std::fs::metadata(&copy).unwrap().len(), 4096);
            let list = String::from_utf8(grubenv::tests::editenv(&copy, &[b"list"])).unwrap();
            assert!(
                list.contains("immuboot_active_slot=a\n")
                    && list.contains("immuboot_a_tries=2\n")
                    && list.contains("vendor=x\n"),
                "{list}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
