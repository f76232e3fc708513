//! Making a squashfs here: from a root file system directory (mksquashfs)
//! or an OCI image (flattened first).

use super::write::{free_bytes, SPARE_BYTES};
use crate::progress::Reporter;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

/// Compression level (lzo1x_999) for images squashed here. lzo, not gzip:
/// systemd and its libraries come out of an lzo image sooner (measured in
/// the README). Measured on the 365 MB demo root (2 cores):
/// level 5 took 5.7 s for 126.7 MB, as long as gzip level 6 (6.0 s,
/// 110.4 MB); level 1 3.4 s for 136.5 MB; level 8, mksquashfs' default and
/// the image build's, 49 s for 122.3 MB.
const DEFAULT_LEVEL: u8 = 5;

/// Squashes a root file system directory into `tmp` with mksquashfs (lzo:
/// GRUB 2.06 reads the kernel from inside the image and cannot read zstd).
/// mksquashfs rather than a Rust writer: faster (with gzip on the 291 MB
/// test root, 5.4 s against the backhand crate's 20 s for the same size),
/// every file type and xattrs, output GRUB reads.
pub(super) fn squash_dir(
    root: &Path,
    tmp: &Path,
    dir: &Path,
    level: Option<u8>,
    rep: &mut Reporter,
) -> Result<()> {
    for want in ["boot/vmlinuz", "boot/initrd.img", "usr/lib/os-release"] {
        if !root.join(want).exists() {
            bail!(
                "{} is not an immuboot root file system: {want} is missing (an image needs \
                 its kernel at /boot/vmlinuz and the immuboot initramfs at /boot/initrd.img)",
                root.display()
            );
        }
    }
    rep.step(&format!(
        "squashing {} into {} (mksquashfs, lzo)",
        root.display(),
        tmp.display()
    ));
    let _ = std::fs::remove_file(tmp);
    let out = Command::new("mksquashfs")
        .arg(root)
        .arg(tmp)
        .args(["-comp", "lzo", "-noappend", "-no-progress", "-quiet"])
        .args([
            "-Xcompression-level".to_string(),
            level.unwrap_or(DEFAULT_LEVEL).clamp(1, 9).to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("cannot run mksquashfs (package squashfs-tools)")?;
    if !out.status.success() {
        let free = free_bytes(dir).unwrap_or(0);
        bail!(
            "mksquashfs failed ({}){}: {}",
            out.status,
            if free < SPARE_BYTES {
                format!("; {} is full ({} MiB free)", dir.display(), free >> 20)
            } else {
                String::new()
            },
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let file = File::open(tmp).with_context(|| format!("cannot open {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.display()))?;
    Ok(())
}

/// What [`unpack_oci`] unpacked.
pub(super) struct UnpackedOci {
    pub(super) manifest_digest: String,
    /// With cosign keys: which one signed it.
    pub(super) signed_by: Option<String>,
    /// For a registry image: the `REGISTRY/REPOSITORY` that served it (a
    /// mirror's, when registries.conf sent the pull there).
    pub(super) pulled_from: Option<String>,
}

/// Unpacks an OCI image into `dest`. With `cosign` keys, the signature is
/// verified first (nothing is downloaded or unpacked for an image that is
/// not signed) and what is unpacked is the verified manifest.
pub(super) fn unpack_oci(
    spec: &str,
    plain_http: bool,
    cosign: &[immuboot_oci::cosign::CosignKey],
    dest: &Path,
    rep: &mut Reporter,
) -> Result<UnpackedOci> {
    let source = immuboot_oci::ImageSource::parse(spec, plain_http)?;
    let (source, verified) = if cosign.is_empty() {
        (source, None)
    } else {
        rep.step(&format!("verifying the cosign signature of {spec}"));
        let (verified, pinned) = immuboot_oci::verify_cosign(&source, cosign)
            .with_context(|| format!("{spec} is refused"))?;
        rep.step(&format!(
            "signature of {} verified with {}",
            verified.manifest_digest, verified.key
        ));
        (pinned, Some(verified))
    };
    rep.step(&format!("unpacking {spec} into {}", dest.display()));
    let mut phase = "";
    let info = immuboot_oci::unpack(&source, dest, &mut |p: immuboot_oci::Progress| {
        if p.phase != phase {
            phase = p.phase;
            rep.start(p.phase, p.total);
        }
        rep.bytes(p.done);
    })?;
    rep.step(&format!(
        "image {} ({} layers) unpacked{}",
        info.manifest_digest,
        info.layers,
        info.pulled_from
            .as_ref()
            .map(|r| format!(", pulled from {r}"))
            .unwrap_or_default()
    ));
    if let Some(v) = &verified {
        if info.manifest_digest != v.manifest_digest {
            bail!(
                "{spec} changed while it was read: the signature verified manifest {}, but {} \
                 was unpacked; refused",
                v.manifest_digest,
                info.manifest_digest
            );
        }
    }
    Ok(UnpackedOci {
        manifest_digest: info.manifest_digest,
        signed_by: verified.map(|v| format!("cosign key {}", v.key)),
        pulled_from: info.pulled_from,
    })
}
