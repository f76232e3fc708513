//! Finding partitions by file system label: with libblkid where no udev
//! runs (the standalone init), and from udev's database where it does (a
//! dracut initramfs), since udev's blkid builtin has probed every device
//! already.

use libblkid_rs::{BlkidFltr, BlkidProbe, BlkidSafeprobeRet, BlkidSublks, BlkidSublksFlags};
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

/// What the search by label looks for: the file systems the init mounts
/// from our partitions (ext2/3/4; vfat for COS_OEM and the ESP; xfs, btrfs
/// and f2fs for a COS_PERSISTENT whose module `immuboot.modules=` adds),
/// and the containers that carry a label but must not be mounted as they
/// are: a LUKS volume (reported as such, so its mount fails with a clear
/// message instead of the partition seeming absent), and a Linux RAID
/// member (libblkid lets RAID signatures win over a file system inside
/// them, so a mirror half is never mounted on its own). Each of the other
/// 70-odd probers of libblkid reads its own places of the device: a full
/// probe took 47 reads and 1 MiB (ZFS alone reads four 256 KiB labels),
/// this one 19 reads and 10 KiB; under QEMU's TCG 6-18 ms a partition
/// against 19-42 ms.
pub const LABELLED_TYPES: &[&str] = &[
    "ext2",
    "ext3",
    "ext4",
    "vfat",
    "xfs",
    "btrfs",
    "f2fs",
    "crypto_LUKS",
    "linux_raid_member",
];

/// Which superblock probers of libblkid run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probers {
    /// Every one libblkid has: a `root=/dev/...` given as it is.
    All,
    /// Only [`LABELLED_TYPES`]: the search for our partitions by label.
    Labelled,
}

/// Probes one device for a file system label and type.
pub fn probe(path: &Path, probers: Probers) -> Option<BlockDevice> {
    try_probe(path, probers).flatten()
}

/// [`probe`], telling a device that holds none of the file systems looked
/// for (`Some(None)`) from one that could not be probed (`None`: its node
/// is not there yet, or libblkid failed).
fn try_probe(path: &Path, probers: Probers) -> Option<Option<BlockDevice>> {
    let mut probe = BlkidProbe::new_from_filename(path).ok()?;
    probe.enable_superblocks(true).ok()?;
    probe
        .set_superblock_flags(BlkidSublksFlags::new(vec![
            BlkidSublks::Label,
            BlkidSublks::Type,
            BlkidSublks::Uuid,
        ]))
        .ok()?;
    if probers == Probers::Labelled {
        probe
            .filter_superblock_type(BlkidFltr::Onlyin, LABELLED_TYPES)
            .ok()?;
    }
    Some(match probe.do_safeprobe().ok()? {
        BlkidSafeprobeRet::Success => Some(BlockDevice {
            path: path.to_path_buf(),
            label: probe.lookup_value("LABEL").ok(),
            fstype: probe.lookup_value("TYPE").ok(),
            uuid: probe.lookup_value("UUID").ok(),
            disk: None,
        }),
        _ => None,
    })
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

/// Where systemd-udevd keeps what it learnt about each device (one file per
/// device, `bMAJOR:MINOR` for block devices). Absent where no udev runs.
pub const UDEV_DB: &str = "/run/udev/data";

/// The file system udev's blkid builtin recorded in a device's database
/// entry (lines `E:KEY=VALUE`): `Some` with its type, label and UUID, or
/// `None` when the entry names no file system (a disk holding a partition
/// table, a partition nothing recognised). The `_ENC` forms keep a label's
/// spaces and other characters that the plain form replaces with `_`.
pub fn fs_from_udev_entry(text: &str) -> Option<BlockDevice> {
    let mut props = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.strip_prefix("E:").and_then(|kv| kv.split_once('=')) {
            props.insert(key, value);
        }
    }
    let fstype = props.get("ID_FS_TYPE").filter(|t| !t.is_empty())?;
    let pick = |enc: &str, plain: &str| {
        props
            .get(enc)
            .map(|v| udev_unescape(v))
            .or_else(|| props.get(plain).map(|v| v.to_string()))
            .filter(|v| !v.is_empty())
    };
    Some(BlockDevice {
        path: PathBuf::new(),
        label: pick("ID_FS_LABEL_ENC", "ID_FS_LABEL"),
        fstype: Some(fstype.to_string()),
        uuid: pick("ID_FS_UUID_ENC", "ID_FS_UUID"),
        disk: None,
    })
}

