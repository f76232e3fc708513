//! The sequences that touch the boot state: upgrading a slot, resetting
//! both, writing the recovery image.

use super::verify::Checks;
use super::write::{check_space, clean_leftovers, prepare_image};
use super::{checkpoint, Installed, Request, Source};
use crate::boot::transaction;
use crate::progress::Reporter;
use anyhow::{bail, Context, Result};
use immuboot_assess::{store, Health, Mode, Slot};
use std::path::Path;

/// Everything of an upgrade that touches the boot state, given where the
/// state lives and what booted.
pub struct Upgrade<'a> {
    pub state_dir: &'a Path,
    pub booted: Option<Slot>,
}

impl Upgrade<'_> {
    fn load(&self) -> Result<store::Loaded> {
        crate::boot::load_state(self.state_dir)
    }

    /// Writes the inactive slot and activates it on trial.
    pub fn slot(&self, req: &Request, rep: &mut Reporter) -> Result<Installed> {
        let cos = self.state_dir.join("cOS");
        clean_leftovers(&cos, rep)?;
        checkpoint("start");
        let loaded = self.load()?;
        let before = loaded.state.clone();
        let target = before.upgrade_target(self.booted)?;
        if Some(target) == self.booted {
            bail!("refusing to write slot {target}: it is the slot this system booted from");
        }
        rep.step(&format!(
            "upgrading slot {target} from {} (booted: {})",
            req.source.describe(),
            self.booted
                .map(|s| format!("slot {s}"))
                .unwrap_or("recovery".into())
        ));
        // Refuse before anything changes.
        let checks = Checks::prepare(req)?;
        if let Source::Squashfs(src) = &req.source {
            let size = std::fs::metadata(src)
                .with_context(|| format!("cannot stat {}", src.display()))?
                .len();
            check_space(&cos, size).with_context(|| format!("slot {target} was not changed"))?;
        }

        // 1–2. Written beside the old image and verified: a refused image
        // leaves the slot and the boot state as they were.
        let image = cos.join(format!("{target}.img"));
        let prepared = prepare_image(req, &checks, &image, rep).with_context(|| {
            format!(
                "upgrade of slot {target} failed; its old image and the boot state are unchanged"
            )
        })?;

        // 3. The target may not boot while its image is replaced. The state
        // is read again, under the state lock: the write took a while.
        let before = transaction(
            self.state_dir,
            || {},
            |l| {
                let before = l.state.clone();
                l.state.take_out_of_service(target);
                Ok(before)
            },
        )
        .context("cannot mark the target slot not bootable")?;
        checkpoint("marked");

        // 4. Into place, with its digest lists.
        let renamed = match prepared.rename() {
            Ok(r) => r,
            Err(e) => {
                // Nothing was renamed: the slot still holds its old image.
                // Undo only the marking: another writer may have changed
                // the rest meanwhile.
                let restored = transaction(
                    self.state_dir,
                    || {},
                    |l| {
                        l.state.return_to_service(target, &before);
                        Ok(())
                    },
                );
                return Err(match restored {
                    Ok(()) => e.context(format!(
                        "upgrade of slot {target} failed; its old image and the boot state are unchanged"
                    )),
                    Err(r) => e.context(format!(
                        "upgrade of slot {target} failed, and the boot state could not be restored ({r:#}): slot {target} stays marked bad"
                    )),
                });
            }
        };
        let mut installed = renamed.record().with_context(|| {
            format!("slot {target} holds the new image, but its digest lists are incomplete: it stays marked bad (run the upgrade again)")
        })?;

        // 5. Activate last, in one atomic state update.
        transaction(
            self.state_dir,
            || checkpoint("activating"),
            |l| {
                l.state.activate_written(target, req.tries);
                Ok(())
            },
        )
        .context("cannot activate the new slot")?;
        checkpoint("activated");
        installed.target = format!("slot {target}");
        Ok(installed)
    }

    /// Rewrites both slots (reset from recovery) and makes slot a active.
    /// `known_good`: the source is the recovery image this system runs, so
    /// both slots are good; otherwise both go on trial.
    pub fn reset(
        &self,
        req: &Request,
        known_good: bool,
        rep: &mut Reporter,
    ) -> Result<Vec<Installed>> {
        if self.booted.is_some() {
            bail!("reset runs only in recovery mode: it rewrites both slots (boot the recovery entry, or `immuboot next-boot recovery` and reboot)");
        }
        let cos = self.state_dir.join("cOS");
        clean_leftovers(&cos, rep)?;
        let checks = Checks::prepare(req)?;
        let mut out = Vec::new();
        let mut marked = false;
        for slot in [Slot::A, Slot::B] {
            rep.step(&format!(
                "writing slot {slot} from {}",
                req.source.describe()
            ));
            let prepared = prepare_image(req, &checks, &cos.join(format!("{slot}.img")), rep)
                .with_context(|| {
                    if marked {
                        format!("reset: writing slot {slot} failed; both slots stay marked bad, recovery still boots")
                    } else {
                        format!("reset: writing slot {slot} failed; the slots and the boot state are unchanged")
                    }
                })?;
            if !marked {
                // Verified once: from here on neither slot may boot until
                // both are rewritten.
                transaction(
                    self.state_dir,
                    || {},
                    |l| {
                        for slot in [Slot::A, Slot::B] {
                            l.state.take_out_of_service(slot);
                        }
                        Ok(())
                    },
                )?;
                marked = true;
            }
            let mut i = prepared.install().with_context(|| {
                format!("reset: writing slot {slot} failed; both slots stay marked bad, recovery still boots")
            })?;
            i.target = format!("slot {slot}");
            out.push(i);
        }
        transaction(
            self.state_dir,
            || {},
            |l| {
                l.state.reset_to(if known_good {
                    Health::Good
                } else {
                    Health::Trial {
                        tries: req.tries.clamp(1, 9),
                    }
                });
                Ok(())
            },
        )?;
        Ok(out)
    }
}

/// Refuses to write the recovery image while it runs.
pub fn check_recovery_writable(booted_mode: Option<Mode>) -> Result<()> {
    if booted_mode == Some(Mode::Recovery) {
        bail!("refusing to write the recovery image while running from it; boot a slot first");
    }
    Ok(())
}

/// Writes the recovery image (from a normal boot, never from recovery:
/// see [`check_recovery_writable`]).
pub fn recovery(req: &Request, recovery_dir: &Path, rep: &mut Reporter) -> Result<Installed> {
    let cos = recovery_dir.join("cOS");
    clean_leftovers(&cos, rep)?;
    let checks = Checks::prepare(req)?;
    let mut i = prepare_image(req, &checks, &cos.join("recovery.img"), rep)?.install()?;
    i.target = "recovery".into();
    Ok(i)
}
