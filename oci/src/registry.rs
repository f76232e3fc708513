//! Unpacking from a registry with oci-client.
//!
//! Layers are downloaded one at a time into a staging directory next to the
//! destination (not /tmp, often a small tmpfs), verified, unpacked and
//! deleted: unverified bytes never reach the tree, and at most one layer
//! sits on disk besides it.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

use crate::apply::Unpacker;
use crate::auth;
use crate::digest::{check, verify_bytes};
use crate::layout::{check_layer_media_type, MAX_METADATA};
use crate::{prepare_dest, unpack_layer, ConfigFile, Progress, Reporter, UnpackedImage};

/// Picks linux on this machine's architecture from an image index.
fn platform_resolver(manifests: &[ImageIndexEntry]) -> Option<String> {
    manifests
        .iter()
        .find(|entry| {
            entry.platform.as_ref().is_some_and(|p| {
                p.os.to_string() == "linux" && p.architecture.to_string() == crate::host_arch()
            })
        })
        .map(|entry| entry.digest.clone())
}

/// Turns a client error into one with a hint where the cause is typical.
fn explain(
    err: oci_client::errors::OciDistributionError,
    registry: &str,
    plain_http: bool,
    login: &Login,
) -> anyhow::Error {
    use oci_client::errors::OciDistributionError as E;
    let auth = matches!(
        err,
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_)
    );
    let err = anyhow::Error::from(err);
    let text = format!("{err:#}");
    let hint = if auth || text.contains("401 Unauthorized") {
        Some(match login {
            Login::Anonymous { searched } => format!(
                "the registry wants credentials and none were found for {registry} (searched: {}); \
                 `podman login --authfile /oem/immuboot/auth.json {registry}` writes them",
                searched
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Login::Found(found) => format!(
                "the registry refused the credentials of user {:?} from {} (entry {:?})",
                found.credentials.username,
                found.file.display(),
                found.key
            ),
        })
    } else if !plain_http
        && (text.contains("InvalidContentType")
            || text.contains("corrupt message")
            || text.contains("wrong version number"))
    {
        Some(format!(
            "registry {registry} answered HTTP, not HTTPS; pass --plain-http to allow an unencrypted registry"
        ))
    } else if plain_http && text.contains("HTTP request to an HTTPS server") {
        Some(format!(
            "registry {registry} speaks HTTPS; drop --plain-http"
        ))
    } else if text.contains("certificate") || text.contains("UnknownIssuer") {
        Some(format!(
            "the TLS certificate of {registry} is not trusted by the system CA store (/etc/ssl/certs)"
        ))
    } else if [
        "manifest unknown",
        "manifest_unknown",
        "name unknown",
        "name_unknown",
        "code: 404",
    ]
    .iter()
    .any(|s| text.to_lowercase().contains(s))
    {
        Some("check the repository name and tag".to_owned())
    } else if text.contains("onnect") || text.contains("dns error") {
        Some(format!("is the registry {registry} reachable?"))
    } else {
        None
    };
    match hint {
        // Flattened so the hint comes last, after the cause it explains.
        Some(hint) => anyhow!("{}; hint: {hint}", text.trim_end()),
        None => err,
    }
}

/// How the session authenticates.
enum Login {
    /// No credentials in any of these files.
    Anonymous {
        searched: Vec<std::path::PathBuf>,
    },
    Found(auth::Found),
}

impl Login {
    fn registry_auth(&self) -> RegistryAuth {
        match self {
            Login::Anonymous { .. } => RegistryAuth::Anonymous,
            Login::Found(f) => RegistryAuth::Basic(
                f.credentials.username.clone(),
                f.credentials.password.clone(),
            ),
        }
    }
}

struct Session {
    client: Client,
    reference: Reference,
    registry: String,
    plain_http: bool,
    login: Login,
    runtime: tokio::runtime::Runtime,
}

