//! `cargo xtask`: build the static init, the initramfs, the demo OS images and
//! the disk; boot it in QEMU; run every test.
#![forbid(unsafe_code)]

mod bench;
mod bench_boot;
mod config;
mod disk;
mod fuzz;
mod host;
mod image;
mod initramfs;
mod results;
mod rootfs;
mod util;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use config::Config;
use disk::{About, Content, Manifest, PartSpec};
use immuboot_assess::{grubenv::GrubEnv, BootState};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use util::{out_dir, run, step, workspace_root, Stamp};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "immuboot build tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the demo disk of one configuration: target/immuboot/disk.img
    /// for the default (bookworm, standalone), else
    /// target/immuboot/SUITE-INITRAMFS/disk.img; only what changed is rebuilt.
    Build {
        #[command(flatten)]
        config: Config,
    },
    /// Build what is missing and boot the demo disk of one configuration in
    /// QEMU on this terminal (log in as root, password immuboot; quit with
    /// Ctrl-A X). Changes in the VM persist in run/ beside the disk until the
    /// disk is rebuilt.
    Run {
        #[command(flatten)]
        config: Config,
        /// Start from a fresh copy of the built disk.
        #[arg(long)]
        fresh: bool,
    },
    /// Run every test: unit tests, then build the default configuration and
    /// bookworm-dracut, trixie-standalone and trixie-dracut, then real boots
    /// in QEMU.
    Test {
        /// Only the unit tests.
        #[arg(long)]
        unit: bool,
        /// Only QEMU scenarios whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Every power-cut point (57), not CI's sample (17): s18c and all
        /// seven points of each boot-state commit in s29a-s29c.
        #[arg(long)]
        full: bool,
    },
    /// Run every cargo-fuzz target of fuzz/ in turn (not part of `test`):
    /// installs cargo-fuzz if missing, prints executions, corpus size and
    /// crashes per target.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
        /// Stop a target after this many executions, if that comes before
        /// --time (libFuzzer's -runs).
        #[arg(long)]
        runs: Option<u64>,
    },
    /// Install the host packages the build needs (apt-get, as root).
    Deps,
    /// Benchmarks: they print numbers and ratios and assert nothing.
    Bench {
        #[command(subcommand)]
        what: Option<BenchWhat>,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// `immuboot upgrade` against cp + sync and against skopeo + umoci +
    /// mksquashfs on this host (the default).
    Upgrade,
    /// Real boots in QEMU, one VM at a time, median of several: immuboot
    /// standalone, in dracut, and started directly; the busybox floor;
    /// Debian's dracut and initramfs-tools on a plain ext4 root. Writes
    /// target/immuboot/results/bench-boot.{json,md}.
    Boot {
        /// Debian suite of the demo OS.
        #[arg(long, value_enum, default_value_t)]
        suite: config::Suite,
        /// Boots per variant.
        #[arg(long, default_value_t = 3)]
        boots: usize,
        /// Only these variants, comma-separated: a variant's whole name
        /// selects it alone, a part of a name every variant containing it
        /// (`--only "immuboot,dracut direct"`).
        #[arg(long)]
        only: Option<String>,
        /// Run the guest CPU on QEMU's instruction counter (-icount
        /// shift=1): the kernel- and guest-clock phases then count guest
        /// work, repeatable to about a percent on a busy host (QEMU is
        /// about twice as slow).
        #[arg(long)]
        icount: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build { config } => build_all(config).map(|_| ()),
        Cmd::Run { config, fresh } => run_vm(config, fresh),
        Cmd::Test { unit, filter, full } => test(unit, filter, full),
        Cmd::Fuzz { time, target, runs } => fuzz::fuzz(time, runs, target),
        Cmd::Deps => host::ensure(),
        Cmd::Bench { what } => match what.unwrap_or(BenchWhat::Upgrade) {
            BenchWhat::Upgrade => step("host tools", host::ensure)
                .and_then(|()| step("static init and CLI", build_static))
                .and_then(|(_, cli)| step("upgrade benchmark", || bench::bench(&cli))),
            BenchWhat::Boot {
                suite,
                boots,
                only,
                icount,
            } => {
                if icount {
                    // Read by the VM harness (tcg_machine_args), set while
                    // xtask is still one thread.
                    std::env::set_var(immuboot_qemu_tests::ICOUNT_ENV, "1");
                }
                bench_boot(suite, boots, only)
            }
        },
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The init and the CLI, statically linked (glibc with crt-static, libblkid.a).
fn build_static() -> Result<(PathBuf, PathBuf)> {
    run(cargo()
        .current_dir(workspace_root())
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "-p",
            "immuboot-init",
            "-p",
            "immuboot",
        ]))?;
    let dir = workspace_root().join("target").join(TARGET).join("release");
    Ok((dir.join("immuboot-init"), dir.join("immuboot")))
}

