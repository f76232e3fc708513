//! `immuboot`: the companion tool of an immuboot system.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use immuboot_assess::{grubenv, BootState, Mode, GRUBENV_PATH};
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
    /// the boot after it returns to the active image.
    NextBoot {
        #[arg(value_parser = ["active", "passive", "recovery"])]
        entry: String,
    },
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

fn env_path(state: &Path) -> PathBuf {
    state.join(GRUBENV_PATH.trim_start_matches('/'))
}

fn run(cli: Cli) -> Result<()> {
    let facts = read_facts(&cli.facts_dir);
    let state = state_dir(&cli, facts.as_ref());
    match &cli.command {
        Command::Status { json } => status(facts.as_ref(), &state, *json),
        Command::NextBoot { entry } => next_boot(&state, entry.parse()?),
    }
}

fn os_release_field(field: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}=")))
        .map(|v| v.trim_matches('"').to_string())
}

fn status(facts: Option<&Value>, state_dir: &Path, json: bool) -> Result<()> {
    let env = grubenv::read(&env_path(state_dir));
    let (state, warnings) = match &env {
        Ok(env) => BootState::from_env(env),
        Err(_) => (BootState::default(), vec![]),
    };
    if json {
        let out = serde_json::json!({
            "boot": facts,
            "image_version": os_release_field("IMAGE_VERSION"),
            "state": env.as_ref().ok().map(|_| &state),
            "state_error": env.as_ref().err().map(|e| format!("{e:#}")),
            "state_warnings": warnings,
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
    match env {
        Ok(_) => {
            println!("active slot:  {}", state.active_slot);
            println!(
                "next boot:    {}",
                match state.next_entry {
                    Some(m) => format!("{m} (one-shot)"),
                    None => "active".into(),
                }
            );
            for w in warnings {
                println!("warning:      {w}");
            }
        }
        Err(e) => println!("boot state:   unavailable: {e:#}"),
    }
    Ok(())
}

/// Runs `f` with `dir`'s file system writable, restoring read-only after.
fn with_writable(dir: &Path, f: impl FnOnce() -> Result<()>) -> Result<()> {
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

fn next_boot(state_dir: &Path, mode: Mode) -> Result<()> {
    let path = env_path(state_dir);
    with_writable(state_dir, || {
        let mut env = match grubenv::read(&path) {
            Ok(env) => env,
            Err(e) if path.exists() => {
                eprintln!("immuboot: warning: {e:#}; writing a fresh boot state");
                grubenv::GrubEnv::new()
            }
            Err(e) => return Err(e),
        };
        let (mut state, _) = BootState::from_env(&env);
        state.next_entry = Some(mode);
        state.store(&mut env)?;
        grubenv::write_atomic(&path, &env)
    })?;
    println!("next boot: {mode} (once; the boot after it returns to the active image)");
    Ok(())
}
