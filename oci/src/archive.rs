//! Unpacking from a docker-archive (`docker save`, skopeo `docker-archive:`).
//!
//! The archive is not extracted: one scan records where each member's data
//! lies, and members are then read in place.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use crate::apply::{decompress, Unpacker};
use crate::digest::{check, sha256_hex, sha256_of, HashReader};
use crate::layout::{check_diff_id, MAX_METADATA};
use crate::{
    prepare_dest, unpack_layer, ConfigFile, Progress, ProgressReader, Reporter, UnpackedImage,
};

enum Member {
    File {
        offset: u64,
        size: u64,
    },
    /// Old `docker save` links duplicate layers to the first copy.
    Link(String),
}

#[derive(serde::Deserialize)]
pub(crate) struct ManifestEntry {
    #[serde(rename = "Config")]
    pub(crate) config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub(crate) layers: Vec<String>,
}

struct Archive {
    file: fs::File,
    members: HashMap<String, Member>,
}

/// Archive member names without `./` and duplicate slashes.
pub(crate) fn normalize(name: &str) -> String {
    name.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Archive {
    fn open(path: &Path) -> Result<Archive> {
        let mut file = fs::File::open(path)?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic)?;
        if magic[..n].starts_with(&[0x1f, 0x8b])
            || magic[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        {
            bail!("the archive is compressed; decompress it first (e.g. gunzip), docker-archive sources are plain tars");
        }
        file.seek(SeekFrom::Start(0))?;
        let mut members = HashMap::new();
        let mut tar = tar::Archive::new(BufReader::new(file.try_clone()?));
        for entry in tar
            .entries_with_seek()
            .context("reading the archive as a tar")?
        {
            let entry = entry.context("reading the archive's table of contents")?;
            let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target =
                        String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default())
                            .into_owned();
                    // Symlink targets are relative to the link's directory,
                    // hard link targets to the archive root.
                    let target = if entry.header().entry_type() == tar::EntryType::Symlink {
                        match name.rsplit_once('/') {
                            Some((dir, _)) => format!("{dir}/{target}"),
                            None => target,
                        }
                    } else {
                        target
                    };
                    Member::Link(target)
                }
                _ => continue,
            };
            members.insert(name, member);
        }
        Ok(Archive { file, members })
    }

    /// A reader of a member's content, following member links.
    fn member(&self, name: &str) -> Result<io::Take<BufReader<fs::File>>> {
        let mut name = normalize(name);
        for _ in 0..8 {
            match self.members.get(&name) {
                Some(Member::File { offset, size }) => {
                    let mut file = self.file.try_clone()?;
                    file.seek(SeekFrom::Start(*offset))?;
                    return Ok(BufReader::with_capacity(256 * 1024, file).take(*size));
                }
                Some(Member::Link(target)) => name = resolve_dots(target)?,
                None => bail!("the archive has no member {name:?}"),
            }
        }
        bail!("too many links resolving archive member {name:?}")
    }

    fn member_size(&self, name: &str) -> Option<u64> {
        let mut name = normalize(name);
        for _ in 0..8 {
            match self.members.get(&name)? {
                Member::File { size, .. } => return Some(*size),
                Member::Link(target) => name = resolve_dots(target).ok()?,
            }
        }
        None
    }

    fn read_small(&self, name: &str, what: &str) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.member(name)
            .with_context(|| format!("opening {what}"))?
            .take(MAX_METADATA + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {what}"))?;
        if bytes.len() as u64 > MAX_METADATA {
            bail!("{what} is larger than {MAX_METADATA} bytes");
        }
        Ok(bytes)
    }
}

/// Applies `..` in an archive member name (link targets use it); refuses to
/// go above the archive root.
pub(crate) fn resolve_dots(name: &str) -> Result<String> {
    let mut out: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()
                    .ok_or_else(|| anyhow!("archive link {name:?} points outside the archive"))?;
            }
            part => out.push(part),
        }
    }
    Ok(out.join("/"))
}

