//! `immuboot`: the companion tool of an immuboot system.
#![forbid(unsafe_code)]

#[macro_use]
mod out;
mod boot;
mod cmd;
mod progress;
mod upgrade;

use anyhow::Result;
use clap::{Parser, Subcommand};
use immuboot_cli::auto;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "immuboot",
    version,
    about = "Inspect and steer an immuboot system's boot"
)]
struct Cli {
    /// Where the init left its boot facts (boot.json).
    #[arg(
        long,
        global = true,
        default_value = "/run/immuboot",
        value_name = "DIR"
    )]
    facts_dir: PathBuf,
    /// Mount point of COS_STATE (default: as recorded by the init, else
    /// /run/initramfs/cos-state). A plain directory works for testing.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what booted, from which image, and the boot state.
    Status {
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Where this boot's time went, on the kernel's clock: firmware and boot
    /// loader (when the loader recorded them), the kernel, each step of the
    /// init, systemd until the boot finished.
    Timeline {
        /// Print machine-readable JSON.
        #[arg(long)]
        json: bool,
        /// Also draw it as an SVG chart, one bar per row, into FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
    },
    /// Choose the image for the next boot only (active, passive or recovery);
    /// the boot after it returns to the automatic choice.
    NextBoot {
        #[arg(value_parser = ["active", "passive", "recovery"])]
        entry: String,
    },
    /// Mark the booted slot good (after running health checks, if given):
    /// it stays active, or becomes active again after a fallback.
    MarkGood {
        /// Directories of executables to run first (greenboot's required.d);
        /// any failure marks the boot bad instead.
        #[arg(long = "checks", value_name = "DIR")]
        checks: Vec<PathBuf>,
        /// After a failed check, reboot so the boot loader falls back.
        #[arg(long)]
        reboot_on_failure: bool,
    },
    /// Mark the booted slot bad with a reason; the next boot falls back.
    MarkBad { reason: String },
    /// Make SLOT the active slot on trial: it boots at most TRIES times
    /// until marked good, then the other slot takes over again.
    MarkActive {
        #[arg(value_parser = ["a", "b"])]
        slot: String,
        #[arg(long, default_value_t = immuboot_assess::DEFAULT_TRIES)]
        tries: u8,
    },
    /// Make the other slot active, if it is known good.
    Rollback,
    /// Write a new image into the slot that did not boot (or the recovery
    /// image), verify it, and make it the active slot on trial.
    ///
    /// SOURCE is a squashfs file, a directory holding a root file system,
    /// an OCI image layout directory (or oci:DIR[:TAG]), a docker-archive
    /// tar (docker-archive:FILE), or a registry reference
    /// (REGISTRY/REPO:TAG, docker://REF).
    ///
    /// When the booted slot, or the slot already on trial, holds exactly
    /// that image (the same SHA-256 for a squashfs, the same manifest
    /// digest for an OCI image), nothing is written and it says so.
    #[command(after_help = "\
An OCI source's manifest digest is resolved first, without downloading \
layers; a squashfs is hashed only when a slot has the same length. A \
directory has no identity and is always written. --recovery always writes.

Registry credentials come from $REGISTRY_AUTH_FILE, else the first of \
/oem/immuboot/auth.json, /etc/immuboot/auth.json, /run/containers/0/auth.json \
and ~/.docker/config.json with an entry for the registry (the format podman \
login and docker login write); without one the pull is anonymous.

Registry mirrors, other locations, registries without TLS (insecure = true) \
and blocked registries come from registries.conf \
(containers-registries.conf(5), version 2): $CONTAINERS_REGISTRIES_CONF, else \
the first that exists of /oem/immuboot/registries.conf, \
/etc/immuboot/registries.conf and /etc/containers/registries.conf. A mirror that does not serve the image is \
reported and the next tried; the image's identity is its manifest digest, \
wherever it came from.

Exit status: 0 when the image was written or was there already (--check: \
nothing to do), 100 with --check when an upgrade would write a slot, 1 on \
any other error, 2 on a usage error.")]
    Upgrade {
        source: String,
        /// Write the recovery image instead of a slot.
        #[arg(long)]
        recovery: bool,
        /// Reboot into the new slot when done (not when nothing was written).
        #[arg(long)]
        reboot: bool,
        /// Only say whether an upgrade would write a slot; change nothing.
        #[arg(long, conflicts_with_all = ["recovery", "force", "reboot"])]
        check: bool,
        /// Write the slot even when it would be a no-op.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        opts: WriteOptions,
    },
    /// One unattended upgrade run (what immuboot-upgrade.timer starts),
    /// driven by /oem/immuboot/upgrade.yaml: upgrade when the source has
    /// something new that has not failed on this machine, then reboot as
    /// configured. Without the file it does nothing.
    #[command(after_help = "\
The configuration (YAML): source (required: REGISTRY/REPO:TAG, oci:DIR:TAG or \
a squashfs file), plain_http (false), schedule (a systemd calendar \
expression for the timer, default daily), reboot (never, now, or HH:MM: the \
next such time, local; default never), tries (3). Mirrors come from \
registries.conf, as for `immuboot upgrade` (see its --help).

Each run first settles what the previous one installed: marked good, done; \
marked bad (its trial boots failed), remembered as failed, and a later run \
does not install that image again until --forget-failed. The memory is \
cOS/auto-upgrade.json on COS_STATE.")]
    AutoUpgrade {
        /// The configuration file.
        #[arg(long, value_name = "FILE", default_value = auto::CONFIG)]
        config: PathBuf,
        /// Forget the images that failed here, so they may be installed again.
        #[arg(long)]
        forget_failed: bool,
        /// Where an OCI image is unpacked before it is squashed.
        #[arg(long, value_name = "DIR", default_value = "/usr/local/.immuboot-work")]
        work_dir: PathBuf,
        /// Trusted minisign public key (as for `upgrade`).
        #[arg(long = "trusted-key", value_name = "FILE")]
        trusted_keys: Vec<PathBuf>,
        /// Trusted cosign public key (as for `upgrade`).
        #[arg(long = "cosign-key", value_name = "FILE")]
        cosign_keys: Vec<PathBuf>,
        /// Print JSON lines (steps, progress, result) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check slot a, slot b and the recovery image against the digests
    /// recorded when each was written; record a corrupted image that is not
    /// running (a slot is marked bad, the recovery image's failure shown by
    /// `status`).
    #[command(after_help = "\
For each image: ok, CORRUPTED (its SHA-256 and the recorded one), UNREADABLE \
(an I/O error), not checked (no digest recorded) or missing, with bytes and \
seconds. The running slot is reported and recorded as the last failure, but \
not marked bad: that would move the next boot to the other slot.

Exit status: 0 when no image differs from its digest (missing images and \
images without a digest are reported, not failures), 3 when one is \
corrupted or unreadable, 1 on any other error, 2 on a usage error.")]
    Verify {
        /// Print JSON lines (steps, progress, result) instead of text.
        #[arg(long)]
        json: bool,
        /// Mount point of COS_RECOVERY (default: mounted read-only from the
        /// partition labelled COS_RECOVERY, or the running one in recovery
        /// mode).
        #[arg(long, value_name = "DIR")]
        recovery_dir: Option<PathBuf>,
    },
    /// Recovery mode only: rewrite both slots from the recovery image (or
    /// SOURCE) and make slot a active; optionally wipe COS_PERSISTENT and
    /// COS_OEM.
    Reset {
        source: Option<String>,
        /// Remove everything on COS_PERSISTENT (/usr/local and the
        /// persistent paths).
        #[arg(long)]
        reset_persistent: bool,
        /// Remove everything on COS_OEM.
        #[arg(long)]
        reset_oem: bool,
        /// Reboot into slot a when done.
        #[arg(long)]
        reboot: bool,
        #[command(flatten)]
        opts: WriteOptions,
    },
}

#[derive(clap::Args)]
pub(crate) struct WriteOptions {
    /// Boots the new slot gets to be marked good before the other slot
    /// takes over again.
    #[arg(long, default_value_t = immuboot_assess::DEFAULT_TRIES)]
    pub(crate) tries: u8,
    /// Allow the registry SOURCE names to be reached over plain http (e.g.
    /// one on localhost); mirrors from registries.conf need insecure = true
    /// there instead.
    #[arg(long)]
    plain_http: bool,
    /// minisign signature of a squashfs SOURCE (default: SOURCE.minisig).
    #[arg(long, value_name = "FILE")]
    signature: Option<PathBuf>,
    /// Trusted minisign public key; when any configured key exists,
    /// unsigned or tampered images are refused [default:
    /// /etc/immuboot/trusted.pub, /oem/immuboot/trusted.pub]
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,
    /// Trusted cosign public key (PEM, as `cosign generate-key-pair`
    /// writes it); when any configured key exists, OCI images must carry a
    /// cosign signature by one [default: /etc/immuboot/cosign.pub,
    /// /oem/immuboot/cosign.pub]
    #[arg(long = "cosign-key", value_name = "FILE")]
    cosign_keys: Vec<PathBuf>,
    /// The SHA-256 the squashfs must have (default: from SOURCE.sha256 if
    /// present).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// lzo compression level (1 fastest … 9 smallest) for a directory or
    /// OCI image squashed here [default: 5].
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(1..=9))]
    compression_level: Option<u8>,
    /// Where an OCI image is unpacked before it is squashed.
    #[arg(long, value_name = "DIR", default_value = "/usr/local/.immuboot-work")]
    work_dir: PathBuf,
    /// Mount point of COS_RECOVERY for --recovery (default: mounted from
    /// the partition labelled COS_RECOVERY).
    #[arg(long, value_name = "DIR")]
    pub(crate) recovery_dir: Option<PathBuf>,
    /// Print JSON lines (steps, progress, result) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

