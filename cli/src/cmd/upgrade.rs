//! `immuboot upgrade`: a new image into the slot that did not boot (or the
//! recovery image), activated on trial.

use super::{reboot_now, Ctx};
use crate::{progress, upgrade, WriteOptions};
use anyhow::Result;
use immuboot_assess::store;
use immuboot_mount::state::with_writable;
use immuboot_mount::syscall::LinuxSyscall;

/// Where COS_RECOVERY is mounted for `--recovery` when the boot did not
/// mount it.
pub(crate) const RECOVERY_WRITE_MOUNT: &str = "/run/immuboot/cos-recovery";

/// `upgrade --check`: an upgrade would write a slot (`dnf check-update`
/// uses the same code for the same answer).
pub const EXIT_UPGRADE_AVAILABLE: i32 = 100;

/// Compares the source with the booted slot and the slot on trial.
fn compare(
    ctx: &Ctx,
    req: &upgrade::Request,
    rep: &mut progress::Reporter,
) -> Result<upgrade::Comparison> {
    let booted = ctx.boot.booted_slot_or_recovery()?;
    let loaded = crate::boot::load_state(&ctx.state_dir)?;
    upgrade::compare(
        &loaded.state,
        &ctx.state_dir,
        booted,
        &req.source,
        req.plain_http,
        false,
        rep,
    )
}

/// `upgrade --check`: says whether an upgrade would write a slot; true
/// when it would not.
pub fn check(ctx: &Ctx, source: &str, opts: &WriteOptions) -> Result<bool> {
    let req = opts.request(source)?;
    let mut rep = progress::Reporter::new(opts.json);
    let found = compare(ctx, &req, &mut rep)?;
    rep.result(found.json(), &found.summary());
    Ok(found.up_to_date())
}

/// Where the last `upgrade` of a slot recorded how it went (for `status
/// --json`), on COS_STATE beside the images.
pub const LAST_UPGRADE: &str = "cOS/last-upgrade.json";

/// Records how an upgrade of a slot went. Best effort: the upgrade's own
/// outcome stands whether or not this can be written.
pub(crate) fn record_attempt(state: &std::path::Path, value: serde_json::Value) {
    let path = state.join(LAST_UPGRADE);
    if !path.parent().is_some_and(|p| p.is_dir()) {
        return;
    }
    let text = serde_json::to_string_pretty(&value).unwrap_or_default() + "\n";
    let written = with_writable(&LinuxSyscall, state, || {
        immuboot_assess::fsutil::write_atomic(&path, text.as_bytes())
    });
    if let Err(e) = written {
        errln!(
            "immuboot: warning: cannot record the upgrade attempt in {} ({e:#})",
            path.display()
        );
    }
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn run(
    ctx: &Ctx,
    source: &str,
    recovery: bool,
    reboot: bool,
    force: bool,
    opts: &WriteOptions,
) -> Result<()> {
    let result = run_once(ctx, source, recovery, force, opts);
    if !recovery {
        let value = match &result {
            Ok(Some(i)) => serde_json::json!({
                "at": now(), "source": source, "result": "written", "target": i.target,
                "sha256": i.sha256, "manifest_digest": i.manifest_digest,
                "pulled_from": i.pulled_from,
            }),
            Ok(None) => serde_json::json!({"at": now(), "source": source, "result": "unchanged"}),
            Err(e) => {
                serde_json::json!({"at": now(), "source": source, "result": "failed", "error": format!("{e:#}")})
            }
        };
        record_attempt(&ctx.state_dir, value);
    }
    let installed = result?;
    if reboot && installed.is_some() {
        reboot_now();
    }
    Ok(())
}

/// One upgrade: `Ok(None)` when a slot held the image already.
fn run_once(
    ctx: &Ctx,
    source: &str,
    recovery: bool,
    force: bool,
    opts: &WriteOptions,
) -> Result<Option<upgrade::Installed>> {
    let req = opts.request(source)?;
    let mut rep = progress::Reporter::new(opts.json);
    let state = &ctx.state_dir;
    if !recovery && !force {
        let found = compare(ctx, &req, &mut rep)?;
        if found.up_to_date() {
            let mut value = found.json();
            value["written"] = false.into();
            rep.result(value, &format!("{} (--force rewrites it)", found.summary()));
            return Ok(None);
        }
    }
    let installed = if recovery {
        upgrade::check_recovery_writable(ctx.boot.mode()?)?;
        let dir = match &opts.recovery_dir {
            Some(d) => d.clone(),
            None => {
                let at = ctx
                    .boot
                    .recovery_mount()
                    .unwrap_or_else(|| RECOVERY_WRITE_MOUNT.into());
                ctx.boot.mount_label(&ctx.boot.labels().recovery, &at)?
            }
        };
        let installed = with_writable(&LinuxSyscall, &dir, || {
            upgrade::recovery(&req, &dir, &mut rep)
        })?;
        clear_recovery_failure(state, &mut rep);
        installed
    } else {
        let booted = ctx.boot.booted_slot_or_recovery()?;
        with_writable(&LinuxSyscall, state, || {
            upgrade::Upgrade {
                state_dir: state,
                booted,
            }
            .slot(&req, &mut rep)
        })?
    };
    rep.result(
        upgrade::to_json(std::slice::from_ref(&installed)),
        &format!(
            "{} written: {} ({} MiB, sha256 {}{}) in {:.1} s{}",
            installed.target,
            installed.image.display(),
            installed.bytes >> 20,
            installed.sha256,
            installed
                .signed_by
                .as_ref()
                .map(|k| format!(", signature verified with {k}"))
                .unwrap_or_default(),
            installed.seconds,
            if recovery {
                String::new()
            } else {
                format!(
                    "; it boots next, on trial ({} tries), with the booted slot as fallback",
                    opts.tries.clamp(1, 9)
                )
            }
        ),
    );
    Ok(Some(installed))
}

/// A rewritten recovery image no longer has the failure `immuboot verify`
/// recorded for the old one. The image is written already: a state that
/// cannot be changed is a warning, not a failed upgrade.
fn clear_recovery_failure(state_dir: &std::path::Path, rep: &mut progress::Reporter) {
    if store::load(state_dir).state.recovery_failure.is_none() {
        return;
    }
    let cleared = crate::boot::transaction(
        state_dir,
        || {},
        |loaded| {
            loaded.state.recovery_failure = None;
            Ok(())
        },
    );
    match cleared {
        Ok(()) => rep.step("the recovery image's recorded failure is cleared"),
        Err(e) => errln!(
            "immuboot: warning: the recovery image was rewritten, but the failure recorded for \
             the old one stays in the boot state ({e:#}); `immuboot verify` clears it"
        ),
    }
}