/// `blobs/sha256/HEX` (newer `docker save`) or `HEX.json` names carry the
/// digest of their content.
pub(crate) fn digest_in_name(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?;
    let base = base.strip_suffix(".json").unwrap_or(base);
    let digest = format!("sha256:{base}");
    sha256_hex(&digest).ok()?;
    let content_addressed = name.contains("blobs/sha256/") || name.ends_with(".json");
    content_addressed.then_some(digest)
}

/// The one image entry of a docker-archive's manifest.json.
pub(crate) fn parse_manifest(bytes: &[u8], shown: &str) -> Result<ManifestEntry> {
    let mut entries: Vec<ManifestEntry> = serde_json::from_slice(bytes)
        .with_context(|| format!("parsing manifest.json of {shown}"))?;
    match entries.len() {
        1 => Ok(entries.remove(0)),
        0 => bail!("{shown}: manifest.json lists no image"),
        many => {
            let tags: Vec<_> = entries
                .iter()
                .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
                .collect();
            bail!(
                "{shown} holds {many} images ({}); save one image per archive",
                tags.join(", ")
            )
        }
    }
}

/// The identity [`unpack`] reports for the archive (the SHA-256 of its
/// `manifest.json`), without reading any layer.
pub(crate) fn resolve(path: &Path) -> Result<String> {
    let shown = path.display();
    let archive = Archive::open(path).with_context(|| format!("reading docker-archive {shown}"))?;
    let manifest_bytes = archive
        .read_small("manifest.json", "manifest.json")
        .with_context(|| format!("{shown} is not a docker-archive"))?;
    parse_manifest(&manifest_bytes, &shown.to_string())?;
    Ok(sha256_of(&manifest_bytes))
}

pub(crate) fn unpack(
    path: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<UnpackedImage> {
    let shown = path.display();
    let archive = Archive::open(path).with_context(|| format!("reading docker-archive {shown}"))?;
    let manifest_bytes = archive
        .read_small("manifest.json", "manifest.json")
        .with_context(|| format!("{shown} is not a docker-archive"))?;
    let entry = &parse_manifest(&manifest_bytes, &shown.to_string())?;

    let config_bytes = archive.read_small(&entry.config, "the image config")?;
    let config_digest = sha256_of(&config_bytes);
    if let Some(expected) = digest_in_name(&entry.config) {
        check(
            &config_digest,
            config_bytes.len() as u64,
            &expected,
            None,
            "the image config",
        )?;
    }
    let config = ConfigFile::parse(&config_bytes, "the image config")?;
    config.check_platform()?;
    let layers = &entry.layers;
    let diff_ids = config.layer_diff_ids(layers.len(), "manifest.json")?;

    prepare_dest(dest)?;
    let mut unpacker = Unpacker::new(dest)?;
    let sizes: Vec<u64> = layers
        .iter()
        .map(|l| archive.member_size(l).unwrap_or(0))
        .collect();
    let total = sizes.iter().sum();
    let mut reporter = Reporter::new(progress, layers.len(), Some(total));
    for (i, name) in layers.iter().enumerate() {
        let what = format!("layer {} of {} ({name})", i + 1, layers.len());
        // Verify first (the layer's name if it is a digest, its uncompressed
        // content against diff_ids), so unverified data never reaches the tree.
        reporter.start("verify", i + 1);
        let blob = archive
            .member(name)
            .with_context(|| format!("opening {what}"))?;
        let mut compressed = HashReader::new(ProgressReader {
            inner: blob,
            reporter: &mut reporter,
        });
        let (diff_id, _) = HashReader::new(
            decompress(&mut compressed).with_context(|| format!("opening {what}"))?,
        )
        .finish()
        .with_context(|| format!("reading {what}"))?;
        // Drain what the decompressor left unread before hashing ends.
        io::copy(&mut compressed, &mut io::sink())?;
        let (digest, len) = compressed.finish()?;
        if let Some(expected) = digest_in_name(name) {
            check(&digest, len, &expected, None, &what)?;
        }
        check_diff_id(&diff_id, diff_ids.get(i), &what)?;
        reporter.finish();

        // Checked again as it is unpacked: the file could have changed
        // between the passes.
        let blob = archive.member(name)?;
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
        manifest_digest: sha256_of(&manifest_bytes),
        config_digest,
        layers: layers.len(),
        bytes: total,
        labels: config.labels(),
        pulled_from: None,
    })
}
