//! `immuboot-generator`: the systemd generator of the dracut module (the
//! init binary, started under that name). systemd runs generators before it
//! loads any unit; this one reads the kernel command line and, unless
//! `rd.cos.disable` is given, writes into the *early* generator directory,
//! which takes precedence over the normal one where systemd-fstab-generator
//! and dracut's rootfs generator put their units:
//!
//! - `sysroot.mount`, replacing the one those generators make from
//!   `root=LABEL=COS_STATE` (COS_STATE holds the images; it is not the root
//!   file system). /sysroot is mounted by `immuboot-initrd.service`; this unit
//!   only orders after it, so `initrd-root-fs.target` waits for it;
//! - `initrd-root-fs.target.requires/immuboot-initrd.service`, which pulls
//!   the service into the initrd transaction;
//! - a drop-in for the service: wait (through udev/systemd) for the
//!   partition holding the image, `/dev/disk/by-label/LABEL`;
//! - `immuboot-initqueue-wake.service`, wanted by the service and started
//!   the moment that partition appears: dracut's initqueue, which the
//!   service waits for (`dracut-pre-mount.service`), then ends at once
//!   instead of when udev has probed every other device;
//! - a drop-in for that device: `immuboot.timeout` bounds the wait.
//!
//! What to write is pure ([`plan`]) and tested; [`write`] only puts it on
//! disk.

use crate::config::InitConfig;
use anyhow::{Context, Result};
use immuboot_assess::{resolve_target, BootState};
use std::path::{Path, PathBuf};

/// The service of the dracut module (installed by module-setup.sh).
pub const SERVICE: &str = "immuboot-initrd.service";
/// The module's unit that tells dracut's initqueue to look again once the
/// image partition is there (installed by module-setup.sh).
pub const INITQUEUE_WAKE: &str = "immuboot-initqueue-wake.service";
/// Where dracut installs the module's units in the initrd.
pub const UNIT_DIR: &str = "/usr/lib/systemd/system";

/// One file to create in the generator directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    File { path: PathBuf, content: String },
    Symlink { path: PathBuf, target: PathBuf },
}

impl Output {
    pub fn path(&self) -> &Path {
        match self {
            Output::File { path, .. } | Output::Symlink { path, .. } => path,
        }
    }
}

/// systemd's unit name for a path (`systemd-escape --path`): slashes become
/// dashes, and every byte other than ASCII letters, digits, `:`, `_` and a
/// non-leading `.` is written `\xNN`.
pub fn unit_name_for_path(path: &str, suffix: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return format!("-.{suffix}");
    }
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i > 0 => out.push('.'),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' => out.push(b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    format!("{out}.{suffix}")
}

