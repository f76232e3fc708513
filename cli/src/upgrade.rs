//! `immuboot upgrade` and `immuboot reset`: write an image into a slot (or
//! the recovery image) the way RAUC and Android A/B do it:
//!
//! 1. mark the target slot not bootable;
//! 2. write the image into a temporary file beside the slot (free space
//!    checked first; on any error the temporary file is removed and the
//!    boot state restored);
//! 3. verify what is on disk: read it back past the page cache, compare
//!    digests, check the signature when a trusted key is configured;
//! 4. fsync, rename into place, record the digest lists, fsync the directory;
//! 5. activate last: one atomic update of the boot state puts the slot on
//!    trial and keeps the booted slot as the fallback.
//!
//! A rerun after an interruption removes the leftovers and starts again.

use crate::progress::Reporter;
use anyhow::{bail, Context, Result};
use immuboot_assess::{digest, fsutil, store, BootState, Health, Slot};
use serde_json::json;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Room left free on the file system beside a new image (ext4 metadata,
/// digest lists, the boot state).
const SPARE_BYTES: u64 = 16 << 20;

/// Where keys that may sign images live: in the image, or on COS_OEM.
pub const TRUSTED_KEYS: &[&str] = &["/etc/immuboot/trusted.pub", "/oem/immuboot/trusted.pub"];

/// What an image is written from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A squashfs file, copied as it is.
    Squashfs(PathBuf),
    /// A directory holding a root file system, squashed here.
    Directory(PathBuf),
    /// An OCI image (registry, image layout, docker-archive), flattened
    /// and squashed here.
    Oci(String),
}

impl Source {
    /// Recognises a source: an existing path by its content, anything else
    /// as an OCI reference (`oci:DIR`, `docker-archive:FILE`, `docker://…`,
    /// `registry/repo:tag`).
    pub fn classify(spec: &str) -> Result<Source> {
        let path = Path::new(spec);
        if path.is_dir() {
            if path.join("oci-layout").is_file() && path.join("index.json").is_file() {
                return Ok(Source::Oci(format!("oci:{spec}")));
            }
            return Ok(Source::Directory(path.to_path_buf()));
        }
        if path.is_file() {
            let mut head = [0u8; 512];
            let n = File::open(path)
                .and_then(|mut f| f.read(&mut head))
                .with_context(|| format!("cannot read {spec}"))?;
            if head[..n.min(4)] == *b"hsqs" {
                return Ok(Source::Squashfs(path.to_path_buf()));
            }
            if n >= 262 && &head[257..262] == b"ustar" {
                return Ok(Source::Oci(format!("docker-archive:{spec}")));
            }
            bail!("{spec} is neither a squashfs image nor a tar archive (docker-archive)");
        }
        let known_prefix = ["oci:", "docker-archive:", "docker://", "oci://"]
            .iter()
            .any(|p| spec.starts_with(p));
        if known_prefix || (spec.contains('/') && (spec.contains(':') || spec.contains('@'))) {
            return Ok(Source::Oci(spec.to_string()));
        }
        bail!(
            "{spec}: no such file or directory, and not an image reference \
             (expected a squashfs file, a root file system directory, oci:DIR, \
             docker-archive:FILE or REGISTRY/REPO:TAG)"
        )
    }

    fn describe(&self) -> String {
        match self {
            Source::Squashfs(p) => format!("squashfs {}", p.display()),
            Source::Directory(p) => format!("directory {}", p.display()),
            Source::Oci(s) => format!("OCI image {s}"),
        }
    }
}

/// Options of one upgrade.
#[derive(Debug, Clone)]
pub struct Request {
    pub source: Source,
    pub tries: u8,
    /// Allow an unencrypted registry.
    pub plain_http: bool,
    /// A minisign signature of the squashfs (default: SOURCE.minisig).
    pub signature: Option<PathBuf>,
    /// Key files; those that exist are trusted, and then images must be signed.
    pub trusted_keys: Vec<PathBuf>,
    /// Where an OCI image is unpacked before it is squashed.
    pub work_dir: PathBuf,
    /// Digest the squashfs must have (default: SOURCE.sha256 if present).
    pub expected_sha256: Option<String>,
    /// gzip level for images squashed here (default 6).
    pub compression_level: Option<u8>,
}

/// The outcome, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Installed {
    pub target: String,
    pub image: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    pub signed_by: Option<String>,
    pub seconds: f64,
}