/// Undoes udev's `\xNN` escaping of the `_ENC` properties.
fn udev_unescape(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i..i + 4)
            .filter(|b| b[0] == b'\\' && b[1] == b'x');
        match escaped.and_then(|b| u8::from_str_radix(std::str::from_utf8(&b[2..]).ok()?, 16).ok())
        {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What udev knows of the block device `name`: `None` when udev has no
/// entry for it (no udev here, or it has not handled the device yet), else
/// its file system if it has one.
fn known_to_udev(
    sys_class_block: &Path,
    udev_db: &Path,
    name: &str,
) -> Option<Option<BlockDevice>> {
    let dev = std::fs::read_to_string(sys_class_block.join(name).join("dev")).ok()?;
    let entry = std::fs::read_to_string(udev_db.join(format!("b{}", dev.trim()))).ok()?;
    Some(fs_from_udev_entry(&entry))
}

/// The file systems of the candidate block devices: from udev's database
/// where udev has handled a device (its probe costs tens of reads of the
/// disk, which udev paid already), else by probing it with libblkid.
///
/// The looks of one wait for the boot's partitions, each device looked at
/// once: a partition's file system does not change while the init waits
/// for the rest of its disk, and a probe costs 6–18 ms under TCG, so the
/// wait can look every few milliseconds and pay only for new devices. A
/// device is known by name and device number (a new device under an old
/// name is looked at again); one that could not be probed (its node not
/// there yet) is tried again at the next look.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Name → device number and what the device holds (`None`: none of
    /// the file systems looked for).
    seen: std::collections::HashMap<String, (String, Option<BlockDevice>)>,
}

impl Scanner {
    pub fn scan(&mut self) -> Vec<BlockDevice> {
        self.scan_in(
            Path::new("/sys/class/block"),
            Path::new("/dev"),
            Path::new(UDEV_DB),
        )
    }

    fn scan_in(
        &mut self,
        sys_class_block: &Path,
        dev_dir: &Path,
        udev_db: &Path,
    ) -> Vec<BlockDevice> {
        candidate_names(sys_class_block)
            .into_iter()
            .filter_map(|n| {
                let number = std::fs::read_to_string(sys_class_block.join(&n).join("dev")).ok()?;
                let number = number.trim();
                if let Some((seen_number, holds)) = self.seen.get(&n) {
                    if seen_number == number {
                        return holds.clone();
                    }
                }
                let holds = look_at(sys_class_block, dev_dir, udev_db, &n)?;
                self.seen.insert(n, (number.to_string(), holds.clone()));
                holds
            })
            .collect()
    }
}