/// The units for this command line; none with `rd.cos.disable` (dracut
/// then boots `root=` as a plain root file system).
pub fn plan(cfg: &InitConfig) -> Vec<Output> {
    if cfg.disabled {
        return Vec::new();
    }
    let mode = resolve_target(&cfg.request, &BootState::default()).mode;
    let label = cfg.image_partition_label(mode);
    // The file system the boot loader read, when it is the image partition:
    // a look-alike on another disk carries the same label, not the UUID.
    let device_path = match &cfg.state_uuid {
        Some(uuid) if label == cfg.labels.state => format!("/dev/disk/by-uuid/{uuid}"),
        _ => format!("/dev/disk/by-label/{label}"),
    };
    let device = unit_name_for_path(&device_path, "device");
    let timeout = cfg.device_timeout.as_secs();
    let header = "# Written by immuboot-generator from the kernel command line.\n";
    vec![
        Output::File {
            path: "sysroot.mount".into(),
            content: format!(
                "{header}\
                 # /sysroot is the slot's image with immuboot's layout, mounted by\n\
                 # {SERVICE}; this replaces the unit other generators make from\n\
                 # root= (the partition holding the images is not the root).\n\
                 [Unit]\n\
                 Description=immuboot root file system (mounted by {SERVICE})\n\
                 DefaultDependencies=no\n\
                 Requires={SERVICE}\n\
                 After={SERVICE}\n\
                 Before=initrd-root-fs.target\n\
                 \n\
                 [Mount]\n\
                 # Only used if the service succeeded without mounting /sysroot:\n\
                 # the mount then fails instead of booting something else.\n\
                 What=immuboot-root\n\
                 Where=/sysroot\n\
                 Type=none\n"
            ),
        },
        Output::Symlink {
            path: PathBuf::from("initrd-root-fs.target.requires").join(SERVICE),
            target: PathBuf::from(UNIT_DIR).join(SERVICE),
        },
        Output::File {
            path: PathBuf::from(format!("{SERVICE}.d")).join("50-image-partition.conf"),
            content: format!(
                "{header}\
                 # The partition holding the image ({mode} boot). Wanted, not\n\
                 # required: if it never appears, the service says so and the\n\
                 # machine reboots into the boot loader's fallback.\n\
                 [Unit]\n\
                 Wants={device}\n\
                 After={device}\n"
            ),
        },
        Output::Symlink {
            path: PathBuf::from(format!("{SERVICE}.wants")).join(INITQUEUE_WAKE),
            target: PathBuf::from(UNIT_DIR).join(INITQUEUE_WAKE),
        },
        Output::File {
            path: PathBuf::from(format!("{INITQUEUE_WAKE}.d")).join("50-image-partition.conf"),
            content: format!(
                "{header}\
                 # Started when the partition holding the image appears.\n\
                 [Unit]\n\
                 Wants={device}\n\
                 After={device}\n"
            ),
        },
        Output::File {
            // Sorts after dracut's own `timeout.conf` for the root device,
            // so immuboot.timeout is the one that applies.
            path: PathBuf::from(format!("{device}.d")).join("zz-immuboot-timeout.conf"),
            content: format!(
                "{header}\
                 # immuboot.timeout={timeout}\n\
                 [Unit]\n\
                 JobTimeoutSec={timeout}\n\
                 JobRunningTimeoutSec={timeout}\n"
            ),
        },
    ]
}

/// Creates the planned files under `dir` (the early generator directory).
pub fn write(dir: &Path, outputs: &[Output]) -> Result<()> {
    for o in outputs {
        let full = dir.join(o.path());
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        match o {
            Output::File { content, .. } => std::fs::write(&full, content),
            Output::Symlink { target, .. } => {
                let _ = std::fs::remove_file(&full);
                std::os::unix::fs::symlink(target, &full)
            }
        }
        .with_context(|| format!("cannot write {}", full.display()))?;
    }
    Ok(())
}

/// `immuboot-generator NORMAL_DIR EARLY_DIR LATE_DIR`. Errors go to the
/// kernel log; the exit code tells systemd.
pub fn main(args: &[String]) -> i32 {
    let early = match args {
        [_normal, early, _late] => PathBuf::from(early),
        // systemd passes three directories; the early one is what this
        // generator writes to, so anything else is refused.
        _ => {
            log::error!(
                "immuboot-generator: expected 3 directories (normal, early, late), got {args:?}"
            );
            return 2;
        }
    };
    let cmdline = match crate::cmdline::read() {
        Ok(c) => c,
        Err(e) => {
            log::error!("immuboot-generator: cannot read /proc/cmdline: {e:#}");
            return 1;
        }
    };
    let cfg = InitConfig::from_cmdline(&cmdline);
    match write(&early, &plan(&cfg)) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("immuboot-generator: {e:#}");
            1
        }
    }
}

/// dracut's initqueue directory in the initrd.
pub const INITQUEUE_DIR: &str = "/lib/dracut/hooks/initqueue";
/// The directory `udevadm settle` watches for deleted files.
pub const UDEV_RUN_DIR: &str = "/run/udev";

