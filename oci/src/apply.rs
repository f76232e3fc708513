//! Applies layer tars, in order, to a directory: the flattening.
//!
//! Written against the file system directly instead of `tar::Entry::unpack_in`
//! because layers need whiteouts, replacement of entries of another type,
//! device nodes, hard links into earlier layers and symlinks resolved inside
//! the tree, none of which `unpack_in` does the way an image needs.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};

use crate::digest::HashReader;

/// Symlinks followed while resolving one path, as the kernel's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

pub(crate) struct Unpacker {
    root: PathBuf,
    /// Ownership is applied only as root, like GNU tar's --same-owner default.
    same_owner: bool,
    /// Directory mtimes, set once all layers are in: adding entries to a
    /// directory changes its mtime.
    dir_times: BTreeMap<PathBuf, i64>,
}

/// Opens the decompressed content of a layer blob, detecting gzip and zstd by
/// their magic numbers (media types lie more often than magic does; docker
/// archives have no media types at all).
pub(crate) fn decompress<'a>(blob: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::with_capacity(256 * 1024, blob);
    let head = reader
        .fill_buf()
        .context("reading the layer's first bytes")?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        // Multi-member: pigz and some registries write several gzip members.
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(crate::zstd_frames::ZstdFrames::new(reader))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        bail!("the layer is xz-compressed, which OCI images do not allow (tar, tar+gzip, tar+zstd only)");
    } else if head.starts_with(b"BZh") {
        bail!("the layer is bzip2-compressed, which OCI images do not allow (tar, tar+gzip, tar+zstd only)");
    } else {
        Box::new(reader)
    })
}

/// Splits an archive path into its normal components, refusing absolute
/// paths and `..`: a layer naming such a path is malformed or hostile.
fn components(raw: &[u8]) -> Result<Vec<OsString>> {
    if raw.first() == Some(&b'/') {
        bail!("absolute path refused: layers must name paths relative to the root");
    }
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => bail!("path with `..` refused: it could escape the root"),
            part => out.push(OsStr::from_bytes(part).to_owned()),
        }
    }
    Ok(out)
}

fn join(parts: &[OsString]) -> PathBuf {
    parts.iter().collect()
}

