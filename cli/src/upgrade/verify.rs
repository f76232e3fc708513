//! What must hold for an image before it is installed: its digest, its
//! signature, the boot files GRUB checks; read back from the disk.

use super::{Request, Source};
use crate::progress::Reporter;
use anyhow::{bail, Context, Result};
use immuboot_assess::digest;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The trusted minisign keys (the configured files that exist).
pub fn load_keys(paths: &[PathBuf]) -> Result<Vec<(PathBuf, minisign_verify::PublicKey)>> {
    let mut keys = Vec::new();
    for p in paths {
        if !p.exists() {
            continue;
        }
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read key {}", p.display()))?;
        let key = minisign_verify::PublicKey::decode(&text)
            .or_else(|_| minisign_verify::PublicKey::from_base64(text.trim()))
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{} is not a minisign public key", p.display()))?;
        keys.push((p.clone(), key));
    }
    Ok(keys)
}

pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// What must hold for the written image, worked out before anything
/// changes: the digest it must have and the signature it must carry.
pub struct Checks {
    pub(super) expected: Option<String>,
    pub(super) signature: Option<(PathBuf, minisign_verify::Signature)>,
    pub(super) keys: Vec<(PathBuf, minisign_verify::PublicKey)>,
    /// Trusted cosign keys: an OCI image must carry a signature by one.
    pub(super) cosign: Vec<immuboot_oci::cosign::CosignKey>,
}

/// The trusted cosign keys (the configured files that exist).
pub fn load_cosign_keys(paths: &[PathBuf]) -> Result<Vec<immuboot_oci::cosign::CosignKey>> {
    paths
        .iter()
        .filter(|p| p.exists())
        .map(|p| immuboot_oci::cosign::CosignKey::read(p))
        .collect()
}

impl Checks {
    /// Reads the keys, the signature and the expected digest; refuses an
    /// unsigned source when a key is configured.
    pub fn prepare(req: &Request) -> Result<Checks> {
        let keys = load_keys(&req.trusted_keys)?;
        let cosign = load_cosign_keys(&req.cosign_keys)?;
        // Any trusted key means every image must be signed: a squashfs
        // with minisign, an OCI image with cosign.
        let any_key = keys
            .first()
            .map(|(p, _)| p.display().to_string())
            .or_else(|| cosign.first().map(|k| k.name.clone()));
        let mut expected = req.expected_sha256.clone();
        let mut signature = None;
        if let Source::Squashfs(src) = &req.source {
            if expected.is_none() {
                let list = sibling(src, ".sha256");
                if let Ok(text) = std::fs::read_to_string(&list) {
                    expected = Some(digest::single(&text).with_context(|| {
                        format!("{} is not a valid digest list", list.display())
                    })?);
                }
            }
            if let Some((key, _)) = keys.first() {
                let sig_path = req
                    .signature
                    .clone()
                    .unwrap_or_else(|| sibling(src, ".minisig"));
                let text = std::fs::read_to_string(&sig_path).with_context(|| {
                    format!(
                        "a trusted key is configured ({}), but the signature {} cannot be read: \
                         unsigned images are refused",
                        key.display(),
                        sig_path.display()
                    )
                })?;
                let sig = minisign_verify::Signature::decode(&text)
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .with_context(|| {
                        format!("{} is not a minisign signature", sig_path.display())
                    })?;
                signature = Some((sig_path, sig));
            } else if let Some(key) = cosign.first() {
                bail!(
                    "a trusted cosign key is configured ({}), and no minisign key: a squashfs \
                     cannot be verified (sign it with `minisign -S -m IMAGE` and configure the \
                     minisign key in /oem/immuboot/trusted.pub, or install a signed OCI image)",
                    key.name
                );
            }
        } else if let (Source::Oci(_), false) = (&req.source, cosign.is_empty()) {
            // Verified while it is fetched, before anything is written.
        } else if let Some(key) = any_key {
            bail!(
                "a trusted key is configured ({key}): only signed images can be installed, not an \
                 unsigned {} (a squashfs signed with `minisign -S -m IMAGE`, or an OCI image \
                 signed with `cosign sign --key`, its key in /oem/immuboot/cosign.pub)",
                req.source.describe()
            );
        }
        Ok(Checks {
            expected,
            signature,
            keys,
            cosign,
        })
    }
}

