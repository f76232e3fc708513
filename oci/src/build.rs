//! Writing OCI image layouts: layer tars from directories or entry lists,
//! config, manifest and index.json.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::image::{
    Descriptor, ImageIndex, ImageIndexBuilder, ImageManifestBuilder, MediaType, Platform,
    PlatformBuilder, ANNOTATION_REF_NAME,
};

use crate::digest::{sha256_hex, sha256_of, HashWriter};

/// One layer for [`write_layout`].
#[derive(Debug, Clone)]
pub enum LayerSource {
    /// A directory tree, archived as it is on disk: ownership, modes, mtimes,
    /// symlinks, hard links (within the tree), device nodes, fifos and xattrs
    /// (except `security.selinux`, a label of the build host). Sockets are
    /// skipped. The directory itself becomes the root and is not archived.
    Dir(PathBuf),
    /// Entries written in the given order, e.g. whiteouts.
    Entries(Vec<LayerEntry>),
}

/// An entry of [`LayerSource::Entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Path relative to the root, `/`-separated (`etc/motd`). For
    /// [`EntryKind::Whiteout`] the path that is deleted, for
    /// [`EntryKind::Opaque`] the directory made opaque.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`0o4755`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    /// Symlink with this target.
    Symlink(String),
    /// Hard link to this path (of this layer, earlier in the list, or of a
    /// lower layer).
    Hardlink(String),
    /// Deletes `path` from lower layers (written as `DIR/.wh.NAME`).
    Whiteout,
    /// Hides everything lower layers have in the directory `path` (written as
    /// `path/.wh..wh..opq`).
    Opaque,
}

impl LayerEntry {
    fn new(path: &str, kind: EntryKind, mode: u32) -> LayerEntry {
        LayerEntry {
            path: path.to_owned(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }

    /// A directory owned by root, mtime 0.
    pub fn dir(path: &str, mode: u32) -> LayerEntry {
        LayerEntry::new(path, EntryKind::Dir, mode)
    }

    /// A regular file owned by root, mtime 0.
    pub fn file(path: &str, content: impl Into<Vec<u8>>, mode: u32) -> LayerEntry {
        LayerEntry::new(path, EntryKind::File(content.into()), mode)
    }

    pub fn symlink(path: &str, target: &str) -> LayerEntry {
        LayerEntry::new(path, EntryKind::Symlink(target.to_owned()), 0o777)
    }

    pub fn hardlink(path: &str, target: &str) -> LayerEntry {
        LayerEntry::new(path, EntryKind::Hardlink(target.to_owned()), 0o644)
    }

    pub fn whiteout(path: &str) -> LayerEntry {
        LayerEntry::new(path, EntryKind::Whiteout, 0o644)
    }

    pub fn opaque(dir: &str) -> LayerEntry {
        LayerEntry::new(dir, EntryKind::Opaque, 0o644)
    }

    /// Sets owner and group.
    pub fn owner(mut self, uid: u32, gid: u32) -> LayerEntry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Sets the mtime.
    pub fn mtime(mut self, mtime: u64) -> LayerEntry {
        self.mtime = mtime;
        self
    }
}

/// Config fields for [`write_layout`]; architecture (amd64), os (linux) and
/// `rootfs.diff_ids` are filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfigInput {
    /// `config.Labels`.
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 creation time. Left out when `None`, so that equal input
    /// gives equal digests.
    pub created: Option<String>,
}

/// Layer compression. Only gzip is offered publicly (what every tool reads);
/// the others exist to test the unpacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Writes an image of `layers` (bottom first) into the OCI image layout
/// `layout_dir` (created if missing; existing blobs and other tags are kept)
/// under `tag`, and returns the manifest digest.
pub fn write_layout(
    layout_dir: &Path,
    tag: &str,
    layers: &[LayerSource],
    config: ImageConfigInput,
) -> Result<String> {
    write_layout_with(layout_dir, tag, layers, config, Compression::Gzip)
}

pub(crate) fn write_layout_with(
    layout_dir: &Path,
    tag: &str,
    layers: &[LayerSource],
    config: ImageConfigInput,
    compression: Compression,
) -> Result<String> {
    if tag.is_empty() || tag.contains('/') {
        bail!("invalid tag {tag:?}: it must be non-empty and contain no '/'");
    }
    let blobs = layout_dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    fs::write(
        layout_dir.join("oci-layout"),
        b"{\"imageLayoutVersion\":\"1.0.0\"}",
    )
    .with_context(|| format!("writing {}/oci-layout", layout_dir.display()))?;

    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let what = match layer {
            LayerSource::Dir(dir) => format!("layer {} (directory {})", i + 1, dir.display()),
            LayerSource::Entries(_) => format!("layer {} (entry list)", i + 1),
        };
        let (desc, diff_id) =
            write_layer(&blobs, layer, compression).with_context(|| format!("writing {what}"))?;
        layer_descs.push(desc);
        diff_ids.push(diff_id);
    }

