//! Unpacking from a registry with oci-client.
//!
//! The manifest is asked of each origin in turn (registries.conf's mirrors
//! and location for the reference, else the registry it names) until one
//! serves it; the rest of the pull stays with that origin.
//!
//! Layers are downloaded one at a time into a staging directory next to the
//! destination (not /tmp, often a small tmpfs), verified, unpacked and
//! deleted: unverified bytes never reach the tree, and at most one layer
//! sits on disk besides it.

use std::collections::BTreeSet;
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
use crate::registries_conf::{self, ImageName, PullPlan, Via};
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

/// The entry of registries.conf an origin comes from, for hints.
struct ConfEntry {
    file: String,
    prefix: String,
    line: usize,
}

/// One place a pull tries: the registry the reference names, or a mirror or
/// location registries.conf gives for it.
struct Origin {
    /// The reference there.
    reference: Reference,
    /// Plain HTTP to its registry: `--plain-http` for the registry the
    /// reference names, `insecure = true` in registries.conf.
    plain_http: bool,
    /// Where plain HTTP comes from, when registries.conf has a say.
    conf: Option<ConfEntry>,
    /// registries.conf's `insecure` (rather than `--plain-http`) made it
    /// plain HTTP.
    insecure_by_conf: bool,
    via: Via,
    /// Somewhere else than the name asked for.
    elsewhere: bool,
}

impl Origin {
    /// `REGISTRY/REPOSITORY` there: what served the image.
    fn repository(&self) -> String {
        format!(
            "{}/{}",
            self.reference.registry(),
            self.reference.repository()
        )
    }

    /// For messages: "mirror 127.0.0.1:5001/os", "registry reg.example.com".
    fn describe(&self) -> String {
        match (self.via, self.elsewhere) {
            (Via::Mirror, _) => format!("mirror {}", self.repository()),
            (Via::Location, true) => format!("location {}", self.repository()),
            _ => format!("registry {}", self.reference.registry()),
        }
    }

    /// How to change whether plain HTTP is used for this origin.
    fn plain_http_switch(&self) -> String {
        match &self.conf {
            Some(c) => format!(
                "insecure = true on the {} of the [[registry]] with prefix \"{}\" in {} (line {})",
                if self.via == Via::Mirror {
                    "[[registry.mirror]]"
                } else {
                    "location"
                },
                c.prefix,
                c.file,
                c.line
            ),
            None => "--plain-http".to_owned(),
        }
    }
}

