//! `immuboot status`: what booted, from which image, and the boot state.

use super::Ctx;
use crate::upgrade;
use anyhow::Result;
use immuboot_assess::{store, BootState, Health, Slot, UNFINISHED_BOOTS_LIMIT};
use immuboot_mount::facts::InitramfsKind;

fn os_release_field(field: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}=")))
        .map(|v| v.trim_matches('"').to_string())
}

fn health_text(h: Health) -> String {
    match h {
        Health::Good => "good".into(),
        Health::Trial { tries } => format!("on trial, {tries} tries left"),
        Health::Bad => "bad".into(),
    }
}

/// A good slot's boots that started and did not finish (the running one
/// counts until it is marked good).
fn unfinished_text(state: &BootState, slot: Slot) -> String {
    match (state.health(slot), state.unfinished(slot)) {
        (Health::Good, n) if n > 0 => format!(
            ", {n} boot{} not finished (GRUB stops booting it at {UNFINISHED_BOOTS_LIMIT})",
            if n == 1 { "" } else { "s" }
        ),
        _ => String::new(),
    }
}

fn or_dash(v: Option<impl std::fmt::Display>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The version of `status --json`'s schema (README, "Status for
/// controllers"): raised when a field changes meaning or goes away; new
/// fields may appear without it.
pub const STATUS_SCHEMA_VERSION: u32 = 1;

/// A JSON file the upgrades wrote, or null.
fn read_json(path: &std::path::Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// One slot for `status --json`: health, what its image is and came from.
fn slot_json(
    state_dir: &std::path::Path,
    state: &BootState,
    slot: Slot,
    booted: Option<Slot>,
) -> serde_json::Value {
    let image = state_dir.join(slot.image_path().trim_start_matches('/'));
    let sha256 = upgrade::recorded_sha256(&image);
    let (health, tries) = match state.health(slot) {
        Health::Good => ("good", None),
        Health::Trial { tries } => ("trial", Some(tries)),
        Health::Bad => ("bad", None),
    };
    serde_json::json!({
        "health": health,
        "tries_left": tries,
        "unfinished_boots": state.unfinished(slot),
        "booted": booted == Some(slot),
        "active": state.active_slot == slot,
        "image": slot.image_path(),
        "image_present": image.is_file(),
        "image_version": upgrade::image_version(&image),
        "sha256": sha256,
        "source": upgrade::read_source_record(&image),
    })
}

/// What the next boot does: the slot GRUB's automatic choice starts (or a
/// one-shot entry), and whether that is a pending trial of a new image.
fn next_boot_json(state: &BootState, booted: Option<Slot>) -> serde_json::Value {
    let active = state.active_slot;
    let pending_trial = Some(active) != booted
        && matches!(state.health(active), Health::Trial { tries } if tries > 0);
    serde_json::json!({
        "one_shot_entry": state.next_entry,
        "active_slot": active.as_str(),
        "pending_trial": pending_trial,
    })
}

pub fn run(ctx: &Ctx, json: bool) -> Result<()> {
    let state_dir = ctx.state_dir.as_path();
    let facts = ctx.boot.facts();
    let loaded = store::load(state_dir);
    let state = &loaded.state;
    let mode = facts.and_then(|f| f.mode);
    let booted = facts.and_then(|f| f.booted_slot());
    // Recorded by the init at boot; a later mark-good changes the state but
    // not why this boot was a fallback.
    let fallback = facts
        .and_then(|f| f.fallback.clone())
        .or_else(|| mode.and_then(|m| state.fallback_reason(m, booted)));
    if json {
        if let Some(e) = ctx.boot.error() {
            errln!("immuboot: warning: {e}");
        }
        let out = serde_json::json!({
            "schema_version": STATUS_SCHEMA_VERSION,
            "booted_slot": booted.map(Slot::as_str),
            "mode": mode,
            "image_version": os_release_field("IMAGE_VERSION"),
            "slots": {
                "a": slot_json(state_dir, state, Slot::A, booted),
                "b": slot_json(state_dir, state, Slot::B, booted),
            },
            "next_boot": next_boot_json(state, booted),
            "last_failure": state.last_failure,
            "recovery_failure": state.recovery_failure,
            "last_upgrade": read_json(&state_dir.join(super::upgrade::LAST_UPGRADE)),
            "unattended": read_json(&state_dir.join(crate::auto::MEMORY)),
            "boot": facts,
            "image_version": os_release_field("IMAGE_VERSION"),
            "state": state,
            "state_source": loaded.source,
            "state_warnings": loaded.warnings,
            "fallback": fallback,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match facts {
        Some(f) => {
            outln!(
                "booted:       {} (slot {}) {}  version {}",
                or_dash(f.mode),
                or_dash(f.booted_slot()),
                or_dash(f.target.as_ref().map(|t| &t.image)),
                os_release_field("IMAGE_VERSION").unwrap_or_else(|| "-".into())
            );
            if let Some(why) = &fallback {
                outln!("FALLBACK:     {why}");
            }
            outln!(
                "image from:   {} {}",
                or_dash(f.image_partition.as_ref()),
                or_dash(f.image_device.as_ref().map(|d| d.display()))
            );
            outln!(
                "persistence:  {}",
                if f.persistence {
                    format!(
                        "yes ({} on /usr/local)",
                        or_dash(f.persistent_device.as_ref().map(|d| d.display()))
                    )
                } else {
                    "NO: changes to /usr/local and persistent paths are lost at reboot".into()
                }
            );
            outln!(
                "oem:          {}",
                or_dash(f.oem_device.as_ref().map(|d| d.display()))
            );
            for p in &f.look_alikes {
                outln!(
                    "IGNORED:      {} on {} ({}, another disk than the one the boot loader read)",
                    p.label,
                    p.device.display(),
                    p.fstype
                );
            }
            outln!(
                "layout:       {}",
                or_dash(Some(&f.layout_source).filter(|s| !s.is_empty()))
            );
            outln!("initramfs:    {}", f.initramfs.describe(&f.init_version));
            let ms: u128 = f.steps.iter().map(|s| s.ms).sum();
            let handover = match f.initramfs.kind {
                InitramfsKind::Standalone => "switched root",
                InitramfsKind::Dracut => "handed /sysroot to systemd",
            };
            outln!(
                "init:         {} ms in the initramfs, {handover} at {:.2} s",
                ms,
                f.uptime_switch_s
            );
            for w in &f.warnings {
                outln!("warning:      {w}");
            }
        }
        None => match ctx.boot.error() {
            Some(e) => {
                outln!("booted:       unknown (the boot facts cannot be used)");
                outln!("warning:      {e}");
            }
            None => outln!(
                "booted:       unknown (no boot facts in {}: not booted by immuboot?)",
                ctx.boot.dir().display()
            ),
        },
    }
    match &loaded.source {
        store::Source::Primary => {}
        store::Source::Backup { primary_error } => {
            outln!("boot state:   from the backup copy ({primary_error})")
        }
        store::Source::Defaults { error } => {
            outln!("boot state:   unreadable, defaults shown ({error})")
        }
    }
    if let Some(warning) = state_space_warning(state_dir) {
        outln!("warning:      {warning}");
    }
    outln!("active slot:  {}", state.active_slot);
    let versions: Vec<(Slot, Option<String>)> = [Slot::A, Slot::B]
        .into_iter()
        .map(|slot| {
            let image = state_dir.join(slot.image_path().trim_start_matches('/'));
            (slot, upgrade::image_version(&image))
        })
        .collect();
    for (slot, version) in &versions {
        outln!(
            "slot {slot}:       {}  (image version {}){}",
            health_text(state.health(*slot)),
            version.as_deref().unwrap_or("-"),
            unfinished_text(state, *slot)
        );
    }
    if let Some(f) = &state.recovery_failure {
        outln!("recovery:     CORRUPTED: {f}");
    }
    outln!(
        "next boot:    {}",
        match state.next_entry {
            Some(m) => format!("{m} (one-shot)"),
            None => "automatic".into(),
        }
    );
    if let Some(f) = &state.last_failure {
        outln!("last failure: {f}");
    }
    for w in &loaded.warnings {
        outln!("warning:      {w}");
    }
    Ok(())
}

/// Below this many free bytes COS_STATE counts as full.
const STATE_FULL_BELOW: u64 = 1 << 20;

/// A warning when COS_STATE (at `state_dir`) is full: the boot state is
/// then rewritten in place (see `store::write_copy`) and upgrades fail.
/// What counts is the space outside ext4's reserves (`f_bavail`): root may
/// use some of the rest, but not all of it (ext4 keeps clusters back even
/// from root), so `f_bfree` never reaches 0 on a full file system.
fn state_space_warning(state_dir: &std::path::Path) -> Option<String> {
    let st = rustix::fs::statvfs(state_dir).ok()?;
    full_state_warning(st.f_bavail.saturating_mul(st.f_frsize))
}

fn full_state_warning(available: u64) -> Option<String> {
    (available < STATE_FULL_BELOW).then(|| {
        format!(
            "COS_STATE is full ({} KiB free outside ext4's reserves): upgrades have no room; \
             the boot state is rewritten in place (hint: remove what is not an image or \
             its digest list)",
            available / 1024
        )
    })
}

#[cfg(test)]
mod space_tests {
    use super::*;

    #[test]
    fn a_full_state_partition_is_named() {
        assert!(full_state_warning(12 * 1024)
            .unwrap()
            .contains("(12 KiB free outside ext4"));
        assert_eq!(full_state_warning(STATE_FULL_BELOW), None);
        assert_eq!(full_state_warning(u64::MAX), None);
    }
}
