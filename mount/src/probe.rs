//! Finding partitions by file system label, with libblkid and no udev.

use libblkid_rs::{BlkidProbe, BlkidSafeprobeRet, BlkidSublks, BlkidSublksFlags};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDevice {
    pub path: PathBuf,
    pub label: Option<String>,
    pub fstype: Option<String>,
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
        ]))
        .ok()?;
    match probe.do_safeprobe().ok()? {
        BlkidSafeprobeRet::Success => Some(BlockDevice {
            path: path.to_path_buf(),
            label: probe.lookup_value("LABEL").ok(),
            fstype: probe.lookup_value("TYPE").ok(),
        }),
        _ => None,
    }
}

/// Probes every candidate block device once.
pub fn scan() -> Vec<BlockDevice> {
    candidate_names(Path::new("/sys/class/block"))
        .iter()
        .filter_map(|n| probe(&Path::new("/dev").join(n)))
        .collect()
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
            },
            BlockDevice {
                path: "/dev/vda4".into(),
                label: Some("COS_STATE".into()),
                fstype: Some("ext4".into()),
            },
        ];
        assert_eq!(
            with_label(&devs, "COS_STATE")[0].path,
            Path::new("/dev/vda4")
        );
        assert!(with_label(&devs, "COS_PERSISTENT").is_empty());
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