    let config_json = config_json(&config, &diff_ids)?;
    let config_desc = write_blob(&blobs, MediaType::ImageConfig, &config_json)?;

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(layer_descs)
        .build()
        .context("building the image manifest")?;
    let manifest_json = serde_json::to_vec(&manifest)?;
    let mut manifest_desc = write_blob(&blobs, MediaType::ImageManifest, &manifest_json)?;
    manifest_desc.set_annotations(Some(HashMap::from([(
        ANNOTATION_REF_NAME.to_owned(),
        tag.to_owned(),
    )])));
    manifest_desc.set_platform(Some(linux_amd64()?));
    let manifest_digest = manifest_desc.digest().to_string();

    let index_path = layout_dir.join("index.json");
    let mut manifests = if index_path.exists() {
        let index = ImageIndex::from_file(&index_path)
            .with_context(|| format!("reading {}", index_path.display()))?;
        index.manifests().clone()
    } else {
        Vec::new()
    };
    // One manifest per tag: the new image takes the tag over.
    manifests.retain(|d| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .map(String::as_str)
            != Some(tag)
    });
    manifests.push(manifest_desc);
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .context("building index.json")?;
    let tmp = layout_dir.join(".index.json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(&index)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &index_path).with_context(|| format!("writing {}", index_path.display()))?;
    Ok(manifest_digest)
}

fn linux_amd64() -> Result<Platform> {
    Ok(PlatformBuilder::default()
        .architecture(oci_spec::image::Arch::Amd64)
        .os(oci_spec::image::Os::Linux)
        .build()?)
}

/// The config as JSON, by hand rather than with oci-spec's builder: its
/// labels are a HashMap, whose random order would make digests differ
/// from run to run.
fn config_json(input: &ImageConfigInput, diff_ids: &[String]) -> Result<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct Config<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        created: Option<&'a str>,
        architecture: &'a str,
        os: &'a str,
        config: Section<'a>,
        rootfs: RootFs<'a>,
    }
    #[derive(serde::Serialize)]
    struct Section<'a> {
        #[serde(rename = "Labels", skip_serializing_if = "BTreeMap::is_empty")]
        labels: &'a BTreeMap<String, String>,
    }
    #[derive(serde::Serialize)]
    struct RootFs<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        diff_ids: &'a [String],
    }
    Ok(serde_json::to_vec(&Config {
        created: input.created.as_deref(),
        architecture: "amd64",
        os: "linux",
        config: Section {
            labels: &input.labels,
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids,
        },
    })?)
}

fn write_blob(blobs: &Path, media_type: MediaType, content: &[u8]) -> Result<Descriptor> {
    let digest = sha256_of(content);
    let path = blobs.join(sha256_hex(&digest)?);
    fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    Ok(Descriptor::new(
        media_type,
        content.len() as u64,
        oci_spec::image::Digest::try_from(digest.as_str())?,
    ))
}

