//! Choosing and mounting the image: the boot state from COS_STATE, the
//! decisions of boot counting (taken by `immuboot_assess`, carried out and
//! recorded here), the image's checks, its loop device and the digest check
//! that runs while the mounts go on.

use super::{partitions, Boot};
use crate::config::InitConfig;
use anyhow::{bail, Context, Result};
use immuboot_assess::{digest, resolve_target, store, BootState, BootTarget, Slot};
use immuboot_mount::plan::{FstabEntry, MountFlags};
use immuboot_mount::probe::BlockDevice;
use immuboot_mount::syscall::Syscall;
use immuboot_recovery::ModePolicy;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Mounts COS_STATE read-only and reads the boot state from it (the
/// backup copy if the primary is torn or garbled), decides the target and
/// carries out the boot assessment.
pub fn select<S: Syscall>(
    b: &mut Boot<S>,
    cfg: &InitConfig,
    state_dev: Option<&BlockDevice>,
) -> Result<BootTarget> {
    let Some(dev) = state_dev else {
        b.warn(format!(
            "no partition labelled {}: the boot state is unavailable in this boot",
            cfg.labels.state
        ));
        return Ok(resolve_target(&cfg.request, &BootState::default()));
    };
    let at = b.paths.state_mount.clone();
    partitions::mount_ro(&b.sys, dev, &at)?;
    b.facts.state_mount = Some(at.display().to_string());
    let loaded = store::load(&at);
    for w in &loaded.warnings {
        b.warn(format!("boot state: {w}"));
    }
    match &loaded.source {
        store::Source::Primary => {}
        store::Source::Backup { primary_error } => b.warn(format!(
            "boot state: {primary_error}; using the backup copy, repairing"
        )),
        store::Source::Defaults { error } => b.warn(format!(
            "boot state unreadable ({error}); using defaults and rewriting it"
        )),
    }
    let target = resolve_target(&cfg.request, &loaded.state);
    let repair = loaded.needs_repair();
    b.state = Some(loaded);
    let assessment = match b.state.as_mut() {
        Some(l) => l.state.assess_boot(&target, cfg.counted_by_bootloader),
        None => Default::default(),
    };
    if assessment.counted {
        if let (Some(slot), Some(l)) = (target.slot, &b.state) {
            log::info!(
                "GRUB did not count this boot of slot {slot}: counted it here ({:?}, {} unfinished boots)",
                l.state.health(slot),
                l.state.unfinished(slot)
            );
        }
    }
    for slot in &assessment.gave_up {
        log::warn!("slot {slot} given up: it is marked bad");
    }
    if let Some(why) = &assessment.fallback {
        log::warn!("{why}");
        b.facts.fallback = Some(why.clone());
    }
    if repair || assessment.changed() {
        save_state(b);
    }
    Ok(target)
}

/// Writes the boot state (both copies) through the one commit path, with
/// COS_STATE briefly read-write. A failure is a warning: the boot goes on.
pub fn save_state<S: Syscall>(b: &mut Boot<S>) {
    let Some(loaded) = b.state.as_ref() else {
        return;
    };
    let dir = b.paths.state_mount.clone();
    if let Err(e) = immuboot_mount::state::update(&b.sys, &dir, &loaded.env, &loaded.state) {
        b.warn(format!(
            "cannot write the boot state on {}: {e:#}",
            dir.display()
        ));
    }
}

/// The slot's image could not be used: mark it bad so the next boot falls
/// back at once instead of using up its tries.
pub fn record_failure<S: Syscall>(b: &mut Boot<S>, slot: Option<Slot>, error: &anyhow::Error) {
    let changed = match b.state.as_mut() {
        Some(l) => l.state.image_failed(slot, &format!("{error:#}")),
        None => false,
    };
    if changed {
        save_state(b);
    }
}

/// Checks the image file, attaches it to a loop device and mounts it
/// read-only on the new root; starts the digest check if `verify`.
pub fn mount<S: Syscall>(
    b: &mut Boot<S>,
    dev: &BlockDevice,
    policy: &ModePolicy,
    target: &BootTarget,
    verify: bool,
) -> Result<FstabEntry> {
    let image_mount = if policy.image_on_state {
        b.paths.state_mount.clone()
    } else {
        let at = b.paths.recovery_mount.clone();
        partitions::mount_ro(&b.sys, dev, &at)?;
        b.facts.recovery_mount = Some(at.display().to_string());
        at
    };
    let image = image_mount.join(target.image.trim_start_matches('/'));
    let where_ = format!(
        "{} on {} ({})",
        target.image,
        dev.label.as_deref().unwrap_or("?"),
        dev.path.display()
    );
    let meta = std::fs::metadata(&image).with_context(|| format!("image {where_} is missing"))?;
    if !meta.is_file() || meta.len() < 4096 {
        bail!(
            "image {where_} is not a squashfs file ({} bytes)",
            meta.len()
        );
    }
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(&image)?, &mut magic)
        .with_context(|| format!("cannot read image {where_}"))?;
    if &magic != b"hsqs" {
        bail!("image {where_} is not a squashfs (bad superblock magic {magic:02x?})");
    }
    if verify {
        start_check(b, &image, &where_, target)?;
    } else {
        log::info!("image digest not checked: not a slot on trial (immuboot.verify=always checks every boot)");
    }
    let loop_dev = b
        .sys
        .attach_loop(&image)
        .with_context(|| format!("cannot attach image {where_} to a loop device"))?;
    let sysroot = b.paths.sysroot.clone();
    b.sys.mkdir_all(&sysroot)?;
    b.sys
        .mount(
            &loop_dev.display().to_string(),
            &sysroot,
            "squashfs",
            MountFlags::RO,
            "",
        )
        .with_context(|| format!("cannot mount image {where_} from {}", loop_dev.display()))?;
    log::info!(
        "mounted {} ({}) read-only on {}",
        target.image,
        loop_dev.display(),
        sysroot.display()
    );
    b.facts.loop_device = Some(loop_dev.clone());
    Ok(FstabEntry {
        source: loop_dev.display().to_string(),
        target: "/".into(),
        fstype: "squashfs".into(),
        options: "ro".into(),
    })
}