impl WriteOptions {
    pub(crate) fn request(&self, source: &str) -> Result<upgrade::Request> {
        Ok(upgrade::Request {
            source: upgrade::Source::classify(source)?,
            tries: self.tries,
            plain_http: self.plain_http,
            signature: self.signature.clone(),
            trusted_keys: if self.trusted_keys.is_empty() {
                upgrade::TRUSTED_KEYS.iter().map(PathBuf::from).collect()
            } else {
                self.trusted_keys.clone()
            },
            cosign_keys: if self.cosign_keys.is_empty() {
                upgrade::COSIGN_KEYS.iter().map(PathBuf::from).collect()
            } else {
                self.cosign_keys.clone()
            },
            work_dir: self.work_dir.clone(),
            expected_sha256: self.sha256.as_ref().map(|s| s.to_ascii_lowercase()),
            compression_level: self.compression_level,
        })
    }
}

fn main() {
    let cli = Cli::parse();
    out::install_logger();
    if let Err(e) = run(cli) {
        errln!("immuboot: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let boot = boot::Boot::read(&cli.facts_dir);
    let state_dir = cli.state_dir.clone().unwrap_or_else(|| boot.state_mount());
    let ctx = cmd::Ctx { boot, state_dir };
    match &cli.command {
        Command::Status { json } => cmd::status::run(&ctx, *json),
        Command::Timeline { json, svg } => cmd::timeline::run(&ctx, *json, svg.as_deref()),
        Command::NextBoot { entry } => cmd::state_cmds::next_boot(&ctx, entry),
        Command::MarkGood {
            checks,
            reboot_on_failure,
        } => cmd::mark_good::run(&ctx, checks, *reboot_on_failure),
        Command::MarkBad { reason } => cmd::state_cmds::mark_bad(&ctx, reason),
        Command::MarkActive { slot, tries } => cmd::state_cmds::mark_active(&ctx, slot, *tries),
        Command::Rollback => cmd::state_cmds::rollback(&ctx),
        Command::Upgrade {
            source,
            check: true,
            opts,
            ..
        } => {
            if !cmd::upgrade::check(&ctx, source, opts)? {
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::process::exit(cmd::upgrade::EXIT_UPGRADE_AVAILABLE);
            }
            Ok(())
        }
        Command::Upgrade {
            source,
            recovery,
            reboot,
            force,
            opts,
            ..
        } => cmd::upgrade::run(&ctx, source, *recovery, *reboot, *force, opts),
        Command::AutoUpgrade {
            config,
            forget_failed,
            work_dir,
            trusted_keys,
            cosign_keys,
            json,
        } => cmd::auto_upgrade::run(
            &ctx,
            &cmd::auto_upgrade::Options {
                config: config.clone(),
                forget_failed: *forget_failed,
                work_dir: work_dir.clone(),
                trusted_keys: if trusted_keys.is_empty() {
                    upgrade::TRUSTED_KEYS.iter().map(PathBuf::from).collect()
                } else {
                    trusted_keys.clone()
                },
                cosign_keys: if cosign_keys.is_empty() {
                    upgrade::COSIGN_KEYS.iter().map(PathBuf::from).collect()
                } else {
                    cosign_keys.clone()
                },
                json: *json,
            },
        ),
        Command::Verify { json, recovery_dir } => {
            if cmd::verify::run(&ctx, *json, recovery_dir.as_deref())? {
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::process::exit(cmd::verify::EXIT_CORRUPTED);
            }
            Ok(())
        }
        Command::Reset {
            source,
            reset_persistent,
            reset_oem,
            reboot,
            opts,
        } => cmd::reset::run(
            &ctx,
            source.as_deref(),
            cmd::reset::Wipe {
                persistent: *reset_persistent,
                oem: *reset_oem,
            },
            *reboot,
            opts,
        ),
    }
}
