//! `immuboot`: the companion tool of an immuboot system.
#![forbid(unsafe_code)]

mod progress;
mod upgrade;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use immuboot_assess::{store, BootState, Health, Mode, Slot};
use serde_json::Value;
use std::path::{Path, PathBuf};

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
    Upgrade {
        source: String,
        /// Write the recovery image instead of a slot.
        #[arg(long)]
        recovery: bool,
        /// Reboot into the new slot when done.
        #[arg(long)]
        reboot: bool,
        #[command(flatten)]
        opts: WriteOptions,
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
struct WriteOptions {
    /// Boots the new slot gets to be marked good before the other slot
    /// takes over again.
    #[arg(long, default_value_t = immuboot_assess::DEFAULT_TRIES)]
    tries: u8,
    /// Allow a registry reached over plain http (e.g. one on localhost).
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
    /// The SHA-256 the squashfs must have (default: from SOURCE.sha256 if
    /// present).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// gzip level (1 fastest … 9 smallest) for a directory or OCI image
    /// squashed here [default: 6].
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(1..=9))]
    compression_level: Option<u8>,
    /// Where an OCI image is unpacked before it is squashed.
    #[arg(long, value_name = "DIR", default_value = "/usr/local/.immuboot-work")]
    work_dir: PathBuf,
    /// Mount point of COS_RECOVERY for --recovery (default: mounted from
    /// the partition labelled COS_RECOVERY).
    #[arg(long, value_name = "DIR")]
    recovery_dir: Option<PathBuf>,
    /// Print JSON lines (steps, progress, result) instead of text.
    #[arg(long)]
    json: bool,
}

impl WriteOptions {
    fn request(&self, source: &str) -> Result<upgrade::Request> {
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
            work_dir: self.work_dir.clone(),
            expected_sha256: self.sha256.as_ref().map(|s| s.to_ascii_lowercase()),
            compression_level: self.compression_level,
        })
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("immuboot: error: {e:#}");
        std::process::exit(1);
    }
}

