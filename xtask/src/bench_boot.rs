//! `cargo xtask bench boot`: real boots of one suite's demo OS under the
//! scenarios' VM (q35, OVMF, TCG, one vCPU), one VM at a time, the variants
//! alternating, median of `--boots` boots each. Prints a table and writes
//! `target/immuboot/results/bench-boot.{json,md}`; asserts nothing.
//!
//! The variants:
//! - `immuboot`: the demo disk as it ships, firmware → GRUB → immuboot's
//!   standalone initramfs → systemd → login prompt;
//! - `immuboot dracut`: the same with the dracut initramfs and the immuboot
//!   module (the `SUITE-dracut` configuration);
//! - `immuboot direct`: the standalone initramfs started by QEMU (`-kernel`)
//!   on the demo disk, no GRUB: its initramfs phase compares with the
//!   direct boots below;
//! - `immuboot direct (floor's work)`: the same, doing the busybox floor's
//!   work: a layout on COS_OEM without ephemeral or persistent paths (only
//!   `/etc` and `/usr/local`, as the floor mounts), no watchdog. Against
//!   the floor it compares the same work; what immuboot still does beyond
//!   it is the boot state, the boot facts and probing every partition;
//! - `immuboot dracut direct`: the same for the dracut initramfs with the
//!   module. It has the Debian variants' command line (serial console
//!   only), so against `Debian dracut (squashfs root)` it shows what the
//!   module adds; GRUB's command line also prints the kernel's log on the
//!   screen (`console=tty0`), which costs every line a redraw of the EFI
//!   frame buffer under TCG;
//! - `busybox script`: the floor, a sequential busybox `/init` doing the
//!   init's essential work (image/bench/busybox-init.sh) on the demo disk;
//! - `Debian dracut` and `Debian initramfs-tools`: the distribution's own
//!   initramfs, without immuboot, booting a plain ext4 copy of the same
//!   root file system read-write, as users run Debian today;
//! - `Debian dracut (squashfs root)`: that dracut initramfs booting the slot
//!   image itself as a read-only block device (as scenario 24): the same
//!   root, so its initramfs phase against `immuboot dracut` is what the
//!   module adds. It is timed until the root's systemd starts, not to a
//!   login prompt (a bare read-only root is no system to log in to).
//! - `Debian dracut (squashfs partition)`: the same, the slot image
//!   written into the demo disk's COS_STATE partition in place of its file
//!   system and found by that partition's name (`root=PARTLABEL=COS_STATE`;
//!   a squashfs has no label). udev then probes the same partitions as in
//!   the module's boots before the root's link appears, which on the bare
//!   image above it does not: against this one, `immuboot dracut` differs
//!   only by what the module does.
//! - `Debian dracut (squashfs partition, the module's kernel modules)`: the
//!   same, told to load the kernel modules the immuboot module loads at
//!   every boot (its list's `[always]` section: the partitions' ext4, loop,
//!   squashfs, overlay) with `rd.modules_load=`. A plain squashfs root needs
//!   none of them but squashfs; immuboot's layout needs them all, and
//!   loading them is the kernel's work (signature checks, decompression of
//!   `.ko.xz`, relocations), the same for any initramfs that mounts those
//!   file systems. Against this one, `immuboot dracut` differs by the
//!   module's own work.
//!
//! Every timed boot starts from a disk that has booted once: a first boot,
//! through GRUB to the login prompt and shut down cleanly, prepares one
//! disk per configuration (and one plain root) before the rounds, and each
//! timed boot runs on an overlay of it. A disk's first boot does work that
//! no later boot repeats (the layout's persistent paths seeded from the
//! image onto COS_PERSISTENT, a root's first-boot units), so timing only
//! first boots would charge it to every boot. The first boots' own figures
//! are reported beside the table.

