//! Host tools the build needs; installed with apt-get when possible.
//!
//! The decision (which packages to ask apt-get for, at which versions) is a
//! pure function of what the host has, [`plan`], unit-tested below; [`ensure`]
//! gathers the facts from dpkg and apt, runs apt-get, checks everything again
//! and repairs what apt-get removed.
//!
//! Why versions matter: the machines this project runs on ship `qemu-utils`
//! 10.0 from a backport, with no repository offering that version. Asking
//! apt-get for bookworm's `qemu-system-x86` alone makes it *remove* that
//! `qemu-utils` (the 7.2 and 10.0 builds break each other), and asking for
//! both plain fails ("held broken packages"). So the packages of a
//! [`MATCHED_SETS`] entry are asked for together, each at a version a
//! repository has, downgrading a locally installed build if needed.

use crate::util::{describe, is_root, run};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// How the build notices that a package is missing.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// A command on PATH.
    Command(&'static str),
    /// A file the build reads.
    File(&'static str),
}

/// Every tool and file the build uses, with the Debian packages that provide it.
const NEEDS: &[(Probe, &[&str])] = &[
    (Probe::Command("qemu-system-x86_64"), &["qemu-system-x86"]),
    (Probe::Command("qemu-img"), &["qemu-utils"]),
    (Probe::Command("mmdebstrap"), &["mmdebstrap"]),
    (Probe::Command("mksquashfs"), &["squashfs-tools"]),
    (Probe::Command("mkfs.ext4"), &["e2fsprogs"]),
    (Probe::Command("mkfs.vfat"), &["dosfstools"]),
    (Probe::Command("mcopy"), &["mtools"]),
    (Probe::Command("sgdisk"), &["gdisk"]),
    (Probe::Command("grub-mkstandalone"), &["grub-common"]),
    (Probe::Command("depmod"), &["kmod"]),
    // dracut runs chrooted in the image's root, in a private mount namespace.
    (Probe::Command("unshare"), &["util-linux"]),
    (Probe::Command("chroot"), &["coreutils"]),
    (Probe::Command("zstd"), &["zstd"]),
    (Probe::Command("pkg-config"), &["pkg-config"]),
    // bindgen (for libblkid's bindings) needs libclang.
    (Probe::Command("clang"), &["clang", "libclang-dev"]),
    // Signing test images; the OCI registry and the tools the benchmark
    // compares against (skopeo copy + umoci unpack + mksquashfs).
    (Probe::Command("minisign"), &["minisign"]),
    (Probe::Command("docker-registry"), &["docker-registry"]),
    (Probe::Command("skopeo"), &["skopeo"]),
    // The test CA of the registry TLS test (oci/tests/registry_tls.rs).
    (Probe::Command("openssl"), &["openssl"]),
    (Probe::Command("umoci"), &["umoci"]),
    // Renders `immuboot timeline --svg` in its test (a real SVG renderer).
    (Probe::Command("rsvg-convert"), &["librsvg2-bin"]),
    (Probe::File("/usr/share/OVMF/OVMF_CODE_4M.fd"), &["ovmf"]),
    (
        Probe::File("/usr/lib/grub/x86_64-efi/linux.mod"),
        &["grub-efi-amd64-bin"],
    ),
    (
        Probe::File("/usr/lib/x86_64-linux-gnu/libblkid.a"),
        &["libblkid-dev"],
    ),
    (
        Probe::File("/usr/share/debootstrap/scripts/bookworm"),
        &["debootstrap"],
    ),
    // The floor of `cargo xtask bench boot`: a static busybox as the
    // sequential /init script (the dynamic `busybox` package would need
    // its libraries in the initramfs).
    (
        Probe::File("/var/lib/dpkg/info/busybox-static.list"),
        &["busybox-static"],
    ),
];

/// Packages built from one source that only work (or install) together at
/// the same version: when one of them is asked for, all are, in one call.
const MATCHED_SETS: &[&[&str]] = &[&["qemu-system-x86", "qemu-utils"]];

/// What dpkg and apt know of one package.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackageState {
    /// The installed version, if any.
    pub installed: Option<String>,
    /// Versions the configured repositories offer, preferred first (apt's
    /// order: `apt-cache madison`).
    pub available: Vec<String>,
}

impl PackageState {
    /// Installed, but at a version no repository offers (a backport or a
    /// local build): apt cannot resolve it together with repository builds
    /// of the same source.
    fn is_foreign(&self) -> bool {
        match &self.installed {
            Some(v) => !self.available.is_empty() && !self.available.contains(v),
            None => false,
        }
    }
}

/// One apt-get install call.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `name` or `name=version`.
    pub packages: Vec<String>,
    /// A pinned version is older than the installed one.
    pub allow_downgrades: bool,
}