impl Session {
    /// Streams a blob into `sink`, refusing more bytes than its descriptor
    /// promises, and verifies digest and size.
    fn download(
        &self,
        desc: &OciDescriptor,
        what: &str,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        let size = u64::try_from(desc.size).map_err(|_| anyhow!("{what} has a negative size"))?;
        self.runtime.block_on(async {
            let mut stream = self
                .client
                .pull_blob_stream(&self.reference, desc)
                .await
                .map_err(|e| explain(e, &self.registry, self.plain_http, &self.login))?;
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            while let Some(chunk) = stream.next().await {
                // oci-client checks the digest at the end of the stream too;
                // its error then surfaces here, under our context.
                let chunk = chunk?;
                len += chunk.len() as u64;
                if len > size {
                    bail!("the registry sent more than the {size} bytes of {what}");
                }
                hasher.update(&chunk);
                sink(&chunk)?;
            }
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            check(&actual, len, &desc.digest, Some(size), what)?;
            Ok(len)
        })
    }
}

/// The HTTP client (oci-client builds reqwest's with the platform
/// verifier) aborts the process when the system has no CA certificate at
/// all, even for a plain-http registry; say so before that happens.
fn check_ca_store() -> Result<()> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        bail!(
            "no CA certificates found on this system ({}): install the ca-certificates \
             package in the image, or point SSL_CERT_FILE at a PEM bundle",
            found
                .errors
                .first()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "the system store is empty".into())
        );
    }
    Ok(())
}

impl Session {
    /// A client for `reference`'s registry (plain HTTP for that registry
    /// only, and only when asked).
    fn open(reference: &str, plain_http: bool) -> Result<Session> {
        check_ca_store()?;
        let parsed: Reference = reference
            .parse()
            .with_context(|| format!("invalid image reference {reference:?}"))?;
        let registry = parsed.resolve_registry().to_owned();
        let searched = auth::standard_files();
        let login = match auth::find(&searched, &registry, parsed.repository())? {
            Some(found) => Login::Found(found),
            None => Login::Anonymous { searched },
        };
        let config = ClientConfig {
            // Plain HTTP for this registry only: a token realm elsewhere stays HTTPS.
            protocol: if plain_http {
                ClientProtocol::HttpsExcept(vec![registry.clone()])
            } else {
                ClientProtocol::Https
            },
            platform_resolver: Some(Box::new(platform_resolver)),
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(Session {
            client: Client::new(config),
            reference: parsed,
            registry,
            plain_http,
            login,
            runtime,
        })
    }

    /// The image manifest (from an index: this platform's) and its digest.
    fn manifest(&self, reference: &str) -> Result<(OciImageManifest, String)> {
        self.runtime
            .block_on(
                self.client
                    .pull_image_manifest(&self.reference, &self.login.registry_auth()),
            )
            .map_err(|e| explain(e, &self.registry, self.plain_http, &self.login))
            .with_context(|| format!("fetching the manifest of {reference}"))
    }
}

/// The digest of the manifest [`unpack`] would apply, without downloading
/// the config or any layer.
pub(crate) fn resolve(reference: &str, plain_http: bool) -> Result<String> {
    let session = Session::open(reference, plain_http)?;
    Ok(session.manifest(reference)?.1)
}

/// The manifest digest of `reference` and the cosign signature layers
/// stored for it (tag `sha256-HEX.sig` in the same repository), each
/// payload verified against its digest; `None` when there is no such tag.
pub(crate) fn signature_layers(
    reference: &str,
    plain_http: bool,
) -> Result<(String, Option<Vec<crate::cosign::SignatureLayer>>)> {
    let session = Session::open(reference, plain_http)?;
    let (_, digest) = session.manifest(reference)?;
    let tag = crate::cosign::signature_tag(&digest)?;
    let sig_ref = Reference::with_tag(
        session.reference.registry().to_owned(),
        session.reference.repository().to_owned(),
        tag.clone(),
    );
    let fetched = session.runtime.block_on(
        session
            .client
            .pull_image_manifest(&sig_ref, &session.login.registry_auth()),
    );
    let manifest = match fetched {
        Ok((m, _)) => m,
        Err(e) => {
            let text = format!("{e:#}").to_lowercase();
            if ["manifest unknown", "manifest_unknown", "not found", "404"]
                .iter()
                .any(|s| text.contains(s))
            {
                return Ok((digest, None));
            }
            return Err(explain(e, &session.registry, plain_http, &session.login))
                .with_context(|| format!("fetching the signatures of {reference} (tag {tag})"));
        }
    };
    let mut layers = Vec::new();
    for layer in manifest
        .layers
        .iter()
        .filter(|l| l.media_type == crate::cosign::SIMPLE_SIGNING)
    {
        if u64::try_from(layer.size).unwrap_or(u64::MAX) > MAX_METADATA {
            bail!(
                "a signature payload of {reference} is {} bytes: not a signature",
                layer.size
            );
        }
        let mut payload = Vec::new();
        session.download(layer, "a signature payload", |chunk| {
            payload.extend_from_slice(chunk);
            Ok(())
        })?;
        layers.push(crate::cosign::SignatureLayer {
            payload,
            signature: layer
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::cosign::SIGNATURE_ANNOTATION))
                .cloned(),
        });
    }
    Ok((digest, Some(layers)))
}

