//! The boot sequence, top to bottom: a list of named steps, each timed and
//! logged. A failing step that the system cannot boot without ends in
//! [`crate::fatal::fatal`] (one line, then reboot); everything optional logs a
//! warning, is recorded in the boot facts and the boot goes on.

use crate::cmdline;
use crate::config::{InitConfig, Verify};
use crate::fatal::{fatal, FatalPolicy};
use crate::{logger, switch_root};
use anyhow::{bail, Context, Result};
use immuboot_assess::{digest, resolve_target, store, BootState, BootTarget, Health, Mode, Slot};
use immuboot_kmod as modules;
use immuboot_mount::exec::{execute, Outcome, Status};
use immuboot_mount::layout::{self, Layout};
use immuboot_mount::plan::{self, FstabEntry, PlanInputs};
use immuboot_mount::probe::{self, BlockDevice};
use immuboot_mount::syscall::{LinuxSyscall, Syscall};
use immuboot_mount::watchdog;
use immuboot_recovery::{policy, RECOVERY_MOUNT, STATE_MOUNT};
use serde::Serialize;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const SYSROOT: &str = "/sysroot";
pub const FACTS_DIR: &str = "/run/immuboot";
/// Modules the initramfs loads, one name a line (written by the image build).
pub const MODULE_LIST: &str = "/etc/immuboot/modules";

#[derive(Debug, Default, Serialize)]
pub struct StepTiming {
    pub name: String,
    pub ms: u128,
}

/// What the init did, written to /run/immuboot/boot.json for userspace.
#[derive(Debug, Default, Serialize)]
pub struct BootFacts {
    pub init_version: &'static str,
    pub mode: Option<Mode>,
    pub target: Option<BootTarget>,
    pub image_partition: Option<String>,
    pub image_device: Option<PathBuf>,
    pub loop_device: Option<PathBuf>,
    pub state_device: Option<PathBuf>,
    pub state_mount: Option<String>,
    /// Why this boot is not the active slot's normal boot, if it is not.
    pub fallback: Option<String>,
    /// The watchdog armed for the hand-over to systemd.
    pub watchdog: Option<String>,
    pub oem_device: Option<PathBuf>,
    pub persistent_device: Option<PathBuf>,
    pub persistence: bool,
    pub layout_source: String,
    pub layout_errors: Vec<String>,
    pub mounts: Vec<Outcome>,
    pub warnings: Vec<String>,
    pub steps: Vec<StepTiming>,
    /// Kernel uptime when the init started and when it switched root.
    pub uptime_start_s: f64,
    pub uptime_switch_s: f64,
}

pub struct Boot {
    facts: BootFacts,
    /// The boot state read from COS_STATE, kept to record what happens.
    state: Option<store::Loaded>,
    fatal: FatalPolicy,
    sys: InitSyscall,
    /// The image digest check, running while the mounts go on.
    image_check: Option<std::thread::JoinHandle<Result<String>>>,
}

/// The system calls of the boot, waiting for a file system's module (still
/// loading in the background) before mounting that file system.
struct InitSyscall {
    linux: LinuxSyscall,
    modules: RefCell<Option<modules::Loader>>,
}

impl InitSyscall {
    fn need_module(&self, name: &str) {
        if let Some(loader) = self.modules.borrow_mut().as_mut() {
            loader.wait_for(name);
            for e in loader.take_errors() {
                log::warn!("kernel module: {e}");
            }
        }
    }
}

impl Syscall for InitSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: plan::MountFlags,
        data: &str,
    ) -> std::io::Result<()> {
        self.need_module(fstype);
        self.linux.mount(source, target, fstype, flags, data)
    }
    fn bind(&self, source: &Path, target: &Path) -> std::io::Result<()> {
        self.linux.bind(source, target)
    }
    fn mkdir_all(&self, path: &Path) -> std::io::Result<()> {
        self.linux.mkdir_all(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.linux.exists(path)
    }
    fn copy_tree(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.linux.copy_tree(from, to)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.linux.rename(from, to)
    }
}

fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

