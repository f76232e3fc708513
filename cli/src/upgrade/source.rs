//! What an image is written from, recognised from the command line.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

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

    pub(super) fn describe(&self) -> String {
        match self {
            Source::Squashfs(p) => format!("squashfs {}", p.display()),
            Source::Directory(p) => format!("directory {}", p.display()),
            Source::Oci(s) => format!("OCI image {s}"),
        }
    }
}