use crate::config::{Config, InitramfsKind, Suite};
use crate::initramfs;
use crate::rootfs;
use crate::util::{out_dir, run, workspace_root, Stamp};
use anyhow::{bail, Context, Result};
use immuboot_qemu_tests::timing::{
    boot_phases, getty_guest_phases, median, BootPhases, Handover, DRACUT_HANDOVER,
    STANDALONE_HANDOVER,
};
use immuboot_qemu_tests::{
    attach_read_only, qcow2_overlay, qemu_args, started_firmware_vars, DiskManifest, Machine, Vm,
    DEFAULT_CONFIG, ICOUNT_ENV,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The kernel command line of the serial console the scenarios use.
const CONSOLE: &str = "console=ttyS0,115200 printk.devkmsg=on panic=10";

/// What a variant boots.
enum Boot {
    /// The configuration's disk through the firmware and GRUB.
    Disk { config: String },
    /// `kernel` + `initrd` started by QEMU on the configuration's disk.
    DirectOnDisk {
        config: String,
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
        /// Stands for a boot through GRUB's entry: `append` gets what
        /// GRUB adds at boot time ([`grub_entry_params`]).
        as_grub_entry: bool,
    },
    /// `kernel` + `initrd` started by QEMU on the plain ext4 root.
    DirectOnPlainRoot {
        root: PathBuf,
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
    /// `kernel` + `initrd` started by QEMU on a squashfs image as a
    /// read-only disk; the boot is timed until the root's systemd starts.
    DirectOnImage {
        image: PathBuf,
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
}

struct Variant {
    name: &'static str,
    boot: Boot,
    initramfs: PathBuf,
    /// How the init hands over to systemd, if it says so.
    handover: Option<Handover<'static>>,
    /// Booted by immuboot: the boot facts hold the init's steps and memory.
    immuboot: bool,
    /// Commands run as root at the end of the disk's first boot, for a
    /// variant that boots the disk set up differently (its own first boot).
    disk_setup: Option<&'static str>,
}

/// The disk set up so that immuboot does the busybox floor's work: a
/// layout on COS_OEM with no ephemeral and no persistent paths beyond the
/// built-in ones (`/etc` ephemeral, COS_PERSISTENT on `/usr/local`), as
/// the floor's script mounts them. With `FLOOR_WORK_CMDLINE` (no watchdog)
/// what is left beyond the floor's work is the boot state, the boot facts
/// and the probing of every partition.
const FLOOR_WORK_LAYOUT: &str = "mkdir -p /oem/immuboot && \
     printf 'ephemeral: []\\npersistent: []\\n' >/oem/immuboot/layout.yaml";
const FLOOR_WORK_CMDLINE: &str = "immuboot.watchdog=0 modprobe.blacklist=i6300esb";

/// The init's steps: name and milliseconds.
type Steps = Vec<(String, f64)>;

/// One boot's figures.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    phases: BootPhases,
    /// From the boot facts.
    steps: Steps,
    peak_rss_kib: Option<u64>,
    log: PathBuf,
}

/// The medians of one variant.
#[derive(Debug, Clone, Serialize)]
struct Summary {
    variant: String,
    boots: usize,
    initramfs_bytes: u64,
    phases: BTreeMap<&'static str, Option<f64>>,
    steps_ms: Steps,
    peak_rss_kib: Option<f64>,
    samples: Vec<Sample>,
}

/// The rows of the phase table: a field of [`BootPhases`] and its label.
const PHASES: &[(&str, &str)] = &[
    (
        "firmware_s",
        "firmware (to GRUB, or to the kernel when direct)",
    ),
    ("grub_check_s", "GRUB: checking kernel + initramfs digests"),
    (
        "grub_other_s",
        "GRUB: Esc wait, boot state, loading kernel + initramfs, kernel unpacking itself",
    ),
    ("kernel_s", "kernel until \"Run /init\" (kernel clock)"),
    (
        "initramfs_s",
        "initramfs phase (\"Run /init\" → systemd in the root)",
    ),
    (
        "init_own_s",
        "  of which the init's own part (→ exec of systemd; dracut: → /sysroot ready)",
    ),
    ("systemd_to_login_s", "systemd until the login prompt"),
    ("power_on_to_login_s", "power-on → login prompt"),
    (
        "systemd_to_getty_guest_s",
        "systemd → serial getty started (guest clock)",
    ),
    (
        "kernel_to_getty_guest_s",
        "kernel start → serial getty started (guest clock)",
    ),
];

fn phase(p: &BootPhases, key: &str) -> Option<f64> {
    match key {
        "firmware_s" => p.firmware_s,
        "grub_check_s" => p.grub_check_s,
        "grub_other_s" => p.grub_other_s,
        "kernel_s" => p.kernel_s,
        "initramfs_s" => p.initramfs_s,
        "init_own_s" => p.init_own_s,
        "systemd_to_login_s" => p.systemd_to_login_s,
        "power_on_to_login_s" => p.power_on_to_login_s,
        "systemd_to_getty_guest_s" => p.systemd_to_getty_guest_s,
        "kernel_to_getty_guest_s" => p.kernel_to_getty_guest_s,
        _ => None,
    }
}

pub fn bench_boot(
    suite: Suite,
    boots: usize,
    only: Option<String>,
    standalone: &Config,
    dracut: &Config,
) -> Result<()> {
    let inputs = prepare(suite, standalone, dracut)?;
    let mut variants = variants(standalone, dracut, &inputs);
    if let Some(only) = &only {
        // Comma-separated; each is a variant's whole name (that variant) or
        // a part of names (every variant whose name contains it).
        let names: Vec<&str> = variants.iter().map(|v| v.name).collect();
        variants.retain(|v| {
            only.split(',').map(str::trim).any(|o| {
                if names.contains(&o) {
                    v.name == o
                } else {
                    v.name.contains(o)
                }
            })
        });
        if variants.is_empty() {
            bail!("no variant matches {only:?}");
        }
    }
    let first = first_boots(&variants)?;
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    // Alternating, so a slow stretch of the host spreads over all variants.
    // A boot that fails is reported and leaves its variant a sample short;
    // the others go on (a run takes half an hour).
    let mut failures = Vec::new();
    for round in 1..=boots {
        for (v, out) in variants.iter().zip(samples.iter_mut()) {
            eprintln!("    boot {round}/{boots}: {}", v.name);
            let s = match boot_once(v, round, &first) {
                Ok(s) => s,
                Err(e) => {
                    let failure = format!("boot {round} of {}: {e:#}", v.name);
                    eprintln!("      failed: {failure}");
                    failures.push(failure);
                    continue;
                }
            };
            eprintln!(
                "      initramfs {}, power-on → login {}",
                secs(s.phases.initramfs_s),
                secs(s.phases.power_on_to_login_s)
            );
            out.push(s);
        }
    }
    let summaries: Vec<Summary> = variants
        .iter()
        .zip(samples)
        .map(|(v, s)| summarize(v, s))
        .collect::<Result<_>>()?;
    let md = markdown(suite, &summaries, &first);
    eprintln!("{md}");
    let dir = out_dir().join("results");
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("bench-boot.md"), &md)?;
    fs::write(
        dir.join("bench-boot.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "suite": suite.name(),
            "vm": "q35, OVMF, TCG, 1 vCPU, 1 GiB, one VM at a time",
            "variants": summaries,
            "first_boots": first.reports,
        }))?,
    )?;
    eprintln!(
        "    written: {} and bench-boot.json",
        dir.join("bench-boot.md").display()
    );
    if !failures.is_empty() {
        bail!("{} boots failed:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

/// What the variants beyond the built configurations need.
struct Inputs {
    kernel: PathBuf,
    plain_root: PathBuf,
    image_in_state_partition: PathBuf,
    busybox_initrd: PathBuf,
    itools_kernel: PathBuf,
    itools_initrd: PathBuf,
    /// The `[always]` section of the dracut module's list.
    module_always_loads: Vec<String>,
}

/// The variant of the distribution's dracut told to load the kernel
/// modules the immuboot module loads at every boot.
const PARTITION_WITH_MODULES: &str =
    "Debian dracut (squashfs partition, the module's kernel modules)";

/// The kernel modules the dracut module's init loads at every boot.
fn module_always_loads() -> Result<Vec<String>> {
    let path = workspace_root().join("dracut-module/90immuboot/immuboot-modules");
    let list = initramfs::module_list(&path)?;
    if list.always.is_empty() {
        bail!("{} has no [always] modules", path.display());
    }
    Ok(list.always)
}

fn bench_dir(suite: Suite) -> PathBuf {
    out_dir().join("bench-boot").join(suite.name())
}

fn prepare(suite: Suite, standalone: &Config, dracut: &Config) -> Result<Inputs> {
    let dir = bench_dir(suite);
    fs::create_dir_all(&dir)?;
    let images = standalone.out_dir().join("images");
    let kernel = dir.join("vmlinuz");
    extract(&images.join("a.img"), "boot/vmlinuz", &kernel)?;
    let plain_root = dir.join("plain-root.ext4");
    plain_ext4_root(&dracut.out_dir().join("images/a.img"), &plain_root)?;
    let image_in_state = dir.join("image-in-state-partition.img");
    image_in_state_partition(dracut, &image_in_state)?;
    let busybox_initrd = dir.join("busybox-initrd.img");
    busybox_initramfs(standalone, &busybox_initrd)?;
    let (itools_kernel, itools_initrd) = initramfs_tools(suite, &dir)?;
    Ok(Inputs {
        kernel,
        plain_root,
        image_in_state_partition: image_in_state,
        busybox_initrd,
        itools_kernel,
        itools_initrd,
        module_always_loads: module_always_loads()?,
    })
}

fn variants(standalone: &Config, dracut: &Config, inputs: &Inputs) -> Vec<Variant> {
    let sa = standalone.out_dir();
    let plain_append = format!("root=/dev/vda rootfstype=ext4 rw {CONSOLE}");
    let partition_append = format!("root=PARTLABEL=COS_STATE rootfstype=squashfs ro {CONSOLE}");
    // The demo disk's slot a, as GRUB's active entry names it (with what
    // GRUB adds at boot time: `grub_entry_params`).
    let slot_a_append = format!(
        "root=LABEL=COS_STATE cos-img/filename=/cOS/a.img immuboot.mode=active immuboot.slot=a \
         {CONSOLE}"
    );
    vec![
        Variant {
            name: "immuboot",
            boot: Boot::Disk {
                config: config_arg(standalone),
            },
            initramfs: sa.join("initrd.img"),
            handover: Some(STANDALONE_HANDOVER),
            immuboot: true,
            disk_setup: None,
        },
        Variant {
            name: "immuboot dracut",
            boot: Boot::Disk {
                config: config_arg(dracut),
            },
            initramfs: dracut.out_dir().join("initrd.img"),
            handover: Some(DRACUT_HANDOVER),
            immuboot: true,
            disk_setup: None,
        },
        Variant {
            name: "immuboot direct",
            boot: Boot::DirectOnDisk {
                config: config_arg(standalone),
                kernel: inputs.kernel.clone(),
                initrd: sa.join("initrd.img"),
                append: slot_a_append.clone(),
                as_grub_entry: true,
            },
            initramfs: sa.join("initrd.img"),
            handover: Some(STANDALONE_HANDOVER),
            immuboot: true,
            disk_setup: None,
        },
        Variant {
            name: "immuboot direct (floor's work)",
            boot: Boot::DirectOnDisk {
                config: config_arg(standalone),
                kernel: inputs.kernel.clone(),
                initrd: sa.join("initrd.img"),
                append: format!("{slot_a_append} {FLOOR_WORK_CMDLINE}"),
                as_grub_entry: true,
            },
            initramfs: sa.join("initrd.img"),
            handover: Some(STANDALONE_HANDOVER),
            immuboot: true,
            disk_setup: Some(FLOOR_WORK_LAYOUT),
        },
        Variant {
            // The dracut initramfs with the module on the same command line
            // as the Debian variants below (no GRUB, serial console only):
            // its initramfs phase against `Debian dracut (squashfs root)` is
            // what the module adds.
            name: "immuboot dracut direct",
            boot: Boot::DirectOnDisk {
                config: config_arg(dracut),
                kernel: inputs.kernel.clone(),
                initrd: dracut.out_dir().join("initrd.img"),
                append: slot_a_append.clone(),
                as_grub_entry: true,
            },
            initramfs: dracut.out_dir().join("initrd.img"),
            handover: Some(DRACUT_HANDOVER),
            immuboot: true,
            disk_setup: None,
        },
        Variant {
            name: "busybox script",
            boot: Boot::DirectOnDisk {
                config: config_arg(standalone),
                kernel: inputs.kernel.clone(),
                initrd: inputs.busybox_initrd.clone(),
                append: CONSOLE.into(),
                as_grub_entry: false,
            },
            initramfs: inputs.busybox_initrd.clone(),
            handover: Some(Handover {
                line: "bench-init: switching root",
                execs_root_init: true,
            }),
            immuboot: false,
            disk_setup: None,
        },
        Variant {
            name: "Debian dracut",
            boot: Boot::DirectOnPlainRoot {
                root: inputs.plain_root.clone(),
                kernel: inputs.kernel.clone(),
                initrd: dracut.out_dir().join("dracut-plain.img"),
                append: plain_append.clone(),
            },
            initramfs: dracut.out_dir().join("dracut-plain.img"),
            handover: None,
            immuboot: false,
            disk_setup: None,
        },
        Variant {
            name: "Debian dracut (squashfs root)",
            boot: Boot::DirectOnImage {
                image: dracut.out_dir().join("images/a.img"),
                kernel: inputs.kernel.clone(),
                initrd: dracut.out_dir().join("dracut-plain.img"),
                append: format!("root=/dev/vda rootfstype=squashfs ro {CONSOLE}"),
            },
            initramfs: dracut.out_dir().join("dracut-plain.img"),
            handover: None,
            immuboot: false,
            disk_setup: None,
        },
        Variant {
            name: "Debian dracut (squashfs partition)",
            boot: Boot::DirectOnImage {
                image: inputs.image_in_state_partition.clone(),
                kernel: inputs.kernel.clone(),
                initrd: dracut.out_dir().join("dracut-plain.img"),
                append: partition_append.clone(),
            },
            initramfs: dracut.out_dir().join("dracut-plain.img"),
            handover: None,
            immuboot: false,
            disk_setup: None,
        },
        Variant {
            name: PARTITION_WITH_MODULES,
            boot: Boot::DirectOnImage {
                image: inputs.image_in_state_partition.clone(),
                kernel: inputs.kernel.clone(),
                initrd: dracut.out_dir().join("dracut-plain.img"),
                append: format!(
                    "{partition_append} rd.modules_load={}",
                    inputs.module_always_loads.join(",")
                ),
            },
            initramfs: dracut.out_dir().join("dracut-plain.img"),
            handover: None,
            immuboot: false,
            disk_setup: None,
        },
        Variant {
            name: "Debian initramfs-tools",
            boot: Boot::DirectOnPlainRoot {
                root: inputs.plain_root.clone(),
                kernel: inputs.itools_kernel.clone(),
                initrd: inputs.itools_initrd.clone(),
                append: plain_append,
            },
            initramfs: inputs.itools_initrd.clone(),
            handover: None,
            immuboot: false,
            disk_setup: None,
        },
    ]
}

/// What GRUB's entries add to the command line at boot time, for a direct
/// boot of a configuration's disk that stands for a boot through GRUB. GRUB
/// counts the boot in grubenv before it loads the kernel
/// (`immuboot.counted=1`) and names the COS_STATE it read
/// (`immuboot.state_uuid=`). Without them the init counts the boot itself
/// (COS_STATE remounted read-write, grubenv written and synced: about 0.1 s
/// under TCG), work that no boot through GRUB does.
fn grub_entry_params(config: &str) -> Result<String> {
    let manifest = DiskManifest::load_for(config)?;
    let state = manifest.partition("COS_STATE")?;
    let uuid = ext4_uuid(&manifest.disk, state.offset)?;
    Ok(format!("immuboot.counted=1 immuboot.state_uuid={uuid}"))
}

/// The UUID of the ext4 file system at `offset` of `disk`, as GRUB's
/// `probe --fs-uuid` prints it (`s_uuid`, 0x68 into the superblock that
/// starts 1024 bytes in).
fn ext4_uuid(disk: &Path, offset: u64) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(disk).with_context(|| format!("cannot open {}", disk.display()))?;
    let mut sb = [0u8; 0x78];
    f.seek(SeekFrom::Start(offset + 1024))?;
    f.read_exact(&mut sb).with_context(|| {
        format!(
            "cannot read the superblock at {offset} of {}",
            disk.display()
        )
    })?;
    if sb[0x38..0x3a] != [0x53, 0xef] {
        bail!("no ext4 superblock at {offset} of {}", disk.display());
    }
    let uuid: [u8; 16] = sb[0x68..0x78].try_into()?;
    Ok(uuid::Uuid::from_bytes(uuid).hyphenated().to_string())
}

/// The harness's name of a configuration ("" for the default).
fn config_arg(c: &Config) -> String {
    if c.is_default() {
        String::new()
    } else {
        c.name()
    }
}

/// The disks after their first boot (see the module's doc), and what those
/// boots took.
struct FirstBoots {
    /// Configuration and disk set-up → the first-booted machine's disk
    /// overlay.
    disks: HashMap<(String, Option<&'static str>), PathBuf>,
    /// The plain ext4 root after its first boot (a qcow2 overlay).
    plain_root: Option<PathBuf>,
    reports: Vec<FirstBootReport>,
}

#[derive(Debug, Clone, Serialize)]
struct FirstBootReport {
    /// What booted: the configuration's disk through GRUB, or the plain
    /// root with Debian's dracut initramfs.
    what: String,
    phases: BootPhases,
    steps: Steps,
    log: PathBuf,
}

/// One first boot for each disk the variants boot writable: the
/// configurations' disks through GRUB, the plain root with the first
/// variant's kernel and initramfs that boots it.
fn first_boots(variants: &[Variant]) -> Result<FirstBoots> {
    let mut first = FirstBoots {
        disks: HashMap::new(),
        plain_root: None,
        reports: Vec::new(),
    };
    for v in variants {
        match &v.boot {
            Boot::Disk { config } | Boot::DirectOnDisk { config, .. } => {
                let key = (config.clone(), v.disk_setup);
                if first.disks.contains_key(&key) {
                    continue;
                }
                let (what, name) = match v.disk_setup {
                    None => (config_label(config), "bench-first-boot".to_string()),
                    Some(_) => (
                        format!("{} ({})", config_label(config), v.name),
                        format!("bench-first-boot-{}", first.disks.len()),
                    ),
                };
                eprintln!("    first boot of the {what} disk");
                let mut m = Machine::new_in(&name, config)?;
                let vm = m.boot()?;
                let report = finish_first_boot(vm, what, v.handover, v.immuboot, v.disk_setup)?;
                first.reports.push(report);
                first.disks.insert(key, m.overlay.clone());
            }
            Boot::DirectOnPlainRoot {
                root,
                kernel,
                initrd,
                append,
            } => {
                if first.plain_root.is_some() {
                    continue;
                }
                eprintln!("    first boot of the plain root");
                let name = "bench-first-boot-plain-root";
                let (vm, overlay) = boot_plain_root(name, (root, "raw"), kernel, initrd, append)?;
                let report =
                    finish_first_boot(vm, format!("plain root ({})", v.name), None, false, None)?;
                first.reports.push(report);
                first.plain_root = Some(overlay);
            }
            Boot::DirectOnImage { .. } => {}
        }
    }
    Ok(first)
}

/// A configuration's name as the harness takes it ("" for the default),
/// spelled out.
fn config_label(config: &str) -> String {
    match config {
        "" => DEFAULT_CONFIG.into(),
        c => c.into(),
    }
}

/// Waits for the login prompt of a first boot, logs in, waits for the boot
/// to finish and shuts the machine down cleanly, so that later boots find
/// the disk as a machine's disk is after a reboot.
fn finish_first_boot(
    mut vm: Vm,
    what: String,
    handover: Option<Handover<'static>>,
    immuboot: bool,
    setup: Option<&str>,
) -> Result<FirstBootReport> {
    vm.expect(r"login: ", Duration::from_secs(600))
        .with_context(|| {
            format!(
                "first boot of {what}: no login prompt; console log {}",
                vm.log.display()
            )
        })?;
    let phases = boot_phases(&vm.timed_console(), handover);
    vm.log_in_at_prompt()?;
    let steps = match immuboot {
        true => init_facts(&mut vm)?.0,
        false => Vec::new(),
    };
    if let Some(setup) = setup {
        vm.run_ok(setup)
            .with_context(|| format!("first boot of {what}: the disk's set-up"))?;
    }
    let log = vm.log.clone();
    vm.reboot().with_context(|| {
        format!(
            "first boot of {what}: no clean shutdown; console log {}",
            log.display()
        )
    })?;
    eprintln!(
        "      initramfs {}, power-on → login {}",
        secs(phases.initramfs_s),
        secs(phases.power_on_to_login_s)
    );
    Ok(FirstBootReport {
        what,
        phases,
        steps,
        log,
    })
}

fn boot_once(v: &Variant, round: usize, first: &FirstBoots) -> Result<Sample> {
    // A file name QEMU's option syntax takes as it is (a comma would split it).
    let slug: String = v
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = format!("bench-{slug}-{round}");
    let mut vm = match &v.boot {
        Boot::Disk { config } => Machine::new_in(&name, config)?
            .on_disk_from(&first.disks[&(config.clone(), v.disk_setup)])?
            .boot()?,
        Boot::DirectOnDisk {
            config,
            kernel,
            initrd,
            append,
            as_grub_entry,
        } => {
            let append = match as_grub_entry {
                true => format!("{append} {}", grub_entry_params(config)?),
                false => append.clone(),
            };
            Machine::new_in(&name, config)?
                .on_disk_from(&first.disks[&(config.clone(), v.disk_setup)])?
                .boot_kernel(kernel, initrd, &append)?
        }
        Boot::DirectOnPlainRoot {
            root: _,
            kernel,
            initrd,
            append,
        } => {
            let base = first
                .plain_root
                .as_ref()
                .context("the plain root's first boot")?;
            boot_plain_root(&name, (base, "qcow2"), kernel, initrd, append)?.0
        }
        Boot::DirectOnImage {
            image,
            kernel,
            initrd,
            append,
        } => return boot_image_root(&name, image, kernel, initrd, append),
    };
    let at_login = vm.expect(r"login: ", Duration::from_secs(600));
    let console = vm.timed_console();
    at_login.with_context(|| format!("no login prompt; console log {}", vm.log.display()))?;
    let mut phases = boot_phases(&console, v.handover);
    vm.log_in_at_prompt()?;
    let show = vm.run_ok(
        "systemctl show -p UserspaceTimestampMonotonic; \
         systemctl show -p ActiveEnterTimestampMonotonic serial-getty@ttyS0.service",
    )?;
    getty_guest_phases(&show, &mut phases);
    let (steps, peak_rss_kib) = if v.immuboot {
        init_facts(&mut vm)?
    } else {
        (Vec::new(), None)
    };
    let log = vm.log.clone();
    vm.power_cut()?;
    Ok(Sample {
        phases,
        steps,
        peak_rss_kib,
        log,
    })
}

/// A machine of its own for a plain root: an overlay over `root` (the
/// ext4 copy, or an overlay of it after its first boot) of `format`. Returns
/// the running VM and its overlay.
fn boot_plain_root(
    name: &str,
    (root, format): (&Path, &str),
    kernel: &Path,
    initrd: &Path,
    append: &str,
) -> Result<(Vm, PathBuf)> {
    let dir = fresh_vm_dir(name)?;
    let overlay = dir.join("root.qcow2");
    qcow2_overlay((root, format), &overlay)?;
    let args = direct_boot_args(&dir, (&overlay, "qcow2", false), kernel, initrd, append)?;
    Ok((Vm::start(&args, &dir.join("boot1.log"))?, overlay))
}

/// An empty directory for the VM `name`.
fn fresh_vm_dir(name: &str) -> Result<PathBuf> {
    let dir = immuboot_qemu_tests::artifacts_dir().join("vms").join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The scenarios' VM (firmware variables of its own in `dir`) on `disk`
/// (of `format`; `read_only` for an image that must stay as it is), with
/// `kernel` and `initrd` started by QEMU.
fn direct_boot_args(
    dir: &Path,
    (disk, format, read_only): (&Path, &str, bool),
    kernel: &Path,
    initrd: &Path,
    append: &str,
) -> Result<Vec<String>> {
    let vars = dir.join("OVMF_VARS.fd");
    fs::copy(started_firmware_vars(disk, format)?, &vars)?;
    let mut args = qemu_args(disk, format, &vars, false);
    if read_only {
        attach_read_only(&mut args, disk);
    }
    args.extend([
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        append.into(),
    ]);
    Ok(args)
}

/// A boot of `image` as a read-only root disk, until the root's systemd
/// starts (the initrd's systemd prints the same line first).
fn boot_image_root(
    name: &str,
    image: &Path,
    kernel: &Path,
    initrd: &Path,
    append: &str,
) -> Result<Sample> {
    let dir = fresh_vm_dir(name)?;
    let args = direct_boot_args(&dir, (image, "raw", true), kernel, initrd, append)?;
    let mut vm = Vm::start(&args, &dir.join("boot1.log"))?;
    let banner = r"systemd\[1\]: systemd [^\n]*running in system mode";
    for _ in 0..2 {
        vm.expect(banner, Duration::from_secs(600))
            .with_context(|| format!("no systemd in the root; console log {}", vm.log.display()))?;
    }
    let phases = boot_phases(&vm.timed_console(), None);
    let log = vm.log.clone();
    vm.power_cut()?;
    Ok(Sample {
        phases,
        steps: Vec::new(),
        peak_rss_kib: None,
        log,
    })
}

/// The init's steps and peak memory, from the boot facts of the running
/// guest (logged in).
fn init_facts(vm: &mut Vm) -> Result<(Steps, Option<u64>)> {
    let text = vm.run_ok("cat /run/immuboot/boot.json")?;
    let facts: serde_json::Value =
        serde_json::from_str(&text).context("the boot facts are not JSON")?;
    let steps = facts["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["ms"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok((steps, facts["peak_rss_kib"].as_u64()))
}

fn summarize(v: &Variant, samples: Vec<Sample>) -> Result<Summary> {
    let phases = PHASES
        .iter()
        .map(|(key, _)| {
            let values: Vec<f64> = samples
                .iter()
                .filter_map(|s| phase(&s.phases, key))
                .collect();
            (*key, median(&values))
        })
        .collect();
    // Steps in the order of the first boot, each the median over the boots.
    let steps_ms = samples
        .first()
        .map(|first| {
            first
                .steps
                .iter()
                .map(|(name, _)| {
                    let values: Vec<f64> = samples
                        .iter()
                        .filter_map(|s| s.steps.iter().find(|(n, _)| n == name).map(|(_, ms)| *ms))
                        .collect();
                    (name.clone(), median(&values).unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    let rss: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.peak_rss_kib.map(|k| k as f64))
        .collect();
    Ok(Summary {
        variant: v.name.into(),
        boots: samples.len(),
        initramfs_bytes: fs::metadata(&v.initramfs)
            .with_context(|| format!("cannot read {}", v.initramfs.display()))?
            .len(),
        phases,
        steps_ms,
        peak_rss_kib: median(&rss),
        samples,
    })
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2} s"))
}

/// The report: phases per variant, ratios against the floor and against
/// Debian's dracut, the immuboot init's steps.
fn markdown(suite: Suite, all: &[Summary], first: &FirstBoots) -> String {
    let mut md = String::new();
    let boots = all.iter().map(|s| s.boots).max().unwrap_or(0);
    let _ = writeln!(
        md,
        "Boot benchmark, Debian {}: q35, OVMF, TCG, 1 vCPU, one VM at a time, median of {boots} boots.\n",
        suite.name()
    );
    if let Ok(shift) = std::env::var(ICOUNT_ENV) {
        let _ = writeln!(
            md,
            "Guest CPU on QEMU's instruction counter (`-icount shift={shift}`, `--icount`): the \
             kernel-clock and guest-clock rows count guest work and compare across boots and \
             hosts; the host-clock rows (firmware, GRUB, to the login prompt) are real time \
             of a VM slowed by the counting.\n"
        );
    }
    let _ = write!(md, "| phase |");
    for s in all {
        let _ = write!(md, " {} |", s.variant);
    }
    let _ = write!(md, "\n|---|");
    for _ in all {
        let _ = write!(md, "---:|");
    }
    md.push('\n');
    for (key, label) in PHASES {
        let _ = write!(md, "| {label} |");
        for s in all {
            let _ = write!(md, " {} |", secs(s.phases[key]));
        }
        md.push('\n');
    }
    let _ = write!(md, "| initramfs size (compressed) |");
    for s in all {
        let _ = write!(md, " {:.2} MB |", s.initramfs_bytes as f64 / 1e6);
    }
    let _ = write!(md, "\n| init's peak memory |");
    for s in all {
        let mem = s
            .peak_rss_kib
            .map_or("-".into(), |k| format!("{:.1} MiB", k / 1024.0));
        let _ = write!(md, " {mem} |");
    }
    md.push('\n');
    let find = |name: &str| all.iter().find(|s| s.variant == name);
    for (against, what) in [
        ("busybox script", "the busybox floor"),
        ("Debian dracut", "Debian's dracut"),
    ] {
        let Some(base) = find(against) else { continue };
        let _ = writeln!(md, "\nRatios against {what} (time, variant / {against}):\n");
        let _ = writeln!(
            md,
            "| variant | initramfs phase | init's own part | power-on → login | kernel → getty (guest clock) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for s in all.iter().filter(|s| s.variant != against) {
            let ratio = |key: &str| match (s.phases[key], base.phases[key]) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                s.variant,
                ratio("initramfs_s"),
                ratio("init_own_s"),
                ratio("power_on_to_login_s"),
                ratio("kernel_to_getty_guest_s")
            );
        }
    }
    // The direct boot has the Debian variants' command line; through GRUB
    // the kernel's log also goes to the screen.
    if let Some(with) = find("immuboot dracut direct").or_else(|| find("immuboot dracut")) {
        for baseline in [
            "Debian dracut (squashfs partition)",
            "Debian dracut (squashfs root)",
            PARTITION_WITH_MODULES,
        ] {
            let Some(without) = find(baseline) else {
                continue;
            };
            let added = |key: &str| match (with.phases[key], without.phases[key]) {
                (Some(a), Some(b)) => format!("{:+.2} s", a - b),
                _ => "-".into(),
            };
            let (what, target) = if baseline == PARTITION_WITH_MODULES {
                (
                    "What the module's own work adds, beyond loading the kernel modules its \
                     layout needs",
                    "",
                )
            } else {
                (
                    "What the immuboot module adds to the distribution's dracut initramfs",
                    " (target: at most +0.5 s and +3 MB)",
                )
            };
            let _ = writeln!(
                md,
                "\n{what} ({} − {baseline}): initramfs phase {}, compressed size {:+.2} MB{target}.",
                with.variant,
                added("initramfs_s"),
                (with.initramfs_bytes as f64 - without.initramfs_bytes as f64) / 1e6
            );
        }
    }
    let _ = writeln!(
        md,
        "\nEvery timed boot above starts from a disk that has booted once. The first boots \
         that prepared them (one each; a first boot also seeds the layout's persistent paths):\n"
    );
    let _ = writeln!(
        md,
        "| first boot | initramfs phase | init's own part | power-on → login |\n|---|---:|---:|---:|"
    );
    for r in &first.reports {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            r.what,
            secs(r.phases.initramfs_s),
            secs(r.phases.init_own_s),
            secs(r.phases.power_on_to_login_s)
        );
    }
    for r in first.reports.iter().filter(|r| !r.steps.is_empty()) {
        let steps: Vec<String> = r
            .steps
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.0}"))
            .collect();
        let _ = writeln!(
            md,
            "\nSteps of the first boot of {} (ms): {}.",
            r.what,
            steps.join(", ")
        );
    }
    for s in all.iter().filter(|s| !s.steps_ms.is_empty()) {
        let _ = writeln!(md, "\nSteps of the init, {} (median ms):\n", s.variant);
        let _ = writeln!(md, "| step | ms |\n|---|---:|");
        for (name, ms) in &s.steps_ms {
            let _ = writeln!(md, "| {name} | {ms:.0} |");
        }
    }
    md
}

/// `inner` of the squashfs `image`, copied out to `dest`.
fn extract(image: &Path, inner: &str, dest: &Path) -> Result<()> {
    let out = Command::new("unsquashfs")
        .arg("-cat")
        .arg(image)
        .arg(inner)
        .output()
        .context("unsquashfs (package squashfs-tools)")?;
    if !out.status.success() {
        bail!("unsquashfs -cat {} {inner} failed", image.display());
    }
    fs::write(dest, out.stdout)?;
    Ok(())
}

/// A copy of `dracut`'s demo disk whose COS_STATE partition holds the slot
/// image itself instead of its ext4 file system (the other partitions as
/// they are), for a plain squashfs root found by the partition's name.
fn image_in_state_partition(dracut: &Config, out: &Path) -> Result<()> {
    let manifest = DiskManifest::load_for(&config_arg(dracut))?;
    let image = dracut.out_dir().join("images/a.img");
    let stamp = Stamp::default()
        .file(&manifest.disk.with_extension("img.stamp"))?
        .file(&image.with_extension("img.stamp"))?
        .text("image-in-state-v1");
    if stamp.is_current(out) {
        return Ok(());
    }
    immuboot_qemu_tests::image_in_state_partition(&manifest, &image, out)?;
    stamp.record(out)
}

/// An ext4 file system holding exactly the files of the squashfs `image`.
fn plain_ext4_root(image: &Path, out: &Path) -> Result<()> {
    let stamp = Stamp::default()
        .file(&image.with_extension("img.stamp"))?
        .text("ext4-v1");
    if stamp.is_current(out) {
        return Ok(());
    }
    let tree = out.with_extension("tree");
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    run(Command::new("unsquashfs")
        .args(["-quiet", "-no-progress", "-d"])
        .arg(&tree)
        .arg(image))?;
    let du = Command::new("du").arg("-sb").arg(&tree).output()?;
    let bytes: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du of the root file system")?;
    let _ = fs::remove_file(out);
    // Room for metadata, and for what a booted system writes.
    fs::File::create(out)?.set_len(crate::disk::mib_for(bytes + bytes / 2, 256) << 20)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "plain-root", "-d"])
        .arg(&tree)
        .arg(out))?;
    fs::remove_dir_all(&tree)?;
    stamp.record(out)
}

/// The floor's initramfs: busybox, the script as /init, and the same
/// kernel modules as immuboot's.
fn busybox_initramfs(standalone: &Config, out: &Path) -> Result<()> {
    let script_path = workspace_root().join("image/bench/busybox-init.sh");
    let busybox_path = Path::new("/bin/busybox");
    let release_file = standalone.out_dir().join("images/kernel-release");
    let kver = fs::read_to_string(&release_file)
        .with_context(|| format!("cannot read {}", release_file.display()))?;
    let kver = kver.trim();
    let root = standalone.out_dir().join("rootfs");
    let list = workspace_root().join("image/initramfs-modules");
    let mut stamp = Stamp::default()
        .file(&script_path)?
        .file(busybox_path)?
        .file(&list)?
        .text(kver);
    // The same modprobe.d files as immuboot's initramfs (busybox's modprobe
    // reads those in /etc/modprobe.d).
    for (path, data) in initramfs::modprobe_conf(&root)? {
        stamp = stamp.text(&path).text(&String::from_utf8_lossy(&data));
    }
    if stamp.is_current(out) {
        return Ok(());
    }
    let script = fs::read(&script_path)?;
    let busybox = fs::read(busybox_path).with_context(|| {
        format!(
            "cannot read {} (package busybox-static)",
            busybox_path.display()
        )
    })?;
    initramfs::build_with(
        &script,
        &[("bin/busybox", &busybox)],
        &root,
        kver,
        &list,
        out,
    )?;
    stamp.record(out)
}

/// Debian's initramfs-tools initramfs and the kernel it was made for: a
/// root file system with initramfs-tools instead of dracut (mmdebstrap,
/// cached), where the kernel package's hook made `/boot/initrd.img-*`.
fn initramfs_tools(suite: Suite, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let tar = rootfs::tarball_of(suite, rootfs::INITRAMFS_TOOLS_PACKAGES)?;
    let kernel = dir.join("itools-vmlinuz");
    let initrd = dir.join("itools-initrd.img");
    let stamp = Stamp::default()
        .text(&tar.display().to_string())
        .text("itools-v1");
    if stamp.is_current(&initrd) && kernel.exists() {
        return Ok((kernel, initrd));
    }
    let unpack = dir.join("itools-boot");
    if unpack.exists() {
        fs::remove_dir_all(&unpack)?;
    }
    fs::create_dir_all(&unpack)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&unpack)
        .args(["--wildcards", "./boot/vmlinuz-*", "./boot/initrd.img-*"]))?;
    let pick = |prefix: &str| -> Result<PathBuf> {
        fs::read_dir(unpack.join("boot"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("no /boot/{prefix}* in {}", tar.display()))
    };
    fs::copy(pick("vmlinuz-")?, &kernel)?;
    fs::copy(pick("initrd.img-")?, &initrd)?;
    fs::remove_dir_all(&unpack)?;
    stamp.record(&initrd)?;
    Ok((kernel, initrd))
}

