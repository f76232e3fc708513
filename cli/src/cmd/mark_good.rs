//! `immuboot mark-good`: the health checks, then the booted slot good (or
//! bad, with the failed check as the reason).

use super::{update, Ctx};
use anyhow::Result;
use std::path::PathBuf;

pub fn run(ctx: &Ctx, checks: &[PathBuf], reboot_on_failure: bool) -> Result<()> {
    let slot = ctx.boot.booted_slot()?;
    if let Err(failure) = run_checks(checks) {
        update(&ctx.state_dir, |s| {
            s.mark_bad(slot, &failure);
            Ok(format!("slot {slot} marked bad: {failure}"))
        })?;
        if reboot_on_failure {
            errln!("immuboot: rebooting so the boot loader falls back");
            let _ = std::process::Command::new("systemctl")
                .arg("reboot")
                .status();
        }
        anyhow::bail!("health check failed: {failure}");
    }
    update(&ctx.state_dir, |s| {
        s.mark_good(slot);
        Ok(format!(
            "slot {slot} marked good; active slot: {}",
            s.active_slot
        ))
    })
}

/// Runs every executable in the directories, in name order; the first
/// failure is returned as a reason.
fn run_checks(dirs: &[PathBuf]) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.metadata()
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
            .collect();
        files.sort();
        for f in files {
            match std::process::Command::new(&f).status() {
                Ok(st) if st.success() => outln!("health check {}: ok", f.display()),
                Ok(st) => return Err(format!("health check {} failed ({st})", f.display())),
                Err(e) => return Err(format!("health check {} could not run: {e}", f.display())),
            }
        }
    }
    Ok(())
}