/// `reference` pinned to `digest` (`REGISTRY/REPO@DIGEST`): what is then
/// pulled is the manifest that was verified, whatever the tag says by now.
pub(crate) fn pinned(reference: &str, digest: &str) -> Result<String> {
    let parsed: Reference = reference
        .parse()
        .with_context(|| format!("invalid image reference {reference:?}"))?;
    Ok(format!(
        "{}/{}@{digest}",
        parsed.registry(),
        parsed.repository()
    ))
}

pub(crate) fn unpack(
    reference: &str,
    plain_http: bool,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<UnpackedImage> {
    let session = Session::open(reference, plain_http)?;
    let (manifest, manifest_digest) = session.manifest(reference)?;

    let mut config_bytes = Vec::new();
    session
        .download(&manifest.config, "the image config", |chunk| {
            config_bytes.extend_from_slice(chunk);
            if config_bytes.len() as u64 > MAX_METADATA {
                bail!("the image config is larger than {MAX_METADATA} bytes");
            }
            Ok(())
        })
        .with_context(|| {
            format!(
                "fetching image config {} of {reference}",
                manifest.config.digest
            )
        })?;
    // download() verified it; checking again costs nothing and keeps the
    // invariant local.
    verify_bytes(
        &config_bytes,
        &manifest.config.digest,
        None,
        "the image config",
    )?;
    let config = ConfigFile::parse(&config_bytes, "the image config")?;
    config.check_platform()?;
    let layers = &manifest.layers;
    let diff_ids = config.layer_diff_ids(layers.len(), "the manifest")?;

    prepare_dest(dest)?;
    let dest = fs::canonicalize(dest)?;
    let staging_parent = dest
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(std::env::temp_dir);
    let staging = tempfile::Builder::new()
        .prefix(".immuboot-oci-download-")
        .tempdir_in(&staging_parent)
        .with_context(|| {
            format!(
                "creating a download directory in {}",
                staging_parent.display()
            )
        })?;

    let mut unpacker = Unpacker::new(&dest)?;
    let total: u64 = layers
        .iter()
        .map(|l| u64::try_from(l.size).unwrap_or(0))
        .sum();
    let mut reporter = Reporter::new(progress, layers.len(), Some(total));
    for (i, desc) in layers.iter().enumerate() {
        let what = format!("layer {} of {} ({})", i + 1, layers.len(), desc.digest);
        check_layer_media_type(&desc.media_type, &what)?;
        if desc.urls.as_ref().is_some_and(|u| !u.is_empty()) && desc.media_type.contains("foreign")
        {
            // Foreign layers live outside the registry; fetching them from
            // arbitrary URLs is not something an OS update should do.
            bail!(
                "{what} is a foreign layer (stored outside the registry), which is not supported"
            );
        }

        reporter.start("download", i + 1);
        let path = staging.path().join(format!("layer-{i}"));
        let mut file = BufWriter::new(
            fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        session
            .download(desc, &what, |chunk| {
                file.write_all(chunk)
                    .with_context(|| format!("writing {}", path.display()))?;
                reporter.add(chunk.len() as u64);
                Ok(())
            })
            .with_context(|| format!("downloading {what} from {reference}"))?;
        file.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        drop(file);
        reporter.finish();

        let blob = fs::File::open(&path)?;
        let unpacked = unpack_layer(
            &mut unpacker,
            &mut reporter,
            i + 1,
            blob,
            diff_ids.get(i),
            &what,
        );
        fs::remove_file(&path).ok();
        unpacked?;
    }
    unpacker.finish()?;
    Ok(UnpackedImage {
        manifest_digest,
        config_digest: manifest.config.digest.clone(),
        layers: layers.len(),
        bytes: total,
        labels: config.labels(),
    })
}