fn lstat(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes whatever is at `path` (a directory recursively; symlinks are
/// removed, never followed).
fn remove_any(path: &Path) -> io::Result<()> {
    match lstat(path)? {
        None => Ok(()),
        Some(m) if m.is_dir() => fs::remove_dir_all(path),
        Some(_) => fs::remove_file(path),
    }
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Unpacker {
    /// `root` must exist (see [`crate::prepare_dest`]).
    pub(crate) fn new(root: &Path) -> Result<Unpacker> {
        let root =
            fs::canonicalize(root).with_context(|| format!("resolving {}", root.display()))?;
        Ok(Unpacker {
            root,
            same_owner: rustix::process::geteuid().is_root(),
            dir_times: BTreeMap::new(),
        })
    }

    /// Applies one (possibly compressed) layer; returns the digest of the
    /// uncompressed tar, its diff_id.
    pub(crate) fn apply_layer(&mut self, blob: impl Read, what: &str) -> Result<String> {
        let mut tar = HashReader::new(decompress(blob).with_context(|| format!("opening {what}"))?);
        let mut archive = tar::Archive::new(&mut tar);
        // Paths added by this layer (and their parents), which an opaque
        // whiteout in the same layer must keep.
        let mut added: HashSet<PathBuf> = HashSet::new();
        let entries = archive
            .entries()
            .with_context(|| format!("reading {what} as a tar archive"))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading a tar entry of {what}"))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.apply_entry(entry, &mut added)
                .with_context(|| format!("{what}: entry {name:?}"))?;
        }
        let (diff_id, _) = tar
            .finish()
            .with_context(|| format!("reading the end of {what}"))?;
        Ok(diff_id)
    }

    /// Sets the directory mtimes recorded during all layers.
    pub(crate) fn finish(self) -> Result<()> {
        // Deepest first, so setting a child cannot disturb a parent's time;
        // utimensat itself does not change the parent's mtime, but keep the
        // order obvious.
        let mut dirs: Vec<_> = self.dir_times.into_iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, mtime) in dirs {
            let path = self.root.join(&rel);
            match lstat(&path)? {
                Some(m) if m.is_dir() => set_mtime(&path, mtime)
                    .with_context(|| format!("setting the mtime of {}", path.display()))?,
                // Removed or replaced by a later layer.
                _ => {}
            }
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        added: &mut HashSet<PathBuf>,
    ) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let parts = components(&entry.path_bytes())?;
        let meta = read_meta(&mut entry)?;

        let Some((name, parents)) = parts.split_last() else {
            // The root itself ("./"): only its metadata can change.
            if kind.is_dir() {
                self.set_meta(&self.root.clone(), &meta, false)?;
                self.dir_times.insert(PathBuf::new(), meta.mtime);
                return Ok(());
            }
            bail!("a non-directory entry for the root directory");
        };

        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parents, name_bytes, added);
        }

        let parent = self
            .resolve(parents, true, added)?
            .expect("created parents exist");
        let rel = parent.join(name);
        let path = self.root.join(&rel);
        mark_added(added, &rel);
        let existing = lstat(&path)?;

        match kind {
            tar::EntryType::Directory => {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    remove_any(&path)?;
                    fs::create_dir(&path).context("creating directory")?;
                }
                self.set_meta(&path, &meta, false)?;
                self.dir_times.insert(rel, meta.mtime);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_any(&path)?;
                // create_new: O_EXCL never follows a symlink at the final component.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .context("creating file")?;
                io::copy(&mut entry, &mut file).context("writing file content")?;
                drop(file);
                self.set_meta(&path, &meta, false)?;
                set_mtime(&path, meta.mtime).context("setting mtime")?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| anyhow!("symlink without a target"))?
                    .into_owned();
                remove_any(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .context("creating symlink")?;
                self.set_meta(&path, &meta, true)?;
                set_mtime(&path, meta.mtime).context("setting mtime")?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| anyhow!("hard link without a target"))?
                    .into_owned();
                let shown = String::from_utf8_lossy(&target).into_owned();
                let target = self
                    .resolve_link_target(&target)
                    .with_context(|| format!("hard link target {shown:?}"))?;
                if target == path {
                    // A link to itself: nothing to do.
                    return Ok(());
                }
                remove_any(&path)?;
                // std's hard_link uses linkat without AT_SYMLINK_FOLLOW: a
                // symlink target is linked itself, not followed.
                fs::hard_link(&target, &path)
                    .with_context(|| format!("creating hard link to {shown:?}"))?;
                // Metadata belongs to the shared inode, set by the target's entry.
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = if kind == tar::EntryType::Fifo {
                    0
                } else {
                    let major = entry.header().device_major()?.unwrap_or(0);
                    let minor = entry.header().device_minor()?.unwrap_or(0);
                    rustix::fs::makedev(major, minor)
                };
                remove_any(&path)?;
                rustix::fs::mknodat(CWD, &path, file_type, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| {
                        let hint = if e == rustix::io::Errno::PERM {
                            " (device nodes need root)"
                        } else {
                            ""
                        };
                        anyhow!("creating {file_type:?} node: {e}{hint}")
                    })?;
                self.set_meta(&path, &meta, false)?;
                set_mtime(&path, meta.mtime).context("setting mtime")?;
            }
            other => bail!("unsupported tar entry type {other:?}"),
        }
        Ok(())
    }

    /// `.wh.NAME` and `.wh..wh..opq` entries in directory `parents`.
    fn whiteout(
        &mut self,
        parents: &[OsString],
        name: &[u8],
        added: &mut HashSet<PathBuf>,
    ) -> Result<()> {
        // Whiteouts only concern what exists: never create parents for them.
        let Some(dir) = self.resolve(parents, false, added)? else {
            return Ok(());
        };
        if name == OPAQUE.as_bytes() {
            if lstat(&self.root.join(&dir))?.is_some_and(|m| m.is_dir()) {
                self.clear_lower(&dir, added)?;
            }
            return Ok(());
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other `.wh..wh.` names are aufs bookkeeping, not whiteouts.
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            bail!("malformed whiteout name");
        }
        let rel = dir.join(OsStr::from_bytes(target));
        // Whiteouts hide lower layers only, not entries of their own layer.
        if !added.contains(&rel) {
            remove_any(&self.root.join(&rel)).context("removing the whited-out entry")?;
        }
        Ok(())
    }

    /// Removes everything under `dir` that this layer did not add.
    fn clear_lower(&self, dir: &Path, added: &HashSet<PathBuf>) -> Result<()> {
        let abs = self.root.join(dir);
        for child in fs::read_dir(&abs).with_context(|| format!("reading {}", abs.display()))? {
            let child = child?;
            let rel = dir.join(child.file_name());
            if !added.contains(&rel) {
                remove_any(&child.path())
                    .with_context(|| format!("removing {}", child.path().display()))?;
            } else if child.file_type()?.is_dir() {
                self.clear_lower(&rel, added)?;
            }
        }
        Ok(())
    }

    /// Resolves directory components to a real directory relative to the
    /// root, following symlinks inside the tree: an absolute target starts
    /// over at the root and `..` stops at it, so nothing resolves outside.
    /// With `create`, missing directories are made and non-directories in the
    /// way replaced (an upper-layer directory hides a lower-layer file);
    /// without, `None` is returned when the path does not exist.
    fn resolve(
        &self,
        parts: &[OsString],
        create: bool,
        added: &mut HashSet<PathBuf>,
    ) -> Result<Option<PathBuf>> {
        let mut todo: VecDeque<OsString> = parts.iter().cloned().collect();
        let mut real: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            match part.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    // `real` holds no symlinks, so lexical `..` is the physical parent.
                    real.pop();
                    continue;
                }
                _ => {}
            }
            let abs = self.root.join(join(&real)).join(&part);
            match lstat(&abs)? {
                Some(m) if m.is_dir() => real.push(part),
                Some(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        bail!(
                            "too many levels of symbolic links resolving {}",
                            join(parts).display()
                        );
                    }
                    let target = fs::read_link(&abs)?;
                    let target = target.as_os_str().as_bytes();
                    if target.first() == Some(&b'/') {
                        real.clear();
                    }
                    for piece in target.split(|&b| b == b'/').rev() {
                        todo.push_front(OsStr::from_bytes(piece).to_owned());
                    }
                }
                existing => {
                    if !create {
                        return Ok(None);
                    }
                    if existing.is_some() {
                        fs::remove_file(&abs).with_context(|| {
                            format!("replacing {} by a directory", abs.display())
                        })?;
                    }
                    fs::create_dir(&abs)
                        .with_context(|| format!("creating directory {}", abs.display()))?;
                    real.push(part);
                }
            }
        }
        let rel = join(&real);
        if create {
            mark_added(added, &rel);
        }
        Ok(Some(rel))
    }

    /// A hard link's target: an existing non-directory inside the tree.
    fn resolve_link_target(&self, raw: &[u8]) -> Result<PathBuf> {
        let parts = components(raw)?;
        let Some((name, parents)) = parts.split_last() else {
            bail!("empty hard link target");
        };
        let mut scratch = HashSet::new();
        let dir = self
            .resolve(parents, false, &mut scratch)?
            .ok_or_else(|| anyhow!("target does not exist (hard links must point to entries of this or an earlier layer)"))?;
        let path = self.root.join(dir).join(name);
        match lstat(&path)? {
            None => bail!("target does not exist (hard links must point to entries of this or an earlier layer)"),
            Some(m) if m.is_dir() => bail!("target is a directory"),
            Some(_) => Ok(path),
        }
    }

    /// Ownership first (chown clears setuid bits and file capabilities),
    /// then mode, then xattrs.
    fn set_meta(&self, path: &Path, meta: &Meta, is_symlink: bool) -> Result<()> {
        if self.same_owner {
            std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
                .with_context(|| format!("setting owner {}:{}", meta.uid, meta.gid))?;
        }
        if !is_symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
                .with_context(|| format!("setting mode {:o}", meta.mode))?;
        }
        for (name, value) in &meta.xattrs {
            rustix::fs::lsetxattr(path, name.as_os_str(), value, XattrFlags::empty())
                .with_context(|| format!("setting xattr {}", name.to_string_lossy()))?;
        }
        Ok(())
    }
}

