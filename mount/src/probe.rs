//! Finding partitions by file system label, with libblkid and no udev.

use libblkid_rs::{BlkidProbe, BlkidSafeprobeRet, BlkidSublks, BlkidSublksFlags};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlockDevice {
    pub path: PathBuf,
    pub label: Option<String>,
    pub fstype: Option<String>,
    /// The file system's UUID.
    pub uuid: Option<String>,
    /// The whole disk the device is on (`vda` for `vda4`; itself for a
    /// file system on a whole disk).
    pub disk: Option<String>,
}

/// Kernel block device names under /sys/class/block that can hold our file
/// systems (loop and RAM devices are ours or irrelevant).
pub fn candidate_names(sys_class_block: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys_class_block)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !is_ignored(n))
        .collect();
    names.sort();
    names
}

fn is_ignored(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-", "sr", "fd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Probes one device for a file system label and type.
pub fn probe(path: &Path) -> Option<BlockDevice> {
    let mut probe = BlkidProbe::new_from_filename(path).ok()?;
    probe.enable_superblocks(true).ok()?;
    probe
        .set_superblock_flags(BlkidSublksFlags::new(vec![
            BlkidSublks::Label,
            BlkidSublks::Type,
            BlkidSublks::Uuid,
        ]))
        .ok()?;
    match probe.do_safeprobe().ok()? {
        BlkidSafeprobeRet::Success => Some(BlockDevice {
            path: path.to_path_buf(),
            label: probe.lookup_value("LABEL").ok(),
            fstype: probe.lookup_value("TYPE").ok(),
            uuid: probe.lookup_value("UUID").ok(),
            disk: None,
        }),
        _ => None,
    }
}

/// The whole disk a block device is on, from sysfs: a partition's
/// directory sits in its disk's (`.../block/vda/vda4`).
pub fn disk_of(sys_class_block: &Path, name: &str) -> Option<String> {
    let dev = sys_class_block.join(name);
    if !dev.join("partition").exists() {
        return Some(name.to_string());
    }
    let real = std::fs::canonicalize(&dev).ok()?;
    Some(real.parent()?.file_name()?.to_str()?.to_string())
}

/// Probes every candidate block device once.
pub fn scan() -> Vec<BlockDevice> {
    let sys = Path::new("/sys/class/block");
    candidate_names(sys)
        .iter()
        .filter_map(|n| {
            let mut d = probe(&Path::new("/dev").join(n))?;
            d.disk = disk_of(sys, n);
            Some(d)
        })
        .collect()
}

/// The partitions of the boot, bound to the disk GRUB booted from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bound {
    /// Every device, except those carrying one of our labels on another
    /// disk.
    pub devices: Vec<BlockDevice>,
    /// Devices with one of our labels on another disk: ignored.
    pub look_alikes: Vec<BlockDevice>,
    /// Why the boot is not bound to one disk, when it is not.
    pub unbound: Option<String>,
}

/// Partitions are found by label, so another disk with the same labels (a
/// USB stick made from the same image, a disk moved from another machine)
/// could take over the boot or receive this machine's persistent data. GRUB
/// names the file system it booted from (`immuboot.state_uuid`, the UUID of
/// the partition labelled `state_label`): only partitions on that disk count.
/// Without a UUID, or when no such partition is present yet, every disk
/// counts as before (and `unbound` says why).
pub fn bind_to_boot_disk(
    devices: Vec<BlockDevice>,
    our_labels: &[&str],
    state_label: &str,
    state_uuid: Option<&str>,
) -> Bound {
    let Some(uuid) = state_uuid else {
        return Bound {
            devices,
            unbound: Some("the boot loader named no file system (immuboot.state_uuid)".into()),
            ..Default::default()
        };
    };
    let anchor = devices.iter().find(|d| {
        d.label.as_deref() == Some(state_label)
            && d.uuid
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(uuid))
    });
    let Some(disk) = anchor.and_then(|d| d.disk.clone()) else {
        return Bound {
            devices,
            unbound: Some(format!(
                "no partition labelled {state_label} with UUID {uuid} (the one the boot loader \
                 read) on any disk"
            )),
            ..Default::default()
        };
    };
    let (devices, look_alikes) = devices.into_iter().partition(|d| {
        let ours = d.label.as_deref().is_some_and(|l| our_labels.contains(&l));
        !ours || d.disk.as_deref() == Some(disk.as_str())
    });
    Bound {
        devices,
        look_alikes,
        unbound: None,
    }
}