/// Pauses at a named point of the upgrade when `IMMUBOOT_PAUSE_AT` names
/// it, so a test can cut the power there (the crash-safety scenarios).
pub fn checkpoint(name: &str) {
    if std::env::var("IMMUBOOT_PAUSE_AT").is_ok_and(|v| v == name) {
        eprintln!("immuboot: paused at checkpoint {name}");
        let _ = std::io::stderr().flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

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

fn free_bytes(dir: &Path) -> Result<u64> {
    let st = rustix::fs::statvfs(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    Ok(st.f_bavail * st.f_frsize)
}

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

/// Refuses a write of `size` bytes into `dir` that would fill it. The old
/// image is replaced only once the new one is verified, so both must fit.
fn check_space(dir: &Path, size: u64) -> Result<()> {
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

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// What must hold for the written image, worked out before anything
/// changes: the digest it must have and the signature it must carry.
pub struct Checks {
    expected: Option<String>,
    signature: Option<(PathBuf, minisign_verify::Signature)>,
    keys: Vec<(PathBuf, minisign_verify::PublicKey)>,
}

impl Checks {
    /// Reads the keys, the signature and the expected digest; refuses an
    /// unsigned source when a key is configured.
    pub fn prepare(req: &Request) -> Result<Checks> {
        let keys = load_keys(&req.trusted_keys)?;
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
            }
        } else if let Some((key, _)) = keys.first() {
            bail!(
                "a trusted key is configured ({}): only a signed squashfs image can be installed, \
                 not an unsigned {} (build the squashfs, sign it with `minisign -S -m IMAGE`, \
                 and upgrade from the file)",
                key.display(),
                req.source.describe()
            );
        }
        Ok(Checks {
            expected,
            signature,
            keys,
        })
    }
}

/// Writes `source` into `image` (a slot or the recovery image file) with
/// steps 2–4 of the sequence; the caller marks and activates.
pub fn write_image(
    req: &Request,
    checks: &Checks,
    image: &Path,
    rep: &mut Reporter,
) -> Result<Installed> {
    let started = std::time::Instant::now();
    let dir = image
        .parent()
        .with_context(|| format!("{} has no directory", image.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = fsutil::temporary(image);
    let Checks {
        expected,
        signature,
        keys,
    } = checks;

    let result = (|| -> Result<Installed> {
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
                let r = unpack_oci(spec, req.plain_http, &unpack, rep)
                    .and_then(|()| squash_dir(&unpack, &tmp, dir, req.compression_level, rep));
                let _ = std::fs::remove_dir_all(&unpack);
                r?;
                None
            }
        };
        checkpoint("written");
        rep.step("verifying what is on disk");
        let (sha256, bytes, signed_by) = verify_on_disk(&tmp, signature.as_ref(), keys, rep)?;
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
        std::fs::rename(&tmp, image)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), image.display()))?;
        checkpoint("renamed");
        let name = image
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let image_str = image.display().to_string();
        fsutil::write_atomic(
            Path::new(&digest::image_digest_path(&image_str)),
            digest::render(&[digest::Entry {
                sha256: sha256.clone(),
                name,
            }])
            .as_bytes(),
        )?;
        fsutil::write_atomic(
            Path::new(&digest::boot_digest_path(&image_str)),
            digest::render(&boot).as_bytes(),
        )?;
        fsutil::fsync_dir(dir)?;
        checkpoint("synced");
        Ok(Installed {
            target: String::new(),
            image: image.to_path_buf(),
            sha256,
            bytes,
            signed_by,
            seconds: started.elapsed().as_secs_f64(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies a squashfs into `tmp`, hashing it on the way; returns the digest
/// and length of what was written.
fn copy_squashfs(src: &Path, tmp: &Path, dir: &Path, rep: &mut Reporter) -> Result<(String, u64)> {
    let size = std::fs::metadata(src)
        .with_context(|| format!("cannot stat {}", src.display()))?
        .len();
    check_space(dir, size)?;
    let mut input = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let mut out = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    rep.start("writing", Some(size));
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let (mut at10, mut at50, mut at90) = (false, false, false);
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", src.display())),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).with_context(|| {
            format!(
                "cannot write {} (is {} full?)",
                tmp.display(),
                dir.display()
            )
        })?;
        done += n as u64;
        rep.bytes(done);
        for (flag, pct, name) in [
            (&mut at10, 10, "write-10"),
            (&mut at50, 50, "write-50"),
            (&mut at90, 90, "write-90"),
        ] {
            if !*flag && done * 100 >= size * pct {
                *flag = true;
                checkpoint(name);
            }
        }
    }
    rep.finish(done);
    out.sync_all()
        .with_context(|| format!("cannot fsync {}", tmp.display()))?;
    Ok((digest::hex(&hasher.finalize()), done))
}

/// gzip level for images squashed here. Measured on the 291 MB test root
/// (2 cores): mksquashfs level 6 took 5.4 s for 89.6 MB, its default level
/// 9 took 28 s for 88.9 MB (0.7 % smaller), the backhand crate 20 s for
/// 89.0 MB.
const DEFAULT_GZIP_LEVEL: u8 = 6;

/// Squashes a root file system directory into `tmp` with mksquashfs (gzip:
/// GRUB 2.06 reads the kernel from inside the image and cannot read zstd).
/// mksquashfs rather than a Rust writer: faster at the same size (see
/// [`DEFAULT_GZIP_LEVEL`]), every file type and xattrs, output GRUB reads.
fn squash_dir(
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
        "squashing {} into {} (mksquashfs, gzip)",
        root.display(),
        tmp.display()
    ));
    let _ = std::fs::remove_file(tmp);
    let out = Command::new("mksquashfs")
        .arg(root)
        .arg(tmp)
        .args(["-comp", "gzip", "-noappend", "-no-progress", "-quiet"])
        .args([
            "-Xcompression-level".to_string(),
            level.unwrap_or(DEFAULT_GZIP_LEVEL).clamp(1, 9).to_string(),
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

fn unpack_oci(spec: &str, plain_http: bool, dest: &Path, rep: &mut Reporter) -> Result<()> {
    let source = immuboot_oci::ImageSource::parse(spec, plain_http)?;
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
        "image {} ({} layers) unpacked",
        info.manifest_digest, info.layers
    ));
    Ok(())
}

/// Reads the file back from the disk (not the page cache) and returns its
/// SHA-256 and length, checking the signature if one is required.
fn verify_on_disk(
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
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    rep.start("verifying", Some(len));
    let mut reader = &file;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read back {}", path.display()))
            }
        };
        hasher.update(&buf[..n]);
        for (_, v) in verifiers.iter_mut() {
            v.update(&buf[..n]);
        }
        done += n as u64;
        rep.bytes(done);
    }
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
    Ok((digest::hex(&hasher.finalize()), done, signed_by))
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
fn boot_digests(image: &Path) -> Result<Vec<digest::Entry>> {
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

/// Saves the boot state (both copies, atomically) and checkpoints the
/// file system's journal so GRUB, which does not replay it, reads the new
/// state too.
pub fn save_state(
    state_dir: &Path,
    env: &immuboot_assess::grubenv::GrubEnv,
    state: &BootState,
    between: impl FnOnce(),
) -> Result<()> {
    store::save_with(state_dir, env, state, between)?;
    immuboot_mount::journal::checkpoint(state_dir)
}

/// Everything of an upgrade that touches the boot state, given where the
/// state lives and what booted.
pub struct Upgrade<'a> {
    pub state_dir: &'a Path,
    pub booted: Option<Slot>,
}