fn link_into(src: &Path, dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    let _ = fs::remove_file(dst);
    fs::hard_link(src, dst).or_else(|_| fs::copy(src, dst).map(|_| ()))?;
    Ok(())
}

/// Host tools, root, the static binaries: what every configuration needs.
fn prepare() -> Result<(PathBuf, PathBuf)> {
    step("host tools", host::ensure)?;
    if !util::is_root() {
        bail!("building the demo image needs root (mmdebstrap, file ownership in the root file system, dracut in a chroot)");
    }
    step("static init and CLI", build_static)
}

/// Builds both configurations of `suite`, then boots them and the
/// yardsticks (xtask/src/bench_boot.rs).
fn bench_boot(suite: config::Suite, boots: usize, only: Option<String>) -> Result<()> {
    if boots == 0 {
        bail!("--boots must be at least 1");
    }
    let (init, cli) = prepare()?;
    let (standalone, dracut) = bench_boot::configs(suite);
    for c in [standalone, dracut] {
        step(&format!("configuration {c}"), || {
            build_config(c, &init, &cli)
        })?;
    }
    step("boot benchmark", || {
        bench_boot::bench_boot(suite, boots, only, &standalone, &dracut)
    })
}

fn build_all(config: Config) -> Result<Manifest> {
    let (init, cli) = prepare()?;
    build_config(config, &init, &cli)
}

/// One configuration's images, disk and payload disk, in its directory.
fn build_config(config: Config, init: &Path, cli: &Path) -> Result<Manifest> {
    let suite = config.suite.name();
    let tar = step(
        &format!("Debian {suite} root file system (mmdebstrap, cached)"),
        || rootfs::tarball(config.suite),
    )?;
    let images = step(&format!("OS images of {config} (squashfs)"), || {
        image::build(config, &tar, init, cli)
    })?;
    let out = config.out_dir();
    // One GRUB for every configuration: the host's.
    let efi = out_dir().join("BOOTX64.EFI");
    step("GRUB EFI binary", || image::grub_efi(&efi))?;

    step(&format!("disk image of {config}"), || {
        let parts = out.join("parts");
        if parts.exists() {
            fs::remove_dir_all(&parts)?;
        }
        let grub_cfg = workspace_root().join("image/grub/grub.cfg");
        let state = parts.join("state");
        let recovery = parts.join("recovery");
        for v in image::VARIANTS {
            let dst = if v.variant == "recovery" {
                &recovery
            } else {
                &state
            };
            for f in [
                v.file.to_string(),
                format!("{}.sha256", v.file),
                format!("{}.boot.sha256", v.file),
            ] {
                link_into(&images.dir.join(&f), &dst.join("cOS").join(&f))?;
            }
        }
        fs::create_dir_all(state.join("grub"))?;
        fs::copy(&grub_cfg, state.join("grub/grub.cfg"))?;
        // Both slots hold images known to boot; slot a (the newer) is active.
        let mut env = GrubEnv::new();
        BootState::default().store(&mut env)?;
        for copy in ["grub/grubenv", "grub/grubenv.bak"] {
            fs::write(state.join(copy), env.to_block()?)?;
        }
        fs::create_dir_all(parts.join("oem/immuboot"))?;
        fs::create_dir_all(parts.join("persistent"))?;

        let img_size = |f: &str| fs::metadata(images.dir.join(f)).map(|m| m.len());
        let slot = img_size("a.img")?.max(img_size("b.img")?);
        let specs = vec![
            PartSpec {
                label: "COS_GRUB",
                type_code: "ef00",
                size_mib: 64,
                content: Content::Fat(vec![(efi.clone(), "/EFI/BOOT/BOOTX64.EFI".into())]),
            },
            PartSpec {
                label: "COS_OEM",
                type_code: "8300",
                size_mib: 64,
                content: Content::Ext4(parts.join("oem")),
            },
            PartSpec {
                label: "COS_RECOVERY",
                type_code: "8300",
                // The recovery image, and room to write its successor
                // (`immuboot upgrade --recovery`) beside it.
                size_mib: disk::mib_for(
                    2 * img_size("recovery.img")? + img_size("recovery.img")? / 2,
                    64,
                ),
                content: Content::Ext4(recovery.clone()),
            },
            // Two slots plus room for the temporary file of an upgrade (and
            // for a new image somewhat larger than today's).
            PartSpec {
                label: "COS_STATE",
                type_code: "8300",
                size_mib: disk::mib_for(3 * slot + slot / 2, 128),
                content: Content::Ext4(state.clone()),
            },
            PartSpec {
                label: "COS_PERSISTENT",
                type_code: "8300",
                size_mib: 512,
                content: Content::Ext4(parts.join("persistent")),
            },
        ];
        let stamp = Stamp::default()
            .file(&images.dir.join("a.img.stamp"))?
            .file(&grub_cfg)?
            .file(&efi)?
            .file(&workspace_root().join("xtask/src/disk.rs"))?
            .file(&workspace_root().join("xtask/src/main.rs"))?;
        let manifest = disk::build(
            &specs,
            &out.join("work"),
            &out.join("disk.img"),
            &stamp,
            About {
                initramfs_bytes: images.initramfs_bytes,
                suite: suite.into(),
                initramfs: config.initramfs.name().into(),
                kernel_release: images.kernel_release.clone(),
            },
        )?;
        fs::write(
            out.join("disk.json"),
            serde_json::to_string_pretty(&manifest)?,
        )?;
        fs::remove_dir_all(&parts)?;
        Ok(manifest)
    })
    .and_then(|manifest| {
        step("test payload disk", || {
            test_payload(&out, &images.dir.join("test"))
        })?;
        Ok(manifest)
    })
}

