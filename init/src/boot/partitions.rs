//! Finding the partitions by label: wait (bounded) for the one holding the
//! image, take one more look for the optional ones.

use crate::config::InitConfig;
use anyhow::{bail, Context, Result};
use immuboot_kmod as kmod;
use immuboot_mount::facts::{BootFacts, Partition};
use immuboot_mount::plan::MountFlags;
use immuboot_mount::probe::{self, BlockDevice};
use immuboot_mount::syscall::Syscall;
use std::path::Path;
use std::time::{Duration, Instant};

/// The file system type of a partition, as probed (ext4 if unknown).
pub fn fstype(dev: Option<&BlockDevice>) -> &str {
    dev.and_then(|d| d.fstype.as_deref()).unwrap_or("ext4")
}

/// The partitions found, by label (the first of several with one label),
/// and those with our labels on another disk, ignored.
pub struct Found {
    devices: Vec<BlockDevice>,
    look_alikes: Vec<BlockDevice>,
}

impl Found {
    pub fn new(devices: Vec<BlockDevice>, look_alikes: Vec<BlockDevice>) -> Found {
        Found {
            devices,
            look_alikes,
        }
    }

    pub fn get(&self, label: &str) -> Option<BlockDevice> {
        probe::with_label(&self.devices, label)
            .first()
            .map(|d| (*d).clone())
    }

    /// Records the partitions with one of the boot's labels in the facts.
    pub fn record(&self, facts: &mut BootFacts) {
        let l = &facts.labels;
        let labels = [&l.state, &l.recovery, &l.oem, &l.persistent].map(|s| s.to_string());
        facts.partitions = labels
            .iter()
            .filter_map(|label| {
                self.get(label).map(|d| Partition {
                    label: label.clone(),
                    fstype: fstype(Some(&d)).to_string(),
                    device: d.path,
                })
            })
            .collect();
        facts.look_alikes = self
            .look_alikes
            .iter()
            .map(|d| Partition {
                label: d.label.clone().unwrap_or_default(),
                fstype: fstype(Some(d)).to_string(),
                device: d.path.clone(),
            })
            .collect();
    }
}

/// Our labels, as [`probe::bind_to_boot_disk`] takes them.
fn our_labels(cfg: &InitConfig) -> [&str; 4] {
    let l = &cfg.labels;
    [&l.state, &l.recovery, &l.oem, &l.persistent].map(String::as_str)
}

fn scan_bound(cfg: &InitConfig, scanner: &mut probe::Scanner) -> probe::Bound {
    probe::bind_to_boot_disk(
        scanner.scan(),
        &our_labels(cfg),
        &cfg.labels.state,
        cfg.state_uuid.as_deref(),
    )
}

/// How often the wait for the image partition looks at the block devices.
const LOOK_INTERVAL: Duration = Duration::from_millis(20);

/// How long, once the image partition is there, the search waits for the
/// optional partitions (COS_OEM, COS_PERSISTENT) of its disk: no longer,
/// so that a system without them boots without a long wait.
const OPTIONAL_WAIT: Duration = Duration::from_millis(200);

/// How much longer than `immuboot.timeout` the wait goes on while udev is
/// still working through device events (dracut mode: udev loads the disk
/// drivers; under a slow machine its coldplug can outlast the timeout, and
/// the disk appears moments after it).
pub const UDEV_GRACE: Duration = Duration::from_secs(60);

/// Whether the wait for the image partition gives up: the timeout has
/// passed, and udev is not busy with device events (or the grace is used
/// up too).
pub fn give_up(waited: Duration, timeout: Duration, udev_busy: bool) -> bool {
    waited >= timeout && (!udev_busy || waited >= timeout + UDEV_GRACE)
}

/// Whether udev has device events queued (systemd-udevd keeps
/// /run/udev/queue while it does; no udev, as in the standalone init: no).
fn udev_busy() -> bool {
    Path::new("/run/udev/queue").exists()
}

