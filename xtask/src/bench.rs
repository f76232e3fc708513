//! `cargo xtask bench`: install throughput of `immuboot upgrade` on this
//! host, against what a user would do otherwise. Prints numbers and ratios
//! (and writes target/immuboot/results/bench.json); asserts nothing.
//!
//! 1. A 1 GiB squashfs into a slot (copy, read back past the page cache,
//!    digests, boot digests, rename, activation) against `cp` + `sync` of
//!    the same file on the same file system.
//! 2. An OCI image layout into a slot (verify, flatten, mksquashfs, verify)
//!    against `skopeo copy` + `umoci unpack` + `mksquashfs`.
//!
//! Page caches are dropped before each run so both sides read from disk.

use crate::util::{out_dir, run};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn timed(what: &str, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    drop_caches();
    let start = Instant::now();
    f().with_context(|| what.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("    {what}: {secs:.2} s");
    Ok(secs)
}

/// A state directory with two slots and boot facts saying slot a booted.
fn sandbox(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let state = dir.join("state");
    let facts = dir.join("facts");
    fs::create_dir_all(state.join("cOS"))?;
    fs::create_dir_all(state.join("grub"))?;
    fs::create_dir_all(&facts)?;
    fs::write(
        facts.join("boot.json"),
        r#"{"mode":"active","target":{"mode":"active","slot":"a","image":"/cOS/a.img"}}"#,
    )?;
    Ok((state, facts))
}

fn immuboot(cli: &Path, state: &Path, facts: &Path, args: &[&str]) -> Result<()> {
    run(Command::new(cli)
        .arg("--state-dir")
        .arg(state)
        .arg("--facts-dir")
        .arg(facts)
        .args(args))
}

/// 1 GiB of incompressible data plus a kernel and initramfs, squashed
/// without compression (the bytes are random anyway).
fn big_squashfs(work: &Path) -> Result<PathBuf> {
    let img = work.join("big.img");
    if img.exists() {
        return Ok(img);
    }
    let root = work.join("big-root");
    fs::create_dir_all(root.join("boot"))?;
    fs::create_dir_all(root.join("usr/lib"))?;
    fs::create_dir_all(root.join("data"))?;
    fs::write(root.join("boot/vmlinuz"), vec![1u8; 8 << 20])?;
    fs::write(root.join("boot/initrd.img"), vec![2u8; 2 << 20])?;
    fs::write(root.join("usr/lib/os-release"), "IMAGE_VERSION=bench\n")?;
    for i in 0..16 {
        run(Command::new("head")
            .args(["-c", "67108864", "/dev/urandom"])
            .stdout(fs::File::create(root.join(format!("data/{i}")))?))?;
    }
    run(Command::new("mksquashfs").arg(&root).arg(&img).args([
        "-noappend",
        "-quiet",
        "-no-progress",
        "-noD",
        "-noF",
    ]))?;
    fs::remove_dir_all(&root)?;
    Ok(img)
}

pub fn bench(cli: &Path) -> Result<()> {
    let work = out_dir().join("bench");
    fs::create_dir_all(&work)?;
    let mut results = serde_json::Map::new();

    // 1. squashfs → slot vs cp + sync.
    let img = big_squashfs(&work)?;
    let size = fs::metadata(&img)?.len();
    let run_dir = work.join("squashfs");
    let _ = fs::remove_dir_all(&run_dir);
    let (state, facts) = sandbox(&run_dir)?;
    let ours = timed("immuboot upgrade (1 GiB squashfs)", || {
        immuboot(
            cli,
            &state,
            &facts,
            &["upgrade", img.to_str().unwrap_or_default()],
        )
    })?;
    let copy = run_dir.join("copy.img");
    let plain = timed("cp + sync (same file, same file system)", || {
        run(Command::new("cp").arg(&img).arg(&copy))?;
        run(&mut Command::new("sync"))
    })?;
    let mib = size as f64 / (1 << 20) as f64;
    eprintln!(
        "    squashfs → slot: {:.0} MiB/s, cp + sync: {:.0} MiB/s, ratio {:.2} (time, ours / cp)",
        mib / ours,
        mib / plain,
        ours / plain
    );
    results.insert(
        "squashfs_to_slot".into(),
        serde_json::json!({"bytes": size, "immuboot_s": ours, "cp_sync_s": plain, "ratio": ours / plain}),
    );
    fs::remove_dir_all(&run_dir)?;

    // 2. OCI layout → slot vs skopeo + umoci + mksquashfs.
    let layout = out_dir().join("images/oci-v5");
    if !layout.join("index.json").exists() {
        bail!(
            "{} is missing: run `cargo xtask build` first",
            layout.display()
        );
    }
    let run_dir = work.join("oci");
    let _ = fs::remove_dir_all(&run_dir);
    let (state, facts) = sandbox(&run_dir)?;
    let spec = format!("oci:{}:v5", layout.display());
    let work_dir = run_dir.join("work");
    fs::create_dir_all(&work_dir)?;
    let ours = timed("immuboot upgrade (OCI layout, 2 layers)", || {
        immuboot(
            cli,
            &state,
            &facts,
            &[
                "upgrade",
                &spec,
                "--work-dir",
                work_dir.to_str().unwrap_or_default(),
            ],
        )
    })?;
    let chain = timed("skopeo copy + umoci unpack + mksquashfs", || {
        let copy = run_dir.join("skopeo");
        run(Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(&spec)
            .arg(format!("oci:{}:v5", copy.display())))?;
        let bundle = run_dir.join("bundle");
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v5", copy.display()))
            .arg(&bundle))?;
        run(Command::new("mksquashfs")
            .arg(bundle.join("rootfs"))
            .arg(run_dir.join("chain.img"))
            .args(["-comp", "gzip", "-noappend", "-quiet", "-no-progress"]))?;
        run(&mut Command::new("sync"))
    })?;
    eprintln!(
        "    OCI → slot: {ours:.1} s, skopeo + umoci + mksquashfs: {chain:.1} s, ratio {:.2} (time, ours / chain)",
        ours / chain
    );
    results.insert(
        "oci_to_slot".into(),
        serde_json::json!({"immuboot_s": ours, "skopeo_umoci_mksquashfs_s": chain, "ratio": ours / chain}),
    );
    fs::remove_dir_all(&run_dir)?;

    let out = out_dir().join("results");
    fs::create_dir_all(&out)?;
    fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(results))?,
    )?;
    Ok(())
}
