//! OCI images flattened into a root file system directory, and OCI image
//! layouts written from directory trees.
//!
//! `immuboot upgrade SOURCE` ships the OS as a container image: [`unpack`]
//! applies the image's layers in order into an empty directory (which the CLI
//! then squashes), and [`write_layout`] produces an OCI image layout (used by
//! the build tasks to make a test image).
//!
//! # Sources ([`ImageSource`], see [`ImageSource::parse`])
//! - a registry (`docker://REF`, `oci://REF` or a bare `registry/repo:tag` /
//!   `registry/repo@sha256:…`), pulled (anonymously unless [`auth`] finds
//!   credentials) over HTTPS with the system CA store; plain HTTP only with the explicit `plain_http` opt-in. From an
//!   image index the manifest for linux and this machine's architecture
//!   (amd64 on x86_64) is chosen. Layers are downloaded one at a time into a
//!   hidden staging directory next to `dest`, verified, unpacked and deleted,
//!   so at most one layer is held on disk besides the tree.
//! - an OCI image layout directory (`oci:DIR[:TAG]`),
//! - a `docker save` / skopeo docker-archive tar (`docker-archive:PATH`).
//!
//! Credentials for registries that want them come from the files `podman
//! login` and `docker login` write (see [`auth`]); without an entry the
//! pull is anonymous.
//!
//! Mirrors, other locations, plain-HTTP and blocked registries come from
//! registries.conf ([`registries_conf`]): a pull tries the mirrors of the
//! entry matching the reference, then its location, each with its own
//! credentials. One that does not serve the image (unreachable, no TLS
//! where TLS is wanted, no such manifest, credentials refused) is logged
//! (`log::warn!`) and the next tried; one that serves a manifest that does
//! not verify stops the pull. Everything after the manifest (config,
//! layers, cosign signatures) comes from the origin that served it, and
//! what an image is ([`UnpackedImage::manifest_digest`]) does not depend on
//! where it came from ([`UnpackedImage::pulled_from`]).
//!
//! Registry access is the cargo feature `registry` (on by default). Without
//! it no HTTP/TLS stack is compiled and a registry source is refused.
//!
//! # Verification
//! Every blob is checked against its sha256 digest (and size) *before* any of
//! its bytes are unpacked; the uncompressed layer is also checked against the
//! config's `rootfs.diff_ids`. A docker-archive has no compressed digests, so
//! its layers are checked against `rootfs.diff_ids` (and, for blobs stored as
//! `blobs/sha256/HEX`, against their names) in a first pass.
//!
//! # Flattening rules
//! - layer media types: tar, tar+gzip, tar+zstd; the compression is detected
//!   from the content's magic bytes;
//! - regular files, directories, symlinks, hard links (to entries of the same
//!   or earlier layers), character and block devices, fifos; numeric uid/gid
//!   (applied when running as root, like GNU tar), modes including
//!   setuid/setgid/sticky, mtimes (directories' at the very end) and xattrs
//!   from PAX `SCHILY.xattr.*` records (e.g. `security.capability`);
//! - whiteouts: `.wh.NAME` removes NAME of lower layers, `.wh..wh..opq` makes
//!   its directory opaque (drops everything lower layers put there, keeps what
//!   the same layer added); whiteout files never appear in the result;
//! - an entry replacing one of another type replaces it (a directory over a
//!   file, a file over a directory, anything over a symlink);
//! - entry names that are absolute or contain `..` are refused. Symlinks met
//!   while resolving an entry's parent directories are followed *inside* the
//!   tree, as if `dest` were `/` (what docker and containerd do): with
//!   `etc -> /` in a lower layer, `etc/passwd` lands in `dest/passwd`, never
//!   outside `dest`. The final component is never followed.
//!
//! # Progress
//! [`Progress`] reports compressed bytes, cumulative over the image per
//! phase: `"download"` (registry), `"verify"` (checking a local blob before
//! unpacking it) and `"unpack"`.
//!
//! # Writing layouts
//! [`write_layout`] tars each [`LayerSource`] (a directory as it is on disk,
//! or a list of [`LayerEntry`] for whiteouts and the like), gzips it, and
//! writes config, manifest and `index.json` (tag in
//! `org.opencontainers.image.ref.name`; an existing entry with the same tag is
//! replaced, other tags are kept). Output is deterministic for equal input.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

