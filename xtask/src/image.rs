//! The demo OS images: one Debian root file system, customised for a
//! read-only root, with the immuboot CLI and an initramfs, squashed three
//! times (slot a, slot b, recovery) with different versions in os-release.

use crate::config::{Config, InitramfsKind};
use crate::initramfs;
use crate::util::{out_dir, run, workspace_root, Stamp};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
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
    // gettys on tty2-tty6 (Debian starts them when there is no logind):
    // an appliance on a serial console has tty1 and ttyS0. In a boot under
    // TCG its job ran 19 s while udev loaded modules, holding getty.target
    // and with it multi-user.target and the boot assessment.
    "getty-static.service",
    // Applies fstab's options to / and /usr by remounting them. The init
    // mounted every entry of the fstab it writes with its final options;
    // there is nothing to remount, and the service sat on the way to the
    // login prompt (1.6 s under TCG, before sysusers and udev).
    "systemd-remount-fs.service",
    // Early module loads (a modprobe run each, before sysinit.target) for
    // what is either loaded already or loaded on first use: loop by the
    // init (the root file system is on a loop device), device-mapper when
    // a tool opens /dev/mapper/control (kmod-static-nodes creates it).
    // Measured on the instruction counter, one boot each: the getty
    // started 0.19 s sooner, the prompt came 0.3 s sooner. fuse and
    // configfs keep theirs: their mounts need the module loaded first.
    "modprobe@loop.service",
    "modprobe@dm_mod.service",
];

/// Generators that have nothing to do on an image-based system, each an
/// exec of a program linked to libsystemd-shared before systemd can start
/// a unit (on one vCPU under TCG that CPU time is the boot's): mounting
/// partitions by GPT type (immuboot finds its partitions by label, on its
/// own disk; gpt-auto would mount a look-alike's), resume from hibernation
/// (no swap), SysV init scripts and rc.local (none in an image), offline
/// package updates (an image is updated by writing a slot). Masked as
/// systemd.generator(7) documents: a link to /dev/null in
/// /etc/systemd/system-generators.
const MASKED_GENERATORS: &[&str] = &[
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-sysv-generator",
    "systemd-rc-local-generator",
    "systemd-system-update-generator",
];

/// Generators whose work is one table in /etc (and the kernel command-line
/// options of the same feature): encrypted volumes, dm-integrity and
/// dm-verity volumes to set up. An image carries its /etc, so the build
/// knows whether there is a table: each of these is masked when its table
/// is not in the image (an image that adds one keeps the generator). The
/// command-line forms (`luks.uuid=`, `systemd.verity_*`) then have no
/// effect; the image's own GRUB configuration writes the command line.
/// Measured on the instruction counter, two boots each: systemd's
/// generators took 0.318 s against 0.427 s, and the serial getty started
/// 9.91 s after the kernel instead of 10.00-10.04 s.
const GENERATORS_OF_TABLES: &[(&str, &str)] = &[
    ("systemd-cryptsetup-generator", "etc/crypttab"),
    ("systemd-integritysetup-generator", "etc/integritytab"),
    ("systemd-veritysetup-generator", "etc/veritytab"),
];

/// The generators of [`GENERATORS_OF_TABLES`] whose table `root` lacks.
/// Paths are resolved inside the image ([`resolve_in_root`]): a table that
/// is a link counts as there, and no link leads to the build host's /etc.
fn generators_without_tables(root: &Path) -> Result<Vec<&'static str>> {
    let mut without = Vec::new();
    for (generator, table) in GENERATORS_OF_TABLES {
        if fs::symlink_metadata(resolve_in_root(root, table)?).is_err() {
            without.push(*generator);
        }
    }
    Ok(without)
}

/// Kernel modules udev would load for the VM's hardware that an appliance
/// does not use (parallel port, PC speaker): each costs a signature check
/// and a probe on the one CPU while the boot goes on.
const BLACKLISTED_MODULES: &[&str] = &["parport_pc", "ppdev", "pcspkr"];

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
    /// `uname -r` of the images' kernel.
    pub kernel_release: String,
}

/// Squashfs compression: GRUB loads the kernel and initramfs from inside the
/// image and GRUB 2.06 reads gzip, xz and lzo squashfs but not zstd. lzo is
/// the default: the root is read (and decompressed) while systemd starts,
/// and lzo decompresses fastest of the three (measured: README, "What boots").
/// `IMMUBOOT_SQUASHFS_COMP=gzip|xz` overrides it.
fn compression() -> String {
    std::env::var("IMMUBOOT_SQUASHFS_COMP").unwrap_or_else(|_| "lzo".into())
}