impl Boot {
    fn step<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> T {
        let start = Instant::now();
        log::debug!("step '{name}' starts");
        match f(self) {
            Ok(v) => {
                let ms = start.elapsed().as_millis();
                log::info!("step '{name}' done in {ms} ms");
                self.facts.steps.push(StepTiming {
                    name: name.into(),
                    ms,
                });
                v
            }
            Err(e) => fatal(name, &e, &self.fatal),
        }
    }

    fn warn(&mut self, msg: String) {
        log::warn!("{msg}");
        self.facts.warnings.push(msg);
    }
}

/// The whole boot. Never returns: it execs systemd or reboots.
pub fn run() -> ! {
    let mut b = Boot {
        facts: BootFacts {
            init_version: env!("CARGO_PKG_VERSION"),
            uptime_start_s: uptime(),
            ..Default::default()
        },
        state: None,
        fatal: FatalPolicy::default(),
        sys: InitSyscall {
            linux: LinuxSyscall,
            modules: RefCell::new(None),
        },
        image_check: None,
    };
    log::info!("immuboot init {} starting", env!("CARGO_PKG_VERSION"));

    let cfg = b.step("read kernel command line", |_| {
        Ok(InitConfig::from_cmdline(
            &cmdline::read().context("cannot read /proc/cmdline")?,
        ))
    });
    b.fatal = FatalPolicy {
        reboot_delay: cfg.reboot_delay,
        shell: cfg.shell_on_failure,
    };
    crate::fatal::POLICY.publish(b.fatal.clone());
    logger::set_debug(cfg.debug);
    for w in cfg.warnings.clone() {
        b.warn(format!("kernel command line: {w}"));
    }

    b.step("start loading kernel modules", |b| start_modules(b, &cfg));

    if cfg.disabled {
        boot_plain_root(&mut b, &cfg);
    }

    // The mode comes from the command line alone; the boot state only says
    // which slot is active.
    let mode = resolve_target(&cfg.request, &BootState::default()).mode;
    let mode_policy = policy(mode);
    b.facts.mode = Some(mode);
    log::info!("{}", mode_policy.banner);
    let image_label = cfg.image_partition_label(mode).to_string();
    b.facts.image_partition = Some(image_label.clone());

    let devices = b.step("find partitions", |b| {
        find_partitions(b, &cfg, &image_label)
    });
    let find = |label: &str| {
        probe::with_label(&devices, label)
            .first()
            .map(|d| (*d).clone())
    };
    let image_dev = find(&image_label);
    let state_dev = if mode == Mode::Recovery {
        find(&cfg.labels.state)
    } else {
        image_dev.clone()
    };
    b.facts.image_device = image_dev.as_ref().map(|d| d.path.clone());
    b.facts.state_device = state_dev.as_ref().map(|d| d.path.clone());

    let target = b.step("select image", |b| {
        select_image(b, &cfg, state_dev.as_ref())
    });
    log::info!(
        "booting {} image {} (slot {})",
        target.mode,
        target.image,
        target.slot.map(|s| s.as_str()).unwrap_or("-")
    );
    b.facts.target = Some(target.clone());

    let root_entry = b.step("mount image", |b| {
        let dev = image_dev
            .as_ref()
            .with_context(|| format!("no partition labelled {image_label}"))?;
        let verify = match cfg.verify {
            Verify::Always => true,
            Verify::Never => false,
            Verify::Trial => target.slot.is_some_and(|slot| {
                b.state
                    .as_ref()
                    .is_some_and(|l| matches!(l.state.health(slot), Health::Trial { .. }))
            }),
        };
        mount_image(b, dev, mode_policy.image_mount, &target, verify)
            .inspect_err(|e| record_slot_failure(b, target.slot, e))
    });

    let oem_entry = b.step("mount oem", |b| {
        let oem = find(&cfg.labels.oem);
        if oem.is_none() {
            b.warn(format!(
                "no partition labelled {}: /oem is an empty tmpfs and its contents will not survive a reboot",
                cfg.labels.oem
            ));
        }
        b.facts.oem_device = oem.as_ref().map(|d| d.path.clone());
        let planned = plan::oem_mount(Path::new(SYSROOT), oem.as_ref().map(|d| d.path.as_path()), fstype(oem.as_ref()));
        let outcomes = execute(&b.sys, std::slice::from_ref(&planned));
        report(b, &outcomes);
        Ok(planned.fstab.filter(|_| outcomes.first().is_some_and(|o| o.status == Status::Mounted)))
    });

    let layout = b.step("read layout", |b| Ok(read_layout(b)));

    let mounted = b.step("mount layout", |b| {
        let persistent = find(&cfg.labels.persistent);
        if persistent.is_none() {
            b.warn(format!(
                "persistence unavailable: no partition labelled {}; /usr/local and the persistent paths \
                 ({}) are on tmpfs and will be lost at reboot",
                cfg.labels.persistent,
                layout.persistent.join(", ")
            ));
        }
        b.facts.persistent_device = persistent.as_ref().map(|d| d.path.clone());
        let planned = plan::layout_mounts(&PlanInputs {
            sysroot: Path::new(SYSROOT),
            layout: &layout,
            persistent_device: persistent.as_ref().map(|d| d.path.as_path()),
            persistent_fstype: fstype(persistent.as_ref()),
        });
        let outcomes = execute(&b.sys, &planned);
        report(b, &outcomes);
        b.facts.persistence = persistent.is_some()
            && outcomes.iter().any(|o| o.path == "/usr/local" && o.status == Status::Mounted);
        let mounted: Vec<FstabEntry> = oem_entry
            .into_iter()
            .chain(planned
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.status == Status::Mounted)
            .filter_map(|(p, _)| p.fstab.clone()))
            .collect();
        Ok(mounted)
    });

    b.step("verify image", |b| {
        verify_image(b, &target).inspect_err(|e| record_slot_failure(b, target.slot, e))
    });
    b.step("finish loading kernel modules", |b| Ok(finish_modules(b)));
    b.step("arm watchdog", |b| Ok(arm_watchdog(b, cfg.watchdog)));
    b.step("write boot facts", |b| {
        write_facts(b, &root_entry, &mounted)
    });
    let init = cfg.init.clone();
    b.step("switch root", |_| {
        switch_root::switch_root(Path::new(SYSROOT), &init).map(|never| match never {})
    })
}