/// What block device `name` holds: from udev's database where udev has
/// handled it, else by probing it. `None`: it could not be looked at.
fn look_at(
    sys_class_block: &Path,
    dev_dir: &Path,
    udev_db: &Path,
    name: &str,
) -> Option<Option<BlockDevice>> {
    let path = dev_dir.join(name);
    let holds = match known_to_udev(sys_class_block, udev_db, name) {
        Some(from_udev) => from_udev.map(|d| BlockDevice { path, ..d }),
        None => try_probe(&path, Probers::Labelled)?,
    };
    Some(holds.map(|d| BlockDevice {
        disk: disk_of(sys_class_block, name),
        ..d
    }))
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
    fn udev_entries_give_type_label_and_uuid() {
        let entry = "S:disk/by-label/COS_STATE\nI:123456\nE:ID_FS_UUID=1b2c-3d\n\
                     E:ID_FS_UUID_ENC=1b2c-3d\nE:ID_FS_TYPE=ext4\nE:ID_FS_USAGE=filesystem\n\
                     E:ID_FS_LABEL=my_state\nE:ID_FS_LABEL_ENC=my\\x20state\nG:systemd\n";
        let d = fs_from_udev_entry(entry).expect("a file system");
        assert_eq!(
            d.label.as_deref(),
            Some("my state"),
            "the _ENC form, unescaped"
        );
        assert_eq!(d.fstype.as_deref(), Some("ext4"));
        assert_eq!(d.uuid.as_deref(), Some("1b2c-3d"));
        // Only the plain forms (older udev): taken as they are.
        let d = fs_from_udev_entry("E:ID_FS_TYPE=vfat\nE:ID_FS_LABEL=COS_GRUB\n").unwrap();
        assert_eq!((d.label.as_deref(), d.uuid), (Some("COS_GRUB"), None));
        // A disk with a partition table, an empty type: no file system.
        assert_eq!(
            fs_from_udev_entry("E:ID_PART_TABLE_TYPE=gpt\nE:ID_PART_TABLE_UUID=4dbe\n"),
            None
        );
        assert_eq!(fs_from_udev_entry("E:ID_FS_TYPE=\n"), None);
        // A broken escape stays as it is; an empty label is no label.
        assert_eq!(udev_unescape("a\\xZZb\\x4"), "a\\xZZb\\x4");
        let d = fs_from_udev_entry("E:ID_FS_TYPE=ext4\nE:ID_FS_LABEL_ENC=\n").unwrap();
        assert_eq!(d.label, None);
    }

    /// A fake sysfs and /dev below a temporary root: disk vda (253:0)
    /// with partitions vda4 and vda5 in /sys/class/block, no device nodes.
    struct FakeDisk {
        root: PathBuf,
        disk: PathBuf,
        class: PathBuf,
        dev_dir: PathBuf,
    }

    fn fake_disk(tag: &str) -> FakeDisk {
        let root = std::env::temp_dir().join(format!("immuboot-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let disk = root.join("devices/virtio1/block/vda");
        let class = root.join("class/block");
        let dev_dir = root.join("dev");
        for d in [&class, &dev_dir, &disk.join("vda4"), &disk.join("vda5")] {
            std::fs::create_dir_all(d).unwrap();
        }
        for (n, minor) in [("vda4", 4), ("vda5", 5)] {
            std::fs::write(disk.join(n).join("partition"), format!("{minor}\n")).unwrap();
            std::fs::write(disk.join(n).join("dev"), format!("253:{minor}\n")).unwrap();
            std::os::unix::fs::symlink(disk.join(n), class.join(n)).unwrap();
        }
        FakeDisk {
            root,
            disk,
            class,
            dev_dir,
        }
    }

    /// A device udev handled is taken from its entry (a fake /dev path that
    /// libblkid could not open proves it was not probed), one without an
    /// entry is probed, and a disk whose entry names no file system is left
    /// out without probing.
    #[test]
    fn the_scan_takes_udevs_findings_and_probes_the_rest() {
        let FakeDisk {
            root,
            disk,
            class,
            dev_dir,
        } = fake_disk("udevscan");
        let udev = root.join("udev");
        std::fs::create_dir_all(&udev).unwrap();
        std::fs::write(disk.join("dev"), "253:0\n").unwrap();
        std::os::unix::fs::symlink(&disk, class.join("vda")).unwrap();
        std::fs::write(udev.join("b253:0"), "E:ID_PART_TABLE_TYPE=gpt\n").unwrap();
        std::fs::write(
            udev.join("b253:4"),
            "E:ID_FS_TYPE=ext4\nE:ID_FS_LABEL_ENC=COS_STATE\nE:ID_FS_UUID_ENC=aa-bb\n",
        )
        .unwrap();
        // vda5 has no entry yet: libblkid probes it (here a real ext4 image).
        mkfs_ext4(&dev_dir.join("vda5"), "COS_PERSISTENT");

        let found = Scanner::default().scan_in(&class, &dev_dir, &udev);
        let summary: Vec<_> = found
            .iter()
            .map(|d| {
                (
                    d.path.file_name().unwrap().to_str().unwrap(),
                    d.label.as_deref().unwrap(),
                    d.disk.as_deref().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("vda4", "COS_STATE", "vda"),
                ("vda5", "COS_PERSISTENT", "vda")
            ]
        );
        assert_eq!(found[0].uuid.as_deref(), Some("aa-bb"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The looks of one wait probe a device once per device number, and
    /// try again one whose node was not there yet.
    #[test]
    fn a_scanner_probes_each_device_once() {
        let FakeDisk {
            root,
            disk,
            class,
            dev_dir,
        } = fake_disk("scanner");
        let udev = root.join("no-udev");
        mkfs_ext4(&dev_dir.join("vda4"), "COS_STATE");
        let labels = |found: Vec<BlockDevice>| -> Vec<String> {
            found.into_iter().filter_map(|d| d.label).collect()
        };
        let mut scanner = Scanner::default();
        // vda5's node is not there yet.
        assert_eq!(
            labels(scanner.scan_in(&class, &dev_dir, &udev)),
            ["COS_STATE"]
        );
        mkfs_ext4(&dev_dir.join("vda5"), "COS_PERSISTENT");
        // Seen devices are not probed again: a new label on vda4 stays unseen.
        mkfs_ext4(&dev_dir.join("vda4"), "OTHER");
        assert_eq!(
            labels(scanner.scan_in(&class, &dev_dir, &udev)),
            ["COS_STATE", "COS_PERSISTENT"]
        );
        // Another device under vda4's name is.
        std::fs::write(disk.join("vda4/dev"), "253:14\n").unwrap();
        assert_eq!(
            labels(scanner.scan_in(&class, &dev_dir, &udev)),
            ["OTHER", "COS_PERSISTENT"]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// An 8 MiB ext4 file system in a file, made by mkfs.ext4.
    fn mkfs_ext4(img: &Path, label: &str) {
        std::fs::File::create(img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        run_tool("mkfs.ext4", &["-q", "-L", label, img.to_str().unwrap()]);
    }

    /// The search by label sees the file systems of our partitions (here
    /// vfat, as COS_OEM may be) and skips the probers of everything else:
    /// a squashfs is found only by a full probe.
    #[test]
    fn the_search_by_label_runs_only_the_probers_of_our_partitions() {
        let dir = std::env::temp_dir().join(format!("immuboot-probers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vfat = dir.join("oem.img");
        std::fs::File::create(&vfat)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        run_tool("mkfs.vfat", &["-n", "COS_OEM", vfat.to_str().unwrap()]);
        let dev = probe(&vfat, Probers::Labelled).expect("probe vfat image");
        assert_eq!(dev.label.as_deref(), Some("COS_OEM"));
        assert_eq!(dev.fstype.as_deref(), Some("vfat"));

        let content = dir.join("content");
        std::fs::create_dir_all(&content).unwrap();
        std::fs::write(content.join("f"), "x").unwrap();
        let squashfs = dir.join("root.img");
        run_tool(
            "mksquashfs",
            &[
                content.to_str().unwrap(),
                squashfs.to_str().unwrap(),
                "-quiet",
                "-no-progress",
                "-noappend",
            ],
        );
        let full = probe(&squashfs, Probers::All).expect("a full probe finds squashfs");
        assert_eq!(full.fstype.as_deref(), Some("squashfs"));
        assert_eq!(probe(&squashfs, Probers::Labelled), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Runs a host tool the tests need (all declared host dependencies,
    /// xtask/src/host.rs: absent means a broken host, not nothing to test).
    fn run_tool(tool: &str, args: &[&str]) {
        let out = std::process::Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): `cargo xtask deps` installs it"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn probes_a_real_ext4_image() {
        let dir = std::env::temp_dir().join(format!("immuboot-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("fs.img");
        mkfs_ext4(&img, "COS_TEST");
        let dev = probe(&img, Probers::Labelled).expect("probe ext4 image");
        assert_eq!(dev.label.as_deref(), Some("COS_TEST"));
        assert_eq!(dev.fstype.as_deref(), Some("ext4"));
        assert_eq!(dev.uuid.as_deref().map(str::len), Some(36), "{dev:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
