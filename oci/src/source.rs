//! Where an image comes from, and how a command-line spec names it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Where [`crate::unpack`] reads an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `registry/repo:tag` or `registry/repo@sha256:…`. `plain_http` is an
    /// explicit opt-in to talk unencrypted HTTP to that registry (e.g. a test
    /// registry on localhost or 10.0.2.2:5000).
    Registry { reference: String, plain_http: bool },
    /// An OCI image layout directory (`index.json`, `oci-layout`,
    /// `blobs/sha256/…`); `tag` is matched against
    /// `org.opencontainers.image.ref.name`. With `None` the layout must hold
    /// exactly one manifest.
    Layout { dir: PathBuf, tag: Option<String> },
    /// A `docker save` / skopeo docker-archive tar (`manifest.json` and layer
    /// tars, plain or gzip-compressed) holding one image.
    DockerArchive { path: PathBuf },
}

const FORMS: &str =
    "accepted forms: oci:DIR[:TAG], docker-archive:PATH, docker://REGISTRY/REPO:TAG, \
                     oci://REGISTRY/REPO:TAG, REGISTRY/REPO:TAG, REGISTRY/REPO@sha256:DIGEST, \
                     or the path of an existing layout directory or docker-archive file";

impl ImageSource {
    /// Parses a command-line image spec:
    /// - `oci:DIR[:TAG]` — OCI layout (a DIR that exists as a whole wins over
    ///   splitting off a tag at its last `:`),
    /// - `docker-archive:PATH`,
    /// - `docker://REF` or `oci://REF` — registry,
    /// - an existing path: a directory is a layout, a file a docker-archive,
    /// - a bare reference with a `/` and a `:` or `@` — registry.
    ///
    /// `plain_http` is only kept for registry sources.
    pub fn parse(spec: &str, plain_http: bool) -> Result<ImageSource> {
        if let Some(rest) = spec.strip_prefix("oci:").filter(|r| !r.starts_with("//")) {
            if rest.is_empty() {
                bail!("{spec:?}: missing directory after oci:");
            }
            if Path::new(rest).is_dir() {
                return Ok(ImageSource::Layout {
                    dir: rest.into(),
                    tag: None,
                });
            }
            return Ok(match rest.rsplit_once(':') {
                Some((dir, tag)) if !dir.is_empty() && !tag.is_empty() && !tag.contains('/') => {
                    ImageSource::Layout {
                        dir: dir.into(),
                        tag: Some(tag.to_owned()),
                    }
                }
                _ => ImageSource::Layout {
                    dir: rest.into(),
                    tag: None,
                },
            });
        }
        if let Some(path) = spec.strip_prefix("docker-archive:") {
            if path.is_empty() {
                bail!("{spec:?}: missing path after docker-archive:");
            }
            return Ok(ImageSource::DockerArchive { path: path.into() });
        }
        if let Some(reference) = spec
            .strip_prefix("docker://")
            .or_else(|| spec.strip_prefix("oci://"))
        {
            return registry(reference, plain_http);
        }
        let path = Path::new(spec);
        if let Ok(meta) = std::fs::metadata(path) {
            return Ok(if meta.is_dir() {
                ImageSource::Layout {
                    dir: path.into(),
                    tag: None,
                }
            } else {
                ImageSource::DockerArchive { path: path.into() }
            });
        }
        if spec.contains('/') && (spec.contains(':') || spec.contains('@')) {
            return registry(spec, plain_http);
        }
        bail!("cannot tell what image {spec:?} names: it is no existing path and no registry reference; {FORMS}")
    }
}

#[cfg(feature = "registry")]
fn registry(reference: &str, plain_http: bool) -> Result<ImageSource> {
    use anyhow::Context;
    reference
        .parse::<oci_client::Reference>()
        .with_context(|| format!("invalid image reference {reference:?}; {FORMS}"))?;
    Ok(ImageSource::Registry {
        reference: reference.to_owned(),
        plain_http,
    })
}

