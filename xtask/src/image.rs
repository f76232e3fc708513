//! The demo OS images: one Debian root file system, customised for a
//! read-only root, with the immuboot CLI and an initramfs, squashed three
//! times (slot a, slot b, recovery) with different versions in os-release.

use crate::initramfs;
use crate::util::{out_dir, run, workspace_root, Stamp};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Password hash of the demo's root account (password "immuboot"), made
/// with `openssl passwd -6`.
const ROOT_HASH: &str = "$6$immubootdemo$bzHBnSfuA8ZF.wO2RGYVGc/fNyye5m1OocLSQdyZBYo.BLV58oM77Kv7yBnP5P99qySdiSVoNda292XFM8bdl1";

/// Module trees a QEMU demo never needs; dropped to keep the images small
/// and quick to build. A real image keeps what its hardware needs.
const PRUNED_MODULES: &[&str] = &[
    "sound",
    "drivers/gpu",
    "drivers/media",
    "drivers/net/wireless",
    "drivers/net/ethernet",
    "drivers/infiniband",
    "drivers/staging",
    "drivers/iio",
    "drivers/bluetooth",
    "drivers/isdn",
    "drivers/mtd",
    "drivers/hwmon",
    "drivers/platform",
    "drivers/mfd",
    "drivers/comedi",
    "drivers/usb/gadget",
    "drivers/input/touchscreen",
    "drivers/net/can",
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
];

/// Units that make no sense on an image-based system, or would wait for
/// input on the console.
const MASKED_UNITS: &[&str] = &[
    "systemd-firstboot.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-timesyncd.service",
];

pub struct Variant {
    pub file: &'static str,
    pub version: &'static str,
    pub variant: &'static str,
}

pub const VARIANTS: &[Variant] = &[
    Variant {
        file: "a.img",
        version: "2",
        variant: "slot-a",
    },
    Variant {
        file: "b.img",
        version: "1",
        variant: "slot-b",
    },
    Variant {
        file: "recovery.img",
        version: "1-recovery",
        variant: "recovery",
    },
];

pub struct Images {
    pub dir: PathBuf,
    pub initramfs_bytes: u64,
}

/// Squashfs compression: GRUB loads the kernel and initramfs from inside the
/// image and GRUB 2.06 reads gzip, xz and lzo squashfs but not zstd. gzip is
/// the default: the root is read (and decompressed) while systemd starts,
/// and gzip decompresses faster than xz for about the same size here.
/// `IMMUBOOT_SQUASHFS_COMP=xz|lzo` overrides it.
fn compression() -> String {
    std::env::var("IMMUBOOT_SQUASHFS_COMP").unwrap_or_else(|_| "gzip".into())
}

fn image_inputs(tar: &Path, init: &Path, cli: &Path) -> Result<Stamp> {
    let root = workspace_root();
    Stamp::default()
        .text(&tar.display().to_string())
        .text(&compression())
        .file(init)?
        .file(cli)?
        .file(&root.join("image/layout.yaml"))?
        .file(&root.join("image/initramfs-modules"))?
        .file(&root.join("image/systemd/immuboot-mark-good.service"))?
        .file(&root.join("image/systemd/immuboot-watchdog.conf"))?
        .file(&root.join("xtask/src/image.rs"))?
        .file(&root.join("xtask/src/initramfs.rs"))
}

