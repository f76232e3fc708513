//! The small boot state verbs: next-boot, mark-bad, mark-active, rollback.

use super::{update, Ctx};
use anyhow::Result;
use immuboot_assess::{Mode, Slot};

pub fn next_boot(ctx: &Ctx, entry: &str) -> Result<()> {
    let mode: Mode = entry.parse()?;
    update(&ctx.state_dir, |s| {
        s.next_entry = Some(mode);
        Ok(format!("next boot: {mode} (once)"))
    })
}

pub fn mark_bad(ctx: &Ctx, reason: &str) -> Result<()> {
    let slot = ctx.boot.booted_slot()?;
    update(&ctx.state_dir, |s| {
        s.mark_bad(slot, reason);
        Ok(format!("slot {slot} marked bad: {reason}"))
    })
}

pub fn mark_active(ctx: &Ctx, slot: &str, tries: u8) -> Result<()> {
    let slot: Slot = slot.parse()?;
    update(&ctx.state_dir, |s| {
        s.activate_on_trial(slot, tries);
        Ok(format!(
            "slot {slot} active on trial ({} tries)",
            tries.clamp(1, 9)
        ))
    })
}

pub fn rollback(ctx: &Ctx) -> Result<()> {
    update(&ctx.state_dir, |s| {
        let slot = s.rollback()?;
        Ok(format!("slot {slot} is active"))
    })
}