/// Waits for the partition holding the image, then takes one more look for
/// the optional ones (they sit on the same disk, so they appear with it; no
/// long wait penalises systems that lack them). Warnings go to `warn`.
/// With `immuboot.state_uuid` only the disk holding that file system
/// counts: it is waited for even when another disk with our labels is
/// already there.
///
/// `disks`: the standalone init's module loader, holding back the
/// `[hardware-if-needed]` disk drivers. A look that finds nothing after the
/// other drivers have settled asks for them; finding the partition tells
/// the loader they are not needed for this boot.
pub fn find(
    cfg: &InitConfig,
    required: &str,
    disks: Option<&kmod::Gate>,
    warn: &mut dyn FnMut(String),
) -> Result<probe::Bound> {
    let start = Instant::now();
    let mut next_notice = Duration::from_secs(1);
    let mut scanner = probe::Scanner::default();
    let bound = loop {
        // Read before the look: when it is true, the look saw every disk
        // the first drivers brought.
        let settled = disks.is_some_and(kmod::Gate::settled);
        let bound = scan_bound(cfg, &mut scanner);
        let on_boot_disk = cfg.state_uuid.is_none() || bound.unbound.is_none();
        if on_boot_disk && !probe::with_label(&bound.devices, required).is_empty() {
            if let Some(g) = disks {
                g.decide(kmod::Decision::Skip);
            }
            break bound;
        }
        if let (true, Some(g)) = (settled, disks) {
            if g.decide(kmod::Decision::Load) {
                log::info!(
                    "no partition labelled {required} on the disks found so far; loading the \
                     other disk drivers"
                );
            }
        }
        let waited = start.elapsed();
        if give_up(waited, cfg.device_timeout, udev_busy()) {
            if let (Some(uuid), false) = (&cfg.state_uuid, on_boot_disk) {
                bail!(
                    "the boot loader read COS_STATE with UUID {uuid}, and no partition labelled {} \
                     has it after {} s; partitions on other disks are not used (block devices \
                     seen: {})",
                    cfg.labels.state,
                    cfg.device_timeout.as_secs(),
                    seen_list(&bound.devices)
                );
            }
            bail!(
                "no partition labelled {required} after {} s; block devices seen: {} \
                 (hint: is the disk driver in the initramfs? add immuboot.modules=DRIVER)",
                cfg.device_timeout.as_secs(),
                seen_list(&bound.devices)
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
        // Each look probes only devices not seen before (`probe::Scanner`).
        std::thread::sleep(LOOK_INTERVAL);
    };
    let optional = [&cfg.labels.oem, &cfg.labels.persistent, &cfg.labels.state];
    let missing = |devs: &[BlockDevice]| {
        optional
            .iter()
            .any(|l| probe::with_label(devs, l).is_empty())
    };
    let bound = if missing(&bound.devices) {
        // The kernel adds a disk's partitions one after another: the look
        // may have come between two. Look again until they are all there,
        // for at most OPTIONAL_WAIT.
        let mut again = bound.clone();
        let deadline = Instant::now() + OPTIONAL_WAIT;
        while missing(&again.devices) && Instant::now() < deadline {
            std::thread::sleep(LOOK_INTERVAL / 2);
            again = scan_bound(cfg, &mut scanner);
        }
        // The boot disk must not get lost between the two looks.
        if again.unbound.is_none() || cfg.state_uuid.is_none() {
            again
        } else {
            bound
        }
    } else {
        bound
    };
    if let Some(why) = &bound.unbound {
        log::info!("partitions taken by label from every disk: {why}");
    }
    for d in &bound.look_alikes {
        warn(format!(
            "ignoring {} on {} (disk {}): not the disk of the COS_STATE the boot loader \
             read",
            d.label.as_deref().unwrap_or("?"),
            d.path.display(),
            d.disk.as_deref().unwrap_or("?")
        ));
    }
    let devices = &bound.devices;
    for d in devices {
        if let Some(label) = &d.label {
            let same = probe::with_label(devices, label);
            if same.len() > 1 && same.first().is_some_and(|f| f.path == d.path) {
                warn(format!(
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
    Ok(bound)
}

fn seen_list(devices: &[BlockDevice]) -> String {
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
    if seen.is_empty() {
        "none".to_string()
    } else {
        seen.join(", ")
    }
}

/// Mounts a partition read-only on `at` (created if missing).
pub fn mount_ro(sys: &dyn Syscall, dev: &BlockDevice, at: &Path) -> Result<()> {
    sys.mkdir_all(at)
        .with_context(|| format!("cannot create {}", at.display()))?;
    sys.mount(
        &dev.path.display().to_string(),
        at,
        fstype(Some(dev)),
        MountFlags::RO,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_outlasts_the_timeout_only_while_udev_is_busy_and_not_forever() {
        let s = Duration::from_secs;
        assert!(!give_up(s(29), s(30), false));
        assert!(give_up(s(30), s(30), false));
        // udev still loading drivers: keep waiting, up to the grace.
        assert!(!give_up(s(31), s(30), true));
        assert!(!give_up(s(30) + UDEV_GRACE - s(1), s(30), true));
        assert!(give_up(s(30) + UDEV_GRACE, s(30), true));
        // The dracut case: systemd used up most of the timeout already.
        assert!(!give_up(s(5), s(1), true));
        assert!(give_up(s(5), s(1), false));
    }
}