/// The immuboot dracut module and its configuration, installed into the
/// root of the dracut configurations.
const DRACUT_MODULE: &str = "dracut-module/90immuboot";
const DRACUT_CONF: &str = "dracut-module/dracut.conf.d/90-immuboot.conf";

/// The image's systemd generator of unattended upgrades, a binary of the
/// CLI's package.
const UPGRADE_GENERATOR: &str = "immuboot-upgrade-generator";

/// The generator's binary: cargo builds it beside the CLI.
fn upgrade_generator(cli: &Path) -> PathBuf {
    cli.with_file_name(UPGRADE_GENERATOR)
}

fn image_inputs(cfg: Config, tar: &Path, init: &Path, cli: &Path) -> Result<Stamp> {
    let root = workspace_root();
    let stamp = Stamp::default()
        .text(&cfg.name())
        .text(&tar.display().to_string())
        .text(&compression())
        .file(init)?
        .file(cli)?
        .file(&upgrade_generator(cli))?
        .file(&root.join("image/layout.yaml"))?
        .file(&root.join("image/initramfs-modules"))?
        .file(&root.join("image/systemd/immuboot-mark-good.service"))?
        .file(&root.join("image/systemd/immuboot-watchdog.conf"))?
        .file(&root.join("image/systemd/udevd-after-login.conf"))?
        .file(&root.join("image/systemd/immuboot-verify.service"))?
        .file(&root.join("image/systemd/immuboot-verify.timer"))?
        .file(&root.join("image/systemd/immuboot-upgrade.service"))?
        .file(&root.join("image/systemd/immuboot-upgrade.timer"))?
        .file(&root.join("xtask/src/image.rs"))?
        .file(&root.join("xtask/src/initramfs.rs"))?;
    match cfg.initramfs {
        InitramfsKind::Standalone => Ok(stamp),
        InitramfsKind::Dracut => stamp.tree(&root.join("dracut-module")),
    }
}

/// Builds the configuration's images into `<out>/images`: slot a (version
/// 2), slot b (version 1) and recovery, with their digest lists, and the
/// test images of the scenarios in `images/test` (the payload disk).
///
/// The default configuration squashes the recovery image on its own and
/// makes every test image (see [`test_variants`]). The other configurations
/// build only what their scenarios use: recovery.img is a hard link to
/// b.img's bytes (so its os-release says version 1, slot-b), with its own
/// digest lists, and the only test image is `broken-systemd.img`.
pub fn build(cfg: Config, tar: &Path, init: &Path, cli: &Path) -> Result<Images> {
    let out = cfg.out_dir();
    let dir = out.join("images");
    let stamp = image_inputs(cfg, tar, init, cli)?;
    let marker = dir.join("a.img");
    let release_file = dir.join("kernel-release");
    if stamp.is_current(&marker) {
        if let Ok(kernel_release) = fs::read_to_string(&release_file) {
            eprintln!("    images up to date");
            let initramfs_bytes = fs::metadata(out.join("initrd.img"))?.len();
            return Ok(Images {
                dir,
                initramfs_bytes,
                kernel_release: kernel_release.trim().to_string(),
            });
        }
    }
    fs::create_dir_all(&dir)?;
    let root = out.join("rootfs");
    let kver = stage(tar, &root, cli)?;
    let initrd = out.join("initrd.img");
    match cfg.initramfs {
        InitramfsKind::Standalone => {
            initramfs::build(
                init,
                &root,
                &kver,
                &workspace_root().join("image/initramfs-modules"),
                &initrd,
            )?;
            fs::copy(&initrd, root.join("boot/initrd.img"))?;
        }
        InitramfsKind::Dracut => {
            dracut_initramfs(&root, &kver, init, &out.join("dracut-plain.img"))?;
            fs::copy(root.join("boot/initrd.img"), &initrd)?;
        }
    }
    let initramfs_bytes = fs::metadata(&initrd)?.len();
    let os_release = resolve_in_root(&root, "usr/lib/os-release")?;
    let base = fs::read_to_string(&os_release)?;
    let distro = distro_name(&base);
    for v in VARIANTS {
        let out = dir.join(v.file);
        if v.variant == "recovery" && !cfg.is_default() {
            // The bytes of b.img, which was squashed last, under the
            // recovery name; the digest lists name the recovery file.
            let _ = fs::remove_file(&out);
            fs::hard_link(dir.join("b.img"), &out)?;
            write_digests(&root, &out)?;
            continue;
        }
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
                "{text}PRETTY_NAME=\"{}\"\nIMAGE_ID=immuboot-demo\nIMAGE_VERSION={}\nVARIANT_ID={}\n",
                pretty_name(v.version, &distro),
                v.version,
                v.variant
            ),
        )?;
        squash(&root, &out, &[])?;
        write_digests(&root, &out)?;
    }
    if cfg.is_default() {
        test_variants(&root, &dir.join("test"))?;
    } else {
        let test = dir.join("test");
        if test.exists() {
            fs::remove_dir_all(&test)?;
        }
        fs::create_dir_all(&test)?;
        broken_systemd(&root, &test.join("broken-systemd.img"))?;
    }
    fs::write(&release_file, format!("{kver}\n"))?;
    stamp.record(&marker)?;
    Ok(Images {
        dir,
        initramfs_bytes,
        kernel_release: kver,
    })
}