/// What `immuboot-initqueue-wake.service` runs (`immuboot-init
/// --wake-initqueue`): makes dracut's initqueue look at its "finished"
/// conditions again. The initqueue loops on `udevadm settle
/// --exit-if-exists=INITQUEUE_DIR/work`, which returns when that file exists
/// and a file in `udev_dir` is deleted (settle waits on inotify there), so
/// this creates the work file, then creates and deletes one of its own.
/// Done here rather than by `/bin/sh -c`: under QEMU's TCG, starting dracut's
/// bash took about 0.5 s of the one CPU while the image partition was being
/// waited for, the static init a fraction of it.
pub fn wake_initqueue(initqueue_dir: &Path, udev_dir: &Path) -> Result<()> {
    let work = initqueue_dir.join("work");
    std::fs::File::create(&work).with_context(|| {
        format!(
            "cannot create {} (dracut's initqueue looks again when it exists)",
            work.display()
        )
    })?;
    let poke = udev_dir.join("immuboot-initqueue-wake");
    std::fs::File::create(&poke).with_context(|| format!("cannot create {}", poke.display()))?;
    std::fs::remove_file(&poke).with_context(|| format!("cannot remove {}", poke.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::Cmdline;

    #[test]
    fn the_initqueue_wake_leaves_the_work_file_and_no_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, udev) = (dir.path().join("initqueue"), dir.path().join("udev"));
        std::fs::create_dir(&queue).unwrap();
        std::fs::create_dir(&udev).unwrap();
        // An existing work file (another hook queued work) is kept.
        std::fs::write(queue.join("work"), "").unwrap();
        wake_initqueue(&queue, &udev).unwrap();
        assert!(queue.join("work").exists());
        assert_eq!(std::fs::read_dir(&udev).unwrap().count(), 0);
        // Without dracut's directory it says which file it could not make.
        let err = wake_initqueue(&dir.path().join("none"), &udev).unwrap_err();
        assert!(format!("{err:#}").contains("none/work"), "{err:#}");
    }

    fn cfg(line: &str) -> InitConfig {
        InitConfig::from_cmdline(&Cmdline::parse(line))
    }

    fn file<'a>(outputs: &'a [Output], path: &str) -> &'a str {
        outputs
            .iter()
            .find_map(|o| match o {
                Output::File { path: p, content } if p == Path::new(path) => Some(content.as_str()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{path} not planned: {outputs:?}"))
    }

    #[test]
    fn unit_names_are_escaped_like_systemd_escape_path() {
        assert_eq!(
            unit_name_for_path("/dev/disk/by-label/COS_STATE", "device"),
            "dev-disk-by\\x2dlabel-COS_STATE.device"
        );
        assert_eq!(
            unit_name_for_path("/dev/disk/by-label/my label.x", "device"),
            "dev-disk-by\\x2dlabel-my\\x20label.x.device"
        );
        assert_eq!(unit_name_for_path("/", "mount"), "-.mount");
        assert_eq!(unit_name_for_path("/sysroot", "mount"), "sysroot.mount");
        assert_eq!(unit_name_for_path("/.hidden", "mount"), "\\x2ehidden.mount");
    }

    #[test]
    fn active_boot_waits_for_state_and_replaces_sysroot_mount() {
        let out = plan(&cfg(
            "root=LABEL=COS_STATE cos-img/filename=/cOS/a.img immuboot.mode=active immuboot.timeout=17",
        ));
        let mount = file(&out, "sysroot.mount");
        assert!(mount.contains("Requires=immuboot-initrd.service"));
        assert!(mount.contains("After=immuboot-initrd.service"));
        assert!(mount.contains("Where=/sysroot"));
        assert!(!mount.contains("COS_STATE"), "{mount}");
        let wants = file(&out, "immuboot-initrd.service.d/50-image-partition.conf");
        assert!(wants.contains("Wants=dev-disk-by\\x2dlabel-COS_STATE.device"));
        assert!(wants.contains("After=dev-disk-by\\x2dlabel-COS_STATE.device"));
        let timeout = file(
            &out,
            "dev-disk-by\\x2dlabel-COS_STATE.device.d/zz-immuboot-timeout.conf",
        );
        assert!(timeout.contains("JobRunningTimeoutSec=17"));
        assert!(out.contains(&Output::Symlink {
            path: "initrd-root-fs.target.requires/immuboot-initrd.service".into(),
            target: "/usr/lib/systemd/system/immuboot-initrd.service".into(),
        }));
        // dracut's initqueue is told to look again when that partition
        // appears, not when udev has gone through every device.
        assert!(out.contains(&Output::Symlink {
            path: "immuboot-initrd.service.wants/immuboot-initqueue-wake.service".into(),
            target: "/usr/lib/systemd/system/immuboot-initqueue-wake.service".into(),
        }));
        let wake = file(
            &out,
            "immuboot-initqueue-wake.service.d/50-image-partition.conf",
        );
        assert!(wake.contains("After=dev-disk-by\\x2dlabel-COS_STATE.device"));
        assert!(wake.contains("Wants=dev-disk-by\\x2dlabel-COS_STATE.device"));
    }

    #[test]
    fn with_the_boot_loaders_uuid_the_wait_is_for_that_file_system() {
        let out = plan(&cfg(
            "root=LABEL=COS_STATE cos-img/filename=/cOS/a.img immuboot.state_uuid=1f2e-a",
        ));
        let wants = file(&out, "immuboot-initrd.service.d/50-image-partition.conf");
        assert!(
            wants.contains("Wants=dev-disk-by\\x2duuid-1f2e\\x2da.device"),
            "{wants}"
        );
        let wake = file(
            &out,
            "immuboot-initqueue-wake.service.d/50-image-partition.conf",
        );
        assert!(
            wake.contains("After=dev-disk-by\\x2duuid-1f2e\\x2da.device"),
            "{wake}"
        );
        // Recovery lives on its own partition: waited for by label.
        let out = plan(&cfg(
            "root=LABEL=COS_RECOVERY immuboot.mode=recovery immuboot.state_uuid=1f2e-a",
        ));
        let wants = file(&out, "immuboot-initrd.service.d/50-image-partition.conf");
        assert!(
            wants.contains("dev-disk-by\\x2dlabel-COS_RECOVERY.device"),
            "{wants}"
        );
    }

    #[test]
    fn recovery_waits_for_its_own_partition_and_labels_follow_the_command_line() {
        let out = plan(&cfg("root=LABEL=COS_RECOVERY immuboot.mode=recovery"));
        let wants = file(&out, "immuboot-initrd.service.d/50-image-partition.conf");
        assert!(
            wants.contains("dev-disk-by\\x2dlabel-COS_RECOVERY.device"),
            "{wants}"
        );
        assert!(file(
            &out,
            "dev-disk-by\\x2dlabel-COS_RECOVERY.device.d/zz-immuboot-timeout.conf"
        )
        .contains("JobTimeoutSec=30"));

        let out = plan(&cfg("immuboot.state_label=MY-STATE"));
        let wants = file(&out, "immuboot-initrd.service.d/50-image-partition.conf");
        assert!(
            wants.contains("dev-disk-by\\x2dlabel-MY\\x2dSTATE.device"),
            "{wants}"
        );
    }

    #[test]
    fn disabled_writes_nothing() {
        assert!(plan(&cfg("root=LABEL=COS_STATE rd.cos.disable")).is_empty());
    }

    #[test]
    fn write_creates_files_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let out = plan(&cfg("root=LABEL=COS_STATE"));
        write(dir.path(), &out).unwrap();
        // Twice: a daemon-reload runs generators again.
        write(dir.path(), &out).unwrap();
        assert!(dir.path().join("sysroot.mount").is_file());
        let link = dir
            .path()
            .join("initrd-root-fs.target.requires/immuboot-initrd.service");
        assert_eq!(
            std::fs::read_link(link).unwrap(),
            Path::new("/usr/lib/systemd/system/immuboot-initrd.service")
        );
    }
}