/// Turns a client error into one with a hint where the cause is typical.
fn explain(
    err: oci_client::errors::OciDistributionError,
    origin: &Origin,
    login: &Login,
) -> anyhow::Error {
    use oci_client::errors::OciDistributionError as E;
    let registry = origin.reference.resolve_registry();
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
    } else if !origin.plain_http
        && (text.contains("InvalidContentType")
            || text.contains("corrupt message")
            || text.contains("wrong version number"))
    {
        Some(match &origin.conf {
            None => format!(
                "registry {registry} answered HTTP, not HTTPS; pass --plain-http to allow an unencrypted registry"
            ),
            Some(_) => format!(
                "{} answered plain HTTP, not HTTPS (TLS); to allow an unencrypted registry set {}",
                origin.describe(),
                origin.plain_http_switch()
            ),
        })
    } else if origin.plain_http && text.contains("HTTP request to an HTTPS server") {
        Some(if origin.insecure_by_conf {
            format!(
                "{} speaks HTTPS; remove {}",
                origin.describe(),
                origin.plain_http_switch()
            )
        } else {
            format!("registry {registry} speaks HTTPS; drop --plain-http")
        })
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

/// Whether a failed manifest request means that the origin does not serve
/// the image to us (not reachable, no TLS where TLS was wanted, no such
/// manifest, credentials refused, a server error): then the next origin is
/// tried. Anything else means it answered with something that does not
/// verify or parse (a manifest whose digest is not the one asked for or
/// announced, a malformed manifest): that stops the pull, as a sign of a
/// tampered or broken source, rather than quietly going elsewhere.
fn does_not_serve(err: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    matches!(
        err,
        E::RequestError(_)
            | E::RegistryError { .. }
            | E::ServerError { .. }
            | E::UnauthorizedError { .. }
            | E::AuthenticationFailure(_)
            | E::RegistryTokenDecodeError(_)
    )
}

/// Logs each warning about registries.conf once per process: a pull asks
/// for the file several times (resolve, signature, unpack).
fn warn_once(warning: &str) {
    static SHOWN: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let first = SHOWN
        .lock()
        .map(|mut shown| shown.insert(warning.to_owned()))
        .unwrap_or(true);
    if first {
        log::warn!("{warning}");
    }
}

/// Where a pull of `reference` goes, in order (registries.conf, see
/// [`crate::registries_conf`]), and the mirrors left out for it.
fn origins(reference: &str, plain_http: bool) -> Result<(Vec<Origin>, Vec<String>)> {
    let parsed: Reference = reference
        .parse()
        .with_context(|| format!("invalid image reference {reference:?}"))?;
    let image = ImageName {
        name: format!("{}/{}", parsed.registry(), parsed.repository()),
        tag: parsed.tag().map(str::to_owned),
        digest: parsed.digest().map(str::to_owned),
    };
    let conf = registries_conf::load_standard()?;
    for warning in conf.iter().flat_map(|c| &c.warnings) {
        warn_once(warning);
    }
    let plan = match &conf {
        Some(conf) => conf.plan(&image)?,
        None => PullPlan::direct(&image),
    };
    let mut origins = Vec::new();
    for source in plan.sources {
        let conf_entry = match (&conf, &plan.entry) {
            (Some(c), Some((prefix, line))) => Some(ConfEntry {
                file: c.file.clone(),
                prefix: prefix.clone(),
                line: *line,
            }),
            _ => None,
        };
        let there: Reference = if source.via == Via::Direct {
            parsed.clone()
        } else {
            source.reference.parse().map_err(|e| {
                let c = conf_entry
                    .as_ref()
                    .expect("a configured origin has an entry");
                anyhow!(
                    "{}: the [[registry]] with prefix \"{}\" (line {}) sends {reference} to \
                     {:?}, which is not a valid image reference ({e}); hint: fix its locations",
                    c.file,
                    c.prefix,
                    c.line,
                    source.reference
                )
            })?
        };
        // --plain-http is for the registry the reference names, wherever
        // registries.conf sends the pull.
        let by_flag = plain_http && there.resolve_registry() == parsed.resolve_registry();
        origins.push(Origin {
            elsewhere: there.registry() != parsed.registry()
                || there.repository() != parsed.repository(),
            plain_http: source.insecure || by_flag,
            insecure_by_conf: source.insecure && !by_flag,
            reference: there,
            conf: conf_entry,
            via: source.via,
        });
    }
    Ok((origins, plan.skipped))
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
    /// The credentials for `reference`'s registry and repository (the
    /// origin's, not the name the image was asked for by).
    fn find(reference: &Reference) -> Result<Login> {
        let searched = auth::standard_files();
        Ok(
            match auth::find(
                &searched,
                reference.resolve_registry(),
                reference.repository(),
            )? {
                Some(found) => Login::Found(found),
                None => Login::Anonymous { searched },
            },
        )
    }

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

/// A client talking to the origin that served the image's manifest.
struct Session {
    client: Client,
    origin: Origin,
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
                .pull_blob_stream(&self.origin.reference, desc)
                .await
                .map_err(|e| explain(e, &self.origin, &self.login))?;
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

    /// The reference as pulled there, for messages: the one asked for
    /// when the registry it names serves it.
    fn shown(&self, reference: &str) -> String {
        match self.origin.via {
            Via::Direct => reference.to_owned(),
            _ => format!("{reference} via {}", self.origin.describe()),
        }
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

/// A client for one origin's registry (plain HTTP for that registry only,
/// and only when allowed).
fn client_for(origin: &Origin) -> Client {
    let config = ClientConfig {
        // Plain HTTP for this registry only: a token realm elsewhere stays HTTPS.
        protocol: if origin.plain_http {
            ClientProtocol::HttpsExcept(vec![origin.reference.resolve_registry().to_owned()])
        } else {
            ClientProtocol::Https
        },
        platform_resolver: Some(Box::new(platform_resolver)),
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        ..ClientConfig::default()
    };
    Client::new(config)
}

impl Session {
    /// Fetches the image manifest of `reference` (from an index: this
    /// platform's) from the first origin that serves it: its mirrors and
    /// location from registries.conf, else the registry it names. An origin
    /// that does not serve it is logged and skipped ([`does_not_serve`]).
    /// Returns the session on that origin, the manifest and its digest.
    fn connect(reference: &str, plain_http: bool) -> Result<(Session, OciImageManifest, String)> {
        check_ca_store()?;
        let (origins, skipped) = origins(reference, plain_http)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let names: Vec<String> = origins.iter().map(Origin::describe).collect();
        let single = origins.len() == 1;
        let mut failures = Vec::new();
        for (i, origin) in origins.into_iter().enumerate() {
            let login = Login::find(&origin.reference)?;
            let client = client_for(&origin);
            let fetched = runtime
                .block_on(client.pull_image_manifest(&origin.reference, &login.registry_auth()));
            match fetched {
                Ok((manifest, digest)) => {
                    let session = Session {
                        client,
                        origin,
                        login,
                        runtime,
                    };
                    return Ok((session, manifest, digest));
                }
                Err(e) if does_not_serve(&e) && !single => {
                    let err = explain(e, &origin, &login);
                    if let Some(next) = names.get(i + 1) {
                        log::warn!(
                            "{reference}: {} does not serve it ({err:#}); trying {next}",
                            names[i]
                        );
                    }
                    failures.push(format!("{}: {err:#}", names[i]));
                }
                Err(e) => {
                    let from = match origin.via {
                        Via::Direct => String::new(),
                        _ => format!(" from {}", names[i]),
                    };
                    let left_out = if skipped.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", skipped.join("; "))
                    };
                    return Err(explain(e, &origin, &login)).with_context(|| {
                        format!("fetching the manifest of {reference}{from}{left_out}")
                    });
                }
            }
        }
        let mut message = format!(
            "fetching the manifest of {reference}: none of its {} sources serves it: {}",
            failures.len(),
            failures.join("; ")
        );
        if !skipped.is_empty() {
            message += &format!(" ({})", skipped.join("; "));
        }
        Err(anyhow!(message))
    }
}

/// The digest of the manifest [`unpack`] would apply, without downloading
/// the config or any layer.
pub(crate) fn resolve(reference: &str, plain_http: bool) -> Result<String> {
    Ok(Session::connect(reference, plain_http)?.2)
}

/// The cosign signatures stored for an image.
pub(crate) struct Signatures {
    /// The image's manifest digest.
    pub(crate) digest: String,
    /// `REGISTRY/REPOSITORY` where manifest and signatures were fetched.
    pub(crate) repository: String,
    /// The payloads, each verified against its digest; `None` when there
    /// is no signature tag.
    pub(crate) layers: Option<Vec<crate::cosign::SignatureLayer>>,
}

/// The manifest digest of `reference` and the cosign signature layers
/// stored for it (tag `sha256-HEX.sig`), both from the same origin: a
/// mirror serves the signatures beside the manifest it serves.
pub(crate) fn signature_layers(reference: &str, plain_http: bool) -> Result<Signatures> {
    let (session, _, digest) = Session::connect(reference, plain_http)?;
    let tag = crate::cosign::signature_tag(&digest)?;
    let there = &session.origin.reference;
    let sig_ref = Reference::with_tag(
        there.registry().to_owned(),
        there.repository().to_owned(),
        tag.clone(),
    );
    let fetched = session.runtime.block_on(
        session
            .client
            .pull_image_manifest(&sig_ref, &session.login.registry_auth()),
    );
    let repository = session.origin.repository();
    let manifest = match fetched {
        Ok((m, _)) => m,
        Err(e) => {
            let text = format!("{e:#}").to_lowercase();
            if ["manifest unknown", "manifest_unknown", "not found", "404"]
                .iter()
                .any(|s| text.contains(s))
            {
                return Ok(Signatures {
                    digest,
                    repository,
                    layers: None,
                });
            }
            return Err(explain(e, &session.origin, &session.login)).with_context(|| {
                format!(
                    "fetching the signatures of {} (tag {tag})",
                    session.shown(reference)
                )
            });
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
                "a signature payload of {} is {} bytes: not a signature",
                session.shown(reference),
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
    Ok(Signatures {
        digest,
        repository,
        layers: Some(layers),
    })
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
    let (session, manifest, manifest_digest) = Session::connect(reference, plain_http)?;
    let shown = session.shown(reference);

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
                "fetching image config {} of {shown}",
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
            .with_context(|| format!("downloading {what} from {shown}"))?;
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
        pulled_from: Some(session.origin.repository()),
    })
}