fn mark_added(added: &mut HashSet<PathBuf>, rel: &Path) {
    for ancestor in rel.ancestors() {
        if ancestor.as_os_str().is_empty() || !added.insert(ancestor.to_owned()) {
            // Ancestors of an already present path are present too.
            break;
        }
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
    let header = entry.header();
    let uid = header.uid().context("reading uid")?;
    let gid = header.gid().context("reading gid")?;
    let mode = header.mode().context("reading mode")? & 0o7777;
    let mtime = header.mtime().context("reading mtime")?;
    let mut meta = Meta {
        mode,
        uid: u32::try_from(uid).map_err(|_| anyhow!("uid {uid} out of range"))?,
        gid: u32::try_from(gid).map_err(|_| anyhow!("gid {gid} out of range"))?,
        mtime: i64::try_from(mtime).unwrap_or(i64::MAX),
        xattrs: Vec::new(),
    };
    if let Some(extensions) = entry.pax_extensions().context("reading PAX records")? {
        for ext in extensions {
            let ext = ext.context("reading a PAX record")?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                meta.xattrs.push((
                    OsStr::from_bytes(name).to_owned(),
                    ext.value_bytes().to_vec(),
                ));
            } else if key == b"mtime" {
                // PAX mtime may carry a fraction; whole seconds suffice.
                if let Some(secs) = ext
                    .value()
                    .ok()
                    .and_then(|v| v.split('.').next()?.parse().ok())
                {
                    meta.mtime = secs;
                }
            }
        }
    }
    Ok(meta)
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let time = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}