mod apply;
mod archive;
pub mod auth;
mod build;
pub mod cosign;
mod digest;
mod layout;
pub mod registries_conf;
#[cfg(feature = "registry")]
mod registry;
mod source;
mod zstd_frames;

pub use build::{write_layout, EntryKind, ImageConfigInput, LayerEntry, LayerSource};
pub use source::ImageSource;

/// Progress of [`unpack`], in compressed bytes of the image's layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// `"download"`, `"verify"` or `"unpack"`.
    pub phase: &'static str,
    /// 1-based number of the layer being processed.
    pub layer: usize,
    /// Number of layers of the image.
    pub layers: usize,
    /// Bytes done in this phase so far, over all layers.
    pub done: u64,
    /// Sum of the layers' sizes, when known.
    pub total: Option<u64>,
}

/// What [`unpack`] unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedImage {
    /// Digest of the image manifest (for a registry index: of the chosen
    /// platform's manifest). A docker-archive has no manifest: there it is
    /// the digest of the archive's `manifest.json`.
    pub manifest_digest: String,
    /// Digest of the image config (for a docker-archive: the image ID).
    pub config_digest: String,
    /// Number of layers applied.
    pub layers: usize,
    /// Compressed layer bytes read.
    pub bytes: u64,
    /// The config's labels.
    pub labels: BTreeMap<String, String>,
    /// For a registry image, the `REGISTRY/REPOSITORY` that served it: the
    /// one the reference names, or a mirror or location from
    /// registries.conf ([`registries_conf`]).
    pub pulled_from: Option<String>,
}

/// Unpacks the image from `source` as a flattened root file system into
/// `dest`, which must be an empty or non-existent directory.
///
/// On error `dest` may hold a partly unpacked tree; the caller removes it.
pub fn unpack(
    source: &ImageSource,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<UnpackedImage> {
    match source {
        #[cfg(feature = "registry")]
        ImageSource::Registry {
            reference,
            plain_http,
        } => registry::unpack(reference, *plain_http, dest, progress),
        #[cfg(not(feature = "registry"))]
        ImageSource::Registry { reference, .. } => Err(source::no_registry(reference)),
        ImageSource::Layout { dir, tag } => layout::unpack(dir, tag.as_deref(), dest, progress),
        ImageSource::DockerArchive { path } => archive::unpack(path, dest, progress),
    }
}

/// The identity [`unpack`] would report as
/// [`UnpackedImage::manifest_digest`], resolved without reading or
/// downloading any layer: for a registry one manifest request, for a layout
/// its index and manifest (verified against their digests), for a
/// docker-archive the digest of its `manifest.json`. Lets a caller skip an
/// image it already has.
pub fn resolve(source: &ImageSource) -> Result<String> {
    match source {
        #[cfg(feature = "registry")]
        ImageSource::Registry {
            reference,
            plain_http,
        } => registry::resolve(reference, *plain_http),
        #[cfg(not(feature = "registry"))]
        ImageSource::Registry { reference, .. } => Err(source::no_registry(reference)),
        ImageSource::Layout { dir, tag } => layout::resolve(dir, tag.as_deref()),
        ImageSource::DockerArchive { path } => archive::resolve(path),
    }
}

/// Verifies the cosign signature of the image `source` names with one of
/// `keys` (see [`cosign`]), fetching only the manifest and the signature
/// manifest and payloads, no layer. Returns the verified manifest digest
/// and the source pinned to it: unpack that, so the tree is what was
/// signed (for a registry `REPO@DIGEST`; a layout or archive is local, and
/// [`UnpackedImage::manifest_digest`] must then equal the verified one).
pub fn verify_cosign(
    source: &ImageSource,
    keys: &[cosign::CosignKey],
) -> Result<(cosign::Verified, ImageSource)> {
    let unsigned = |digest: &str, where_: &str| {
        anyhow::anyhow!(
            "the image {digest} is not signed: there is no cosign signature (tag {}) {where_}",
            cosign::signature_tag(digest).unwrap_or_default()
        )
    };
    match source {
        #[cfg(feature = "registry")]
        ImageSource::Registry {
            reference,
            plain_http,
        } => {
            let found = registry::signature_layers(reference, *plain_http)?;
            let digest = found.digest;
            let layers = found
                .layers
                .ok_or_else(|| unsigned(&digest, &format!("in {}", found.repository)))?;
            let verified = cosign::verify_layers(&layers, keys, &digest)?;
            let pinned = ImageSource::Registry {
                reference: registry::pinned(reference, &digest)?,
                plain_http: *plain_http,
            };
            Ok((verified, pinned))
        }
        #[cfg(not(feature = "registry"))]
        ImageSource::Registry { reference, .. } => Err(source::no_registry(reference)),
        ImageSource::Layout { dir, .. } => {
            let digest = resolve(source)?;
            let tag = cosign::signature_tag(&digest)?;
            let layers = layout::signature_layers(dir, &tag)?
                .ok_or_else(|| unsigned(&digest, "in the layout"))?;
            Ok((
                cosign::verify_layers(&layers, keys, &digest)?,
                source.clone(),
            ))
        }
        ImageSource::DockerArchive { path } => anyhow::bail!(
            "{} is a docker-archive, which carries no cosign signature; publish the image to a \
             registry or an OCI layout with its signature",
            path.display()
        ),
    }
}

/// Counts bytes for [`Progress`] and calls the callback at most about once a
/// MiB, so a caller can draw without throttling.
pub(crate) struct Reporter<'a> {
    callback: &'a mut dyn FnMut(Progress),
    layers: usize,
    total: Option<u64>,
    phase: &'static str,
    layer: usize,
    done: BTreeMap<&'static str, u64>,
    last: u64,
}

