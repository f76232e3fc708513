//! Harness for real boots of the demo disk: OVMF → GRUB → kernel → immuboot
//! init → systemd, driven over the serial console like a person would.
//!
//! Every machine gets its own qcow2 overlay over the built disk and its own
//! copy of the UEFI variables, so scenarios run side by side and the built
//! disk is never written.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde::Deserialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod timing;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const ROOT_PASSWORD: &str = "immuboot";

/// Where `cargo xtask build` leaves the disk and its description (the
/// default configuration: bookworm with the standalone initramfs).
pub fn artifacts_dir() -> PathBuf {
    match std::env::var_os("IMMUBOOT_ARTIFACTS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/immuboot"),
    }
}

/// The name of the default build configuration.
pub const DEFAULT_CONFIG: &str = "bookworm-standalone";

/// A configuration name as a directory below [`artifacts_dir`]: "" for the
/// default ("" or `bookworm-standalone`), else the name itself
/// (`SUITE-INITRAMFS`, as `cargo xtask build --suite S --initramfs K`
/// builds it).
pub fn config_subdir(config: &str) -> Result<&str> {
    if config.is_empty() || config == DEFAULT_CONFIG {
        return Ok("");
    }
    let valid = config
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && config.contains('-')
        && !config.starts_with('-');
    if !valid {
        bail!("not a build configuration name (SUITE-INITRAMFS): {config:?}");
    }
    Ok(config)
}

/// Where `cargo xtask build --suite S --initramfs K` leaves the disk of
/// configuration `S-K` ("" or `bookworm-standalone`: [`artifacts_dir`]).
pub fn artifacts_dir_for(config: &str) -> Result<PathBuf> {
    let base = artifacts_dir();
    Ok(match config_subdir(config)? {
        "" => base,
        sub => base.join(sub),
    })
}

/// One partition of the built disk (from disk.json).
#[derive(Debug, Clone, Deserialize)]
pub struct Partition {
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DiskManifest {
    pub disk: PathBuf,
    pub partitions: Vec<Partition>,
    pub initramfs_bytes: u64,
    /// Debian suite of the images ("" in a disk.json from before the build
    /// matrix: bookworm).
    #[serde(default)]
    pub suite: String,
    /// `standalone` or `dracut` ("" in an older disk.json: standalone).
    #[serde(default)]
    pub initramfs: String,
    /// `uname -r` of the images' kernel ("" in an older disk.json).
    #[serde(default)]
    pub kernel_release: String,
}

impl DiskManifest {
    /// The default configuration's disk.json.
    pub fn load() -> Result<DiskManifest> {
        DiskManifest::load_for("")
    }

    /// The disk.json of a configuration (see [`artifacts_dir_for`]).
    pub fn load_for(config: &str) -> Result<DiskManifest> {
        let path = artifacts_dir_for(config)?.join("disk.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{} missing: run `cargo xtask build` first", path.display())
        })?;
        DiskManifest::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<DiskManifest> {
        Ok(serde_json::from_str(text)?)
    }

    pub fn partition(&self, label: &str) -> Result<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.label == label)
            .with_context(|| format!("no partition {label}"))
    }
}

/// A sparse copy of `manifest`'s disk at `out` whose COS_STATE partition
/// holds `image`'s bytes instead of its ext4 file system, the other
/// partitions as they are: a plain squashfs root found by the partition's
/// name on the same disk (the yardstick of the dracut module's cost, in the
/// boot benchmark and in scenario 24).
pub fn image_in_state_partition(manifest: &DiskManifest, image: &Path, out: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let state = manifest.partition("COS_STATE")?;
    let image_bytes = std::fs::metadata(image)
        .with_context(|| format!("{}", image.display()))?
        .len();
    if image_bytes > state.size {
        bail!(
            "{} ({image_bytes} bytes) does not fit in COS_STATE ({} bytes)",
            image.display(),
            state.size
        );
    }
    let _ = std::fs::remove_file(out);
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(&manifest.disk)
        .arg(out)
        .status()
        .context("cp")?;
    if !status.success() {
        bail!("cp {} {} failed", manifest.disk.display(), out.display());
    }
    let mut disk = std::fs::OpenOptions::new().write(true).open(out)?;
    disk.seek(SeekFrom::Start(state.offset))?;
    std::io::copy(&mut std::fs::File::open(image)?, &mut disk)?;
    disk.sync_all()?;
    Ok(())
}

