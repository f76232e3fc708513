//! Unpacking from an OCI image layout directory.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, ANNOTATION_REF_NAME};

use crate::apply::Unpacker;
use crate::digest::{sha256_hex, verify_bytes, verify_reader};
use crate::{
    prepare_dest, unpack_layer, ConfigFile, Progress, ProgressReader, Reporter, UnpackedImage,
};

/// Manifests, indexes and configs are small; a bigger one is not an image.
pub(crate) const MAX_METADATA: u64 = 4 << 20;

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .dir
            .join("blobs")
            .join("sha256")
            .join(sha256_hex(digest)?))
    }

    fn open_blob(&self, digest: &str, what: &str) -> Result<fs::File> {
        let path = self.blob_path(digest)?;
        fs::File::open(&path).with_context(|| format!("opening {what} ({})", path.display()))
    }

    /// Reads and verifies a small JSON blob.
    fn read_small(&self, desc: &Descriptor, what: &str) -> Result<Vec<u8>> {
        let digest = desc.digest().to_string();
        if desc.size() > MAX_METADATA {
            bail!(
                "{what} {digest} is {} bytes, more than a manifest or config can be",
                desc.size()
            );
        }
        let mut bytes = Vec::new();
        self.open_blob(&digest, what)?
            .take(MAX_METADATA + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {what} {digest}"))?;
        verify_bytes(&bytes, &digest, Some(desc.size()), what)?;
        Ok(bytes)
    }
}

/// The image manifest of the layout that `tag` (or the only image) names,
/// followed through indexes down to this platform's manifest.
fn manifest_descriptor(layout: &Layout, tag: Option<&str>) -> Result<Descriptor> {
    let dir = &layout.dir;
    let shown = dir.display();
    if !dir.join("oci-layout").is_file() {
        bail!("{shown} is not an OCI image layout: it has no oci-layout file");
    }
    let index_path = dir.join("index.json");
    let index = ImageIndex::from_file(&index_path)
        .with_context(|| format!("reading {}", index_path.display()))?;
    let desc = choose_tagged(index.manifests(), tag)
        .with_context(|| format!("choosing the image in {shown}"))?;

    // Follow (at most two levels of) indexes down to the platform manifest.
    let mut desc = desc.clone();
    for _ in 0..2 {
        if !INDEX_TYPES.contains(&desc.media_type().to_string().as_str()) {
            break;
        }
        let bytes = layout.read_small(&desc, "the image index")?;
        let nested: ImageIndex =
            serde_json::from_slice(&bytes).context("parsing the image index")?;
        desc = choose_platform(nested.manifests())?.clone();
    }
    let media_type = desc.media_type().to_string();
    if !MANIFEST_TYPES.contains(&media_type.as_str()) {
        bail!("{shown}: the chosen entry has media type {media_type}, not an image manifest");
    }
    Ok(desc)
}

/// The digest of the manifest [`unpack`] would apply, verified, without
/// reading any layer.
pub(crate) fn resolve(dir: &Path, tag: Option<&str>) -> Result<String> {
    let layout = Layout {
        dir: dir.to_owned(),
    };
    let desc = manifest_descriptor(&layout, tag)?;
    layout.read_small(&desc, "the image manifest")?;
    Ok(desc.digest().to_string())
}

/// The cosign signature layers the layout holds under `tag`
/// (`sha256-HEX.sig`, as `cosign save` writes them), each payload verified
/// against its digest; `None` when the layout has no such tag.
pub(crate) fn signature_layers(
    dir: &Path,
    tag: &str,
) -> Result<Option<Vec<crate::cosign::SignatureLayer>>> {
    let layout = Layout {
        dir: dir.to_owned(),
    };
    let index_path = dir.join("index.json");
    let index = ImageIndex::from_file(&index_path)
        .with_context(|| format!("reading {}", index_path.display()))?;
    let Some(desc) = index.manifests().iter().find(|d| ref_name(d) == Some(tag)) else {
        return Ok(None);
    };
    let manifest: ImageManifest =
        serde_json::from_slice(&layout.read_small(desc, "the signature manifest")?)
            .context("parsing the signature manifest")?;
    let mut layers = Vec::new();
    for layer in manifest.layers() {
        if layer.media_type().to_string() != crate::cosign::SIMPLE_SIGNING {
            continue;
        }
        layers.push(crate::cosign::SignatureLayer {
            payload: layout.read_small(layer, "a signature payload")?,
            signature: layer
                .annotations()
                .as_ref()
                .and_then(|a| a.get(crate::cosign::SIGNATURE_ANNOTATION))
                .cloned(),
        });
    }
    Ok(Some(layers))
}