impl<'a> Reporter<'a> {
    const STEP: u64 = 1 << 20;

    pub(crate) fn new(
        callback: &'a mut dyn FnMut(Progress),
        layers: usize,
        total: Option<u64>,
    ) -> Self {
        Reporter {
            callback,
            layers,
            total,
            phase: "",
            layer: 0,
            done: BTreeMap::new(),
            last: 0,
        }
    }

    /// Starts `phase` for the 1-based `layer`.
    pub(crate) fn start(&mut self, phase: &'static str, layer: usize) {
        self.phase = phase;
        self.layer = layer;
        let done = *self.done.entry(phase).or_insert(0);
        self.last = done;
        self.emit(done);
    }

    pub(crate) fn add(&mut self, n: u64) {
        let done = self.done.entry(self.phase).or_insert(0);
        *done += n;
        let done = *done;
        if done - self.last >= Self::STEP {
            self.last = done;
            self.emit(done);
        }
    }

    /// Reports the end of the current phase for the current layer.
    pub(crate) fn finish(&mut self) {
        let done = *self.done.entry(self.phase).or_insert(0);
        self.last = done;
        self.emit(done);
    }

    fn emit(&mut self, done: u64) {
        (self.callback)(Progress {
            phase: self.phase,
            layer: self.layer,
            layers: self.layers,
            done,
            total: self.total,
        });
    }
}

/// A reader that reports the bytes read through it.
/// The "unpack" phase of layer `n` (1-based): applies a verified blob to the
/// tree with progress, then checks the result against its diff_id.
pub(crate) fn unpack_layer(
    unpacker: &mut apply::Unpacker,
    reporter: &mut Reporter,
    n: usize,
    blob: impl std::io::Read,
    diff_id: Option<&String>,
    what: &str,
) -> Result<()> {
    reporter.start("unpack", n);
    let actual = unpacker.apply_layer(
        ProgressReader {
            inner: blob,
            reporter: &mut *reporter,
        },
        what,
    )?;
    reporter.finish();
    layout::check_diff_id(&actual, diff_id, what)
}

pub(crate) struct ProgressReader<'r, 'a, R> {
    pub(crate) inner: R,
    pub(crate) reporter: &'r mut Reporter<'a>,
}

impl<R: std::io::Read> std::io::Read for ProgressReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.reporter.add(n as u64);
        Ok(n)
    }
}

/// The config fields this crate reads. Own struct rather than oci-spec's
/// `ImageConfiguration`, so docker configs with extra or odd fields parse too.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) architecture: Option<String>,
    #[serde(default)]
    pub(crate) os: Option<String>,
    #[serde(default)]
    pub(crate) config: Option<ConfigSection>,
    #[serde(default)]
    pub(crate) rootfs: Option<RootFs>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ConfigSection {
    #[serde(rename = "Labels", default)]
    pub(crate) labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub(crate) diff_ids: Vec<String>,
}

impl ConfigFile {
    pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<ConfigFile> {
        use anyhow::Context;
        serde_json::from_slice(bytes).with_context(|| format!("{what} is not a valid image config"))
    }