fn read_facts(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join("boot.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn state_dir(cli: &Cli, facts: Option<&Value>) -> PathBuf {
    cli.state_dir.clone().unwrap_or_else(|| {
        facts
            .and_then(|f| f.get("state_mount"))
            .and_then(Value::as_str)
            .unwrap_or("/run/initramfs/cos-state")
            .into()
    })
}

fn run(cli: Cli) -> Result<()> {
    let facts = read_facts(&cli.facts_dir);
    let state = state_dir(&cli, facts.as_ref());
    match &cli.command {
        Command::Status { json } => status(facts.as_ref(), &state, *json),
        Command::NextBoot { entry } => {
            let mode: Mode = entry.parse()?;
            update(&state, |s| {
                s.next_entry = Some(mode);
                Ok(format!("next boot: {mode} (once)"))
            })
        }
        Command::MarkGood {
            checks,
            reboot_on_failure,
        } => {
            let slot = booted_slot(facts.as_ref())?;
            if let Err(failure) = run_checks(checks) {
                update(&state, |s| {
                    s.mark_bad(slot, &failure);
                    Ok(format!("slot {slot} marked bad: {failure}"))
                })?;
                if *reboot_on_failure {
                    eprintln!("immuboot: rebooting so the boot loader falls back");
                    let _ = std::process::Command::new("systemctl")
                        .arg("reboot")
                        .status();
                }
                anyhow::bail!("health check failed: {failure}");
            }
            update(&state, |s| {
                s.mark_good(slot);
                Ok(format!(
                    "slot {slot} marked good; active slot: {}",
                    s.active_slot
                ))
            })
        }
        Command::MarkBad { reason } => {
            let slot = booted_slot(facts.as_ref())?;
            update(&state, |s| {
                s.mark_bad(slot, reason);
                Ok(format!("slot {slot} marked bad: {reason}"))
            })
        }
        Command::MarkActive { slot, tries } => {
            let slot: Slot = slot.parse()?;
            update(&state, |s| {
                s.activate_on_trial(slot, *tries);
                Ok(format!(
                    "slot {slot} active on trial ({} tries)",
                    tries.clamp(&1, &9)
                ))
            })
        }
        Command::Rollback => update(&state, |s| {
            let slot = s.rollback()?;
            Ok(format!("slot {slot} is active"))
        }),
        Command::Upgrade {
            source,
            recovery,
            reboot,
            opts,
        } => {
            let req = opts.request(source)?;
            let mut rep = progress::Reporter::new(opts.json);
            let booted_mode = facts
                .as_ref()
                .and_then(|f| f.get("mode"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let installed = if *recovery {
                upgrade::check_recovery_writable(booted_mode)?;
                let dir = match &opts.recovery_dir {
                    Some(d) => d.clone(),
                    None => mount_label("COS_RECOVERY", Path::new("/run/immuboot/cos-recovery"))?,
                };
                with_writable(&dir, || upgrade::recovery(&req, &dir, &mut rep))?
            } else {
                let booted = booted_slot_or_recovery(facts.as_ref())?;
                with_writable(&state, || {
                    upgrade::Upgrade {
                        state_dir: &state,
                        booted,
                    }
                    .slot(&req, &mut rep)
                })?
            };
            rep.result(
                upgrade::to_json(std::slice::from_ref(&installed)),
                &format!(
                    "{} written: {} ({} MiB, sha256 {}{}) in {:.1} s{}",
                    installed.target,
                    installed.image.display(),
                    installed.bytes >> 20,
                    installed.sha256,
                    installed
                        .signed_by
                        .as_ref()
                        .map(|k| format!(", signature verified with {k}"))
                        .unwrap_or_default(),
                    installed.seconds,
                    if *recovery {
                        String::new()
                    } else {
                        format!(
                            "; it boots next, on trial ({} tries), with the booted slot as fallback",
                            opts.tries.clamp(1, 9)
                        )
                    }
                ),
            );
            if *reboot {
                reboot_now();
            }
            Ok(())
        }
        Command::Reset {
            source,
            reset_persistent,
            reset_oem,
            reboot,
            opts,
        } => {
            let booted = booted_slot_or_recovery(facts.as_ref())?;
            if booted.is_some() {
                anyhow::bail!("reset runs only in recovery mode: it rewrites both slots (run `immuboot next-boot recovery` and reboot)");
            }
            let recovery_image = format!("{}/cOS/recovery.img", immuboot_recovery::RECOVERY_MOUNT);
            let (spec, known_good) = match source {
                Some(s) => (s.clone(), false),
                None => (recovery_image, true),
            };
            let mut req = opts.request(&spec)?;
            if known_good {
                // The recovery image this system runs is trusted as it is
                // (its digest list is still checked); a signature applies to
                // images from elsewhere.
                req.trusted_keys.clear();
            }
            let mut rep = progress::Reporter::new(opts.json);
            let installed = with_writable(&state, || {
                upgrade::Upgrade {
                    state_dir: &state,
                    booted: None,
                }
                .reset(&req, known_good, &mut rep)
            })?;
            for (wanted, label) in [
                (*reset_persistent, "COS_PERSISTENT"),
                (*reset_oem, "COS_OEM"),
            ] {
                if wanted {
                    rep.step(&format!("wiping {label}"));
                    wipe_label(label)?;
                }
            }
            rep.result(
                upgrade::to_json(&installed),
                &format!(
                    "reset done: slots a and b rewritten from {spec}; slot a boots next{}",
                    if known_good { "" } else { " (on trial)" }
                ),
            );
            if *reboot {
                reboot_now();
            }
            Ok(())
        }
    }
}

fn reboot_now() {
    eprintln!("immuboot: rebooting");
    let _ = std::process::Command::new("systemctl")
        .arg("reboot")
        .status();
}

/// The slot this system booted, or None when it runs the recovery image.
fn booted_slot_or_recovery(facts: Option<&Value>) -> Result<Option<Slot>> {
    let facts =
        facts.context("no boot facts in /run/immuboot: this system was not booted by immuboot")?;
    match facts
        .get("target")
        .and_then(|t| t.get("slot"))
        .and_then(Value::as_str)
    {
        Some(s) => Ok(Some(s.parse()?)),
        None => Ok(None),
    }
}

/// The block device of a partition label (udev's by-label link).
fn device_of(label: &str) -> Result<PathBuf> {
    let link = Path::new("/dev/disk/by-label").join(label);
    std::fs::canonicalize(&link).with_context(|| {
        format!(
            "no partition labelled {label} ({} is missing)",
            link.display()
        )
    })
}

/// Mounts the partition labelled `label` on `at` (read-only; writers
/// remount it), unless something is mounted there already.
fn mount_label(label: &str, at: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(at)?;
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&at.display().to_string()));
    if !mounted {
        let dev = device_of(label)?;
        rustix::mount::mount(&dev, at, c"ext4", rustix::mount::MountFlags::RDONLY, c"")
            .with_context(|| {
                format!(
                    "cannot mount {} ({label}) on {}",
                    dev.display(),
                    at.display()
                )
            })?;
    }
    Ok(at.to_path_buf())
}

/// Removes everything on the partition labelled `label` (keeping
/// lost+found), through a private mount of it.
fn wipe_label(label: &str) -> Result<()> {
    let dev = device_of(label)?;
    let at = Path::new("/run/immuboot/wipe").join(label);
    std::fs::create_dir_all(&at)?;
    rustix::mount::mount(&dev, &at, c"ext4", rustix::mount::MountFlags::empty(), c"")
        .with_context(|| format!("cannot mount {} ({label})", dev.display()))?;
    let result = (|| -> Result<()> {
        for e in std::fs::read_dir(&at)?.flatten() {
            if e.file_name() == "lost+found" {
                continue;
            }
            let p = e.path();
            if e.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("cannot remove {}", p.display()))?;
        }
        rustix::fs::sync();
        Ok(())
    })();
    let _ = rustix::mount::unmount(&at, rustix::mount::UnmountFlags::empty());
    result
}

