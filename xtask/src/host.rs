//! Host tools the build needs; installed with apt-get when possible.

use crate::util::{is_root, run};
use anyhow::{bail, Result};
use std::process::Command;

/// (command to look for, Debian package that provides it)
const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("mmdebstrap", "mmdebstrap"),
    ("mksquashfs", "squashfs-tools"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("sgdisk", "gdisk"),
    ("grub-mkstandalone", "grub-common"),
    ("depmod", "kmod"),
    ("zstd", "zstd"),
    ("pkg-config", "pkg-config"),
    // Signing test images; the OCI registry and the tools the benchmark
    // compares against (skopeo copy + umoci unpack + mksquashfs).
    ("minisign", "minisign"),
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
];

/// Files (not commands) and their packages.
const FILES: &[(&str, &str)] = &[
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ("/usr/lib/grub/x86_64-efi/linux.mod", "grub-efi-amd64-bin"),
    ("/usr/lib/x86_64-linux-gnu/libblkid.a", "libblkid-dev"),
    ("/usr/share/debootstrap/scripts/bookworm", "debootstrap"),
];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Packages that are needed but missing.
pub fn missing() -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = TOOLS
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| *p)
        .collect();
    pkgs.extend(
        FILES
            .iter()
            .filter(|(f, _)| !std::path::Path::new(f).exists())
            .map(|(_, p)| *p),
    );
    // bindgen (for libblkid's bindings) needs libclang.
    if !have("clang") {
        pkgs.extend(["libclang-dev", "clang"]);
    }
    pkgs.sort();
    pkgs.dedup();
    pkgs
}

pub fn ensure() -> Result<()> {
    let pkgs = missing();
    if pkgs.is_empty() {
        return Ok(());
    }
    if is_root() && have("apt-get") {
        eprintln!("==> installing host packages: {}", pkgs.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&pkgs))?;
        let still = missing();
        if !still.is_empty() {
            bail!("still missing after apt-get install: {}", still.join(" "));
        }
        return Ok(());
    }
    bail!(
        "missing host tools; install these Debian/Ubuntu packages as root: {}",
        pkgs.join(" ")
    )
}