impl Upgrade<'_> {
    fn load(&self) -> Result<store::Loaded> {
        let loaded = store::load(self.state_dir);
        if let store::Source::Defaults { error } = &loaded.source {
            if !store::primary(self.state_dir)
                .parent()
                .is_some_and(|p| p.is_dir())
            {
                bail!(
                    "no boot state under {}: {error} (is COS_STATE mounted there?)",
                    self.state_dir.display()
                );
            }
        }
        Ok(loaded)
    }

    /// Writes the inactive slot and activates it on trial.
    pub fn slot(&self, req: &Request, rep: &mut Reporter) -> Result<Installed> {
        let cos = self.state_dir.join("cOS");
        clean_leftovers(&cos, rep)?;
        checkpoint("start");
        let loaded = self.load()?;
        let before = loaded.state.clone();
        let target = before.upgrade_target(self.booted)?;
        if Some(target) == self.booted {
            bail!("refusing to write slot {target}: it is the slot this system booted from");
        }
        rep.step(&format!(
            "upgrading slot {target} from {} (booted: {})",
            req.source.describe(),
            self.booted
                .map(|s| format!("slot {s}"))
                .unwrap_or("recovery".into())
        ));
        // Refuse before anything changes.
        let checks = Checks::prepare(req)?;
        if let Source::Squashfs(src) = &req.source {
            let size = std::fs::metadata(src)
                .with_context(|| format!("cannot stat {}", src.display()))?
                .len();
            check_space(&cos, size).with_context(|| format!("slot {target} was not changed"))?;
        }

        // 1. The target may not boot while it is rewritten.
        let mut marked = before.clone();
        *marked.health_mut(target) = Health::Bad;
        if marked.active_slot == target {
            marked.active_slot = target.other();
        }
        save_state(self.state_dir, &loaded.env, &marked, || {})
            .context("cannot mark the target slot not bootable")?;
        checkpoint("marked");

        let image = cos.join(format!("{target}.img"));
        let mut installed = match write_image(req, &checks, &image, rep) {
            Ok(i) => i,
            Err(e) => {
                // Nothing was renamed: the slot still holds its old image.
                let restored = save_state(self.state_dir, &loaded.env, &before, || {});
                return Err(match restored {
                    Ok(()) => e.context(format!(
                        "upgrade of slot {target} failed; its old image and the boot state are unchanged"
                    )),
                    Err(r) => e.context(format!(
                        "upgrade of slot {target} failed, and the boot state could not be restored ({r:#}): slot {target} stays marked bad"
                    )),
                });
            }
        };

        // 5. Activate last, in one atomic state update.
        let current = self.load()?;
        let mut state = current.state.clone();
        state.activate_on_trial(target, req.tries);
        state.next_entry = None;
        save_state(self.state_dir, &current.env, &state, || {
            checkpoint("activating")
        })
        .context("cannot activate the new slot")?;
        checkpoint("activated");
        installed.target = format!("slot {target}");
        Ok(installed)
    }

    /// Rewrites both slots (reset from recovery) and makes slot a active.
    /// `known_good`: the source is the recovery image this system runs, so
    /// both slots are good; otherwise both go on trial.
    pub fn reset(
        &self,
        req: &Request,
        known_good: bool,
        rep: &mut Reporter,
    ) -> Result<Vec<Installed>> {
        if self.booted.is_some() {
            bail!("reset runs only in recovery mode: it rewrites both slots (boot the recovery entry, or `immuboot next-boot recovery` and reboot)");
        }
        let cos = self.state_dir.join("cOS");
        clean_leftovers(&cos, rep)?;
        let checks = Checks::prepare(req)?;
        let loaded = self.load()?;
        let mut state = loaded.state.clone();
        for slot in [Slot::A, Slot::B] {
            *state.health_mut(slot) = Health::Bad;
        }
        save_state(self.state_dir, &loaded.env, &state, || {})?;
        let mut out = Vec::new();
        for slot in [Slot::A, Slot::B] {
            rep.step(&format!(
                "writing slot {slot} from {}",
                req.source.describe()
            ));
            let mut i = write_image(req, &checks, &cos.join(format!("{slot}.img")), rep)
                .with_context(|| format!("reset: writing slot {slot} failed; both slots stay marked bad, recovery still boots"))?;
            i.target = format!("slot {slot}");
            out.push(i);
        }
        let current = self.load()?;
        let mut state: BootState = current.state.clone();
        state.active_slot = Slot::A;
        state.next_entry = None;
        state.last_failure = None;
        for slot in [Slot::A, Slot::B] {
            *state.health_mut(slot) = if known_good {
                Health::Good
            } else {
                Health::Trial {
                    tries: req.tries.clamp(1, 9),
                }
            };
        }
        save_state(self.state_dir, &current.env, &state, || {})?;
        Ok(out)
    }
}

/// Refuses to write the recovery image while it runs.
pub fn check_recovery_writable(booted_mode: &str) -> Result<()> {
    if booted_mode == "recovery" {
        bail!("refusing to write the recovery image while running from it; boot a slot first");
    }
    Ok(())
}

/// Writes the recovery image (from a normal boot, never from recovery:
/// see [`check_recovery_writable`]).
pub fn recovery(req: &Request, recovery_dir: &Path, rep: &mut Reporter) -> Result<Installed> {
    let cos = recovery_dir.join("cOS");
    clean_leftovers(&cos, rep)?;
    let checks = Checks::prepare(req)?;
    let mut i = write_image(req, &checks, &cos.join("recovery.img"), rep)?;
    i.target = "recovery".into();
    Ok(i)
}

/// JSON for the report.
pub fn to_json(items: &[Installed]) -> serde_json::Value {
    json!(items)
}