/// `IMMUBOOT_QEMU_ICOUNT=SHIFT` runs the guest's CPU on QEMU's instruction
/// counter (`-icount shift=SHIFT`): the guest clock then advances 2^SHIFT ns
/// per guest instruction, whatever the host's load, so the kernel clock's
/// figures of two boots compare to about a percent (a boot benchmark on a
/// busy host); QEMU runs slower. Idle time still passes in real time
/// (`sleep=on`), so the guest's timeouts keep their meaning.
pub const ICOUNT_ENV: &str = "IMMUBOOT_QEMU_ICOUNT";

/// The machine every boot runs on: q35 under TCG (never KVM: it hangs on
/// these hosts), one CPU, 1 GiB, and QEMU exits instead of rebooting.
pub fn tcg_machine_args() -> Vec<String> {
    let mut args: Vec<String> = [
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "1",
        "-no-reboot",
    ]
    .map(String::from)
    .to_vec();
    if let Ok(shift) = std::env::var(ICOUNT_ENV) {
        args.extend(["-icount".into(), format!("shift={shift},sleep=on")]);
    }
    args
}

/// The id of the machine's own disk on QEMU's command line.
const OWN_DISK: &str = "own-disk";

/// QEMU arguments for a boot of `disk` through OVMF.
pub fn qemu_args(disk: &Path, disk_format: &str, vars: &Path, interactive: bool) -> Vec<String> {
    let mut args = tcg_machine_args();
    args.extend([
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on"),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        "-drive".into(),
        format!(
            "file={},if=none,id={OWN_DISK},format={disk_format},cache=unsafe",
            disk.display()
        ),
        // First in the firmware's boot order, as an installed machine's
        // boot entry is: without it OVMF tries q35's CD-ROM before the disk
        // on every boot (0.2 s of the firmware's time under TCG).
        "-device".into(),
        format!("virtio-blk-pci,drive={OWN_DISK},bootindex=1"),
        "-nic".into(),
        "none".into(),
        // A hardware watchdog for the init to arm (reset on expiry; with
        // -no-reboot QEMU then exits like on any reboot).
        "-device".into(),
        "i6300esb".into(),
    ]);
    if interactive {
        args.push("-nographic".into());
    } else {
        args.extend(["-display", "none", "-serial", "stdio", "-monitor", "none"].map(String::from));
    }
    args
}

/// Makes `disk`'s `-drive` in `args` (from [`qemu_args`]) read-only: for
/// an image that must stay as it is.
pub fn attach_read_only(args: &mut [String], disk: &Path) {
    let drive = format!("file={},", disk.display());
    for a in args.iter_mut().filter(|a| a.starts_with(&drive)) {
        a.push_str(",readonly=on");
    }
}