/// The slot this system booted, from the init's boot facts.
fn booted_slot(facts: Option<&Value>) -> Result<Slot> {
    booted_slot_or_recovery(facts)?
        .context("booted from the recovery image: there is no slot to mark")
}

/// Runs every executable in the directories, in name order; the first
/// failure is returned as a reason.
fn run_checks(dirs: &[PathBuf]) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.metadata()
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
            .collect();
        files.sort();
        for f in files {
            match std::process::Command::new(&f).status() {
                Ok(st) if st.success() => println!("health check {}: ok", f.display()),
                Ok(st) => return Err(format!("health check {} failed ({st})", f.display())),
                Err(e) => return Err(format!("health check {} could not run: {e}", f.display())),
            }
        }
    }
    Ok(())
}

fn os_release_field(field: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}=")))
        .map(|v| v.trim_matches('"').to_string())
}

fn health_text(h: Health) -> String {
    match h {
        Health::Good => "good".into(),
        Health::Trial { tries } => format!("on trial, {tries} tries left"),
        Health::Bad => "bad".into(),
    }
}

fn status(facts: Option<&Value>, state_dir: &Path, json: bool) -> Result<()> {
    let loaded = store::load(state_dir);
    let state = &loaded.state;
    let mode: Option<Mode> = facts
        .and_then(|f| f.get("mode"))
        .and_then(Value::as_str)
        .and_then(|m| m.parse().ok());
    let booted: Option<Slot> = facts
        .and_then(|f| f.get("target"))
        .and_then(|t| t.get("slot"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok());
    // Recorded by the init at boot; a later mark-good changes the state but
    // not why this boot was a fallback.
    let fallback = facts
        .and_then(|f| f.get("fallback"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| mode.and_then(|m| state.fallback_reason(m, booted)));
    if json {
        let out = serde_json::json!({
            "boot": facts,
            "image_version": os_release_field("IMAGE_VERSION"),
            "state": state,
            "state_source": loaded.source,
            "state_warnings": loaded.warnings,
            "fallback": fallback,
            "slot_versions": {
                "a": upgrade::image_version(&state_dir.join(Slot::A.image_path().trim_start_matches('/'))),
                "b": upgrade::image_version(&state_dir.join(Slot::B.image_path().trim_start_matches('/'))),
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let s = |v: Option<&Value>, k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string()
    };
    match facts {
        Some(f) => {
            let target = f.get("target");
            println!(
                "booted:       {} (slot {}) {}  version {}",
                s(Some(f), "mode"),
                s(target, "slot"),
                s(target, "image"),
                os_release_field("IMAGE_VERSION").unwrap_or_else(|| "-".into())
            );
            if let Some(why) = &fallback {
                println!("FALLBACK:     {why}");
            }
            println!(
                "image from:   {} {}",
                s(Some(f), "image_partition"),
                s(Some(f), "image_device")
            );
            let persistence = f
                .get("persistence")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            println!(
                "persistence:  {}",
                if persistence {
                    format!("yes ({} on /usr/local)", s(Some(f), "persistent_device"))
                } else {
                    "NO: changes to /usr/local and persistent paths are lost at reboot".into()
                }
            );
            println!("oem:          {}", s(Some(f), "oem_device"));
            println!("layout:       {}", s(Some(f), "layout_source"));
            let ms: u64 = f
                .get("steps")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.get("ms").and_then(Value::as_u64))
                        .sum()
                })
                .unwrap_or(0);
            println!(
                "init:         {} ms in the initramfs, switched root at {:.2} s",
                ms,
                f.get("uptime_switch_s")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
            );
            for w in f
                .get("warnings")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!("warning:      {}", w.as_str().unwrap_or_default());
            }
        }
        None => println!(
            "booted:       unknown (no boot facts in /run/immuboot: not booted by immuboot?)"
        ),
    }
    match &loaded.source {
        store::Source::Primary => {}
        store::Source::Backup { primary_error } => {
            println!("boot state:   from the backup copy ({primary_error})")
        }
        store::Source::Defaults { error } => {
            println!("boot state:   unreadable, defaults shown ({error})")
        }
    }
    println!("active slot:  {}", state.active_slot);
    let versions: Vec<(Slot, Option<String>)> = [Slot::A, Slot::B]
        .into_iter()
        .map(|slot| {
            let image = state_dir.join(slot.image_path().trim_start_matches('/'));
            (slot, upgrade::image_version(&image))
        })
        .collect();
    for (slot, version) in &versions {
        println!(
            "slot {slot}:       {}  (image version {})",
            health_text(state.health(*slot)),
            version.as_deref().unwrap_or("-")
        );
    }
    println!(
        "next boot:    {}",
        match state.next_entry {
            Some(m) => format!("{m} (one-shot)"),
            None => "automatic".into(),
        }
    );
    if let Some(f) = &state.last_failure {
        println!("last failure: {f}");
    }
    for w in &loaded.warnings {
        println!("warning:      {w}");
    }
    Ok(())
}

/// Runs `f` with `dir`'s file system writable, restoring read-only after.
fn with_writable<T>(dir: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let ro = rustix::fs::statvfs(dir)
        .map(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
        .unwrap_or(false);
    if ro {
        rustix::mount::mount_remount(dir, rustix::mount::MountFlags::empty(), c"")
            .with_context(|| format!("cannot remount {} read-write", dir.display()))?;
    }
    let result = f();
    if ro {
        rustix::mount::mount_remount(dir, rustix::mount::MountFlags::RDONLY, c"")
            .with_context(|| format!("cannot remount {} read-only again", dir.display()))?;
    }
    result
}

/// Changes the boot state: both copies rewritten atomically.
fn update(state_dir: &Path, change: impl FnOnce(&mut BootState) -> Result<String>) -> Result<()> {
    let loaded = store::load(state_dir);
    if let store::Source::Defaults { error } = &loaded.source {
        if !store::primary(state_dir)
            .parent()
            .is_some_and(|p| p.is_dir())
        {
            anyhow::bail!(
                "no boot state directory under {}: {error}",
                state_dir.display()
            );
        }
        eprintln!("immuboot: warning: boot state unreadable ({error}); starting from defaults");
    }
    let mut state = loaded.state.clone();
    let message = change(&mut state)?;
    with_writable(state_dir, || {
        upgrade::save_state(state_dir, &loaded.env, &state, || {})
    })?;
    println!("{message}");
    Ok(())
}