    pub(crate) fn labels(&self) -> BTreeMap<String, String> {
        self.config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
    }

    pub(crate) fn diff_ids(&self) -> &[String] {
        self.rootfs
            .as_ref()
            .map(|r| r.diff_ids.as_slice())
            .unwrap_or(&[])
    }

    /// The diff_ids, refused unless there is one per layer (when listed at
    /// all); `listed_in` names where the layers come from.
    pub(crate) fn layer_diff_ids(&self, layers: usize, listed_in: &str) -> Result<&[String]> {
        let ids = self.diff_ids();
        if !ids.is_empty() && ids.len() != layers {
            anyhow::bail!(
                "the image config lists {} diff_ids but {listed_in} {layers} layers",
                ids.len()
            );
        }
        Ok(ids)
    }

    /// Refuses an image built for another OS or architecture: it would unpack
    /// fine and then fail to boot.
    pub(crate) fn check_platform(&self) -> Result<()> {
        let want = host_arch();
        if let Some(os) = self.os.as_deref().filter(|os| !os.is_empty()) {
            anyhow::ensure!(os == "linux", "the image is for OS {os:?}, not linux");
        }
        if let Some(arch) = self.architecture.as_deref().filter(|a| !a.is_empty()) {
            anyhow::ensure!(
                arch == want,
                "the image is for architecture {arch}, but this machine is {want}"
            );
        }
        Ok(())
    }
}

/// This machine's architecture in OCI (GOARCH) spelling.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Checks that `dest` is an empty directory, creating it if needed.
pub(crate) fn prepare_dest(dest: &Path) -> Result<()> {
    use anyhow::Context;
    match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            anyhow::ensure!(
                entries.next().is_none(),
                "destination {} is not empty; unpack needs an empty or non-existent directory",
                dest.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest)
                .with_context(|| format!("creating destination {}", dest.display()))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading destination {}", dest.display()));
        }
    }
    Ok(())
}

// Lets the shared test fixture (tests/common) name the crate the same way
// from unit tests as from integration tests.
#[cfg(test)]
extern crate self as immuboot_oci;

#[cfg(test)]
mod tests;

/// Entry points for the fuzz targets (`fuzz/`): the parsers of bytes an
/// image's author wrote, without the files around them. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;
    use oci_spec::image::{ImageIndex, ImageManifest};

    /// An image layout's JSON as `unpack` reads it: the bytes as an index
    /// (choosing by tag and by platform), as a manifest (its layers' media
    /// types) and as a config (platform, diff_ids, labels).
    pub fn oci_json(bytes: &[u8]) {
        if let Ok(index) = serde_json::from_slice::<ImageIndex>(bytes) {
            let _ = layout::choose_tagged(index.manifests(), None);
            let _ = layout::choose_tagged(index.manifests(), Some("latest"));
            let _ = layout::choose_platform(index.manifests());
        }
        if let Ok(manifest) = serde_json::from_slice::<ImageManifest>(bytes) {
            let _ = digest::sha256_hex(manifest.config().digest().as_ref());
            for l in manifest.layers() {
                let _ = layout::check_layer_media_type(l.media_type().as_ref(), "layer");
                let _ = digest::sha256_hex(l.digest().as_ref());
            }
        }
        if let Ok(config) = ConfigFile::parse(bytes, "config") {
            let _ = config.check_platform();
            let _ = config.layer_diff_ids(1, "fuzz");
            let _ = config.labels();
        }
    }

    /// A docker-archive's manifest.json: the image entry and the names it
    /// gives, as the archive resolves them.
    pub fn docker_manifest(bytes: &[u8]) -> Result<()> {
        let entry = archive::parse_manifest(bytes, "fuzz")?;
        for name in std::iter::once(&entry.config).chain(&entry.layers) {
            let _ = archive::digest_in_name(name);
            let _ = archive::resolve_dots(&archive::normalize(name));
        }
        Ok(())
    }

    /// Applies tar layers (plain, gzip or zstd) in order into `root`, an
    /// existing directory, as an image's layers are applied.
    pub fn apply_layers(root: &Path, layers: &[&[u8]]) -> Result<()> {
        let mut unpacker = apply::Unpacker::new(root)?;
        for (i, layer) in layers.iter().enumerate() {
            unpacker.apply_layer(*layer, &format!("layer {}", i + 1))?;
        }
        unpacker.finish()
    }
}