/// UEFI variables of a machine whose firmware has started before: OVMF's
/// template after one start of the firmware on `disk` (of `format`, attached
/// read-only), cut when the firmware starts the boot loader. An installed
/// machine finds its variables written at every power-on; only its very
/// first start writes them, and under TCG that start reached the boot
/// loader 0.9-1.0 s later (measured: README, "Measured"). Made once per
/// artifacts directory, again when the template is newer (an upgraded
/// ovmf package).
pub fn started_firmware_vars(disk: &Path, format: &str) -> Result<PathBuf> {
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let template = std::fs::metadata(OVMF_VARS)
        .with_context(|| format!("{OVMF_VARS} (package ovmf)"))?
        .modified()?;
    let dir = artifacts_dir().join("firmware");
    let vars = dir.join("OVMF_VARS.started.fd");
    if let Ok(made) = std::fs::metadata(&vars) {
        if made.modified()? >= template {
            return Ok(vars);
        }
    }
    std::fs::create_dir_all(&dir)?;
    // Machines created at once each make their own; the last rename wins.
    let start = format!(
        "{}-{}",
        std::process::id(),
        STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let fresh = dir.join(format!("OVMF_VARS.{start}.tmp"));
    std::fs::copy(OVMF_VARS, &fresh).with_context(|| format!("{OVMF_VARS} (package ovmf)"))?;
    let mut args = qemu_args(disk, format, &fresh, false);
    attach_read_only(&mut args, disk);
    let log = dir.join(format!("first-start.{start}.log"));
    let mut vm = Vm::start(&args, &log)?;
    vm.expect(r"BdsDxe: starting Boot", Duration::from_secs(300))
        .with_context(|| format!("the firmware's first start; console log {}", log.display()))?;
    vm.power_cut()?;
    std::fs::rename(&fresh, &vars)?;
    let _ = std::fs::remove_file(&log);
    Ok(vars)
}

/// Creates `overlay`, a qcow2 file whose reads come from `base` (of
/// `format`, "raw" or "qcow2") until the guest writes: a VM's own copy of
/// a disk that leaves the disk as it is.
pub fn qcow2_overlay((base, format): (&Path, &str), overlay: &Path) -> Result<()> {
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(base)
        .arg(overlay)
        .status()
        .context("qemu-img (package qemu-utils)")?;
    if !status.success() {
        bail!(
            "qemu-img create failed for {} over {}",
            overlay.display(),
            base.display()
        );
    }
    Ok(())
}

/// A test machine: a disk overlay and UEFI variables that persist across its
/// boots.
pub struct Machine {
    pub name: String,
    /// The build configuration whose disk it boots ("" is the default).
    pub config: String,
    /// That configuration's build output (disk, payload disk).
    pub artifacts: PathBuf,
    pub dir: PathBuf,
    pub overlay: PathBuf,
    pub vars: PathBuf,
    pub manifest: DiskManifest,
    /// Further QEMU arguments for every boot (a second disk, a network).
    pub extra_args: Vec<String>,
    /// QEMU cache mode of the disk: `unsafe` (fast, the default) or
    /// `writeback`, which honours the guest's flushes, for power-cut tests.
    pub disk_cache: &'static str,
    /// Raw disks attached before the machine's own (they enumerate first:
    /// `vda`, GRUB's `hd0`).
    pub disks_first: Vec<PathBuf>,
    /// The machine's own disk on q35's SATA (AHCI) controller instead of
    /// virtio.
    pub disk_on_sata: bool,
    boots: usize,
}

impl Machine {
    /// A machine booting the default configuration's disk.
    pub fn new(name: &str) -> Result<Machine> {
        Machine::new_in(name, "")
    }

    /// A machine booting the disk of build configuration `config` (e.g.
    /// `trixie-dracut`; "" or `bookworm-standalone` is the default). Its
    /// directory is `vms/CONFIG-NAME` (`vms/NAME` for the default), so
    /// machines of the same name in different configurations do not collide.
    pub fn new_in(name: &str, config: &str) -> Result<Machine> {
        let manifest = DiskManifest::load_for(config)?;
        let artifacts = artifacts_dir_for(config)?;
        let dir = artifacts_dir().join("vms").join(vm_dir_name(name, config)?);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let overlay = dir.join("disk.qcow2");
        qcow2_overlay((&manifest.disk, "raw"), &overlay)?;
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(started_firmware_vars(&manifest.disk, "raw")?, &vars)?;
        Ok(Machine {
            name: name.into(),
            config: config_subdir(config)?.into(),
            artifacts,
            dir,
            overlay,
            vars,
            manifest,
            extra_args: Vec::new(),
            disk_cache: "unsafe",
            disks_first: Vec::new(),
            disk_on_sata: false,
            boots: 0,
        })
    }

    /// The machine's disk as `base` holds it (a qcow2 overlay of this
    /// configuration's disk, e.g. another machine's after its first boot)
    /// instead of the disk as built. `base` must stay while this machine
    /// lives.
    pub fn on_disk_from(self, base: &Path) -> Result<Machine> {
        std::fs::remove_file(&self.overlay)?;
        qcow2_overlay((base, "qcow2"), &self.overlay)?;
        Ok(self)
    }

    /// A user-mode network: the guest reaches the host's 127.0.0.1 as
    /// 10.0.2.2.
    pub fn with_network(mut self) -> Machine {
        self.extra_args
            .extend(["-nic".into(), "user,model=virtio-net-pci".into()]);
        self
    }

    /// The disk on the SATA (AHCI) controller, as on most PCs: the init's
    /// disk drivers of the first round find nothing, so it must ask for
    /// AHCI.
    pub fn on_sata(mut self) -> Machine {
        self.disk_on_sata = true;
        self
    }

    /// Disk writes reach the host file when the guest flushes, so killing
    /// QEMU is a power cut: what the guest synced survives, the rest may not.
    pub fn for_power_cuts(mut self) -> Machine {
        self.disk_cache = "writeback";
        self
    }

    /// Attaches the test payload disk of the machine's configuration (label
    /// IMMUBOOT_TEST, read-only): test images a guest installs with
    /// `immuboot upgrade`.
    pub fn with_payload(mut self) -> Machine {
        let payload = self.artifacts.join("payload.img");
        self.extra_args.extend([
            "-drive".into(),
            format!(
                "file={},if=virtio,format=raw,readonly=on",
                payload.display()
            ),
        ]);
        self
    }

    /// Attaches `disk` (raw) before the machine's own disk, so the guest
    /// and the firmware see it first.
    pub fn with_disk_first(mut self, disk: &Path) -> Machine {
        self.disks_first.push(disk.to_path_buf());
        self
    }

    /// Makes a disk that looks like this machine's to a search by label:
    /// new file systems (new UUIDs) labelled COS_OEM, COS_STATE and
    /// COS_PERSISTENT; COS_STATE holds `image` as both slots with the
    /// project's grub.cfg, the others a file `FOREIGN`. Returns its path.
    pub fn make_look_alike_disk(&self, image: &Path) -> Result<PathBuf> {
        let work = self.dir.join("look-alike");
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        let state = work.join("state");
        std::fs::create_dir_all(state.join("cOS"))?;
        std::fs::create_dir_all(state.join("grub"))?;
        for slot in ["a.img", "b.img"] {
            std::fs::copy(image, state.join("cOS").join(slot))
                .with_context(|| format!("copying {}", image.display()))?;
        }
        let grub_cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/grub/grub.cfg");
        std::fs::copy(&grub_cfg, state.join("grub/grub.cfg"))?;
        let mut parts = Vec::new();
        for (label, dir) in [
            ("COS_OEM", work.join("oem")),
            ("COS_STATE", state.clone()),
            ("COS_PERSISTENT", work.join("persistent")),
        ] {
            if label != "COS_STATE" {
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("FOREIGN"), "a look-alike disk\n")?;
            }
            let size_mib = dir_size(&dir)? / (1 << 20) + 32;
            let fs = work.join(format!("{label}.ext4"));
            run_tool(
                Command::new("mkfs.ext4")
                    .args(["-q", "-L", label, "-d"])
                    .arg(&dir)
                    .arg(&fs)
                    .arg(format!("{size_mib}M")),
                "mkfs.ext4 (package e2fsprogs)",
            )?;
            parts.push((fs, size_mib));
        }
        let disk = work.join("disk.img");
        let total_mib: u64 = 2 + parts.iter().map(|(_, s)| s).sum::<u64>();
        std::fs::File::create(&disk)?.set_len(total_mib << 20)?;
        let mut start_mib = 1;
        for (n, (fs, size_mib)) in parts.iter().enumerate() {
            let n = n + 1;
            run_tool(
                Command::new("sgdisk")
                    .arg(format!("--new={n}:{}M:+{size_mib}M", start_mib))
                    .arg(format!("--typecode={n}:8300"))
                    .arg(&disk),
                "sgdisk (package gdisk)",
            )?;
            run_tool(
                Command::new("dd")
                    .arg(format!("if={}", fs.display()))
                    .arg(format!("of={}", disk.display()))
                    .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
                    .arg(format!("seek={start_mib}")),
                "dd",
            )?;
            start_mib += size_mib;
        }
        Ok(disk)
    }

    /// Writes the file system image `fs` over the partition labelled
    /// `label` inside the overlay (it must fit).
    pub fn replace_partition(&self, label: &str, fs: &Path) -> Result<()> {
        let p = self.manifest.partition(label)?;
        let len = std::fs::metadata(fs)?.len();
        run_tool(
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c"])
                .arg(format!("write -q -s {} {} {len}", fs.display(), p.offset))
                .arg(&self.overlay),
            "qemu-io (package qemu-utils)",
        )
    }

    /// Zeroes the start of a partition inside the overlay, so its file system
    /// (and label) is gone, as if the partition were missing or blank.
    pub fn wipe_partition(&self, label: &str) -> Result<()> {
        let p = self.manifest.partition(label)?;
        let status = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c"])
            .arg(format!("write -z {} {}", p.offset, 1 << 20))
            .arg(&self.overlay)
            .stdout(Stdio::null())
            .status()
            .context("qemu-io (package qemu-utils)")?;
        if !status.success() {
            bail!("qemu-io failed to wipe {label}");
        }
        Ok(())
    }

    pub fn boot(&mut self) -> Result<Vm> {
        self.boot_with(&[])
    }

    /// Boots `kernel` and `initrd` with the command line `append` directly
    /// (the firmware starts them; GRUB is not run, so nothing is counted
    /// before the init), on the machine's disk.
    pub fn boot_kernel(&mut self, kernel: &Path, initrd: &Path, append: &str) -> Result<Vm> {
        self.boot_with(&[
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            append.into(),
        ])
    }

    fn boot_with(&mut self, more: &[String]) -> Result<Vm> {
        self.boots += 1;
        let log = self.dir.join(format!("boot{}.log", self.boots));
        let mut args = qemu_args(&self.overlay, "qcow2", &self.vars, false);
        for a in args.iter_mut() {
            *a = a.replace("cache=unsafe", &format!("cache={}", self.disk_cache));
        }
        args.extend(self.extra_args.iter().cloned());
        if self.disk_on_sata {
            let device = args
                .iter_mut()
                .find(|a| a.starts_with(&format!("virtio-blk-pci,drive={OWN_DISK},")))
                .context("the machine's own -device argument")?;
            // Port 0 of q35's built-in AHCI controller (the CD-ROM is on 2).
            *device = format!("ide-hd,drive={OWN_DISK},bus=ide.0,bootindex=1");
        }
        if !self.disks_first.is_empty() {
            let own = args
                .iter()
                .position(|a| a.starts_with(&format!("file={},", self.overlay.display())))
                .context("the machine's own -drive argument")?;
            // QEMU creates the devices in the order of their -device
            // arguments (disks given with if=virtio come after all of them).
            let first: Vec<String> = self
                .disks_first
                .iter()
                .enumerate()
                .flat_map(|(i, d)| {
                    [
                        "-drive".to_string(),
                        format!("file={},if=none,id=first-disk-{i},format=raw", d.display()),
                        "-device".to_string(),
                        format!("virtio-blk-pci,drive=first-disk-{i}"),
                    ]
                })
                .collect();
            // Before the "-drive" that precedes the machine's own disk.
            args.splice(own - 1..own - 1, first);
        }
        args.extend(more.iter().cloned());
        Vm::start(&args, &log)
    }
}

