//! The Debian root file system tarball, made by mmdebstrap and cached outside
//! the checkout, keyed by suite and package list.

use crate::util::{cache_dir, run, Stamp};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

pub const SUITE: &str = "bookworm";
/// systemd as init, udev for coldplug, the Debian kernel (its modules also
/// feed the initramfs), the tools the demo and tests use, mksquashfs for
/// `immuboot upgrade` from a directory or an OCI image, and the CA store
/// for pulls from registries over https.
pub const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "linux-image-amd64",
    "util-linux",
    "squashfs-tools",
    "ca-certificates",
];

pub fn tarball() -> Result<PathBuf> {
    let key = Stamp::default()
        .text(SUITE)
        .text(&PACKAGES.join(","))
        .text("minbase")
        .hex();
    let dir = cache_dir();
    let tar = dir.join(format!("rootfs-{SUITE}-{key}.tar"));
    if tar.exists() {
        eprintln!("    using cached {}", tar.display());
        return Ok(tar);
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create cache {}", dir.display()))?;
    let partial = tar.with_extension("tar.partial");
    run(Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet", "--format=tar"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&partial))?;
    std::fs::rename(&partial, &tar)?;
    Ok(tar)
}