/// A second disk for the scenarios (label IMMUBOOT_TEST), `payload.img` in
/// `dir`: the test images a running guest installs with `immuboot upgrade`.
fn test_payload(dir: &Path, test_images: &Path) -> Result<()> {
    let out = dir.join("payload.img");
    let images_stamp = test_images.with_file_name("a.img.stamp");
    let stamp = Stamp::default().file(&images_stamp)?.text("payload-v3");
    if stamp.is_current(&out) {
        return Ok(());
    }
    let du = Command::new("du").arg("-sb").arg(test_images).output()?;
    let bytes: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du of the test images")?;
    let _ = fs::remove_file(&out);
    // ext4 needs room for inodes and metadata beside the files.
    fs::File::create(&out)?.set_len(disk::mib_for(bytes + bytes / 4, 128) << 20)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "IMMUBOOT_TEST", "-d"])
        .arg(test_images)
        .arg(&out))?;
    stamp.record(&out)
}

fn run_vm(config: Config, fresh: bool) -> Result<()> {
    let manifest = build_all(config)?;
    let dir = config.out_dir().join("run");
    fs::create_dir_all(&dir)?;
    let overlay = dir.join("disk.qcow2");
    let vars = dir.join("OVMF_VARS.fd");
    let stale = match (fs::metadata(&overlay), fs::metadata(&manifest.disk)) {
        (Ok(o), Ok(d)) => d.modified()? > o.modified()?,
        _ => true,
    };
    if fresh || stale {
        let _ = fs::remove_file(&overlay);
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&manifest.disk)
            .arg(&overlay))?;
        fs::copy(immuboot_qemu_tests::OVMF_VARS, &vars)?;
    }
    eprintln!(
        "==> booting {} in QEMU (TCG): log in as root, password immuboot; quit with Ctrl-A X",
        overlay.display()
    );
    use std::os::unix::process::CommandExt;
    let err = Command::new("qemu-system-x86_64")
        .args(immuboot_qemu_tests::qemu_args(
            &overlay, "qcow2", &vars, true,
        ))
        .exec();
    Err(err).context("cannot run qemu-system-x86_64")
}

fn test(unit_only: bool, filter: Option<String>, full: bool) -> Result<()> {
    step("host tools", host::ensure)?;
    step("unit tests", || {
        run(cargo()
            .current_dir(workspace_root())
            .args(["test", "--workspace"]))
    })?;
    if unit_only {
        return Ok(());
    }
    let (init, cli) = prepare()?;
    build_config(Config::default(), &init, &cli)?;
    // The other configurations: only what their scenarios use.
    for config in config::EXTRA {
        step(&format!("configuration {config}"), || {
            build_config(*config, &init, &cli)
        })?;
    }
    let results = out_dir().join("results");
    if results.exists() {
        fs::remove_dir_all(&results)?;
    }
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args([
            "test",
            "-p",
            "immuboot-qemu-tests",
            "--test",
            "scenarios",
            "--",
        ])
        .args(["--ignored", "--test-threads=2"])
        .env("IMMUBOOT_TEST_FULL", if full { "1" } else { "0" });
    if let Some(f) = &filter {
        cmd.arg(f);
    }
    let outcome = step("QEMU scenarios (real boots, two VMs at a time)", || {
        run(&mut cmd)
    });
    print_results(&results);
    outcome
}

/// Prints the figures the scenarios recorded (timings, sizes).
fn print_results(dir: &Path) {
    let results = results::load(dir);
    if results.is_empty() {
        return;
    }
    eprintln!("==> measured");
    for (name, value) in &results {
        eprintln!("    {name}: {value}");
    }
    let chart = dir.join("s1-timeline.svg");
    if chart.exists() {
        eprintln!(
            "==> the boot's timeline as a chart (immuboot timeline --svg, scenario 1): {}",
            chart.display()
        );
    }
    if let Some(table) = results::initramfs_table(&results) {
        eprintln!("==> initramfs phase (\"Run /init\" to systemd in the real root, kernel clock) and compressed size");
        eprint!("{table}");
    }
}