/// The two configurations of `suite` the benchmark boots.
pub fn configs(suite: Suite) -> (Config, Config) {
    (
        Config {
            suite,
            initramfs: InitramfsKind::Standalone,
        },
        Config {
            suite,
            initramfs: InitramfsKind::Dracut,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(variant: &str, initramfs_s: f64, bytes: u64) -> Summary {
        let mut phases: BTreeMap<&'static str, Option<f64>> =
            PHASES.iter().map(|(key, _)| (*key, None)).collect();
        phases.insert("initramfs_s", Some(initramfs_s));
        Summary {
            variant: variant.into(),
            boots: 3,
            initramfs_bytes: bytes,
            phases,
            steps_ms: Default::default(),
            peak_rss_kib: None,
            samples: Vec::new(),
        }
    }

    fn no_first_boots() -> FirstBoots {
        FirstBoots {
            disks: HashMap::new(),
            plain_root: None,
            reports: Vec::new(),
        }
    }

    #[test]
    fn the_first_boots_are_reported_beside_the_timed_ones() {
        let mut first = no_first_boots();
        first.reports.push(FirstBootReport {
            what: "bookworm-standalone".into(),
            phases: BootPhases {
                initramfs_s: Some(1.92),
                init_own_s: Some(0.92),
                power_on_to_login_s: Some(20.16),
                ..Default::default()
            },
            steps: vec![("mount layout".into(), 72.0)],
            log: PathBuf::new(),
        });
        let md = markdown(
            Suite::Bookworm,
            &[summary("immuboot", 1.7, 2_000_000)],
            &first,
        );
        assert!(
            md.contains("| bookworm-standalone | 1.92 s | 0.92 s | 20.16 s |"),
            "{md}"
        );
        assert!(
            md.contains("first boot of bookworm-standalone (ms): mount layout 72."),
            "{md}"
        );
    }

    #[test]
    fn what_the_module_adds_is_printed_against_both_plain_squashfs_roots() {
        let md = markdown(
            Suite::Bookworm,
            &[
                summary("immuboot dracut", 20.0, 37_000_000),
                summary("immuboot dracut direct", 13.26, 36_870_000),
                summary("Debian dracut (squashfs root)", 11.76, 35_840_000),
                summary("Debian dracut (squashfs partition)", 11.94, 35_840_000),
                summary(PARTITION_WITH_MODULES, 12.90, 35_840_000),
            ],
            &no_first_boots(),
        );
        assert!(
            md.contains(&format!(
                "beyond loading the kernel modules its layout needs (immuboot dracut direct − \
                 {PARTITION_WITH_MODULES}): initramfs phase +0.36 s, compressed size +1.03 MB."
            )),
            "{md}"
        );
        assert!(
            md.contains(
                "(immuboot dracut direct − Debian dracut (squashfs partition)): \
                 initramfs phase +1.32 s, compressed size +1.03 MB"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "(immuboot dracut direct − Debian dracut (squashfs root)): \
                 initramfs phase +1.50 s"
            ),
            "{md}"
        );
        // Without the direct boot, the one through GRUB is compared.
        let md = markdown(
            Suite::Bookworm,
            &[
                summary("immuboot dracut", 14.0, 36_870_000),
                summary("Debian dracut (squashfs root)", 11.5, 35_840_000),
            ],
            &no_first_boots(),
        );
        assert!(
            md.contains(
                "(immuboot dracut − Debian dracut (squashfs root)): initramfs phase +2.50 s"
            ),
            "{md}"
        );
        assert!(!md.contains("squashfs partition"), "{md}");
    }

    /// The variant that loads the module's kernel modules names what the
    /// module's own list loads at every boot.
    #[test]
    fn the_module_s_kernel_modules_come_from_its_list() {
        let always = module_always_loads().unwrap();
        for m in ["ext4", "loop", "squashfs", "overlay"] {
            assert!(always.iter().any(|a| a == m), "{always:?}");
        }
    }

    /// The UUID read from the superblock is the one GRUB's `probe --fs-uuid`
    /// prints: the one mkfs.ext4 was given, at the partition's offset.
    #[test]
    fn the_state_uuid_comes_from_the_ext4_superblock() {
        let dir = std::env::temp_dir().join(format!("immuboot-uuid-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fs_img = dir.join("state.ext4");
        fs::File::create(&fs_img).unwrap().set_len(4 << 20).unwrap();
        let uuid = "0b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f";
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-U", uuid, "-L", "COS_STATE"])
            .arg(&fs_img)
            .status()
            .expect("mkfs.ext4 (e2fsprogs, a host dependency)");
        assert!(status.success());
        // The file system 1 MiB into a disk image, as a partition.
        let disk = dir.join("disk.img");
        let mut bytes = vec![0u8; 1 << 20];
        bytes.extend(fs::read(&fs_img).unwrap());
        fs::write(&disk, bytes).unwrap();
        assert_eq!(ext4_uuid(&disk, 1 << 20).unwrap(), uuid);
        assert!(ext4_uuid(&disk, 0).is_err(), "no superblock there");
        fs::remove_dir_all(&dir).unwrap();
    }
}
