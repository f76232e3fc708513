//! `immuboot auto-upgrade`: one unattended run, as `immuboot-upgrade.timer`
//! starts it: settle what the last run installed, compare the configured
//! source with the slots, upgrade when there is something new that has not
//! failed here before, reboot as configured. (The timer is enabled by
//! `immuboot-upgrade-generator`, `immuboot_cli::generator`.)

use super::upgrade::now;
use super::Ctx;
use crate::auto::{self, Reboot};
use crate::{progress, upgrade};
use anyhow::{bail, Context, Result};
use immuboot_mount::state::with_writable;
use immuboot_mount::syscall::LinuxSyscall;
use serde_json::json;
use std::path::PathBuf;

pub struct Options {
    pub config: PathBuf,
    pub forget_failed: bool,
    pub work_dir: PathBuf,
    pub trusted_keys: Vec<PathBuf>,
    pub cosign_keys: Vec<PathBuf>,
    pub json: bool,
}

pub fn run(ctx: &Ctx, opts: &Options) -> Result<()> {
    let mut rep = progress::Reporter::new(opts.json);
    let state = ctx.state_dir.as_path();
    if opts.forget_failed {
        let forgotten = with_writable(&LinuxSyscall, state, || {
            let mut memory = auto::read_memory(state)?;
            let forgotten = std::mem::take(&mut memory.failed);
            auto::write_memory(state, &memory)?;
            Ok(forgotten)
        })?;
        let names: Vec<String> = forgotten
            .iter()
            .map(|f| format!("{} ({})", f.source, f.identity))
            .collect();
        rep.result(
            json!({"forgotten": forgotten.iter().map(|f| &f.identity).collect::<Vec<_>>()}),
            &if names.is_empty() {
                "no failed image was remembered".to_string()
            } else {
                format!("forgotten, may be installed again: {}", names.join(", "))
            },
        );
        return Ok(());
    }
    let Some(cfg) = auto::read_config(&opts.config)? else {
        rep.result(
            json!({"configured": false, "action": "none"}),
            &format!(
                "unattended upgrades are off: {} does not exist",
                opts.config.display()
            ),
        );
        return Ok(());
    };
    let Some(booted) = ctx.boot.booted_slot_or_recovery()? else {
        rep.result(
            json!({"configured": true, "action": "none", "why": "recovery"}),
            "running from the recovery image: unattended upgrades wait for a slot to boot",
        );
        return Ok(());
    };
    let source = upgrade::Source::classify(&cfg.source)
        .with_context(|| format!("the source of {}", opts.config.display()))?;
    if matches!(source, upgrade::Source::Directory(_)) {
        bail!(
            "{}: source {} is a directory, which has no identity: an unattended upgrade would \
             rewrite a slot on every run; name an OCI image or a squashfs file",
            opts.config.display(),
            cfg.source
        );
    }
    let req = upgrade::Request {
        source,
        tries: cfg.tries,
        plain_http: cfg.plain_http,
        signature: None,
        trusted_keys: opts.trusted_keys.clone(),
        cosign_keys: opts.cosign_keys.clone(),
        work_dir: opts.work_dir.clone(),
        expected_sha256: None,
        compression_level: None,
    };

    // What the last run installed: good by now, failed, or still on trial.
    let mut memory = auto::read_memory(state)?;
    let remembered = memory.clone();
    let loaded = crate::boot::load_state(state)?;
    let image = |slot: immuboot_assess::Slot| state.join("cOS").join(format!("{slot}.img"));
    if let Some(note) = memory.settle(
        &loaded.state,
        |p| upgrade::keys_held_by(&image(p.slot)).contains(&p.identity),
        now(),
    ) {
        rep.step(&note);
    }
    let save = |memory: &auto::Memory| -> Result<()> {
        if *memory != remembered {
            with_writable(&LinuxSyscall, state, || auto::write_memory(state, memory))?;
        }
        Ok(())
    };

    let found = upgrade::compare(
        &loaded.state,
        state,
        Some(booted),
        &req.source,
        req.plain_http,
        true,
        &mut rep,
    )?;
    let key = found
        .identity
        .key()
        .context("the source has no identity to compare")?;
    if found.up_to_date() {
        save(&memory)?;
        let mut value = found.json();
        value["action"] = "none".into();
        rep.result(value, &found.summary());
        return Ok(());
    }
    if let Some(failed) = memory.failed(&key) {
        let message = format!(
            "not installing {} ({key}) again: it failed on this machine in slot {}{}; \
             `immuboot auto-upgrade --forget-failed` allows it",
            failed.source,
            failed.slot,
            failed
                .reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        save(&memory)?;
        let mut value = found.json();
        value["action"] = "skipped-failed".into();
        rep.result(value, &message);
        return Ok(());
    }

    let installed = with_writable(&LinuxSyscall, state, || {
        upgrade::Upgrade {
            state_dir: state,
            booted: Some(booted),
        }
        .slot(&req, &mut rep)
    });
    let value = match &installed {
        Ok(i) => json!({"at": now(), "source": cfg.source, "result": "written", "target": i.target,
            "sha256": i.sha256, "manifest_digest": i.manifest_digest, "pulled_from": i.pulled_from,
            "unattended": true}),
        Err(e) => {
            json!({"at": now(), "source": cfg.source, "result": "failed", "error": format!("{e:#}"), "unattended": true})
        }
    };
    super::upgrade::record_attempt(state, value);
    let installed = installed?;
    // What was unpacked, which may be newer than what was compared.
    let identity = installed
        .manifest_digest
        .clone()
        .unwrap_or_else(|| format!("squashfs:sha256:{}", installed.sha256));
    memory.pending = Some(auto::Installed {
        slot: booted.other(),
        identity: identity.clone(),
        source: cfg.source.clone(),
        at: now(),
    });
    // The slot is written and on trial: a memory that cannot be saved
    // costs only the failed-image check of the next run.
    if let Err(e) = save(&memory) {
        errln!("immuboot: warning: cannot record the installation for the next run ({e:#})");
    }
    let plan = cfg.reboot_plan()?;
    rep.result(
        json!({"action": "upgraded", "installed": installed, "identity": identity, "reboot": format!("{plan:?}")}),
        &format!(
            "{} written from {} ({identity}); {}",
            installed.target,
            cfg.source,
            match &plan {
                Reboot::Never => "it boots when the machine reboots next".to_string(),
                Reboot::Now => "rebooting into it".to_string(),
                Reboot::At(t) => format!("rebooting into it at {t}"),
            }
        ),
    );
    match plan {
        Reboot::Never => {}
        Reboot::Now => super::reboot_now(),
        Reboot::At(t) => {
            let st = std::process::Command::new("shutdown")
                .args(["-r", &t, "immuboot: rebooting into the new slot"])
                .status()
                .context("cannot run shutdown")?;
            if !st.success() {
                bail!("shutdown -r {t} failed ({st}); the new slot boots at the next reboot");
            }
        }
    }
    Ok(())
}
