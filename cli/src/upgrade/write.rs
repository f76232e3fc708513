//! Writing an image file: into a temporary file beside it, checked, then
//! renamed into place with its digest lists; leftovers and free space.

use super::identity::{write_source_record, SourceRecord};
use super::squash::{squash_dir, unpack_oci};
use super::verify::{boot_digests, verify_on_disk, Checks};
use super::{checkpoint, Installed, Request, Source};
use crate::progress::Reporter;
use anyhow::{bail, Context, Result};
use immuboot_assess::{digest, fsutil};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Room left free on the file system beside a new image (ext4 metadata,
/// digest lists, the boot state).
pub(super) const SPARE_BYTES: u64 = 16 << 20;

/// Removes what an interrupted upgrade left in an image or work directory:
/// our temporary files (`.NAME.new`), unpack and download directories.
pub fn clean_leftovers(dir: &Path, rep: &mut Reporter) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.ends_with(".new")
            || name.starts_with(".upgrade-")
            || name.starts_with(".immuboot-oci-download-");
        if name.starts_with('.') && ours {
            rep.step(&format!(
                "removing {} left by an interrupted upgrade",
                e.path().display()
            ));
            let path = e.path();
            let result = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    fsutil::fsync_dir(dir)
}

pub(super) fn free_bytes(dir: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    Ok(st.f_bavail * st.f_frsize)
}

/// Refuses a write of `size` bytes into `dir` that would fill it. The old
/// image is replaced only once the new one is verified, so both must fit.
pub(super) fn check_space(dir: &Path, size: u64) -> Result<()> {
    let free = free_bytes(dir)?;
    if free < size + SPARE_BYTES {
        bail!(
            "not enough space on {}: the image needs {} MiB plus {} MiB spare, {} MiB are free \
             (the old image is replaced only after the new one is verified, so both must fit); \
             free space on that partition or make it larger",
            dir.display(),
            size >> 20,
            SPARE_BYTES >> 20,
            free >> 20
        );
    }
    Ok(())
}

/// An image written into its temporary file beside its place and verified
/// there (steps 1–2 of the sequence): nothing else has changed yet. Dropped
/// without [`Prepared::rename`], the temporary file is removed.
pub struct Prepared {
    tmp: PathBuf,
    image: PathBuf,
    sha256: String,
    bytes: u64,
    signed_by: Option<String>,
    boot: Vec<digest::Entry>,
    source: Option<SourceRecord>,
    pulled_from: Option<String>,
    started: Instant,
}

/// An image renamed into its place whose digest lists are still to be
/// recorded.
pub struct Renamed(Prepared);

/// Writes `source` into a temporary file beside `image` (a slot or the
/// recovery image file) and verifies it: digest, signature, the boot files.
/// The caller marks the target, then [`Prepared::rename`]s and activates.
pub fn prepare_image(
    req: &Request,
    checks: &Checks,
    image: &Path,
    rep: &mut Reporter,
) -> Result<Prepared> {
    let started = Instant::now();
    let dir = image
        .parent()
        .with_context(|| format!("{} has no directory", image.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = fsutil::temporary(image);
    let Checks {
        expected,
        signature,
        keys,
        cosign,
    } = checks;
    let mut cosign_signer = None;

    let result = (|| -> Result<Prepared> {
        let mut source = None;
        let mut pulled_from = None;
        let streamed = match &req.source {
            Source::Squashfs(src) => Some(copy_squashfs(src, &tmp, dir, rep)?),
            Source::Directory(root) => {
                squash_dir(root, &tmp, dir, req.compression_level, rep)?;
                None
            }
            Source::Oci(spec) => {
                std::fs::create_dir_all(&req.work_dir).with_context(|| {
                    format!(
                        "cannot create the work directory {}",
                        req.work_dir.display()
                    )
                })?;
                clean_leftovers(&req.work_dir, rep)?;
                let unpack = req
                    .work_dir
                    .join(format!(".upgrade-{}", std::process::id()));
                let r = unpack_oci(spec, req.plain_http, cosign, &unpack, rep).and_then(|got| {
                    squash_dir(&unpack, &tmp, dir, req.compression_level, rep)?;
                    Ok(got)
                });
                let _ = std::fs::remove_dir_all(&unpack);
                let unpacked = r?;
                cosign_signer = unpacked.signed_by;
                pulled_from = unpacked.pulled_from;
                // The source as given, not where it was pulled from: the
                // identity is the same via a mirror or directly.
                source = Some(SourceRecord {
                    source: spec.clone(),
                    manifest_digest: unpacked.manifest_digest,
                });
                None
            }
        };
        checkpoint("written");
        rep.step("verifying what is on disk");
        let (sha256, bytes, signed_by) = verify_on_disk(&tmp, signature.as_ref(), keys, rep)?;
        let signed_by = signed_by.or(cosign_signer.take());
        if let Some((want, _)) = &streamed {
            if *want != sha256 {
                bail!(
                    "{} reads back with SHA-256 {sha256}, but {want} was written: the disk \
                     returned different data (failing storage?)",
                    tmp.display()
                );
            }
        }
        if let Some(want) = expected {
            if *want != sha256 {
                bail!(
                    "the image's SHA-256 is {sha256}, but {want} was expected: the source is \
                     corrupted or not the image it claims to be"
                );
            }
        }
        let boot = boot_digests(&tmp)?;
        checkpoint("verified");
        Ok(Prepared {
            tmp: tmp.clone(),
            image: image.to_path_buf(),
            sha256,
            bytes,
            signed_by,
            boot,
            source,
            pulled_from,
            started,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Prepared {
    /// Step 4: renames the verified image into its place, replacing the old
    /// one. Until this returns Ok the old image is intact.
    ///
    /// The old image's digest lists are removed first, durably: a crash
    /// after the rename must not leave the new image beside them, where
    /// `verify` would call it corrupted and `reset` would refuse the
    /// recovery image as its source. Until [`Renamed::record`] the image
    /// has no digest list, which readers report as not recorded.
    pub fn rename(self) -> Result<Renamed> {
        self.forget_old_digests()?;
        std::fs::rename(&self.tmp, &self.image).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.tmp.display(),
                self.image.display()
            )
        })?;
        checkpoint("renamed");
        Ok(Renamed(self))
    }

    fn forget_old_digests(&self) -> Result<()> {
        let image = self.image.display().to_string();
        let mut removed = false;
        for list in [
            digest::image_digest_path(&image),
            digest::boot_digest_path(&image),
        ] {
            match std::fs::remove_file(&list) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("cannot remove {list}")))
                }
            }
        }
        if removed {
            let dir = self
                .image
                .parent()
                .with_context(|| format!("{} has no directory", self.image.display()))?;
            fsutil::fsync_dir(dir)?;
        }
        Ok(())
    }

    /// [`Prepared::rename`] and [`Renamed::record`]: where no boot state
    /// marks the target (the recovery image).
    pub fn install(self) -> Result<Installed> {
        self.rename()?.record()
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Gone once renamed; otherwise the write was abandoned.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl Renamed {
    /// Records the digest lists beside the image and fsyncs the directory.
    pub fn record(self) -> Result<Installed> {
        let p = &self.0;
        let dir = p
            .image
            .parent()
            .with_context(|| format!("{} has no directory", p.image.display()))?;
        let name = p
            .image
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let image_str = p.image.display().to_string();
        fsutil::write_atomic(
            Path::new(&digest::image_digest_path(&image_str)),
            digest::render(&[digest::Entry {
                sha256: p.sha256.clone(),
                name,
            }])
            .as_bytes(),
        )?;
        fsutil::write_atomic(
            Path::new(&digest::boot_digest_path(&image_str)),
            digest::render(&p.boot).as_bytes(),
        )?;
        // What the image came from: a later upgrade from the same source is
        // then a no-op. Written while the slot is out of service, like the
        // digests, so a slot that boots never has a stale record.
        write_source_record(&p.image, p.source.as_ref())?;
        fsutil::fsync_dir(dir)?;
        checkpoint("synced");
        Ok(Installed {
            target: String::new(),
            image: p.image.clone(),
            sha256: p.sha256.clone(),
            bytes: p.bytes,
            signed_by: p.signed_by.clone(),
            manifest_digest: p.source.as_ref().map(|s| s.manifest_digest.clone()),
            pulled_from: p.pulled_from.clone(),
            seconds: p.started.elapsed().as_secs_f64(),
        })
    }
}

/// Copies a squashfs into `tmp`, hashing it on the way; returns the digest
/// and length of what was written.
fn copy_squashfs(src: &Path, tmp: &Path, dir: &Path, rep: &mut Reporter) -> Result<(String, u64)> {
    let size = std::fs::metadata(src)
        .with_context(|| format!("cannot stat {}", src.display()))?
        .len();
    check_space(dir, size)?;
    let input = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let mut out = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    rep.start("writing", Some(size));
    let mut input = digest::HashingReader::new(input);
    let mut buf = vec![0u8; digest::CHUNK];
    // The crash tests' `write-N`: a pause once N % of the image is written.
    let mut pause = immuboot_assess::crashpoint::write_percent();
    while let Some(chunk) = input
        .next_chunk(&mut buf)
        .with_context(|| format!("cannot read {}", src.display()))?
    {
        out.write_all(chunk).with_context(|| {
            format!(
                "cannot write {} (is {} full?)",
                tmp.display(),
                dir.display()
            )
        })?;
        let done = input.len();
        rep.bytes(done);
        if let Some(pct) = pause {
            if done * 100 >= size * pct {
                pause = None;
                checkpoint(&format!("write-{pct}"));
            }
        }
    }
    let (sha256, done) = input.finish();
    rep.finish(done);
    out.sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.display()))?;
    Ok((sha256, done))
}