pub fn build(tar: &Path, init: &Path, cli: &Path) -> Result<Images> {
    let dir = out_dir().join("images");
    let stamp = image_inputs(tar, init, cli)?;
    let marker = dir.join("a.img");
    if stamp.is_current(&marker) {
        eprintln!("    images up to date");
        let initramfs_bytes = fs::metadata(out_dir().join("initrd.img"))?.len();
        return Ok(Images {
            dir,
            initramfs_bytes,
        });
    }
    fs::create_dir_all(&dir)?;
    let root = out_dir().join("rootfs");
    let kver = stage(tar, &root, cli)?;
    let initrd = out_dir().join("initrd.img");
    let initramfs_bytes = initramfs::build(
        init,
        &root.join("usr/lib/modules").join(&kver),
        &kver,
        &workspace_root().join("image/initramfs-modules"),
        &initrd,
    )?;
    fs::copy(&initrd, root.join("boot/initrd.img"))?;
    let os_release = root.join("usr/lib/os-release");
    let base = fs::read_to_string(&os_release)?;
    for v in VARIANTS {
        let text: String = base
            .lines()
            .filter(|l| {
                !l.starts_with("PRETTY_NAME=")
                    && !l.starts_with("IMAGE_")
                    && !l.starts_with("VARIANT")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(
            &os_release,
            format!(
                "{text}PRETTY_NAME=\"immuboot demo {} (Debian GNU/Linux 12)\"\nIMAGE_ID=immuboot-demo\nIMAGE_VERSION={}\nVARIANT_ID={}\n",
                v.version, v.version, v.variant
            ),
        )?;
        let out = dir.join(v.file);
        squash(&root, &out, &[])?;
        write_digests(&root, &out)?;
    }
    test_variants(&root, &dir.join("test"))?;
    stamp.record(&marker)?;
    Ok(Images {
        dir,
        initramfs_bytes,
    })
}

fn squash(root: &Path, out: &Path, extra: &[&str]) -> Result<()> {
    let _ = fs::remove_file(out);
    run(Command::new("mksquashfs")
        .arg(root)
        .arg(out)
        .args([
            "-comp",
            &compression(),
            "-noappend",
            "-quiet",
            "-no-progress",
        ])
        .args(extra))
}

/// The digest lists an installer records beside an image (see
/// `immuboot_assess::digest`): the whole file, and the kernel and initramfs
/// GRUB reads from it.
pub fn write_digests(root: &Path, image: &Path) -> Result<()> {
    use immuboot_assess::digest;
    let name = image
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let whole = digest::Entry {
        sha256: digest::sha256_file(image)?,
        name: name.clone(),
    };
    fs::write(
        digest::image_digest_path(&image.display().to_string()),
        digest::render(&[whole]),
    )?;
    let boot = digest::BOOT_FILES
        .iter()
        .map(|f| {
            Ok(digest::Entry {
                sha256: digest::sha256_file(&root.join(f))?,
                name: f.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    fs::write(
        digest::boot_digest_path(&image.display().to_string()),
        digest::render(&boot),
    )?;
    Ok(())
}

/// Test images for the scenarios, in `dir`:
/// - `panic.img` (PID 1 exits at once: the kernel panics) and `hang.img`
///   (PID 1 never starts systemd: only the watchdog ends the boot);
/// - `v3.img`, a good newer image, signed with the test key (`v3.img.minisig`,
///   `trusted.pub`);
/// - `rootfs-v4/`, a root file system directory (kernel modules pruned to
///   what a QEMU guest uses, so squashing it in the guest is quick);
/// - `oci-v5/` (beside `dir`, not on the payload disk: the scenarios push it
///   to a registry): rootfs-v4 plus a layer that changes os-release and
///   deletes /etc/motd (a whiteout).
///
/// Squashed fast (gzip level 1): they only have to boot in tests.
fn test_variants(root: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    let os_release = root.join("usr/lib/os-release");
    let good = fs::read_to_string(&os_release)?;
    let init = root.join("sbin/init");
    let systemd_link = fs::read_link(&init).ok();
    let fast_gzip = ["-Xcompression-level", "1"];
    let fast: &[&str] = if compression() == "gzip" {
        &fast_gzip
    } else {
        &[]
    };
    let set_version = |root: &Path, v: &str| -> Result<()> {
        fs::write(root.join("usr/lib/os-release"), with_version(&good, v))?;
        Ok(())
    };
    set_version(root, "3")?;
    squash(root, &dir.join("v3.img"), fast)?;
    for (name, script) in [
        (
            "panic",
            "#!/bin/sh\necho 'test image: PID 1 exits, the kernel panics'\nexit 1\n",
        ),
        (
            "hang",
            "#!/bin/sh\necho 'test image: PID 1 hangs'\nexec sleep infinity\n",
        ),
    ] {
        set_version(root, &format!("3-{name}"))?;
        fs::remove_file(&init)?;
        fs::write(&init, script)?;
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
        squash(root, &dir.join(format!("{name}.img")), fast)?;
    }
    fs::remove_file(&init)?;
    match systemd_link {
        Some(target) => symlink(target, &init)?,
        None => bail!("{} was not a symlink to systemd", init.display()),
    }
    fs::write(&os_release, &good)?;

    // Signed v3, with the key pair kept beside the build output.
    let keys = out_dir().join("test-keys");
    let (public, secret) = (keys.join("trusted.pub"), keys.join("trusted.key"));
    if !secret.exists() {
        fs::create_dir_all(&keys)?;
        run(Command::new("minisign")
            .args(["-G", "-W", "-f", "-p"])
            .arg(&public)
            .arg("-s")
            .arg(&secret))?;
    }
    run(Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(&secret)
        .arg("-m")
        .arg(dir.join("v3.img")))?;
    fs::copy(&public, dir.join("trusted.pub"))?;

    // A directory source: the root with most kernel modules pruned.
    let v4 = dir.join("rootfs-v4");
    run(Command::new("cp").arg("-a").arg(root).arg(&v4))?;
    let kernel = fs::read_dir(v4.join("usr/lib/modules"))?
        .flatten()
        .next()
        .context("no kernel modules directory")?
        .path()
        .join("kernel");
    // Keep what a QEMU guest loads after boot (file systems, the network
    // for registry pulls, virtio); drop the other drivers.
    const KEEP_DRIVERS: &[&str] = &["net", "virtio", "block", "char", "watchdog"];
    for e in fs::read_dir(kernel.join("drivers"))?.flatten() {
        if !KEEP_DRIVERS.iter().any(|k| e.file_name() == *k) {
            fs::remove_dir_all(e.path())?;
        }
    }
    run(Command::new("depmod").arg("-b").arg(&v4).arg(
        kernel
            .parent()
            .and_then(|p| p.file_name())
            .context("kernel version")?,
    ))?;
    set_version(&v4, "4")?;

    // An OCI image: rootfs-v4 and a layer on top.
    let oci = dir.with_file_name("oci-v5");
    if oci.exists() {
        fs::remove_dir_all(&oci)?;
    }
    use immuboot_oci::{LayerEntry, LayerSource};
    let top = vec![
        LayerEntry::dir("usr", 0o755),
        LayerEntry::dir("usr/lib", 0o755),
        LayerEntry::file("usr/lib/os-release", with_version(&good, "5"), 0o644),
        LayerEntry::dir("etc", 0o755),
        LayerEntry::whiteout("etc/motd"),
    ];
    immuboot_oci::write_layout(
        &oci,
        "v5",
        &[LayerSource::Dir(v4.clone()), LayerSource::Entries(top)],
        immuboot_oci::ImageConfigInput {
            labels: [(
                "org.opencontainers.image.version".to_string(),
                "5".to_string(),
            )]
            .into(),
            created: None,
        },
    )?;
    Ok(())
}

/// os-release text with IMAGE_VERSION and PRETTY_NAME set to `version`.
fn with_version(os_release: &str, version: &str) -> String {
    os_release
        .lines()
        .map(|l| {
            if l.starts_with("IMAGE_VERSION=") {
                format!("IMAGE_VERSION={version}\n")
            } else if l.starts_with("PRETTY_NAME=") {
                format!("PRETTY_NAME=\"immuboot demo {version} (Debian GNU/Linux 12)\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Unpacks the tarball and makes it an immuboot image; returns the kernel
/// version.
fn stage(tar: &Path, root: &Path, cli: &Path) -> Result<String> {
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    fs::create_dir_all(root)?;
    run(Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--numeric-owner", "-xpf"])
        .arg(tar))?;

    let modules = root.join("usr/lib/modules");
    let kvers: Vec<String> = fs::read_dir(&modules)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let [kver] = kvers.as_slice() else {
        bail!("expected one kernel in the rootfs, found {kvers:?}")
    };
    let kver = kver.clone();
    for p in PRUNED_MODULES {
        let d = modules.join(&kver).join("kernel").join(p);
        if d.exists() {
            fs::remove_dir_all(d)?;
        }
    }
    run(Command::new("depmod").arg("-b").arg(root).arg(&kver))?;
    for d in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
    ] {
        let d = root.join(d);
        if d.exists() {
            fs::remove_dir_all(&d)?;
            fs::create_dir(&d)?;
        }
    }

    // Kernel and initramfs at fixed names, read by GRUB from the squashfs.
    let boot = root.join("boot");
    for e in fs::read_dir(&boot)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("initrd.img") || name.starts_with("System.map") {
            fs::remove_file(e.path())?;
        }
    }
    fs::rename(boot.join(format!("vmlinuz-{kver}")), boot.join("vmlinuz"))?;
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let _ = fs::remove_file(root.join(link));
    }

    // Root login on the console (demo only), hostname, masked units.
    let shadow = root.join("etc/shadow");
    let text = fs::read_to_string(&shadow)?;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("root:") {
                let rest: Vec<&str> = l.splitn(3, ':').collect();
                format!("root:{ROOT_HASH}:{}\n", rest.get(2).unwrap_or(&""))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&shadow, text)?;
    fs::write(root.join("etc/hostname"), "immuboot\n")?;
    fs::write(
        root.join("etc/fstab"),
        "# Written by the immuboot init at every boot.\n",
    )?;
    for unit in MASKED_UNITS {
        let link = root.join("etc/systemd/system").join(unit);
        let _ = fs::remove_file(&link);
        symlink("/dev/null", link)?;
    }

    // immuboot itself.
    let bin = root.join("usr/bin/immuboot");
    fs::copy(cli, &bin)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    fs::create_dir_all(root.join("etc/immuboot"))?;
    fs::copy(
        workspace_root().join("image/layout.yaml"),
        root.join("etc/immuboot/layout.yaml"),
    )?;
    for d in ["oem", "var/lib/immuboot-demo", "etc/immuboot/health.d"] {
        fs::create_dir_all(root.join(d))?;
    }
    // systemd takes over the watchdog the init armed: a hung PID 1 resets
    // the machine, and the boot counters fall back.
    let conf = root.join("etc/systemd/system.conf.d");
    fs::create_dir_all(&conf)?;
    fs::copy(
        workspace_root().join("image/systemd/immuboot-watchdog.conf"),
        conf.join("immuboot-watchdog.conf"),
    )?;
    // Boot assessment: health checks, then mark-good, after boot-complete.target.
    let unit = "immuboot-mark-good.service";
    fs::copy(
        workspace_root().join("image/systemd").join(unit),
        root.join("etc/systemd/system").join(unit),
    )?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    let _ = fs::remove_file(wants.join(unit));
    symlink(format!("../{unit}"), wants.join(unit))?;
    Ok(kver)
}

/// The GRUB EFI binary with its first config embedded.
pub fn grub_efi(out: &Path) -> Result<()> {
    let early = workspace_root().join("image/grub/early.cfg");
    let stamp = Stamp::default().file(&early)?.text("grub-v2");
    if stamp.is_current(out) {
        return Ok(());
    }
    run(Command::new("grub-mkstandalone")
        .args(["-O", "x86_64-efi", "-o"])
        .arg(out)
        .arg("--modules=part_gpt fat ext2 squash4 loopback search search_label serial terminal linux normal configfile echo test true loadenv efi_gop all_video gzio xzio sleep reboot halt hashsum gcry_sha256")
        .arg(format!("boot/grub/grub.cfg={}", early.display())))
    .context("building the GRUB EFI binary")?;
    stamp.record(out)
}