pub(crate) fn unpack(
    dir: &Path,
    tag: Option<&str>,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<UnpackedImage> {
    let layout = Layout {
        dir: dir.to_owned(),
    };
    let desc = manifest_descriptor(&layout, tag)?;
    let manifest_digest = desc.digest().to_string();
    let manifest: ImageManifest =
        serde_json::from_slice(&layout.read_small(&desc, "the image manifest")?)
            .with_context(|| format!("parsing image manifest {manifest_digest}"))?;

    let config_desc = manifest.config();
    let config_digest = config_desc.digest().to_string();
    let config = ConfigFile::parse(
        &layout.read_small(config_desc, "the image config")?,
        "the image config",
    )?;
    config.check_platform()?;
    let layers = manifest.layers();
    let diff_ids = config.layer_diff_ids(layers.len(), "the manifest")?;

    prepare_dest(dest)?;
    let mut unpacker = Unpacker::new(dest)?;
    let total = layers.iter().map(|l| l.size()).sum();
    let mut reporter = Reporter::new(progress, layers.len(), Some(total));
    for (i, desc) in layers.iter().enumerate() {
        let digest = desc.digest().to_string();
        let what = format!("layer {} of {} ({digest})", i + 1, layers.len());
        check_layer_media_type(desc.media_type().as_ref(), &what)?;

        // Verify first: unverified bytes never reach the decompressor or the tree.
        reporter.start("verify", i + 1);
        let blob = layout.open_blob(&digest, &what)?;
        verify_reader(
            ProgressReader {
                inner: blob,
                reporter: &mut reporter,
            },
            &digest,
            Some(desc.size()),
            &what,
        )?;
        reporter.finish();

        let blob = layout.open_blob(&digest, &what)?;
        unpack_layer(
            &mut unpacker,
            &mut reporter,
            i + 1,
            blob,
            diff_ids.get(i),
            &what,
        )?;
    }
    unpacker.finish()?;
    Ok(UnpackedImage {
        manifest_digest,
        config_digest,
        layers: layers.len(),
        bytes: total,
        labels: config.labels(),
        pulled_from: None,
    })
}

pub(crate) fn check_layer_media_type(media_type: &str, what: &str) -> Result<()> {
    // Covers OCI (incl. non-distributable) and docker rootfs diff types; the
    // compression itself is detected from the content.
    if media_type.contains(".tar") && !media_type.contains("encrypted") {
        return Ok(());
    }
    bail!("{what} has media type {media_type}, which is not a (tar, tar+gzip or tar+zstd) file system layer")
}

pub(crate) fn check_diff_id(actual: &str, expected: Option<&String>, what: &str) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => bail!(
            "{what} unpacks to a tar with digest {actual}, but the image config's rootfs.diff_ids says {expected}"
        ),
        _ => Ok(()),
    }
}

fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations()
        .as_ref()?
        .get(ANNOTATION_REF_NAME)
        .map(String::as_str)
}

pub(crate) fn choose_tagged<'a>(
    manifests: &'a [Descriptor],
    tag: Option<&str>,
) -> Result<&'a Descriptor> {
    let tags = || {
        let names: Vec<_> = manifests.iter().filter_map(ref_name).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    match tag {
        Some(tag) => {
            // A ref name may be a bare tag or a full reference ending in `:tag`.
            let matches: Vec<_> = manifests
                .iter()
                .filter(|d| {
                    ref_name(d).is_some_and(|n| {
                        n == tag
                            || n.rsplit_once(':')
                                .is_some_and(|(_, t)| t == tag && !t.contains('/'))
                    })
                })
                .collect();
            match matches.as_slice() {
                [one] => Ok(one),
                [] => bail!("no image tagged {tag:?} (tags present: {})", tags()),
                _ => bail!("several images tagged {tag:?}"),
            }
        }
        None => match manifests {
            [one] => Ok(one),
            [] => bail!("the layout holds no image"),
            _ => bail!(
                "the layout holds {} images; name one with oci:DIR:TAG (tags present: {})",
                manifests.len(),
                tags()
            ),
        },
    }
}

/// Picks linux on this machine's architecture from an index.
pub(crate) fn choose_platform(manifests: &[Descriptor]) -> Result<&Descriptor> {
    let arch = crate::host_arch();
    manifests
        .iter()
        .find(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == arch
            })
        })
        .or_else(|| match manifests {
            // A lone entry without platform is taken as is.
            [one] if one.platform().is_none() => Some(one),
            _ => None,
        })
        .ok_or_else(|| {
            let have: Vec<_> = manifests
                .iter()
                .filter_map(|d| {
                    d.platform()
                        .as_ref()
                        .map(|p| format!("{}/{}", p.os(), p.architecture()))
                })
                .collect();
            anyhow!(
                "the image index has no linux/{arch} image (platforms present: {})",
                have.join(", ")
            )
        })
}