/// Starts hashing the image against the digest recorded when it was
/// written; the mounts go on meanwhile (and find the image in the page
/// cache), [`verify`] waits for the result before switch_root.
fn start_check<S: Syscall>(
    b: &mut Boot<S>,
    image: &Path,
    where_: &str,
    target: &BootTarget,
) -> Result<()> {
    let list = PathBuf::from(digest::image_digest_path(&image.display().to_string()));
    let text = match std::fs::read_to_string(&list) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            b.warn(format!(
                "no digest recorded for image {} ({} is missing): its content is not checked",
                target.image,
                list.display()
            ));
            return Ok(());
        }
        Err(e) => bail!(
            "cannot read the digest of image {where_} ({}): {e}",
            list.display()
        ),
    };
    let expected = digest::single(&text).with_context(|| {
        format!(
            "the digest list of image {where_} ({}) is invalid",
            list.display()
        )
    })?;
    let (image, where_) = (image.to_path_buf(), where_.to_string());
    b.image_check = Some(std::thread::spawn(move || {
        let start = Instant::now();
        let file =
            std::fs::File::open(&image).with_context(|| format!("cannot open image {where_}"))?;
        let (actual, bytes) = digest::sha256_hex(file).with_context(|| {
            format!("cannot read image {where_} (I/O error while checking its digest)")
        })?;
        if actual != expected {
            bail!(
                "image {where_} is corrupted: its SHA-256 is {actual}, the slot was written with {expected}"
            );
        }
        let secs = start.elapsed().as_secs_f64();
        Ok(format!(
            "image digest matches ({} MB in {:.2} s, {:.0} MB/s)",
            bytes >> 20,
            secs,
            (bytes >> 20) as f64 / secs.max(0.001)
        ))
    }));
    Ok(())
}

/// Waits for the image digest check. A corrupted slot fails the boot (it
/// is marked bad and the machine reboots into the next candidate); where
/// the mode's policy says the image is the last resort, a mismatch is a
/// warning.
pub fn verify<S: Syscall>(b: &mut Boot<S>, policy: &ModePolicy) -> Result<()> {
    let Some(check) = b.image_check.take() else {
        return Ok(());
    };
    let result = check.join().unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "the image digest check failed unexpectedly"
        ))
    });
    match result {
        Ok(msg) => {
            log::info!("{msg}");
            Ok(())
        }
        Err(e) if !policy.digest_mismatch_is_fatal => {
            b.warn(format!("{e:#}; booting it anyway: it is the last resort"));
            Ok(())
        }
        Err(e) => Err(e),
    }
}