#[cfg(not(feature = "registry"))]
fn registry(reference: &str, _plain_http: bool) -> Result<ImageSource> {
    Err(no_registry(reference))
}

/// The error for a registry source in a build without the `registry` feature.
#[cfg(not(feature = "registry"))]
pub(crate) fn no_registry(reference: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{reference:?} names a registry image, but this build of immuboot-oci has no \
         registry support (cargo feature \"registry\"); use oci:DIR[:TAG] or docker-archive:PATH"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_str().unwrap();
        let file = tmp.path().join("image.tar");
        std::fs::write(&file, b"").unwrap();

        assert_eq!(
            ImageSource::parse(&format!("oci:{dir}"), false).unwrap(),
            ImageSource::Layout {
                dir: dir.into(),
                tag: None
            }
        );
        assert_eq!(
            ImageSource::parse(&format!("oci:{dir}:v1"), false).unwrap(),
            ImageSource::Layout {
                dir: dir.into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            ImageSource::parse("oci:relative/dir:1.2", false).unwrap(),
            ImageSource::Layout {
                dir: "relative/dir".into(),
                tag: Some("1.2".into())
            }
        );
        assert_eq!(
            ImageSource::parse("docker-archive:/x/img.tar", false).unwrap(),
            ImageSource::DockerArchive {
                path: "/x/img.tar".into()
            }
        );
        // Existing paths win over references.
        assert_eq!(
            ImageSource::parse(dir, false).unwrap(),
            ImageSource::Layout {
                dir: dir.into(),
                tag: None
            }
        );
        assert_eq!(
            ImageSource::parse(file.to_str().unwrap(), false).unwrap(),
            ImageSource::DockerArchive { path: file.clone() }
        );

        for bad in [
            "",
            "oci:",
            "docker-archive:",
            "justaname",
            "no/tag/or/digest",
            "docker://UPPER/Case:tag",
        ] {
            assert!(
                ImageSource::parse(bad, false).is_err(),
                "{bad:?} should be refused"
            );
        }
        let err = ImageSource::parse("justaname", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("oci:DIR"), "{err}");
    }

    #[cfg(feature = "registry")]
    #[test]
    fn parse_registry_forms() {
        assert_eq!(
            ImageSource::parse("docker://127.0.0.1:5000/test/os:1", true).unwrap(),
            ImageSource::Registry {
                reference: "127.0.0.1:5000/test/os:1".into(),
                plain_http: true
            }
        );
        assert_eq!(
            ImageSource::parse("oci://ghcr.io/org/os:latest", false).unwrap(),
            ImageSource::Registry {
                reference: "ghcr.io/org/os:latest".into(),
                plain_http: false
            }
        );
        let digest = format!("quay.io/org/os@sha256:{}", "0".repeat(64));
        assert_eq!(
            ImageSource::parse(&digest, false).unwrap(),
            ImageSource::Registry {
                reference: digest.clone(),
                plain_http: false
            }
        );
        assert_eq!(
            ImageSource::parse("10.0.2.2:5000/os:2", true).unwrap(),
            ImageSource::Registry {
                reference: "10.0.2.2:5000/os:2".into(),
                plain_http: true
            }
        );
    }

    #[cfg(not(feature = "registry"))]
    #[test]
    fn registry_refused_without_feature() {
        for spec in [
            "docker://127.0.0.1:5000/test/os:1",
            "oci://ghcr.io/org/os:latest",
            "10.0.2.2:5000/os:2",
        ] {
            let err = ImageSource::parse(spec, true).unwrap_err().to_string();
            assert!(err.contains("no registry support"), "{spec}: {err}");
        }
        let source = ImageSource::Registry {
            reference: "10.0.2.2:5000/os:2".into(),
            plain_http: true,
        };
        let tmp = tempfile::tempdir().unwrap();
        let err = crate::unpack(&source, &tmp.path().join("root"), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("no registry support"), "{err}");
    }
}