fn fstype(dev: Option<&BlockDevice>) -> &str {
    dev.and_then(|d| d.fstype.as_deref()).unwrap_or("ext4")
}

/// Starts loading the initramfs' module list (plus `immuboot.modules=`) in
/// the background; mounts wait for the module of their file system.
fn start_modules(b: &mut Boot, cfg: &InitConfig) -> Result<()> {
    let mut list = match std::fs::read_to_string(MODULE_LIST) {
        Ok(text) => {
            modules::ModuleList::parse(&text).with_context(|| format!("in {MODULE_LIST}"))?
        }
        Err(_) => modules::ModuleList::default(),
    };
    list.always.extend(cfg.extra_modules.iter().cloned());
    if list.always.is_empty() && list.hardware.is_empty() {
        return Ok(());
    }
    let dir = modules::modules_dir()?;
    *b.sys.modules.borrow_mut() = Some(modules::Loader::start(&dir, &list)?);
    Ok(())
}

/// Waits for the modules still loading (storage drivers probing their
/// hardware) so no load is in flight at switch_root; reports failures.
fn finish_modules(b: &mut Boot) {
    let Some(mut loader) = b.sys.modules.borrow_mut().take() else {
        return;
    };
    let report = loader.finish();
    log::info!("loaded {} kernel modules", report.loaded);
    let errors = report.errors.clone();
    for e in errors {
        b.warn(format!("kernel module: {e}"));
    }
}