/// Reads the file back from the disk (not the page cache) and returns its
/// SHA-256 and length, checking the signature if one is required.
pub(super) fn verify_on_disk(
    path: &Path,
    signature: Option<&(PathBuf, minisign_verify::Signature)>,
    keys: &[(PathBuf, minisign_verify::PublicKey)],
    rep: &mut Reporter,
) -> Result<(String, u64, Option<String>)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata()?.len();
    // Written and fsynced: drop the cached pages so the check reads the disk.
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    let mut magic = [0u8; 4];
    (&file).read_exact(&mut magic).ok();
    if &magic != b"hsqs" {
        bail!(
            "{} is not a squashfs image (magic {magic:02x?})",
            path.display()
        );
    }
    use std::io::Seek;
    (&file).seek(std::io::SeekFrom::Start(0))?;
    let mut verifiers = Vec::new();
    if let Some((_, sig)) = signature {
        for (p, key) in keys {
            match key.verify_stream(sig) {
                Ok(v) => verifiers.push((p.clone(), v)),
                Err(e) => rep.step(&format!("key {} does not apply: {e}", p.display())),
            }
        }
        if verifiers.is_empty() {
            bail!(
                "the signature {} was not made by a trusted key ({}); refused",
                signature
                    .map(|s| s.0.display().to_string())
                    .unwrap_or_default(),
                keys.iter()
                    .map(|k| k.0.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut reader = digest::HashingReader::new(&file);
    let mut buf = vec![0u8; digest::CHUNK];
    rep.start("verifying", Some(len));
    while let Some(chunk) = reader
        .next_chunk(&mut buf)
        .with_context(|| format!("cannot read back {}", path.display()))?
    {
        for (_, v) in verifiers.iter_mut() {
            v.update(chunk);
        }
        rep.bytes(reader.len());
    }
    let (sha256, done) = reader.finish();
    rep.finish(done);
    let mut signed_by = None;
    if let Some((sig_path, _)) = signature {
        for (p, mut v) in verifiers {
            if v.finalize().is_ok() {
                signed_by = Some(p.display().to_string());
                break;
            }
        }
        if signed_by.is_none() {
            bail!(
                "the image does not match its signature {}: it was tampered with or the \
                 signature belongs to another image; refused",
                sig_path.display()
            );
        }
    }
    Ok((sha256, done, signed_by))
}

/// The IMAGE_VERSION in an image's os-release, read without mounting it.
pub fn image_version(image: &Path) -> Option<String> {
    let out = Command::new("unsquashfs")
        .arg("-cat")
        .arg(image)
        .arg("usr/lib/os-release")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("IMAGE_VERSION="))
        .map(|v| v.trim_matches('"').to_string())
}

/// Digests of the kernel and initramfs inside a squashfs, for GRUB's check.
pub(super) fn boot_digests(image: &Path) -> Result<Vec<digest::Entry>> {
    digest::BOOT_FILES
        .iter()
        .map(|f| {
            let mut child = Command::new("unsquashfs")
                .args(["-cat"])
                .arg(image)
                .arg(f)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot run unsquashfs (package squashfs-tools)")?;
            let stdout = child.stdout.take().context("unsquashfs stdout")?;
            let (sha256, _) = digest::sha256_hex(stdout)?;
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "the image has no /{f} (GRUB boots the kernel and initramfs from inside \
                     the image): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(digest::Entry {
                sha256,
                name: f.to_string(),
            })
        })
        .collect()
}
