//! What the tool knows about the running boot: the init's boot facts (typed,
//! [`BootFacts`]), and from them where the boot state lives and which
//! partitions (labels, devices, file system types) the boot used.

use anyhow::{bail, Context, Result};
use immuboot_assess::{store, Mode, Slot};
use immuboot_mount::facts::BootFacts;
use immuboot_mount::labels::Labels;
use immuboot_mount::plan::MountFlags;
use immuboot_mount::syscall::{LinuxSyscall, Syscall};
use std::path::{Path, PathBuf};

/// The boot facts as found in the facts directory.
pub struct Boot {
    dir: PathBuf,
    /// `Ok(None)`: there are none (not booted by immuboot); `Err`: a
    /// boot.json that cannot be read or parsed.
    facts: Result<Option<BootFacts>>,
}

impl Boot {
    pub fn read(dir: &Path) -> Boot {
        Boot {
            dir: dir.to_path_buf(),
            facts: BootFacts::read(dir),
        }
    }

    /// Where the facts were looked for.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The facts, if there are readable ones.
    pub fn facts(&self) -> Option<&BootFacts> {
        self.facts.as_ref().ok().and_then(Option::as_ref)
    }

    /// Why the facts that exist cannot be used, if they cannot.
    pub fn error(&self) -> Option<String> {
        self.facts.as_ref().err().map(|e| format!("{e:#}"))
    }

    /// The facts, refusing when there are none or they cannot be read.
    pub fn required(&self) -> Result<&BootFacts> {
        match &self.facts {
            Ok(Some(f)) => Ok(f),
            Ok(None) => bail!(
                "no boot facts in {}: this system was not booted by immuboot",
                self.dir.display()
            ),
            Err(e) => bail!("{e:#}"),
        }
    }

    /// The mode this system booted in: None without facts; an error when
    /// boot.json exists but cannot be read.
    pub fn mode(&self) -> Result<Option<Mode>> {
        match &self.facts {
            Ok(f) => Ok(f.as_ref().and_then(|f| f.mode)),
            Err(e) => bail!("{e:#}"),
        }
    }

    /// The slot this system booted, or None when it runs the recovery image.
    pub fn booted_slot_or_recovery(&self) -> Result<Option<Slot>> {
        Ok(self.required()?.booted_slot())
    }

    /// The slot this system booted, from the init's boot facts.
    pub fn booted_slot(&self) -> Result<Slot> {
        self.booted_slot_or_recovery()?
            .context("booted from the recovery image: there is no slot to mark")
    }

    /// The partition labels the boot used (the defaults without facts).
    pub fn labels(&self) -> Labels {
        self.facts().map(|f| f.labels.clone()).unwrap_or_default()
    }

    /// Where COS_STATE is mounted, as the init recorded it.
    pub fn state_mount(&self) -> PathBuf {
        self.facts()
            .and_then(|f| f.state_mount.as_deref())
            .unwrap_or(immuboot_recovery::STATE_MOUNT)
            .into()
    }

    /// Where COS_RECOVERY is mounted when the boot mounted it.
    pub fn recovery_mount(&self) -> Option<PathBuf> {
        self.facts()
            .and_then(|f| f.recovery_mount.as_deref())
            .map(PathBuf::from)
    }

    /// The recovery image this system runs (in recovery mode).
    pub fn recovery_image(&self) -> PathBuf {
        self.recovery_mount()
            .unwrap_or_else(|| immuboot_recovery::RECOVERY_MOUNT.into())
            .join(immuboot_assess::RECOVERY_IMAGE.trim_start_matches('/'))
    }

    /// The block device of a partition: as the boot found it, else udev's
    /// by-label link, unless that is a look-alike the boot ignored (a
    /// partition with our label on another disk: never written).
    pub fn device_of(&self, label: &str) -> Result<PathBuf> {
        self.device_of_in(label, Path::new("/dev/disk/by-label"))
    }

    /// [`Boot::device_of`], with udev's by-label links in `by_label`.
    fn device_of_in(&self, label: &str, by_label: &Path) -> Result<PathBuf> {
        if let Some(p) = self.facts().and_then(|f| f.partition(label)) {
            return Ok(p.device.clone());
        }
        let link = by_label.join(label);
        let device = std::fs::canonicalize(&link).with_context(|| {
            format!(
                "no partition labelled {label} ({} is missing)",
                link.display()
            )
        })?;
        let ignored = self.facts().is_some_and(|f| {
            f.look_alikes
                .iter()
                .any(|p| std::fs::canonicalize(&p.device).ok().as_ref() == Some(&device))
        });
        if ignored {
            anyhow::bail!(
                "no partition labelled {label} on the disk this system booted from; {} is on \
                 another disk (a look-alike the boot ignored) and is not used",
                device.display()
            );
        }
        Ok(device)
    }

