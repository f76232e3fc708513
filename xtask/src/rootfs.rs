//! The Debian root file system tarball, made by mmdebstrap and cached outside
//! the checkout, keyed by suite and package list.
//!
//! For the host's own suite mmdebstrap uses the host's apt sources; for
//! another suite it needs a mirror, read here from the host's apt sources
//! (the URI of the entry for the host's suite), or `IMMUBOOT_DEBIAN_MIRROR`.

use crate::config::Suite;
use crate::util::{cache_dir, run, Stamp};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// systemd as init, udev for coldplug, the Debian kernel (its modules also
/// feed the initramfs), the tools the demo and tests use, mksquashfs for
/// `immuboot upgrade` from a directory or an OCI image, the CA store for
/// pulls from registries over https, and dracut (the kernel's initramfs
/// tool instead of initramfs-tools: the dracut configurations run it in
/// the image's root; the standalone ones delete what it made).
pub const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "linux-image-amd64",
    "util-linux",
    "squashfs-tools",
    "ca-certificates",
    "dracut",
];

/// A root file system with Debian's default initramfs tool instead of
/// dracut, for `cargo xtask bench boot`: installing the kernel runs
/// initramfs-tools' hook, which leaves `/boot/initrd.img-KVER` in it.
pub const INITRAMFS_TOOLS_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "linux-image-amd64",
    "initramfs-tools",
];

pub fn tarball(suite: Suite) -> Result<PathBuf> {
    tarball_of(suite, PACKAGES)
}

/// The root file system of `suite` with `packages` (mmdebstrap's minbase
/// variant), cached.
pub fn tarball_of(suite: Suite, packages: &[&str]) -> Result<PathBuf> {
    let name = suite.name();
    let key = Stamp::default()
        .text(name)
        .text(&packages.join(","))
        .text("minbase")
        .hex();
    let dir = cache_dir();
    let tar = dir.join(format!("rootfs-{name}-{key}.tar"));
    if tar.exists() {
        eprintln!("    using cached {}", tar.display());
        return Ok(tar);
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create cache {}", dir.display()))?;
    let mirror = if host_suite().as_deref() == Some(name) {
        None
    } else {
        Some(mirror_for_other_suite()?)
    };
    let partial = tar.with_extension("tar.partial");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--quiet", "--format=tar"])
        .arg(format!("--include={}", packages.join(",")))
        .arg(name)
        .arg(&partial);
    if let Some(m) = &mirror {
        eprintln!("    {name} from {m} (the host's mirror)");
        cmd.arg(m);
    }
    run(&mut cmd)?;
    std::fs::rename(&partial, &tar)?;
    Ok(tar)
}

/// The host's Debian suite (`VERSION_CODENAME` of /etc/os-release).
fn host_suite() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    os_release_field(&text, "VERSION_CODENAME")
}

/// The value of `KEY=value` (quotes removed) in os-release text.
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?;
        let v = v.trim().trim_matches('"').trim_matches('\'');
        (!v.is_empty()).then(|| v.to_string())
    })
}

fn mirror_for_other_suite() -> Result<String> {
    if let Some(m) = std::env::var_os("IMMUBOOT_DEBIAN_MIRROR") {
        return Ok(m.to_string_lossy().into_owned());
    }
    let host = host_suite().context(
        "no VERSION_CODENAME in /etc/os-release: cannot tell which apt source is the \
         Debian mirror (set IMMUBOOT_DEBIAN_MIRROR)",
    )?;
    let mut found = None;
    let dir = Path::new("/etc/apt/sources.list.d");
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            found = match f.extension().and_then(|e| e.to_str()) {
                Some("sources") => mirror_from_deb822(&text, &host),
                Some("list") => mirror_from_list(&text, &host),
                _ => None,
            };
            if found.is_some() {
                break;
            }
        }
    }
    if found.is_none() {
        let text = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
        found = mirror_from_list(&text, &host);
    }
    match found {
        Some(m) => Ok(m),
        None => bail!(
            "no apt source for suite {host} in /etc/apt/sources.list.d/*.sources or \
             /etc/apt/sources.list: cannot tell mmdebstrap a mirror (set IMMUBOOT_DEBIAN_MIRROR)"
        ),
    }
}

/// The first URI of a deb822 source entry of type `deb` whose Suites include
/// `suite` itself (not `suite-updates` or `suite-security`).
pub fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    // Paragraphs are separated by blank lines; a field continues on lines
    // starting with white space; `#` lines are comments.
    let mut paragraphs: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            if !paragraphs.last().is_some_and(Vec::is_empty) {
                paragraphs.push(Vec::new());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let para = paragraphs.last_mut()?;
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = para.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            para.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    paragraphs.iter().find_map(|p| {
        let field = |name: &str| {
            p.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let enabled = !field("enabled").eq_ignore_ascii_case("no");
        let deb = field("types").split_whitespace().any(|t| t == "deb");
        let has_suite = field("suites").split_whitespace().any(|s| s == suite);
        let uri = field("uris").split_whitespace().next()?;
        (enabled && deb && has_suite).then(|| uri.to_string())
    })
}

/// The URI of the first one-line `deb` source for `suite` itself.
pub fn mirror_from_list(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let rest = line.strip_prefix("deb")?;
        if !rest.starts_with([' ', '\t']) {
            return None; // deb-src
        }
        let mut words = rest.split_whitespace().peekable();
        // Options: `[arch=amd64 signed-by=...]`, possibly several words.
        if words.peek()?.starts_with('[') {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let uri = words.next()?;
        (words.next()? == suite).then(|| uri.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
";

    #[test]
    fn deb822_entry_of_the_host_suite() {
        assert_eq!(
            mirror_from_deb822(DEB822, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        // Only suffixed suites: no match.
        let security = DEB822.split("\n\n").nth(1).unwrap();
        assert_eq!(mirror_from_deb822(security, "bookworm"), None);
        assert_eq!(mirror_from_deb822(DEB822, "trixie"), None);
    }

    #[test]
    fn deb822_skips_disabled_source_only_and_folded_fields() {
        let text = "\
Types: deb-src
URIs: http://src.example/debian
Suites: trixie

Enabled: no
Types: deb
URIs: http://off.example/debian
Suites: trixie

types: deb deb-src
uris:
 http://one.example/debian
 http://two.example/debian
suites: trixie
  trixie-updates
";
        assert_eq!(
            mirror_from_deb822(text, "trixie").as_deref(),
            Some("http://one.example/debian")
        );
    }

    #[test]
    fn one_line_sources() {
        let text = "\
# deb http://old.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://sec.example/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian bookworm main contrib
deb http://late.example/debian bookworm main
";
        assert_eq!(
            mirror_from_list(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_from_list(text, "trixie"), None);
        assert_eq!(
            mirror_from_list(
                "deb\thttp://tab.example/debian  bookworm main\n",
                "bookworm"
            )
            .as_deref(),
            Some("http://tab.example/debian")
        );
    }

    #[test]
    fn os_release_values() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nVERSION_ID=\"13\"\nVERSION_CODENAME=trixie\nID=debian\n";
        assert_eq!(
            os_release_field(text, "VERSION_CODENAME").as_deref(),
            Some("trixie")
        );
        assert_eq!(os_release_field(text, "VERSION_ID").as_deref(), Some("13"));
        assert_eq!(os_release_field(text, "VERSION"), None);
        assert_eq!(os_release_field(text, "ID").as_deref(), Some("debian"));
    }
}