/// The devices carrying a label (more than one is a misconfiguration the
/// caller reports).
pub fn with_label<'a>(devices: &'a [BlockDevice], label: &str) -> Vec<&'a BlockDevice> {
    devices
        .iter()
        .filter(|d| d.label.as_deref() == Some(label))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_loop_and_ram_devices() {
        assert!(is_ignored("loop0"));
        assert!(is_ignored("ram1"));
        assert!(!is_ignored("vda2"));
        assert!(!is_ignored("nvme0n1p3"));
    }

    #[test]
    fn finds_labels() {
        let devs = vec![
            BlockDevice {
                path: "/dev/vda2".into(),
                label: Some("COS_OEM".into()),
                fstype: Some("ext4".into()),
                ..Default::default()
            },
            BlockDevice {
                path: "/dev/vda4".into(),
                label: Some("COS_STATE".into()),
                fstype: Some("ext4".into()),
                ..Default::default()
            },
        ];
        assert_eq!(
            with_label(&devs, "COS_STATE")[0].path,
            Path::new("/dev/vda4")
        );
        assert!(with_label(&devs, "COS_PERSISTENT").is_empty());
    }

    fn dev(path: &str, label: &str, uuid: &str, disk: &str) -> BlockDevice {
        BlockDevice {
            path: path.into(),
            label: Some(label.into()),
            fstype: Some("ext4".into()),
            uuid: Some(uuid.into()),
            disk: Some(disk.into()),
        }
    }

    const OURS: &[&str] = &["COS_STATE", "COS_OEM", "COS_PERSISTENT", "COS_RECOVERY"];

    /// A second disk with our labels is ignored when GRUB named the file
    /// system it booted from; wherever it sorts among the devices.
    #[test]
    fn look_alikes_on_another_disk_are_ignored() {
        let disk = |d: &str, uuid: &str| {
            vec![
                dev(&format!("/dev/{d}2"), "COS_OEM", &format!("{uuid}-2"), d),
                dev(&format!("/dev/{d}4"), "COS_STATE", uuid, d),
                dev(
                    &format!("/dev/{d}5"),
                    "COS_PERSISTENT",
                    &format!("{uuid}-5"),
                    d,
                ),
            ]
        };
        let mut devices = disk("sda", "1111");
        devices.extend(disk("vda", "ab22"));
        devices.push(dev("/dev/vdc1", "DATA", "3333", "vdc"));
        let b = bind_to_boot_disk(devices.clone(), OURS, "COS_STATE", Some("ab22"));
        assert_eq!(b.unbound, None);
        assert_eq!(
            with_label(&b.devices, "COS_STATE")[0].path,
            Path::new("/dev/vda4")
        );
        assert_eq!(
            with_label(&b.devices, "COS_OEM")[0].path,
            Path::new("/dev/vda2")
        );
        assert_eq!(with_label(&b.devices, "DATA").len(), 1, "not ours: kept");
        let ignored: Vec<&Path> = b.look_alikes.iter().map(|d| d.path.as_path()).collect();
        assert_eq!(
            ignored,
            [
                Path::new("/dev/sda2"),
                Path::new("/dev/sda4"),
                Path::new("/dev/sda5")
            ]
        );
        // UUIDs compare without case (GRUB may print them either way).
        let b = bind_to_boot_disk(devices.clone(), OURS, "COS_STATE", Some("AB22"));
        assert_eq!(b.look_alikes.len(), 3);
        // No UUID from the boot loader, or none that matches: unbound, said.
        for uuid in [None, Some("9999")] {
            let b = bind_to_boot_disk(devices.clone(), OURS, "COS_STATE", uuid);
            assert_eq!((b.devices.len(), b.look_alikes.len()), (7, 0));
            assert!(b.unbound.is_some());
        }
    }

    #[test]
    fn the_disk_of_a_partition_comes_from_sysfs() {
        let root = std::env::temp_dir().join(format!("immuboot-sysfs-{}", std::process::id()));
        let disk = root.join("devices/pci0000:00/virtio2/block/vda");
        std::fs::create_dir_all(disk.join("vda4")).unwrap();
        std::fs::write(disk.join("vda4/partition"), "4\n").unwrap();
        let class = root.join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(disk.join("vda4"), class.join("vda4")).unwrap();
        std::os::unix::fs::symlink(&disk, class.join("vda")).unwrap();
        assert_eq!(disk_of(&class, "vda4").as_deref(), Some("vda"));
        assert_eq!(disk_of(&class, "vda").as_deref(), Some("vda"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn probes_a_real_ext4_image() {
        // mkfs.ext4 is a declared host dependency (e2fsprogs, xtask/src/host.rs):
        // its absence is a broken host, not a reason to test nothing.
        let dir = std::env::temp_dir().join(format!("immuboot-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let status = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-L", "COS_TEST"])
            .arg(&img)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run mkfs.ext4 ({e}): install e2fsprogs, a host dependency \
                     (`cargo xtask deps`)"
                )
            });
        assert!(
            status.success(),
            "mkfs.ext4 {} failed: {status}",
            img.display()
        );
        let dev = probe(&img).expect("probe ext4 image");
        assert_eq!(dev.label.as_deref(), Some("COS_TEST"));
        assert_eq!(dev.fstype.as_deref(), Some("ext4"));
        assert_eq!(dev.uuid.as_deref().map(str::len), Some(36), "{dev:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
