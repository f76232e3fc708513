//! The boot sequence, top to bottom: a list of named steps ([`run`]), each
//! timed and logged. A failing step that the system cannot boot without ends
//! in [`crate::fatal::fatal`] (one line, then reboot); everything optional
//! logs a warning, is recorded in the boot facts and the boot goes on.
//!
//! The steps' work is in the modules below, grouped by what they touch;
//! each takes the [`Boot`] with its [`Syscall`], so tests run them against
//! a recorder. The decisions (what to boot, boot counting, when to verify)
//! are pure functions of `immuboot_assess` and `immuboot_recovery`.

mod handover;
mod image;
mod layout;
mod modules;
mod partitions;

use crate::cmdline;
use crate::config::InitConfig;
use crate::fatal::{fatal, FatalPolicy};
use crate::{logger, switch_root};
use anyhow::{bail, Context, Result};
use immuboot_assess::{resolve_target, store, BootState};
use immuboot_mount::facts::{
    dracut_version, BootFacts, Initramfs, InitramfsKind, StepTiming, FACTS_DIR,
};
use immuboot_mount::plan::{FstabEntry, MountFlags};
use immuboot_mount::probe;
use immuboot_mount::syscall::Syscall;
use immuboot_recovery::{policy, RECOVERY_MOUNT, STATE_MOUNT};
pub use modules::{InitSyscall, MODULE_LIST};
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::time::Instant;

pub const SYSROOT: &str = "/sysroot";

/// Where the boot mounts and writes things (tests point them at temporary
/// directories).
#[derive(Debug, Clone)]
pub struct Paths {
    pub sysroot: PathBuf,
    pub state_mount: PathBuf,
    pub recovery_mount: PathBuf,
    pub facts_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            sysroot: SYSROOT.into(),
            state_mount: STATE_MOUNT.into(),
            recovery_mount: RECOVERY_MOUNT.into(),
            facts_dir: FACTS_DIR.into(),
        }
    }
}

/// One boot in progress: what it found and did so far.
pub struct Boot<S: Syscall = InitSyscall> {
    pub facts: BootFacts,
    /// The boot state read from COS_STATE, kept to record what happens.
    pub state: Option<store::Loaded>,
    pub sys: S,
    pub paths: Paths,
    fatal: FatalPolicy,
    /// The image digest check, running while the mounts go on.
    image_check: Option<std::thread::JoinHandle<Result<String>>>,
    /// When the boot started, for the steps' start times (kernel uptime
    /// is `facts.uptime_start_s` at this instant).
    clock: Instant,
    /// The step that runs now: its name, start and start on the kernel
    /// clock (see [`Boot::record_running_step`]).
    running: Option<(String, Instant, f64)>,
}

impl<S: Syscall> Boot<S> {
    pub fn new(sys: S, paths: Paths) -> Boot<S> {
        Boot {
            facts: BootFacts::new(env!("CARGO_PKG_VERSION")),
            state: None,
            sys,
            paths,
            fatal: FatalPolicy::default(),
            image_check: None,
            clock: Instant::now(),
            running: None,
        }
    }

    /// Runs one named step: timed, logged, recorded in the facts; a failure
    /// is fatal (one line, reboot).
    fn step<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> T {
        let start = Instant::now();
        let start_s = self.facts.uptime_start_s + (start - self.clock).as_secs_f64();
        log::debug!("step '{name}' starts");
        self.running = Some((name.into(), start, start_s));
        match f(self) {
            Ok(v) => {
                let ms = start.elapsed().as_millis();
                log::info!("step '{name}' done in {ms} ms");
                if self.running.take().is_some() {
                    self.facts.steps.push(StepTiming {
                        name: name.into(),
                        ms,
                        start_s,
                    });
                }
                v
            }
            Err(e) => fatal(name, &e, &self.fatal),
        }
    }

    /// Records the running step now, with its time so far: for the step
    /// that writes the facts, which must be in them before they are written.
    pub fn record_running_step(&mut self) {
        if let Some((name, start, start_s)) = self.running.take() {
            self.facts.steps.push(StepTiming {
                name,
                ms: start.elapsed().as_millis(),
                start_s,
            });
        }
    }

    pub fn warn(&mut self, msg: String) {
        log::warn!("{msg}");
        self.facts.warnings.push(msg);
    }
}