/// "Debian GNU/Linux 12" from os-release (NAME and VERSION_ID; PRETTY_NAME
/// when there is no version, as in sid).
pub fn distro_name(os_release: &str) -> String {
    let field = |k| crate::rootfs::os_release_field(os_release, k);
    match (field("NAME"), field("VERSION_ID")) {
        (Some(name), Some(version)) => format!("{name} {version}"),
        _ => field("PRETTY_NAME")
            .or_else(|| field("NAME"))
            .unwrap_or_else(|| "Linux".into()),
    }
}

fn pretty_name(version: &str, distro: &str) -> String {
    format!("immuboot demo {version} ({distro})")
}

/// The path of `rel` inside `root` with the symlinks of its directories
/// followed inside `root` (an absolute link target means root-relative, as
/// in a chroot), the last component not followed. Merged /usr makes
/// `sbin/init` live in `usr/sbin`, through `sbin -> usr/sbin` or
/// `/sbin -> /usr/sbin`.
pub fn resolve_in_root(root: &Path, rel: &str) -> Result<PathBuf> {
    use std::path::Component;
    let mut pending: Vec<String> = rel
        .split('/')
        .filter(|p| !p.is_empty())
        .map(String::from)
        .rev()
        .collect();
    let mut cur: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let path = cur
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&part);
        let is_last = pending.is_empty();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() && !is_last => {
                links += 1;
                if links > 40 {
                    bail!(
                        "too many symbolic links resolving {rel} in {}",
                        root.display()
                    );
                }
                let target = fs::read_link(&path)?;
                if target.is_absolute() {
                    cur.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_string_lossy().into_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => cur.push(part),
        }
    }
    Ok(cur.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// Makes `/boot/initrd.img` with the distribution's dracut in the staged
/// root, and, for measurements, `plain` (the same dracut without the
/// immuboot module; not in the image). The plain one is made first, before
/// the module and its configuration are installed: without host-only mode
/// dracut takes every module that says it can be included.
fn dracut_initramfs(root: &Path, kver: &str, init: &Path, plain: &Path) -> Result<()> {
    let ws = workspace_root();
    let tmp = "var/tmp/dracut-plain.img";
    let plain_in_root = format!("/{tmp}");
    timed_dracut(
        root,
        &["--kver", kver, &plain_in_root],
        "without the module",
        &plain.with_extension("log"),
    )?;
    let _ = fs::remove_file(plain);
    fs::rename(root.join(tmp), plain)?;

    let module = ws.join(DRACUT_MODULE);
    if !module.join("module-setup.sh").exists() {
        bail!("{} is missing", module.join("module-setup.sh").display());
    }
    let bin = root.join("usr/lib/immuboot/immuboot-init");
    fs::create_dir_all(bin.parent().context("parent")?)?;
    fs::copy(init, &bin)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    let dest = root.join("usr/lib/dracut/modules.d/90immuboot");
    if dest.exists() {
        fs::remove_dir_all(&dest)?;
    }
    run(Command::new("cp").arg("-a").arg(&module).arg(&dest))?;
    fs::set_permissions(
        dest.join("module-setup.sh"),
        fs::Permissions::from_mode(0o755),
    )?;
    let conf = root.join("etc/dracut.conf.d");
    fs::create_dir_all(&conf)?;
    fs::copy(ws.join(DRACUT_CONF), conf.join("90-immuboot.conf"))?;
    timed_dracut(
        root,
        &["--add", "immuboot", "--kver", kver, "/boot/initrd.img"],
        "with the immuboot module",
        &plain.with_file_name("dracut.log"),
    )
}

/// `dracut --quiet --no-hostonly --force ARGS` in the root (the last
/// argument is the output file there), its output in `log`; says how long
/// it took and the size.
fn timed_dracut(root: &Path, args: &[&str], what: &str, log: &Path) -> Result<()> {
    let start = std::time::Instant::now();
    let mut all = vec!["dracut", "--quiet", "--no-hostonly", "--force"];
    all.extend(args);
    chroot_run(root, &all, log).with_context(|| format!("dracut {what}"))?;
    let out = args
        .last()
        .context("dracut output")?
        .trim_start_matches('/');
    eprintln!(
        "    dracut {what}: {:.1} s, {} bytes",
        start.elapsed().as_secs_f64(),
        fs::metadata(root.join(out))?.len()
    );
    Ok(())
}

/// Runs a command chrooted into `root`, with /proc, /sys and /dev mounted
/// there in a private mount namespace: the mounts are never seen by the
/// host and vanish with the namespace when the command ends, failed or not.
/// Its output goes to `log`; on failure the error shows the end of it.
fn chroot_run(root: &Path, args: &[&str], log: &Path) -> Result<()> {
    const SCRIPT: &str = r#"set -eu
root=$1
shift
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TMPDIR=/var/tmp LANG=C.UTF-8 "$@"
"#;
    let out = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", SCRIPT, "sh"])
        .arg(root)
        .args(args)
        .stdout(out.try_clone()?)
        .stderr(out);
    let line = crate::util::describe(&cmd);
    let status = cmd.status().with_context(|| format!("cannot run {line}"))?;
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        bail!(
            "`{line}` failed ({status}); the end of {}:\n{tail}",
            log.display()
        );
    }
    Ok(())
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
/// - `broken-systemd.img` (see [`broken_systemd`]);
/// - `v3.img`, a good newer image, signed with the test key (`v3.img.minisig`,
///   `trusted.pub`);
/// - `rootfs-v4/`, a root file system directory (kernel modules pruned to
///   what a QEMU guest uses, so squashing it in the guest is quick);
/// - `oci-v5/` (beside `dir`, not on the payload disk: the scenarios push it
///   to a registry): rootfs-v4 plus a layer that changes os-release and
///   deletes /etc/motd (a whiteout); its tag `v6-broken` is rootfs-v4 plus a
///   layer whose systemd fails to start.
///
/// Squashed fast (level 1): they only have to boot in tests.
fn test_variants(root: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    let os_release = resolve_in_root(root, "usr/lib/os-release")?;
    let good = fs::read_to_string(&os_release)?;
    let init = resolve_in_root(root, "sbin/init")?;
    let systemd_link = fs::read_link(&init).ok();
    let fast_opts = fast_squash();
    let fast = &fast_opts[..];
    let set_version = |root: &Path, v: &str| -> Result<()> {
        fs::write(
            resolve_in_root(root, "usr/lib/os-release")?,
            with_version(&good, v),
        )?;
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
    set_version(root, "3-broken-systemd")?;
    broken_systemd(root, &dir.join("broken-systemd.img"))?;
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
    // A broken release for the unattended-upgrade scenario, tag
    // `v6-broken` of the same layout (the lower layer is shared): version
    // 6, whose systemd fails to start, as broken-systemd.img.
    let broken = vec![
        LayerEntry::dir("usr", 0o755),
        LayerEntry::dir("usr/lib", 0o755),
        LayerEntry::file("usr/lib/os-release", with_version(&good, "6"), 0o644),
        LayerEntry::dir("usr/lib/systemd", 0o755),
        LayerEntry::file("usr/lib/systemd/systemd", BROKEN_SYSTEMD, 0o755),
    ];
    immuboot_oci::write_layout(
        &oci,
        "v6-broken",
        &[LayerSource::Dir(v4.clone()), LayerSource::Entries(broken)],
        immuboot_oci::ImageConfigInput {
            labels: [(
                "org.opencontainers.image.version".to_string(),
                "6".to_string(),
            )]
            .into(),
            created: None,
        },
    )?;
    Ok(())
}

/// What the broken test images have in place of systemd. After systemd's
/// switch-root (dracut) standard output is not the console, so the line
/// goes there directly.
const BROKEN_SYSTEMD: &str =
    "#!/bin/sh\necho 'test image: systemd fails to start' > /dev/console\nexit 1\n";

/// The root with `/usr/lib/systemd/systemd` replaced by a script that
/// says so and exits 1, squashed fast into `out`: both kinds of initramfs
/// fail at the same point with it (the standalone init execs /sbin/init,
/// a link to that binary; dracut's switch-root execs that binary). The
/// root is as before afterwards.
fn broken_systemd(root: &Path, out: &Path) -> Result<()> {
    let bin = resolve_in_root(root, "usr/lib/systemd/systemd")?;
    let saved = root.with_file_name("systemd.saved");
    let _ = fs::remove_file(&saved);
    fs::rename(&bin, &saved)?;
    let result = (|| {
        fs::write(&bin, BROKEN_SYSTEMD)?;
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
        squash(root, out, &fast_squash())
    })();
    fs::remove_file(&bin)?;
    fs::rename(&saved, &bin)?;
    result
}

/// mksquashfs options of the test images: the fastest level of gzip or
/// lzo (they only have to boot in tests).
fn fast_squash() -> Vec<&'static str> {
    match compression().as_str() {
        "gzip" | "lzo" => vec!["-Xcompression-level", "1"],
        _ => Vec::new(),
    }
}

/// os-release text with IMAGE_VERSION and PRETTY_NAME set to `version`.
fn with_version(os_release: &str, version: &str) -> String {
    let distro = distro_name(os_release);
    os_release
        .lines()
        .map(|l| {
            if l.starts_with("IMAGE_VERSION=") {
                format!("IMAGE_VERSION={version}\n")
            } else if l.starts_with("PRETTY_NAME=") {
                format!("PRETTY_NAME=\"{}\"\n", pretty_name(version, &distro))
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
    mask(&root.join("etc/systemd/system"), MASKED_UNITS)?;
    mask(
        &root.join("etc/systemd/system-generators"),
        MASKED_GENERATORS,
    )?;
    mask(
        &root.join("etc/systemd/system-generators"),
        &generators_without_tables(root)?,
    )?;
    let modprobe = root.join("etc/modprobe.d");
    fs::create_dir_all(&modprobe)?;
    let blacklist: String = BLACKLISTED_MODULES
        .iter()
        .map(|m| format!("blacklist {m}\n"))
        .collect();
    fs::write(
        modprobe.join("immuboot-demo.conf"),
        format!("# Hardware of the VM the demo image does not use.\n{blacklist}"),
    )?;

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
    install_conf(
        root,
        "immuboot-watchdog.conf",
        "etc/systemd/system.conf.d/immuboot-watchdog.conf",
    )?;
    // udev's coldplug yields the CPU to the boot until it has finished.
    install_conf(
        root,
        "udevd-after-login.conf",
        "etc/systemd/system/systemd-udevd.service.d/immuboot-after-login.conf",
    )?;
    serial_console_getty(root)?;
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
    // The weekly check of every image against its digest.
    for unit in ["immuboot-verify.service", "immuboot-verify.timer"] {
        fs::copy(
            workspace_root().join("image/systemd").join(unit),
            root.join("etc/systemd/system").join(unit),
        )?;
    }
    let unit = "immuboot-verify.timer";
    let wants = root.join("etc/systemd/system/timers.target.wants");
    fs::create_dir_all(&wants)?;
    let _ = fs::remove_file(wants.join(unit));
    symlink(format!("../{unit}"), wants.join(unit))?;
    // Unattended upgrades: installed, off until /oem/immuboot/upgrade.yaml
    // exists (the generator enables the timer then).
    for unit in ["immuboot-upgrade.service", "immuboot-upgrade.timer"] {
        fs::copy(
            workspace_root().join("image/systemd").join(unit),
            root.join("etc/systemd/system").join(unit),
        )?;
    }
    let generators = root.join("usr/lib/systemd/system-generators");
    fs::create_dir_all(&generators)?;
    // A small program of its own, built beside the CLI: systemd waits for
    // its generators before it starts a unit, and the CLI took 0.18 s of
    // CPU there, mostly reading and starting its 6.9 MB. COS_OEM, where
    // the configuration lives, is mounted before systemd starts.
    let generator = generators.join(UPGRADE_GENERATOR);
    let _ = fs::remove_file(&generator);
    fs::copy(upgrade_generator(cli), &generator)?;
    fs::set_permissions(&generator, fs::Permissions::from_mode(0o755))?;
    mark_updated(root)?;
    Ok(kver)
}

/// The kernel's serial console in the demo image (GRUB's `console=`).
const SERIAL_CONSOLE: &str = "ttyS0";

/// Writes the getty of the serial console as a unit of its own: the
/// distribution's `serial-getty@.service` without its binding to the tty's
/// device unit. That unit appears only when udev has handled the tty in its
/// coldplug, which yields the CPU during the boot (udevd-after-login.conf),
/// so the login prompt waited for udev's share of the CPU. A tty the kernel
/// writes its console to exists before userspace starts; the binding is for
/// ttys that come and go (USB adapters), which keep the template.
/// Measured on the instruction counter, one boot each: the getty started
/// 0.21 s sooner (11.79 against 12.00 s after the kernel started).
fn serial_console_getty(root: &Path) -> Result<()> {
    let template = root.join("usr/lib/systemd/system/serial-getty@.service");
    let text =
        fs::read_to_string(&template).with_context(|| format!("reading {}", template.display()))?;
    let unit =
        without_device_binding(&text).with_context(|| format!("in {}", template.display()))?;
    fs::write(
        root.join(format!(
            "etc/systemd/system/serial-getty@{SERIAL_CONSOLE}.service"
        )),
        format!(
            "# The distribution's serial-getty@.service for the kernel's console, without\n\
             # the wait for its device unit (written by the immuboot demo image build).\n{unit}"
        ),
    )?;
    Ok(())
}

/// `serial-getty@.service` without `BindsTo=dev-%i.device` and without
/// `dev-%i.device` in its `After=` lines. Errors if there is no such
/// binding: the distribution's unit changed and needs a new look.
fn without_device_binding(unit: &str) -> Result<String> {
    const DEVICE: &str = "dev-%i.device";
    let binding = format!("BindsTo={DEVICE}");
    let mut bound = false;
    let mut out = String::new();
    for line in unit.lines() {
        let trimmed = line.trim();
        if trimmed == binding {
            bound = true;
        } else if let Some(units) = trimmed.strip_prefix("After=") {
            let rest: Vec<&str> = units.split_whitespace().filter(|u| *u != DEVICE).collect();
            if !rest.is_empty() {
                out.push_str(&format!("After={}\n", rest.join(" ")));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !bound {
        bail!("no {binding} line: the unit is not the one this build knows");
    }
    Ok(out)
}

/// Copies `image/systemd/NAME` to `dest` in the root (a configuration
/// directory or a unit's drop-in directory, created if missing).
fn install_conf(root: &Path, name: &str, dest: &str) -> Result<()> {
    let dest = root.join(dest);
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(workspace_root().join("image/systemd").join(name), &dest)?;
    Ok(())
}

/// Records in `/etc/.updated` and `/var/.updated` that the image's /etc and
/// /var are up to date with its /usr, as systemd-update-done.service does
/// after an update (a `TIMESTAMP_NSEC=` line and the mtime of /usr).
/// Without them every boot counts as the first after an update of /usr
/// (ConditionNeedsUpdate=, systemd.unit(5)): /etc and /var are ephemeral
/// overlays on the image, so what the boot writes is gone at the next one,
/// and systemd-sysusers, the hwdb and journal catalog rebuilds and
/// ldconfig ran at every boot for work the package installs of the image
/// build already did. An image whose /usr changes is a new image, built
/// with new files.
fn mark_updated(root: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let usr = fs::metadata(root.join("usr"))?;
    let nsec = u64::try_from(usr.mtime())? * 1_000_000_000 + u64::try_from(usr.mtime_nsec())?;
    let mtime = usr.modified()?;
    for dir in ["etc", "var"] {
        let path = root.join(dir).join(".updated");
        let mut file =
            fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(
            format!("# Written by the immuboot image build (as systemd-update-done).\nTIMESTAMP_NSEC={nsec}\n")
                .as_bytes(),
        )
        .and_then(|()| file.set_modified(mtime))
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Masks systemd units or generators: a link to /dev/null for each of
/// `names` in `dir` (created if missing), as systemctl mask does.
fn mask(dir: &Path, names: &[&str]) -> Result<()> {
    fs::create_dir_all(dir)?;
    for name in names {
        let link = dir.join(name);
        let _ = fs::remove_file(&link);
        symlink("/dev/null", link)?;
    }
    Ok(())
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
        .arg("--modules=part_gpt fat ext2 squash4 loopback search search_label serial terminal linux normal configfile echo test true loadenv efi_gop all_video gzio xzio sleep reboot halt hashsum gcry_sha256 regexp probe")
        .arg(format!("boot/grub/grub.cfg={}", early.display())))
    .context("building the GRUB EFI binary")?;
    stamp.record(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_getty_loses_only_its_device_binding() {
        let unit = "[Unit]\nDescription=Serial Getty on %I\nBindsTo=dev-%i.device\n\
                    After=dev-%i.device systemd-user-sessions.service getty-pre.target\n\
                    After=rc-local.service\n\n[Service]\nExecStart=-/sbin/agetty - $TERM\n";
        assert_eq!(
            without_device_binding(unit).unwrap(),
            "[Unit]\nDescription=Serial Getty on %I\n\
             After=systemd-user-sessions.service getty-pre.target\n\
             After=rc-local.service\n\n[Service]\nExecStart=-/sbin/agetty - $TERM\n"
        );
        let only_device = "[Unit]\nBindsTo=dev-%i.device\nAfter=dev-%i.device\n";
        assert_eq!(without_device_binding(only_device).unwrap(), "[Unit]\n");
        assert!(without_device_binding("[Unit]\nAfter=dev-%i.device\n").is_err());
    }

    #[test]
    fn table_generators_are_masked_only_without_their_table() {
        let root = std::env::temp_dir().join(format!("xtask-tables-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("etc")).unwrap();
        assert_eq!(
            generators_without_tables(&root).unwrap(),
            [
                "systemd-cryptsetup-generator",
                "systemd-integritysetup-generator",
                "systemd-veritysetup-generator"
            ]
        );
        fs::write(root.join("etc/crypttab"), "data UUID=1234 none luks\n").unwrap();
        // A link to a table elsewhere in the image counts; its target is
        // not looked for on the build host.
        symlink("/etc/veritytab.d/root", root.join("etc/veritytab")).unwrap();
        assert_eq!(
            generators_without_tables(&root).unwrap(),
            ["systemd-integritysetup-generator"]
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn distro_from_os_release() {
        let bookworm = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n";
        assert_eq!(distro_name(bookworm), "Debian GNU/Linux 12");
        let trixie = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\n";
        assert_eq!(distro_name(trixie), "Debian GNU/Linux 13");
        let sid = "PRETTY_NAME=\"Debian GNU/Linux forky/sid\"\nNAME=\"Debian GNU/Linux\"\n";
        assert_eq!(distro_name(sid), "Debian GNU/Linux forky/sid");
        // The image's own PRETTY_NAME is replaced, the distribution kept.
        let ours = format!("{trixie}IMAGE_VERSION=2\n");
        assert_eq!(
            with_version(&ours, "3"),
            "PRETTY_NAME=\"immuboot demo 3 (Debian GNU/Linux 13)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nIMAGE_VERSION=3\n"
        );
    }

    #[test]
    fn paths_through_merged_usr_links() {
        let root = std::env::temp_dir().join(format!("xtask-resolve-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
        // trixie: relative links; bookworm's init link is absolute.
        symlink("usr/sbin", root.join("sbin")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("../lib/systemd/systemd", root.join("usr/sbin/init")).unwrap();
        assert_eq!(
            resolve_in_root(&root, "sbin/init").unwrap(),
            root.join("usr/sbin/init")
        );
        assert_eq!(
            resolve_in_root(&root, "lib/systemd/systemd").unwrap(),
            root.join("usr/lib/systemd/systemd")
        );
        // An absolute directory link stays inside the root.
        fs::remove_file(root.join("sbin")).unwrap();
        symlink("/usr/sbin", root.join("sbin")).unwrap();
        assert_eq!(
            resolve_in_root(&root, "sbin/init").unwrap(),
            root.join("usr/sbin/init")
        );
        symlink("/../../..", root.join("up")).unwrap();
        assert_eq!(resolve_in_root(&root, "up/etc").unwrap(), root.join("etc"));
        // A plain path is itself.
        assert_eq!(
            resolve_in_root(&root, "usr/lib/os-release").unwrap(),
            root.join("usr/lib/os-release")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(&root, "loop/x").is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