/// Bytes of the files under `dir` (directories and links count nothing).
fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() {
            dir_size(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The directory name of machine `name` of configuration `config` below
/// `vms/`: the name itself for the default, else `CONFIG-NAME`.
pub fn vm_dir_name(name: &str, config: &str) -> Result<String> {
    Ok(match config_subdir(config)? {
        "" => name.to_string(),
        sub => format!("{sub}-{name}"),
    })
}

/// A running QEMU whose serial console we read and type into.
pub struct Vm {
    child: Child,
    stdin: ChildStdin,
    output: Arc<Mutex<String>>,
    /// Per piece of output: its end offset in `output` and when it arrived
    /// (seconds since `started`), for [`Vm::timed_console`].
    arrivals: Arc<Mutex<Vec<(usize, f64)>>>,
    cursor: usize,
    seq: u32,
    pub log: PathBuf,
    pub started: Instant,
}

impl Vm {
    pub fn start(args: &[String], log: &Path) -> Result<Vm> {
        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start qemu-system-x86_64 (package qemu-system-x86)")?;
        let output = Arc::new(Mutex::new(String::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let mut logfile = std::fs::File::create(log)?;
        for stream in [
            Box::new(child.stdout.take().context("stdout")?) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().context("stderr")?),
        ] {
            let output = Arc::clone(&output);
            let arrivals = Arc::clone(&arrivals);
            let mut logfile = logfile.try_clone()?;
            let mut stream = stream;
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = logfile.write_all(&buf[..n]);
                    let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                    if let Ok(mut out) = output.lock() {
                        out.push_str(&text);
                        if let Ok(mut a) = arrivals.lock() {
                            a.push((out.len(), started.elapsed().as_secs_f64()));
                        }
                    }
                }
            });
        }
        logfile.flush()?;
        let stdin = child.stdin.take().context("stdin")?;
        Ok(Vm {
            child,
            stdin,
            output,
            arrivals,
            cursor: 0,
            seq: 0,
            log: log.into(),
            started,
        })
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Everything the console printed so far, with when each piece arrived.
    pub fn timed_console(&self) -> timing::TimedConsole {
        // Output first: every arrival recorded then ends within it.
        let text = self.console();
        let arrivals = self.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
        timing::TimedConsole {
            arrivals: arrivals
                .into_iter()
                .filter(|&(end, _)| end <= text.len())
                .collect(),
            text,
        }
    }

    fn tail(&self) -> String {
        let all = self.console();
        let start = all.len().saturating_sub(1500);
        let start = (start..all.len())
            .find(|i| all.is_char_boundary(*i))
            .unwrap_or(all.len());
        all[start..].to_string()
    }

    /// Waits for `pattern` in output not consumed yet; returns the match's
    /// captures as strings and moves past it.
    pub fn expect(&mut self, pattern: &str, timeout: Duration) -> Result<Vec<String>> {
        let re = Regex::new(pattern)?;
        let deadline = Instant::now() + timeout;
        loop {
            {
                let out = self
                    .output
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?;
                if let Some(c) = re.captures(&out[self.cursor..]) {
                    let caps = c
                        .iter()
                        .map(|m| m.map(|m| m.as_str().to_string()).unwrap_or_default())
                        .collect();
                    self.cursor += c.get(0).map(|m| m.end()).unwrap_or(0);
                    return Ok(caps);
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                bail!(
                    "QEMU exited ({status}) while waiting for /{pattern}/; console log {}:\n{}",
                    self.log.display(),
                    self.tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "no /{pattern}/ within {} s; console log {}:\n{}",
                    timeout.as_secs(),
                    self.log.display(),
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn send(&mut self, text: &str) -> Result<()> {
        self.stdin.write_all(text.as_bytes())?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Opens GRUB's hidden menu the way a person does: Esc tapped from when
    /// the firmware starts GRUB until the menu is drawn (GRUB waits a second
    /// for it, see image/grub/grub.cfg). Not earlier: Esc during the
    /// firmware's own start opens the firmware's setup.
    pub fn open_boot_menu(&mut self) -> Result<()> {
        self.expect(
            r"BdsDxe: starting Boot|Welcome to GRUB!",
            Duration::from_secs(180),
        )?;
        // The menu's entry, or GRUB booting it without the menu (its
        // "Booting `immuboot: active ...'" line contains the entry's title).
        let menu_or_boot = r"(Booting .)?\*?immuboot: active \(slot";
        for _ in 0..400 {
            self.send("\x1b")?;
            if let Ok(caps) = self.expect(menu_or_boot, Duration::from_millis(50)) {
                if caps[1].is_empty() {
                    return Ok(());
                }
                bail!(
                    "GRUB booted without opening its menu on Esc; console log {}:\n{}",
                    self.log.display(),
                    self.tail()
                );
            }
        }
        bail!(
            "GRUB's menu did not open on Esc; console log {}:\n{}",
            self.log.display(),
            self.tail()
        )
    }

    /// Logs in as root on the serial console and quiets kernel messages there.
    pub fn login(&mut self) -> Result<Duration> {
        self.expect(r"login: ", Duration::from_secs(400))?;
        let at = self.started.elapsed();
        self.log_in_at_prompt()?;
        Ok(at)
    }

    /// Logs in as root when the login prompt has already been seen.
    pub fn log_in_at_prompt(&mut self) -> Result<()> {
        self.send("root\n")?;
        self.expect("Password: ", Duration::from_secs(60))?;
        self.send(&format!("{ROOT_PASSWORD}\n"))?;
        self.expect(r"# ", Duration::from_secs(60))?;
        // No line editing and no echo: the console shows only output.
        self.send("set +o emacs +o vi; stty -echo; dmesg -n 1; export SYSTEMD_PAGER= SYSTEMD_COLORS=0 TERM=dumb\n")?;
        self.run_ok("true")?;
        Ok(())
    }

    /// Runs a shell command; returns its exit code and output.
    pub fn run(&mut self, cmd: &str) -> Result<(i32, String)> {
        self.seq += 1;
        let n = self.seq;
        // One input line; the markers are printed with printf so that an
        // echo of the line itself never matches them.
        self.send(&format!(
            "printf '@@%s@@\\n' B{n}; {cmd}; printf '@@%s:%s@@\\n' E{n} $?\n"
        ))?;
        self.expect(&format!(r"@@B{n}@@\n"), Duration::from_secs(120))?;
        let caps = self.expect(
            &format!(r"(?s)(.*?)@@E{n}:(\d+)@@"),
            Duration::from_secs(300),
        )?;
        let out = caps[1].clone();
        Ok((caps[2].parse()?, out))
    }

    pub fn run_ok(&mut self, cmd: &str) -> Result<String> {
        let (rc, out) = self.run(cmd)?;
        if rc != 0 {
            bail!("`{cmd}` exited {rc}:\n{out}");
        }
        Ok(out)
    }

    /// Reboots the guest once its boot has finished (systemd's start-up
    /// done, so immuboot-mark-good ran): a test's reboot is an operator's,
    /// not a boot cut short, which the boot counters count as unfinished.
    /// With -no-reboot QEMU exits at the reset.
    pub fn reboot(mut self) -> Result<()> {
        self.run("timeout 240 systemctl is-system-running --wait >/dev/null")?;
        self.send("systemctl reboot\n")?;
        self.wait_exit(Duration::from_secs(180))
    }

    /// Cuts the power: QEMU is killed, whatever the guest was doing.
    pub fn power_cut(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        bail!(
            "QEMU did not exit within {} s after reboot; log {}",
            timeout.as_secs(),
            self.log.display()
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The first file of the squashfs `image` whose path (as in the image:
/// `/usr/lib/...`) satisfies `wanted` and that has a data block of its
/// own: its path and the offset of that block in the image, read from the
/// image's inode table (backhand), whatever the image's compression. A file
/// smaller than a block lives only in a shared fragment and is skipped.
pub fn squashfs_first_block(
    image: &Path,
    wanted: impl Fn(&Path) -> bool,
) -> Result<Option<(PathBuf, u64)>> {
    use backhand::{FilesystemReader, InnerNode, SquashfsFileReader};
    let file =
        std::fs::File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let fs = FilesystemReader::from_reader(std::io::BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("cannot read the squashfs {}: {e}", image.display()))?;
    for node in fs.files() {
        let InnerNode::File(f) = &node.inner else {
            continue;
        };
        if f.block_sizes().is_empty() || !wanted(&node.fullpath) {
            continue;
        }
        let start = match f {
            SquashfsFileReader::Basic(b) => u64::from(b.blocks_start),
            SquashfsFileReader::Extended(e) => e.blocks_start,
        };
        return Ok(Some((node.fullpath.clone(), start)));
    }
    Ok(None)
}

/// The kernel's timestamp of a log line (`[    1.234567] ...`), also when
/// a serial console put terminal escapes before it.
pub fn kernel_timestamp(line: &str) -> Option<f64> {
    static STAMP: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let stamp = STAMP.get_or_init(|| Regex::new(r"\[\s*(\d+\.\d+)\]").expect("valid regex"));
    stamp.captures(line)?[1].parse().ok()
}

/// Seconds between two kernel log lines in `dmesg` output: from the first
/// line matching `from` to the first matching `to` after it.
pub fn dmesg_interval(dmesg: &str, from: &str, to: &str) -> Option<f64> {
    let mut lines = dmesg.lines();
    let start = lines
        .by_ref()
        .find(|l| l.contains(from))
        .and_then(kernel_timestamp)?;
    let end = lines.find(|l| l.contains(to)).and_then(kernel_timestamp)?;
    Some(end - start)
}

/// Appends one result line (JSON) that `cargo xtask test` prints at the end.
pub fn record_result(name: &str, value: serde_json::Value) -> Result<()> {
    let dir = artifacts_dir().join("results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string(&value)?,
    )?;
    Ok(())
}

/// A local OCI registry (Debian's docker-registry) on 127.0.0.1, for
/// upgrades pulled by a guest (which reaches it as 10.0.2.2:PORT).
pub struct Registry {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Registry {
    pub fn start(name: &str) -> Result<Registry> {
        let dir = artifacts_dir().join("registry").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n",
                dir.join("storage").display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start docker-registry (package docker-registry)")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("docker-registry did not listen on port {port}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Registry { child, port, dir })
    }

    /// Pushes an OCI layout's tag as REPO:TAG with skopeo.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) -> Result<()> {
        self.push_as(layout, tag, repo, tag)
    }

    /// Pushes an OCI layout's tag as REPO:AS (a moving tag such as
    /// `stable`).
    pub fn push_as(&self, layout: &Path, tag: &str, repo: &str, to: &str) -> Result<()> {
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--preserve-digests",
            ])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://127.0.0.1:{}/{repo}:{to}", self.port))
            .output()
            .context("cannot run skopeo (package skopeo)")?;
        if !out.status.success() {
            bail!(
                "skopeo copy to the registry failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The image lands at COS_STATE's offset of a copy; the rest of the
    /// disk and the disk itself stay as they were; too big an image is
    /// refused.
    #[test]
    fn image_in_state_partition_writes_only_that_partition_of_a_copy() {
        let dir = std::env::temp_dir().join(format!("immuboot-statepart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        std::fs::write(&disk, vec![0xAAu8; 64 * 1024]).unwrap();
        let manifest = DiskManifest {
            disk: disk.clone(),
            partitions: vec![
                Partition {
                    label: "COS_OEM".into(),
                    offset: 4096,
                    size: 8192,
                },
                Partition {
                    label: "COS_STATE".into(),
                    offset: 16384,
                    size: 16384,
                },
            ],
            initramfs_bytes: 0,
            suite: String::new(),
            initramfs: String::new(),
            kernel_release: String::new(),
        };
        let image = dir.join("a.img");
        std::fs::write(&image, vec![0x55u8; 10_000]).unwrap();
        let out = dir.join("copy.img");
        image_in_state_partition(&manifest, &image, &out).unwrap();
        let copy = std::fs::read(&out).unwrap();
        assert_eq!(copy.len(), 64 * 1024);
        assert!(copy[..16384].iter().all(|&b| b == 0xAA));
        assert!(copy[16384..26384].iter().all(|&b| b == 0x55));
        assert!(copy[26384..].iter().all(|&b| b == 0xAA));
        assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0xAA));
        std::fs::write(&image, vec![0x55u8; 16385]).unwrap();
        let err = image_in_state_partition(&manifest, &image, &out).unwrap_err();
        assert!(
            format!("{err:#}").contains("does not fit in COS_STATE"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A squashfs made by mksquashfs with lzo metadata and uncompressed
    /// data: the block found must hold the file's first bytes.
    #[test]
    fn finds_the_first_data_block_of_a_file() {
        let dir = std::env::temp_dir().join(format!("immuboot-sqfs-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(root.join("usr/lib/libbig-1.so"), &big).unwrap();
        std::fs::write(root.join("usr/lib/small"), b"tail only").unwrap();
        let image = dir.join("test.sqfs");
        let status = std::process::Command::new("mksquashfs")
            .arg(&root)
            .arg(&image)
            .args([
                "-comp",
                "lzo",
                "-noD",
                "-noF",
                "-noappend",
                "-quiet",
                "-no-progress",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("mksquashfs (squashfs-tools) runs");
        assert!(status.success());
        let bytes = std::fs::read(&image).unwrap();
        let (path, at) = squashfs_first_block(&image, |p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libbig-"))
        })
        .unwrap()
        .unwrap();
        assert_eq!(path, Path::new("/usr/lib/libbig-1.so"));
        let at = at as usize;
        assert_eq!(&bytes[at..at + 4096], &big[..4096]);
        // A file in a fragment only, and no file at all: nothing.
        assert_eq!(
            squashfs_first_block(&image, |p| p.ends_with("small")).unwrap(),
            None
        );
        assert_eq!(squashfs_first_block(&image, |_| false).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interval_between_kernel_lines() {
        let d = "[    1.500000] Run /init as init process\n[    1.600000] immuboot: x\n[    2.250000] systemd[1]: systemd 252 running\n";
        assert_eq!(
            dmesg_interval(d, "Run /init as init process", "systemd[1]:"),
            Some(0.75)
        );
        assert_eq!(dmesg_interval(d, "nothing", "systemd"), None);
    }

    #[test]
    fn configuration_directories() {
        assert_eq!(artifacts_dir_for("").unwrap(), artifacts_dir());
        assert_eq!(
            artifacts_dir_for("bookworm-standalone").unwrap(),
            artifacts_dir()
        );
        assert_eq!(
            artifacts_dir_for("trixie-dracut").unwrap(),
            artifacts_dir().join("trixie-dracut")
        );
        for bad in ["../x", "trixie", "a/b-c", "-x", "Trixie-dracut"] {
            assert!(artifacts_dir_for(bad).is_err(), "{bad}");
        }
        assert_eq!(vm_dir_name("s1-active", "").unwrap(), "s1-active");
        assert_eq!(
            vm_dir_name("s1-active", "bookworm-standalone").unwrap(),
            "s1-active"
        );
        assert_eq!(
            vm_dir_name("s1-active", "trixie-dracut").unwrap(),
            "trixie-dracut-s1-active"
        );
    }

    #[test]
    fn manifest_old_and_new() {
        let old = r#"{"disk": "/x/disk.img", "partitions": [{"label": "COS_GRUB", "offset": 1048576, "size": 67108864}], "initramfs_bytes": 1990000}"#;
        let m = DiskManifest::parse(old).unwrap();
        assert_eq!(m.initramfs_bytes, 1_990_000);
        assert_eq!(m.partition("COS_GRUB").unwrap().offset, 1 << 20);
        assert_eq!((m.suite.as_str(), m.kernel_release.as_str()), ("", ""));
        let new = r#"{"disk": "/x/disk.img", "partitions": [], "initramfs_bytes": 5, "suite": "trixie", "initramfs": "dracut", "kernel_release": "6.12.1+deb13-amd64"}"#;
        let m = DiskManifest::parse(new).unwrap();
        assert_eq!(
            (
                m.suite.as_str(),
                m.initramfs.as_str(),
                m.kernel_release.as_str()
            ),
            ("trixie", "dracut", "6.12.1+deb13-amd64")
        );
    }
}
