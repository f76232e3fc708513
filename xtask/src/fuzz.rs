//! `cargo xtask fuzz`: the cargo-fuzz targets of fuzz/, one after another,
//! each for a fixed time, and a table of what they did.
//!
//! Not part of `cargo xtask test` or CI: a useful run takes far longer than
//! the CI budget. The committed seeds stay in fuzz/corpus/TARGET; what a run
//! discovers goes to fuzz/work/corpus/TARGET (ignored by git), crashes to
//! fuzz/artifacts/TARGET.

use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::util::{describe, is_root, run, workspace_root};

/// The uid and gid (nobody) the fuzzers run as when xtask runs as root: an
/// unpacking target that escaped its root must not be able to write the
/// host's files.
const NOBODY: u32 = 65534;

struct Outcome {
    target: String,
    seconds: f64,
    execs: u64,
    corpus: usize,
    crashes: Vec<PathBuf>,
}

/// `cargo` with the toolchain that accepts `-Z` sanitizer flags: nightly if
/// rustup has one, else stable told to accept unstable flags.
fn cargo_fuzz(dir: &Path) -> Result<Command> {
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut cmd = Command::new("cargo");
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        cmd.arg("+nightly");
    } else {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    cmd.arg("fuzz").current_dir(dir);
    Ok(cmd)
}

fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        eprintln!("==> installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "cargo-fuzz"]))?;
    }
    Ok(())
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

pub fn fuzz(seconds: u64, runs: Option<u64>, only: Option<String>) -> Result<()> {
    ensure_cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    let list = cargo_fuzz(&dir)?
        .arg("list")
        .output()
        .context("cannot run cargo fuzz list")?;
    let mut targets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    if let Some(only) = &only {
        targets.retain(|t| t == only);
        if targets.is_empty() {
            bail!("no fuzz target {only:?} (cargo fuzz list in fuzz/ names them)");
        }
    }
    eprintln!("==> building {} fuzz targets", targets.len());
    let mut build = cargo_fuzz(&dir)?;
    build.arg("build");
    run(&mut build)?;

    let bin_dir = dir.join("target/x86_64-unknown-linux-gnu/release");
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_one(&dir, &bin_dir, target, seconds, runs)?);
    }

    println!("| target | seconds | executions | corpus (files) | crashes |");
    println!("|---|---:|---:|---:|---|");
    for o in &outcomes {
        let crashes = if o.crashes.is_empty() {
            "0".to_string()
        } else {
            let names: Vec<_> = o.crashes.iter().map(|p| p.display().to_string()).collect();
            format!("{}: {}", o.crashes.len(), names.join(", "))
        };
        println!(
            "| {} | {:.0} | {} | {} | {} |",
            o.target, o.seconds, o.execs, o.corpus, crashes
        );
    }
    if outcomes.iter().any(|o| !o.crashes.is_empty()) {
        bail!("fuzzing found crashes: reproduce with fuzz/target/…/release/TARGET FILE");
    }
    Ok(())
}

fn run_one(
    dir: &Path,
    bin_dir: &Path,
    target: &str,
    seconds: u64,
    runs: Option<u64>,
) -> Result<Outcome> {
    let seeds = dir.join("corpus").join(target);
    let work = dir.join("work/corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    fs::create_dir_all(&work)?;
    fs::create_dir_all(&artifacts)?;
    let before: Vec<PathBuf> = files_in(&artifacts);

    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10"]);
    if is_root() {
        for d in [&work, &artifacts] {
            std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY))
                .with_context(|| format!("cannot hand {} to nobody", d.display()))?;
            for f in files_in(d) {
                std::os::unix::fs::chown(&f, Some(NOBODY), Some(NOBODY))?;
            }
        }
        cmd.args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ]);
    }
    cmd.arg(bin_dir.join(target))
        .arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg("-timeout=20")
        .arg("-rss_limit_mb=2048")
        .arg("-max_len=65536");
    if let Some(runs) = runs {
        cmd.arg(format!("-runs={runs}"));
    }
    eprintln!(
        "==> fuzzing {target} for at most {seconds} s: {}",
        describe(&cmd)
    );
    let start = Instant::now();
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run the fuzz target {target}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    fs::write(artifacts.join("last-run.log"), log.as_bytes())?;
    let execs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let crashes: Vec<PathBuf> = files_in(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                ["crash-", "leak-", "timeout-", "oom-", "slow-unit-"]
                    .iter()
                    .any(|k| n.starts_with(k))
            })
        })
        .collect();
    if !out.status.success() && crashes.is_empty() {
        bail!(
            "fuzz target {target} failed without an artifact ({}); its log: {}",
            out.status,
            artifacts.join("last-run.log").display()
        );
    }
    let corpus = files_in(&work).len() + files_in(&seeds).len();
    // Also said at once: a long run of every target may be cut short.
    eprintln!(
        "==> {target}: {execs} executions in {seconds:.0} s, corpus {corpus} files, {} new artifacts",
        crashes.len()
    );
    Ok(Outcome {
        target: target.to_string(),
        seconds,
        execs,
        corpus,
        crashes,
    })
}