/// Which packages to ask apt-get for: the `missing` ones, plus every member
/// of a matched set one of them belongs to; a member installed at a version
/// no repository offers is pinned to the repository's preferred version, so
/// the set resolves as one.
pub fn plan(missing: &BTreeSet<&str>, state: &BTreeMap<&str, PackageState>) -> Request {
    let mut asked: BTreeSet<&str> = missing.clone();
    for set in MATCHED_SETS {
        if set.iter().any(|p| missing.contains(p)) {
            asked.extend(set.iter().copied());
        }
    }
    let in_set = |p: &str| MATCHED_SETS.iter().any(|s| s.contains(&p));
    let mut request = Request::default();
    for p in asked {
        match state.get(p) {
            Some(s) if in_set(p) && s.is_foreign() => {
                request.packages.push(format!("{p}={}", s.available[0]));
                request.allow_downgrades = true;
            }
            _ => request.packages.push(p.to_string()),
        }
    }
    request
}

/// What apt-get did to the packages we care about, in words.
pub fn changes(
    before: &BTreeMap<&str, PackageState>,
    after: &BTreeMap<&str, PackageState>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (p, b) in before {
        let a = after.get(p).and_then(|s| s.installed.as_deref());
        match (b.installed.as_deref(), a) {
            (Some(old), None) => out.push(format!("removed {p} {old}")),
            (None, Some(new)) => out.push(format!("installed {p} {new}")),
            (Some(old), Some(new)) if old != new => {
                out.push(format!("replaced {p} {old} with {new}"))
            }
            _ => {}
        }
    }
    out
}

fn have_command(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn present(probe: Probe) -> bool {
    match probe {
        Probe::Command(c) => have_command(c),
        Probe::File(f) => std::path::Path::new(f).exists(),
    }
}

/// Packages that are needed but missing (their tool or file is absent).
pub fn missing() -> BTreeSet<&'static str> {
    NEEDS
        .iter()
        .filter(|(probe, _)| !present(*probe))
        .flat_map(|(_, pkgs)| pkgs.iter().copied())
        .collect()
}

/// Every package this module may ask for.
fn all_packages() -> BTreeSet<&'static str> {
    NEEDS
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .chain(MATCHED_SETS.iter().flat_map(|s| s.iter().copied()))
        .collect()
}

fn installed_version(pkg: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}|${Version}", pkg])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, version) = text.split_once('|')?;
    (out.status.success() && status.starts_with("ii") && !version.is_empty())
        .then(|| version.trim().to_string())
}

/// `apt-cache madison` lines: `pkg | version | source`.
fn available_versions(pkg: &str) -> Vec<String> {
    let Ok(out) = Command::new("apt-cache").args(["madison", pkg]).output() else {
        return Vec::new();
    };
    parse_madison(&String::from_utf8_lossy(&out.stdout))
}

fn parse_madison(text: &str) -> Vec<String> {
    let mut versions: Vec<String> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split('|').map(str::trim);
        if let (Some(_), Some(v)) = (fields.next(), fields.next()) {
            if !v.is_empty() && !versions.iter().any(|x| x == v) {
                versions.push(v.to_string());
            }
        }
    }
    versions
}

fn host_state(pkgs: &BTreeSet<&'static str>) -> BTreeMap<&'static str, PackageState> {
    pkgs.iter()
        .map(|p| {
            (
                *p,
                PackageState {
                    installed: installed_version(p),
                    available: available_versions(p),
                },
            )
        })
        .collect()
}

fn apt_install(request: &Request) -> Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
    ]);
    if request.allow_downgrades {
        cmd.arg("--allow-downgrades");
    }
    cmd.args(&request.packages);
    eprintln!("==> {}", describe(&cmd));
    run(&mut cmd)
}