/// Seconds since the kernel started: the clock of /proc/uptime, read
/// directly because the standalone init needs it before /proc is mounted
/// (reading /proc/uptime there gave 0, and the timeline then drew the
/// init's steps as if the kernel had taken no time).
pub(crate) fn uptime() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// The whole boot as PID 1 of immuboot's own initramfs. Never returns: it
/// execs systemd or reboots.
pub fn run() -> ! {
    let mut b = Boot::new(InitSyscall::default(), Paths::default());
    b.facts.uptime_start_s = uptime();

    b.step("mount /proc /sys /dev /run", |_| {
        let mounted = crate::mount_api_filesystems();
        // Log lines reach the console through /dev/kmsg from here on.
        logger::attach_kmsg();
        mounted
    });
    log::info!("immuboot init {} starting", env!("CARGO_PKG_VERSION"));

    let cfg = read_command_line(&mut b);
    b.step("start loading kernel modules", |b| modules::start(b, &cfg));

    if cfg.disabled {
        boot_plain_root(&mut b, &cfg);
    }

    let (root_entry, mounted) = mount_root(&mut b, &cfg);

    b.step("finish loading kernel modules", |b| {
        modules::finish(b);
        Ok(())
    });
    b.step("arm watchdog", |b| {
        let options = b.sys.module_options();
        handover::arm_watchdog(b, cfg.watchdog, &options);
        Ok(())
    });
    // Before systemd's own mount of it: see mount_bpffs.
    b.step("mount bpffs", |_| {
        match crate::mount_bpffs(Path::new("/sys")) {
            Ok(true) => {}
            Ok(false) => log::info!("bpffs: not in this kernel; left to systemd"),
            Err(e) => log::warn!("bpffs: cannot mount it on /sys/fs/bpf: {e}; left to systemd"),
        }
        Ok(())
    });
    b.step("write boot facts", |b| {
        handover::write_facts(b, &root_entry, &mounted)
    });
    let init = cfg.init.clone();
    b.step("switch root", |b| {
        switch_root::switch_root(&b.sys, &b.paths.sysroot, &init).map(|never| match never {})
    })
}

/// The same boot inside a distribution's dracut initramfs, run by
/// `immuboot-initrd.service` (systemd in the initrd). systemd has mounted
/// the API file systems, loaded the drivers (udev; the layout's file
/// systems and loop are the init's, from the module's list) and waited for
/// the image's partition (`immuboot-generator`); this prepares
/// /sysroot and exits, and systemd switches root. Returns only on success;
/// a failure takes the fatal path (a reboot asked of systemd, or its
/// emergency shell with immuboot.shell).
pub fn run_in_initrd() {
    let mut b = Boot::new(InitSyscall::default(), Paths::default());
    b.fatal.host = InitramfsKind::Dracut;
    b.facts.uptime_start_s = uptime();
    b.facts.initramfs = Initramfs {
        kind: InitramfsKind::Dracut,
        dracut_version: ["/usr/lib/initrd-release", "/etc/initrd-release"]
            .iter()
            .find_map(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| dracut_version(&text)),
    };
    logger::attach_kmsg();
    log::info!(
        "immuboot {} starting in dracut's initramfs (dracut {})",
        env!("CARGO_PKG_VERSION"),
        b.facts.initramfs.dracut_version.as_deref().unwrap_or("?")
    );

    let mut cfg = read_command_line(&mut b);
    if cfg.disabled {
        log::info!("rd.cos.disable: leaving root= to dracut and systemd");
        return;
    }
    // The layout's file systems and loop (the module's list), with the
    // standalone init's loader: a failed load is reported in the facts.
    b.step("start loading kernel modules", |b| modules::start(b, &cfg));
    // systemd waited for the image's partition up to immuboot.timeout after
    // the kernel started (immuboot-generator); only what is left of it
    // remains, so a missing partition costs the timeout once.
    let elapsed = Duration::from_secs_f64(uptime());
    cfg.device_timeout = cfg
        .device_timeout
        .saturating_sub(elapsed)
        .max(Duration::from_secs(1));

    let (root_entry, mounted) = mount_root(&mut b, &cfg);

    b.step("finish loading kernel modules", |b| {
        modules::finish(b);
        Ok(())
    });
    b.step("arm watchdog", |b| {
        let options = b.sys.module_options();
        handover::arm_watchdog(b, cfg.watchdog, &options);
        Ok(())
    });
    b.step("write boot facts", |b| {
        handover::write_facts(b, &root_entry, &mounted)
    });
    log::info!("/sysroot is ready; systemd switches root");
}

/// Reads the command line and applies what the rest of the boot depends on
/// (the fatal policy, debug logging, the labels).
fn read_command_line<S: Syscall>(b: &mut Boot<S>) -> InitConfig {
    let cfg = b.step("read kernel command line", |_| {
        Ok(InitConfig::from_cmdline(
            &cmdline::read().context("cannot read /proc/cmdline")?,
        ))
    });
    b.fatal.reboot_delay = cfg.reboot_delay;
    b.fatal.shell = cfg.shell_on_failure;
    crate::fatal::POLICY.publish(b.fatal.clone());
    logger::set_debug(cfg.debug);
    for w in cfg.warnings.clone() {
        b.warn(format!("kernel command line: {w}"));
    }
    b.facts.labels = cfg.labels.clone();
    cfg
}