/// Waits for the partition holding the image, then takes one more look for
/// the optional ones (they sit on the same disk, so they appear with it; no
/// long wait penalises systems that lack them).
fn find_partitions(b: &mut Boot, cfg: &InitConfig, required: &str) -> Result<Vec<BlockDevice>> {
    let start = Instant::now();
    let mut next_notice = Duration::from_secs(1);
    let devices = loop {
        let devices = probe::scan();
        if !probe::with_label(&devices, required).is_empty() {
            break devices;
        }
        let waited = start.elapsed();
        if waited >= cfg.device_timeout {
            let seen: Vec<String> = devices
                .iter()
                .map(|d| {
                    format!(
                        "{} ({})",
                        d.path.display(),
                        d.label.as_deref().unwrap_or("no label")
                    )
                })
                .collect();
            bail!(
                "no partition labelled {required} after {} s; block devices seen: {} \
                 (hint: is the disk driver in the initramfs? add immuboot.modules=DRIVER)",
                cfg.device_timeout.as_secs(),
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            );
        }
        if waited >= next_notice {
            log::info!(
                "waiting for a partition labelled {required} ({} of {} s)",
                waited.as_secs(),
                cfg.device_timeout.as_secs()
            );
            next_notice += Duration::from_secs(5);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let optional = [&cfg.labels.oem, &cfg.labels.persistent, &cfg.labels.state];
    let missing = |devs: &[BlockDevice]| {
        optional
            .iter()
            .any(|l| probe::with_label(devs, l).is_empty())
    };
    let devices = if missing(&devices) {
        std::thread::sleep(Duration::from_millis(200));
        probe::scan()
    } else {
        devices
    };
    for d in &devices {
        if let Some(label) = &d.label {
            let same = probe::with_label(&devices, label);
            if same.len() > 1 && same.first().is_some_and(|f| f.path == d.path) {
                b.warn(format!(
                    "{} partitions are labelled {label}; using {}",
                    same.len(),
                    d.path.display()
                ));
            }
        }
        log::debug!(
            "{} label={:?} type={:?}",
            d.path.display(),
            d.label,
            d.fstype
        );
    }
    let found: Vec<String> = devices
        .iter()
        .filter_map(|d| {
            d.label
                .as_ref()
                .map(|l| format!("{l}={}", d.path.display()))
        })
        .collect();
    log::info!("partitions: {}", found.join(" "));
    Ok(devices)
}

fn mount_ro(sys: &dyn Syscall, dev: &BlockDevice, at: &str) -> Result<()> {
    let at = Path::new(at);
    sys.mkdir_all(at)
        .with_context(|| format!("cannot create {}", at.display()))?;
    sys.mount(
        &dev.path.display().to_string(),
        at,
        dev.fstype.as_deref().unwrap_or("ext4"),
        plan::MountFlags::RO,
        "",
    )
    .with_context(|| {
        format!(
            "cannot mount {} read-only on {}",
            dev.path.display(),
            at.display()
        )
    })
}

/// Mounts COS_STATE read-only and reads the boot state from it (the
/// backup copy if the primary is torn or garbled).
fn select_image(
    b: &mut Boot,
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
    mount_ro(&b.sys, dev, STATE_MOUNT)?;
    b.facts.state_mount = Some(STATE_MOUNT.into());
    let loaded = store::load(Path::new(STATE_MOUNT));
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
    b.state = Some(loaded);
    assess_boot(b, cfg, &target);
    Ok(target)
}

/// Boot assessment in the init: count a try GRUB did not count, give up a
/// slot that used its tries (we are its fallback), repair a torn block.
fn assess_boot(b: &mut Boot, cfg: &InitConfig, target: &BootTarget) {
    let Some(loaded) = b.state.as_mut() else {
        return;
    };
    let mut changed = loaded.needs_repair();
    let state = &mut loaded.state;
    if let Some(slot) = target.slot {
        if matches!(state.health(slot), Health::Trial { .. }) && !cfg.counted_by_bootloader {
            state.count_attempt(slot);
            changed = true;
            log::info!(
                "slot {slot} is on trial: counted this boot ({:?})",
                state.health(slot)
            );
        }
    }
    let fallback = state.fallback_reason(target.mode, target.slot);
    let active = state.active_slot;
    if target.slot != Some(active) && state.health(active) == (Health::Trial { tries: 0 }) {
        state.mark_bad(active, "used up its boot tries without being marked good");
        changed = true;
    }
    if let Some(why) = fallback {
        log::warn!("{why}");
        b.facts.fallback = Some(why);
    }
    if changed {
        save_state(b);
    }
}

/// Writes the boot state (both copies) with COS_STATE briefly read-write.
fn save_state(b: &mut Boot) {
    let Some(loaded) = b.state.as_ref() else {
        return;
    };
    let dir = Path::new(STATE_MOUNT);
    let result = rustix::mount::mount_remount(dir, rustix::mount::MountFlags::empty(), c"")
        .map_err(anyhow::Error::from)
        .and_then(|()| store::save(dir, &loaded.env, &loaded.state))
        // GRUB does not replay the journal (remounting read-only below
        // checkpoints it too; this does not depend on that succeeding).
        .and_then(|()| immuboot_mount::journal::checkpoint(dir));
    let _ = rustix::mount::mount_remount(dir, rustix::mount::MountFlags::RDONLY, c"");
    if let Err(e) = result {
        b.warn(format!(
            "cannot write the boot state on {STATE_MOUNT}: {e:#}"
        ));
    }
}

/// The slot's image could not be used: mark it bad so the next boot falls
/// back at once instead of using up its tries.
fn record_slot_failure(b: &mut Boot, slot: Option<Slot>, error: &anyhow::Error) {
    let (Some(slot), Some(loaded)) = (slot, b.state.as_mut()) else {
        return;
    };
    loaded.state.mark_bad(slot, &format!("{error:#}"));
    save_state(b);
}

/// Checks the image file, attaches it to a loop device and mounts it
/// read-only on /sysroot.
fn mount_image(
    b: &mut Boot,
    dev: &BlockDevice,
    mount_at: &str,
    target: &BootTarget,
    verify: bool,
) -> Result<FstabEntry> {
    if mount_at == RECOVERY_MOUNT {
        mount_ro(&b.sys, dev, RECOVERY_MOUNT)?;
    }
    let image = Path::new(mount_at).join(target.image.trim_start_matches('/'));
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
        start_image_check(b, &image, &where_, target)?;
    } else {
        log::info!("image digest not checked: not a slot on trial (immuboot.verify=always checks every boot)");
    }
    b.sys.need_module("loop");
    let loop_dev = immuboot_mount::loopdev::attach_read_only(&image)?;
    b.sys.mkdir_all(Path::new(SYSROOT))?;
    b.sys
        .mount(
            &loop_dev.display().to_string(),
            Path::new(SYSROOT),
            "squashfs",
            plan::MountFlags::RO,
            "",
        )
        .with_context(|| format!("cannot mount image {where_} from {}", loop_dev.display()))?;
    log::info!(
        "mounted {} ({}) read-only on {SYSROOT}",
        target.image,
        loop_dev.display()
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
/// cache), [`verify_image`] waits for the result before switch_root.
fn start_image_check(b: &mut Boot, image: &Path, where_: &str, target: &BootTarget) -> Result<()> {
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
/// is marked bad and the machine reboots into the next candidate); the
/// recovery image is the last resort, so a mismatch there is a warning.
fn verify_image(b: &mut Boot, target: &BootTarget) -> Result<()> {
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
        Err(e) if target.slot.is_none() => {
            b.warn(format!("{e:#}; booting it anyway: it is the last resort"));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Arms a watchdog for the hand-over to systemd: a hardware one if a driver
/// registered it, else softdog. systemd takes it over (RuntimeWatchdogSec in
/// the image); if the new root never gets that far, the machine resets and
/// the boot counters make the next boot fall back.
fn arm_watchdog(b: &mut Boot, timeout: Duration) {
    if timeout.is_zero() {
        log::info!("watchdog: off (immuboot.watchdog=0)");
        return;
    }
    let dev = Path::new("/dev");
    let mut device = watchdog::first_device(dev);
    if device.is_none() {
        match modules::modules_dir().and_then(|d| modules::load_now(&d, "softdog")) {
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

/// The layout from /oem if valid, else the image's, else the built-in one;
/// each rejected file is reported with the reason.
fn read_layout(b: &mut Boot) -> Layout {
    for path in [layout::OEM_LAYOUT_PATH, layout::IMAGE_LAYOUT_PATH] {
        let full = Path::new(SYSROOT).join(path.trim_start_matches('/'));
        if !full.exists() {
            continue;
        }
        match layout::read(&full) {
            Ok(l) => {
                log::info!(
                    "layout from {path}: ephemeral {:?}, persistent {:?}",
                    l.ephemeral,
                    l.persistent
                );
                b.facts.layout_source = path.into();
                return l;
            }
            Err(e) => {
                let msg = format!("{:#}", e).replace(&format!("{SYSROOT}/"), "/");
                log::error!("{msg}; ignoring this file");
                b.facts.layout_errors.push(msg.clone());
                b.facts.warnings.push(msg);
            }
        }
    }
    b.facts.layout_source = "built-in".into();
    log::info!("layout: built-in default");
    Layout::default()
}

fn report(b: &mut Boot, outcomes: &[Outcome]) {
    for o in outcomes {
        match &o.status {
            Status::Mounted => log::debug!("{}: mounted", o.path),
            Status::FellBack { reason } => {
                b.warn(format!("{}: {reason}; using tmpfs instead", o.path))
            }
            Status::Failed { reason } => b.warn(format!("{} unavailable: {reason}", o.path)),
        }
    }
    b.facts.mounts.extend(outcomes.iter().cloned());
}

fn write_facts(b: &mut Boot, root: &FstabEntry, mounted: &[FstabEntry]) -> Result<()> {
    let fstab = Path::new(SYSROOT).join("etc/fstab");
    let refs: Vec<&FstabEntry> = mounted.iter().collect();
    std::fs::write(&fstab, plan::render_fstab(root, &refs))
        .with_context(|| format!("cannot write {}", fstab.display()))?;
    std::fs::create_dir_all(FACTS_DIR)?;
    b.facts.uptime_switch_s = uptime();
    let json = serde_json::to_string_pretty(&b.facts)?;
    std::fs::write(Path::new(FACTS_DIR).join("boot.json"), json + "\n")?;
    let t = b.facts.target.as_ref();
    let env = format!(
        "IMMUBOOT_MODE={}\nIMMUBOOT_SLOT={}\nIMMUBOOT_IMAGE={}\nIMMUBOOT_PERSISTENCE={}\n",
        b.facts.mode.map(|m| m.as_str()).unwrap_or(""),
        t.and_then(|t| t.slot).map(|s| s.as_str()).unwrap_or(""),
        t.map(|t| t.image.as_str()).unwrap_or(""),
        if b.facts.persistence { "yes" } else { "no" },
    );
    std::fs::write(Path::new(FACTS_DIR).join("env"), env)?;
    Ok(())
}

/// `rd.cos.disable`: no immutable layout, boot `root=` as it is.
fn boot_plain_root(b: &mut Boot, cfg: &InitConfig) -> ! {
    let spec = cfg.root_spec.clone().unwrap_or_default();
    let dev = b.step("find root", |b| {
        if let Some(label) = spec.strip_prefix("LABEL=") {
            let devices = find_partitions(b, cfg, label)?;
            let found = probe::with_label(&devices, label);
            found
                .first()
                .map(|d| (*d).clone())
                .with_context(|| format!("no partition labelled {label}"))
        } else if spec.starts_with("/dev/") {
            probe::probe(Path::new(&spec))
                .with_context(|| format!("root={spec}: no file system found"))
        } else {
            bail!("rd.cos.disable needs root=LABEL=... or root=/dev/...; got root={spec:?}")
        }
    });
    b.step("mount root", |b| {
        let flags = if cfg.root_read_write {
            plan::MountFlags::RW
        } else {
            plan::MountFlags::RO
        };
        b.sys.mkdir_all(Path::new(SYSROOT))?;
        b.sys
            .mount(
                &dev.path.display().to_string(),
                Path::new(SYSROOT),
                fstype(Some(&dev)),
                flags,
                "",
            )
            .with_context(|| format!("cannot mount {}", dev.path.display()))
    });
    let init = cfg.init.clone();
    b.step("switch root", |_| {
        switch_root::switch_root(Path::new(SYSROOT), &init).map(|never| match never {})
    })
}
