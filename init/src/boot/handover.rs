//! Handing over to the new root: the watchdog that guards the hand-over,
//! and the boot facts userspace reads.

use super::Boot;
use anyhow::{Context, Result};
use immuboot_kmod as kmod;
use immuboot_mount::facts::FACTS_FILE;
use immuboot_mount::plan::{self, FstabEntry};
use immuboot_mount::syscall::Syscall;
use immuboot_mount::watchdog;
use std::path::Path;
use std::time::Duration;

/// Arms a watchdog for the hand-over to systemd: a hardware one if a driver
/// registered it, else softdog. systemd takes it over (RuntimeWatchdogSec in
/// the image); if the new root never gets that far, the machine resets and
/// the boot counters make the next boot fall back. softdog loads with the
/// module `options` of the boot.
pub fn arm_watchdog<S: Syscall>(b: &mut Boot<S>, timeout: Duration, options: &kmod::ModuleOptions) {
    if timeout.is_zero() {
        log::info!("watchdog: off (immuboot.watchdog=0)");
        return;
    }
    let dev = Path::new("/dev");
    let mut device = watchdog::first_device(dev);
    if device.is_none() {
        match kmod::modules_dir().and_then(|d| kmod::load_now(&d, "softdog", options)) {
            Ok(report) => {
                for e in report.errors {
                    b.warn(format!("watchdog: {e}"));
                }
            }
            Err(e) => b.warn(format!("watchdog: cannot load softdog: {e:#}")),
        }
        device = watchdog::first_device(dev);
    }
    let Some(device) = device else {
        b.warn(
            "watchdog: no watchdog device: a hang after switch_root will not reset the machine"
                .into(),
        );
        return;
    };
    let who = watchdog::identity("watchdog0").unwrap_or_else(|| "watchdog".into());
    match watchdog::arm(&device, timeout.as_secs() as u32) {
        Ok(applied) => {
            log::info!(
                "watchdog: {who} ({}) armed, {applied} s until systemd takes it over",
                device.display()
            );
            b.facts.watchdog = Some(format!("{who}, {applied} s"));
        }
        Err(e) => b.warn(format!("watchdog: {e:#}")),
    }
}

/// Writes `/etc/fstab` in the new root (so `findmnt --fstab` and systemd's
/// mount units match what is mounted), `boot.json` and `env` in the facts
/// directory.
pub fn write_facts<S: Syscall>(
    b: &mut Boot<S>,
    root: &FstabEntry,
    mounted: &[FstabEntry],
) -> Result<()> {
    let fstab = b.paths.sysroot.join("etc/fstab");
    let refs: Vec<&FstabEntry> = mounted.iter().collect();
    b.sys
        .write_file(&fstab, plan::render_fstab(root, &refs).as_bytes())
        .with_context(|| format!("cannot write {}", fstab.display()))?;
    let dir = b.paths.facts_dir.clone();
    b.sys
        .mkdir_all(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    b.facts.uptime_switch_s = super::uptime();
    b.facts.peak_rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(immuboot_mount::facts::peak_rss_kib);
    // This step is in the facts too (timed until here), as every step is.
    b.record_running_step();
    let json = b.facts.to_json()?;
    b.sys
        .write_file(&dir.join(FACTS_FILE), json.as_bytes())
        .with_context(|| format!("cannot write {}", dir.join(FACTS_FILE).display()))?;
    let t = b.facts.target.as_ref();
    let env = format!(
        "IMMUBOOT_MODE={}\nIMMUBOOT_SLOT={}\nIMMUBOOT_IMAGE={}\nIMMUBOOT_PERSISTENCE={}\n",
        b.facts.mode.map(|m| m.as_str()).unwrap_or(""),
        t.and_then(|t| t.slot).map(|s| s.as_str()).unwrap_or(""),
        t.map(|t| t.image.as_str()).unwrap_or(""),
        if b.facts.persistence { "yes" } else { "no" },
    );
    b.sys
        .write_file(&dir.join("env"), env.as_bytes())
        .with_context(|| format!("cannot write {}", dir.join("env").display()))?;
    Ok(())
}