/// The steps both initramfs kinds share: find the partitions, pick and mount
/// the image on /sysroot, the OEM partition and the layout under it, and the
/// image's digest check. Returns the root's fstab entry and the other mounts.
fn mount_root(b: &mut Boot, cfg: &InitConfig) -> (FstabEntry, Vec<FstabEntry>) {
    // The mode comes from the command line alone; the boot state only says
    // which slot is active.
    let mode = resolve_target(&cfg.request, &BootState::default()).mode;
    let mode_policy = policy(mode);
    b.facts.mode = Some(mode);
    log::info!("{}", mode_policy.banner);
    let image_label = cfg.image_partition_label(mode).to_string();
    b.facts.image_partition = Some(image_label.clone());

    let found = b.step("find partitions", |b| find_partitions(b, cfg, &image_label));
    found.record(&mut b.facts);
    let image_dev = found.get(&image_label);
    let state_dev = if mode_policy.image_on_state {
        image_dev.clone()
    } else {
        found.get(&cfg.labels.state)
    };
    b.facts.image_device = image_dev.as_ref().map(|d| d.path.clone());
    b.facts.state_device = state_dev.as_ref().map(|d| d.path.clone());

    let target = b.step("select image", |b| {
        image::select(b, cfg, state_dev.as_ref())
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
        let verify = cfg
            .verify
            .applies(&target, b.state.as_ref().map(|l| &l.state));
        image::mount(b, dev, &mode_policy, &target, verify)
            .inspect_err(|e| image::record_failure(b, target.slot, e))
    });

    let oem_entry = b.step("mount oem", |b| {
        Ok(layout::mount_oem(
            b,
            found.get(&cfg.labels.oem).as_ref(),
            &cfg.labels.oem,
        ))
    });

    let layout = b.step("read layout", |b| Ok(layout::read(b)));

    let mut mounted = b.step("mount layout", |b| {
        let persistent = found.get(&cfg.labels.persistent);
        Ok(layout::mount(
            b,
            &layout,
            persistent.as_ref(),
            &cfg.labels.persistent,
        ))
    });
    mounted.splice(0..0, oem_entry);

    b.step("verify image", |b| {
        image::verify(b, &mode_policy).inspect_err(|e| image::record_failure(b, target.slot, e))
    });
    (root_entry, mounted)
}

/// Waits for the partition labelled `label` and finds the others
/// (`partitions::find`), telling the module loader's disk gate what it
/// found; warnings become the boot's.
fn find_partitions(b: &mut Boot, cfg: &InitConfig, label: &str) -> Result<partitions::Found> {
    let mut warnings = Vec::new();
    let disks = b.sys.disk_gate();
    let bound = partitions::find(cfg, label, disks.as_deref(), &mut |w| warnings.push(w))?;
    for w in warnings {
        b.warn(w);
    }
    Ok(partitions::Found::new(bound.devices, bound.look_alikes))
}

/// `rd.cos.disable`: no immutable layout, boot `root=` as it is.
fn boot_plain_root(b: &mut Boot, cfg: &InitConfig) -> ! {
    let spec = cfg.root_spec.clone().unwrap_or_default();
    let dev = b.step("find root", |b| {
        if let Some(label) = spec.strip_prefix("LABEL=") {
            find_partitions(b, cfg, label)?
                .get(label)
                .with_context(|| format!("no partition labelled {label}"))
        } else if spec.starts_with("/dev/") {
            probe::probe(Path::new(&spec), probe::Probers::All)
                .with_context(|| format!("root={spec}: no file system found"))
        } else {
            bail!("rd.cos.disable needs root=LABEL=... or root=/dev/...; got root={spec:?}")
        }
    });
    b.step("mount root", |b| {
        let flags = if cfg.root_read_write {
            MountFlags::RW
        } else {
            MountFlags::RO
        };
        let sysroot = b.paths.sysroot.clone();
        b.sys.mkdir_all(&sysroot)?;
        b.sys
            .mount(
                &dev.path.display().to_string(),
                &sysroot,
                partitions::fstype(Some(&dev)),
                flags,
                "",
            )
            .with_context(|| format!("cannot mount {}", dev.path.display()))
    });
    let init = cfg.init.clone();
    b.step("switch root", |b| {
        switch_root::switch_root(&b.sys, &b.paths.sysroot, &init).map(|never| match never {})
    })
}

#[cfg(test)]
mod tests;