/// Writes the layer blob; returns its descriptor and diff_id.
fn write_layer(
    blobs: &Path,
    layer: &LayerSource,
    compression: Compression,
) -> Result<(Descriptor, String)> {
    let tmp = tempfile::NamedTempFile::new_in(blobs).context("creating a temporary blob file")?;
    let file = HashWriter::new(io::BufWriter::new(tmp.reopen()?));
    let (file, diff_id) = {
        // tar → (diff_id hash) → compressor → (digest hash) → file
        let compressed: Box<dyn WriteFinish> = match compression {
            Compression::None => Box::new(Plain(file)),
            // Default gzip header: mtime 0, so equal input gives equal blobs.
            Compression::Gzip => Box::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Box::new(ZstdLayer {
                tar: Vec::new(),
                file,
            }),
        };
        let mut builder = tar::Builder::new(HashWriter::new(compressed));
        match layer {
            LayerSource::Dir(dir) => append_tree(&mut builder, dir)?,
            LayerSource::Entries(entries) => {
                for entry in entries {
                    append_entry(&mut builder, entry)
                        .with_context(|| format!("entry {:?}", entry.path))?;
                }
            }
        }
        let (compressed, diff_id, _) = builder.into_inner()?.finish();
        (compressed.finish_box()?, diff_id)
    };
    let (buffered, digest, size) = file.finish();
    buffered
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    let media_type = match compression {
        Compression::None => MediaType::ImageLayer,
        Compression::Gzip => MediaType::ImageLayerGzip,
        Compression::Zstd => MediaType::ImageLayerZstd,
    };
    let path = blobs.join(sha256_hex(&digest)?);
    // Temporary files are 0600; blobs are as readable as the other files.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))?;
    tmp.persist(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((
        Descriptor::new(
            media_type,
            size,
            oci_spec::image::Digest::try_from(digest.as_str())?,
        ),
        diff_id,
    ))
}

type BlobFile = HashWriter<io::BufWriter<fs::File>>;

/// A compressor whose end can be written through a trait object.
trait WriteFinish: Write {
    fn finish_box(self: Box<Self>) -> io::Result<BlobFile>;
}

struct Plain(BlobFile);

impl Write for Plain {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl WriteFinish for Plain {
    fn finish_box(self: Box<Self>) -> io::Result<BlobFile> {
        Ok(self.0)
    }
}

impl WriteFinish for flate2::write::GzEncoder<BlobFile> {
    fn finish_box(self: Box<Self>) -> io::Result<BlobFile> {
        self.finish()
    }
}

/// A zstd layer, for tests: ruzstd compresses a whole buffer (at its one
/// implemented level, about zstd's level 1), so the tar is kept in memory
/// until the end.
struct ZstdLayer {
    tar: Vec<u8>,
    file: BlobFile,
}

impl Write for ZstdLayer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tar.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteFinish for ZstdLayer {
    fn finish_box(self: Box<Self>) -> io::Result<BlobFile> {
        let ZstdLayer { tar, mut file } = *self;
        // Into a Vec: ruzstd's streaming compressor panics on write errors.
        let compressed = ruzstd::encoding::compress_to_vec(
            tar.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        file.write_all(&compressed)?;
        Ok(file)
    }
}

type Tar = tar::Builder<HashWriter<Box<dyn WriteFinish>>>;

fn base_header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode & 0o7777);
    header.set_uid(uid.into());
    header.set_gid(gid.into());
    header.set_mtime(mtime);
    header.set_size(0);
    header
}

fn append_entry(builder: &mut Tar, entry: &LayerEntry) -> Result<()> {
    let path = entry.path.trim_matches('/');
    if path.is_empty() {
        bail!("empty path");
    }
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, path),
    };
    let in_dir = |name: &str| match dir {
        Some(dir) => format!("{dir}/{name}"),
        None => name.to_owned(),
    };
    let header = |kind| base_header(kind, entry.mode, entry.uid, entry.gid, entry.mtime);
    match &entry.kind {
        EntryKind::Dir => builder.append_data(
            &mut header(tar::EntryType::Directory),
            format!("{path}/"),
            io::empty(),
        )?,
        EntryKind::File(content) => {
            let mut h = header(tar::EntryType::Regular);
            h.set_size(content.len() as u64);
            builder.append_data(&mut h, path, content.as_slice())?;
        }
        EntryKind::Symlink(target) => {
            builder.append_link(&mut header(tar::EntryType::Symlink), path, target)?
        }
        EntryKind::Hardlink(target) => {
            builder.append_link(&mut header(tar::EntryType::Link), path, target)?
        }
        EntryKind::Whiteout => builder.append_data(
            &mut header(tar::EntryType::Regular),
            in_dir(&format!(".wh.{name}")),
            io::empty(),
        )?,
        EntryKind::Opaque => builder.append_data(
            &mut header(tar::EntryType::Regular),
            format!("{path}/.wh..wh..opq"),
            io::empty(),
        )?,
    }
    Ok(())
}