    /// The file system type of a partition, as the boot found it (ext4 when
    /// unknown).
    pub fn fstype_of(&self, label: &str) -> String {
        self.facts()
            .and_then(|f| f.partition(label))
            .map(|p| p.fstype.clone())
            .unwrap_or_else(|| "ext4".into())
    }

    /// Mounts the partition labelled `label` on `at` (read-only; writers
    /// remount it), unless something is mounted there already.
    pub fn mount_label(&self, label: &str, at: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(at)?;
        if !immuboot_mount::journal::is_mount_root(at) {
            self.mount(label, at, MountFlags::RO)?;
        }
        Ok(at.to_path_buf())
    }

    /// Mounts the partition labelled `label` on `at` with `flags`.
    pub fn mount(&self, label: &str, at: &Path, flags: MountFlags) -> Result<()> {
        let dev = self.device_of(label)?;
        LinuxSyscall
            .mount(
                &dev.to_string_lossy(),
                at,
                &self.fstype_of(label),
                flags,
                "",
            )
            .with_context(|| {
                format!(
                    "cannot mount {} ({label}) on {}",
                    dev.display(),
                    at.display()
                )
            })
    }
}

/// Loads the boot state under `state_dir` for a change, refusing when
/// there is no boot state directory at all (COS_STATE not mounted there).
/// Unreadable copies start from the defaults, with a warning.
pub fn load_state(state_dir: &Path) -> Result<store::Loaded> {
    let loaded = store::load(state_dir);
    check_loaded(state_dir, &loaded)?;
    Ok(loaded)
}

/// What [`load_state`] refuses or warns about, for a state loaded by
/// [`transaction`].
pub fn check_loaded(state_dir: &Path, loaded: &store::Loaded) -> Result<()> {
    if let store::Source::Defaults { error } = &loaded.source {
        if !store::primary(state_dir)
            .parent()
            .is_some_and(|p| p.is_dir())
        {
            bail!(
                "no boot state directory under {}: {error} (is COS_STATE mounted there?)",
                state_dir.display()
            );
        }
        errln!("immuboot: warning: boot state unreadable ({error}); starting from defaults");
    }
    Ok(())
}

/// One read-modify-write of the boot state under `state_dir`, under the
/// state lock from the read to the write ([`immuboot_mount::state::transaction`]),
/// with [`load_state`]'s checks. `between` as for the commit.
pub fn transaction<T>(
    state_dir: &Path,
    between: impl FnOnce(),
    change: impl FnOnce(&mut store::Loaded) -> Result<T>,
) -> Result<T> {
    if !state_dir.is_dir() {
        bail!(
            "no boot state directory under {} (is COS_STATE mounted there?)",
            state_dir.display()
        );
    }
    immuboot_mount::state::transaction_with(&LinuxSyscall, state_dir, between, |loaded| {
        check_loaded(state_dir, loaded)?;
        change(loaded)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use immuboot_mount::facts::Partition;

    #[test]
    fn a_look_alike_found_by_label_is_refused() {
        let d = std::env::temp_dir().join(format!("immuboot-device-of-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("by-label")).unwrap();
        // A stand-in for the look-alike's device node, and udev's link to it.
        std::fs::write(d.join("vdb2"), b"").unwrap();
        std::os::unix::fs::symlink("../vdb2", d.join("by-label/COS_OEM")).unwrap();
        let device = std::fs::canonicalize(d.join("vdb2")).unwrap();
        let boot = |look_alikes: Vec<Partition>| Boot {
            dir: d.clone(),
            facts: Ok(Some(BootFacts {
                look_alikes,
                ..BootFacts::default()
            })),
        };
        let look_alike = Partition {
            label: "COS_OEM".into(),
            device: d.join("vdb2"),
            fstype: "ext4".into(),
        };
        let e = boot(vec![look_alike])
            .device_of_in("COS_OEM", &d.join("by-label"))
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("look-alike") && msg.contains(&device.display().to_string()),
            "{msg}"
        );
        // The same link to a device that is not a look-alike is used.
        assert_eq!(
            boot(vec![])
                .device_of_in("COS_OEM", &d.join("by-label"))
                .unwrap(),
            device
        );
        assert!(boot(vec![])
            .device_of_in("COS_PERSISTENT", &d.join("by-label"))
            .is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