pub fn ensure() -> Result<()> {
    let mut want = missing();
    if want.is_empty() {
        return Ok(());
    }
    if !(is_root() && have_command("apt-get")) {
        bail!(
            "missing host tools; install these Debian/Ubuntu packages as root: {}",
            want.into_iter().collect::<Vec<_>>().join(" ")
        );
    }
    eprintln!(
        "==> installing host packages: {}",
        want.iter().copied().collect::<Vec<_>>().join(" ")
    );
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    let watched = all_packages();
    let mut done: Vec<String> = Vec::new();
    // A second round repairs what the first one's resolution removed.
    for _round in 0..2 {
        let before = host_state(&watched);
        apt_install(&plan(&want, &before))
            .context("apt-get could not install the host packages")?;
        let after = host_state(&watched);
        let what = changes(&before, &after);
        for line in &what {
            eprintln!("    apt-get {line}");
        }
        done.extend(what);
        want = missing();
        if want.is_empty() {
            return Ok(());
        }
        eprintln!(
            "==> still missing after apt-get install: {}; installing again",
            want.iter().copied().collect::<Vec<_>>().join(" ")
        );
    }
    bail!(
        "still missing after two apt-get installs: {}; apt-get did: {}",
        want.into_iter().collect::<Vec<_>>().join(" "),
        if done.is_empty() {
            "nothing to the watched packages".to_string()
        } else {
            done.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM_QEMU: &str = "1:7.2+dfsg-7+deb12u18+b3";
    const BACKPORT_QEMU: &str = "1:10.0.2+ds-2+deb13u1~bpo12+1";

    fn st(installed: Option<&str>, available: &[&str]) -> PackageState {
        PackageState {
            installed: installed.map(str::to_string),
            available: available.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn set(items: &[&'static str]) -> BTreeSet<&'static str> {
        items.iter().copied().collect()
    }

    /// The fresh machine: qemu-utils from a backport, no qemu-system-x86.
    #[test]
    fn fresh_machine_pins_qemu_utils_to_the_repository_build() {
        let state = BTreeMap::from([
            ("qemu-system-x86", st(None, &[BOOKWORM_QEMU])),
            (
                "qemu-utils",
                st(
                    Some(BACKPORT_QEMU),
                    &[BOOKWORM_QEMU, "1:7.2+dfsg-7+deb12u15"],
                ),
            ),
            ("ovmf", st(None, &["2022.11-6+deb12u2"])),
        ]);
        let r = plan(&set(&["qemu-system-x86", "ovmf"]), &state);
        assert_eq!(
            r.packages,
            vec![
                "ovmf".to_string(),
                "qemu-system-x86".to_string(),
                format!("qemu-utils={BOOKWORM_QEMU}"),
            ]
        );
        assert!(r.allow_downgrades);
    }

    /// After apt-get removed qemu-utils, the repair asks for it plain, with
    /// its set.
    #[test]
    fn a_removed_member_brings_its_set_without_pins() {
        let state = BTreeMap::from([
            ("qemu-system-x86", st(Some(BOOKWORM_QEMU), &[BOOKWORM_QEMU])),
            ("qemu-utils", st(None, &[BOOKWORM_QEMU])),
        ]);
        let r = plan(&set(&["qemu-utils"]), &state);
        assert_eq!(r.packages, vec!["qemu-system-x86", "qemu-utils"]);
        assert!(!r.allow_downgrades);
    }

    #[test]
    fn repository_versions_are_not_pinned_and_nothing_missing_asks_nothing() {
        let state = BTreeMap::from([
            ("qemu-system-x86", st(None, &[BOOKWORM_QEMU])),
            ("qemu-utils", st(Some(BOOKWORM_QEMU), &[BOOKWORM_QEMU])),
        ]);
        let r = plan(&set(&["qemu-system-x86"]), &state);
        assert_eq!(r.packages, vec!["qemu-system-x86", "qemu-utils"]);
        assert!(!r.allow_downgrades);
        assert_eq!(plan(&set(&[]), &state), Request::default());
    }

    /// A foreign version outside a set is left alone: apt upgrades or keeps
    /// it as it sees fit, and the check afterwards catches a removal.
    #[test]
    fn foreign_versions_outside_sets_are_not_pinned() {
        let state = BTreeMap::from([("e2fsprogs", st(Some("1.47.0-2"), &["1.47.0-2+b2"]))]);
        let r = plan(&set(&["e2fsprogs"]), &state);
        assert_eq!(r.packages, vec!["e2fsprogs"]);
        assert!(!r.allow_downgrades);
    }

    /// A package apt does not know is asked for by name, so apt-get's own
    /// error names it.
    #[test]
    fn unknown_packages_are_asked_by_name() {
        let state = BTreeMap::from([("qemu-utils", st(Some(BACKPORT_QEMU), &[]))]);
        let r = plan(&set(&["qemu-system-x86"]), &state);
        assert_eq!(r.packages, vec!["qemu-system-x86", "qemu-utils"]);
    }

    #[test]
    fn changes_name_what_apt_did() {
        let before = BTreeMap::from([
            ("qemu-utils", st(Some(BACKPORT_QEMU), &[])),
            ("qemu-system-x86", st(None, &[])),
            ("zstd", st(Some("1.5.4"), &[])),
        ]);
        let after = BTreeMap::from([
            ("qemu-utils", st(None, &[])),
            ("qemu-system-x86", st(Some(BOOKWORM_QEMU), &[])),
            ("zstd", st(Some("1.5.4"), &[])),
        ]);
        assert_eq!(
            changes(&before, &after),
            vec![
                format!("installed qemu-system-x86 {BOOKWORM_QEMU}"),
                format!("removed qemu-utils {BACKPORT_QEMU}"),
            ]
        );
    }

    #[test]
    fn madison_output_is_parsed_in_order() {
        let text = " qemu-utils | 1:7.2+dfsg-7+deb12u18+b3 | http://x bookworm/main amd64 Packages\n \
                    qemu-utils | 1:7.2+dfsg-7+deb12u15 | http://x bookworm-security/main amd64 Packages\n";
        assert_eq!(
            parse_madison(text),
            vec![BOOKWORM_QEMU, "1:7.2+dfsg-7+deb12u15"]
        );
    }

    /// Every package of a matched set is one the build needs, so a set is
    /// never asked for because of a typo.
    #[test]
    fn matched_sets_name_needed_packages() {
        let needed: BTreeSet<&str> = NEEDS.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        for s in MATCHED_SETS {
            for p in *s {
                assert!(needed.contains(p), "{p}");
            }
        }
    }
}
