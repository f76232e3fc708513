//! `immuboot reset` (recovery mode only): both slots rewritten from the
//! recovery image (or a source), optionally COS_PERSISTENT and COS_OEM
//! wiped.

use super::{reboot_now, Ctx};
use crate::boot::Boot;
use crate::{progress, upgrade, WriteOptions};
use anyhow::{Context, Result};
use immuboot_mount::plan::MountFlags;
use immuboot_mount::state::with_writable;
use immuboot_mount::syscall::LinuxSyscall;
use std::path::Path;

pub struct Wipe {
    pub persistent: bool,
    pub oem: bool,
}

pub fn run(
    ctx: &Ctx,
    source: Option<&str>,
    wipe: Wipe,
    reboot: bool,
    opts: &WriteOptions,
) -> Result<()> {
    let booted = ctx.boot.booted_slot_or_recovery()?;
    if booted.is_some() {
        anyhow::bail!("reset runs only in recovery mode: it rewrites both slots (run `immuboot next-boot recovery` and reboot)");
    }
    let (spec, known_good) = match source {
        Some(s) => (s.to_string(), false),
        None => (ctx.boot.recovery_image().display().to_string(), true),
    };
    let mut req = opts.request(&spec)?;
    if known_good {
        // The recovery image this system runs is trusted as it is (its
        // digest list is still checked); a signature applies to images
        // from elsewhere.
        req.trusted_keys.clear();
        req.cosign_keys.clear();
    }
    let mut rep = progress::Reporter::new(opts.json);
    let state = &ctx.state_dir;
    let installed = with_writable(&LinuxSyscall, state, || {
        upgrade::Upgrade {
            state_dir: state,
            booted: None,
        }
        .reset(&req, known_good, &mut rep)
    })?;
    let labels = ctx.boot.labels();
    for (wanted, label) in [
        (wipe.persistent, &labels.persistent),
        (wipe.oem, &labels.oem),
    ] {
        if wanted {
            rep.step(&format!("wiping {label}"));
            wipe_label(&ctx.boot, label)?;
        }
    }
    rep.result(
        upgrade::to_json(&installed),
        &format!(
            "reset done: slots a and b rewritten from {spec}; slot a boots next{}",
            if known_good { "" } else { " (on trial)" }
        ),
    );
    if reboot {
        reboot_now();
    }
    Ok(())
}

/// Removes everything on the partition labelled `label` (keeping
/// lost+found), through a private mount of it.
fn wipe_label(boot: &Boot, label: &str) -> Result<()> {
    let at = Path::new("/run/immuboot/wipe").join(label);
    std::fs::create_dir_all(&at)?;
    boot.mount(label, &at, MountFlags::RW)?;
    let result = (|| -> Result<()> {
        for e in std::fs::read_dir(&at)?.flatten() {
            if e.file_name() == "lost+found" {
                continue;
            }
            let p = e.path();
            if e.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("cannot remove {}", p.display()))?;
        }
        rustix::fs::sync();
        Ok(())
    })();
    let _ = rustix::mount::unmount(&at, rustix::mount::UnmountFlags::empty());
    result
}