/// Archives the tree under `root` in sorted order (deterministic output).
fn append_tree(builder: &mut Tar, root: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let mut links = HashMap::new();
    append_children(builder, root, Path::new(""), &mut links)
}

fn append_children(
    builder: &mut Tar,
    root: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let rel = rel.join(&name);
        let abs = root.join(&rel);
        let is_dir = append_path(builder, &abs, &rel, links)
            .with_context(|| format!("archiving {}", abs.display()))?;
        if is_dir {
            append_children(builder, root, &rel, links)?;
        }
    }
    Ok(())
}

/// Appends one file system object; returns whether it is a directory.
fn append_path(
    builder: &mut Tar,
    abs: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<bool> {
    let meta = fs::symlink_metadata(abs)?;
    let ft = meta.file_type();
    let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
    let header = |kind| base_header(kind, meta.mode(), meta.uid(), meta.gid(), mtime);

    if ft.is_socket() {
        // Sockets cannot be archived; they are runtime objects anyway.
        return Ok(false);
    }
    // A second name of an inode already archived becomes a hard link entry.
    if !ft.is_dir() && meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            builder.append_link(&mut header(tar::EntryType::Link), rel, first)?;
            return Ok(false);
        }
        links.insert((meta.dev(), meta.ino()), rel.to_owned());
    }

    let xattrs = read_xattrs(abs)?;
    if !xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value.as_slice()))
            .collect();
        builder.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }

    if ft.is_dir() {
        let mut name = rel.as_os_str().to_owned();
        name.push("/");
        builder.append_data(&mut header(tar::EntryType::Directory), name, io::empty())?;
        return Ok(true);
    }
    if ft.is_file() {
        let mut h = header(tar::EntryType::Regular);
        h.set_size(meta.len());
        let file = fs::File::open(abs)?;
        // take(): a file growing while archived must not break the tar framing.
        builder.append_data(&mut h, rel, io::Read::take(file, meta.len()))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(abs)?;
        builder.append_link(&mut header(tar::EntryType::Symlink), rel, target)?;
    } else if ft.is_char_device() || ft.is_block_device() {
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else {
            tar::EntryType::Block
        };
        let mut h = header(kind);
        h.set_device_major(rustix::fs::major(meta.rdev()))?;
        h.set_device_minor(rustix::fs::minor(meta.rdev()))?;
        builder.append_data(&mut h, rel, io::empty())?;
    } else if ft.is_fifo() {
        builder.append_data(&mut header(tar::EntryType::Fifo), rel, io::empty())?;
    } else {
        bail!("unsupported file type");
    }
    Ok(false)
}

/// The xattrs of `path` worth shipping, sorted by name.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        // File systems without xattr support have none to ship.
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e).context("listing xattrs"),
    };
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut list = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut list[..]).context("listing xattrs")?;
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name == b"security.selinux" {
            continue;
        }
        let name = std::str::from_utf8(name).map_err(|_| {
            anyhow!(
                "xattr name {:?} is not UTF-8",
                String::from_utf8_lossy(name)
            )
        })?;
        let len = rustix::fs::lgetxattr_query(path, name)
            .with_context(|| format!("reading xattr {name}"))?;
        let mut value = vec![0u8; len];
        if len > 0 {
            let n = rustix::fs::lgetxattr(path, name, &mut value[..])
                .with_context(|| format!("reading xattr {name}"))?;
            value.truncate(n);
        }
        out.push((name.to_owned(), value));
    }
    out.sort();
    Ok(out)
}
