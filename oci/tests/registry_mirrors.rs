//! Pulls through mirrors from registries.conf (named by
//! `CONTAINERS_REGISTRIES_CONF`) against real docker-registry processes on
//! 127.0.0.1: images named after a host that does not exist
//! (`fleet.invalid:5000`) come from the mirror, plain HTTP only where the
//! file says `insecure = true`, mirrors that do not serve the image are
//! logged and skipped, `pull-from-mirror` and `blocked` are honoured, a
//! mirror that serves a manifest of the wrong digest stops the pull, and
//! cosign signatures are read from the mirror that served the image.
//!
//! Its own test binary: the variable and the logger are process-wide, so
//! the tests take turns ([`Fixture`] holds a lock). Fails when
//! docker-registry or skopeo (declared host dependencies) are not
//! installed (`cargo xtask deps`).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::registry::{
    need, skopeo, start_registry, start_registry_with, Registry, REGISTRY, SKOPEO,
};
use immuboot_oci::{resolve, unpack, verify_cosign, write_layout, ImageSource};

/// The name the fleet's images go by; `.invalid` never resolves.
const FLEET: &str = "fleet.invalid:5000";

/// The `log` records of immuboot's crates, as the CLI would print them.
struct Capture;
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static CAPTURE: Capture = Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("immuboot")
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            LINES
                .lock()
                .unwrap()
                .push(format!("{}: {}", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}

fn logged() -> Vec<String> {
    LINES.lock().unwrap().clone()
}

/// One test's registry, holding the image `os:stable` pushed from a
/// layout, and its registries.conf. Tests run one at a time.
struct Fixture {
    work: tempfile::TempDir,
    registry: Registry,
    layout: PathBuf,
    digest: String,
    _turn: MutexGuard<'static, ()>,
}

static TURN: Mutex<()> = Mutex::new(());

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_registry("", &[])
    }

    /// [`Fixture::new`] with more docker-registry configuration (YAML),
    /// pushing with these skopeo options (credentials).
    fn with_registry(extra: &str, push_options: &[&str]) -> Fixture {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        need(REGISTRY, "docker-registry");
        need(SKOPEO, "skopeo");
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
        LINES.lock().unwrap().clear();
        let work = tempfile::tempdir().unwrap();
        let registry = start_registry_with(work.path(), None, extra);
        let layout = work.path().join("layout");
        let digest = write_layout(
            &layout,
            "stable",
            &common::small_layers(),
            Default::default(),
        )
        .unwrap();
        let fixture = Fixture {
            work,
            registry,
            layout,
            digest,
            _turn: turn,
        };
        fixture.push_as("stable", push_options);
        fixture
    }

    /// Copies the layout's `tag` to the registry, digests unchanged.
    fn push(&self, tag: &str) {
        self.push_as(tag, &[]);
    }

    /// [`Fixture::push`] with more skopeo options (credentials).
    fn push_as(&self, tag: &str, options: &[&str]) {
        skopeo(
            &[
                &["copy", "--dest-tls-verify=false", "--preserve-digests"][..],
                options,
                &[
                    &format!("oci:{}:{tag}", self.layout.display()),
                    &format!("docker://{}/os:{tag}", self.registry.addr),
                ],
            ]
            .concat(),
        );
    }

    /// Writes registries.conf and points `CONTAINERS_REGISTRIES_CONF` at it.
    fn configure(&self, text: &str) -> PathBuf {
        let path = self.work.path().join("registries.conf");
        std::fs::write(&path, text).unwrap();
        // Edition 2021: safe; the tests take turns (TURN), and nothing else
        // in this process reads the environment meanwhile.
        std::env::set_var("CONTAINERS_REGISTRIES_CONF", &path);
        path
    }

    /// Pulls `reference` into a new directory; checks the tree.
    fn pull(&self, reference: &str) -> immuboot_oci::UnpackedImage {
        let dest = tempfile::tempdir_in(self.work.path()).unwrap();
        let root = dest.path().join("root");
        let image = unpack(&registry_source(reference), &root, &mut |_| {})
            .unwrap_or_else(|e| panic!("pulling {reference}: {e:#}"));
        assert_eq!(
            std::fs::read_to_string(root.join("etc/new")).unwrap(),
            "new\n"
        );
        assert!(!root.join("etc/motd").exists());
        image
    }

    fn refused(&self, reference: &str) -> String {
        let dest = tempfile::tempdir_in(self.work.path()).unwrap();
        let err = unpack(
            &registry_source(reference),
            &dest.path().join("root"),
            &mut |_| {},
        )
        .unwrap_err();
        let err = format!("{err:#}");
        eprintln!("expected error for {reference}: {err}");
        err
    }
}

fn registry_source(reference: &str) -> ImageSource {
    ImageSource::Registry {
        reference: reference.to_owned(),
        plain_http: false,
    }
}

/// A 127.0.0.1 port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn an_insecure_mirror_serves_images_named_after_a_host_that_does_not_exist() {
    let f = Fixture::new();
    f.configure(&format!(
        r#"
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "{FLEET}"

[[registry.mirror]]
location = "{}"
insecure = true
"#,
        f.registry.addr
    ));
    let reference = format!("{FLEET}/os:stable");
    assert_eq!(resolve(&registry_source(&reference)).unwrap(), f.digest);
    let image = f.pull(&reference);
    assert_eq!(image.manifest_digest, f.digest);
    assert_eq!(
        image.pulled_from.as_deref(),
        Some(format!("{}/os", f.registry.addr).as_str())
    );
    // The mirror served it first time: nothing to report.
    assert!(logged().is_empty(), "{:?}", logged());
    // The same image pulled directly has the same identity.
    f.configure("");
    let direct = ImageSource::Registry {
        reference: format!("{}/os:stable", f.registry.addr),
        plain_http: true,
    };
    assert_eq!(resolve(&direct).unwrap(), f.digest);
}

#[test]
fn a_mirror_without_insecure_is_spoken_to_over_tls_only() {
    let f = Fixture::new();
    let conf = f.configure(&format!(
        "[[registry]]\nprefix = \"{FLEET}\"\n[[registry.mirror]]\nlocation = \"{}\"\n",
        f.registry.addr
    ));
    let err = f.refused(&format!("{FLEET}/os:stable"));
    // The mirror is named with what TLS found and what to change; the
    // registry itself was tried too and does not exist.
    assert!(
        err.contains(&format!("mirror {}/os", f.registry.addr))
            && err.contains("not HTTPS (TLS)")
            && err.contains("insecure = true on the [[registry.mirror]]")
            && err.contains(&conf.display().to_string())
            && err.contains("fleet.invalid"),
        "{err}"
    );
    // --plain-http is for the registry the reference names, not a mirror.
    let flagged = ImageSource::Registry {
        reference: format!("{FLEET}/os:stable"),
        plain_http: true,
    };
    let err = format!(
        "{:#}",
        unpack(&flagged, &f.work.path().join("flagged"), &mut |_| {}).unwrap_err()
    );
    assert!(err.contains("not HTTPS (TLS)"), "{err}");
}

#[test]
fn a_mirror_that_is_down_is_logged_and_the_next_one_serves() {
    let f = Fixture::new();
    let down = format!("127.0.0.1:{}", closed_port());
    f.configure(&format!(
        r#"
[[registry]]
prefix = "{FLEET}"
[[registry.mirror]]
location = "{down}"
insecure = true
[[registry.mirror]]
location = "{}"
insecure = true
"#,
        f.registry.addr
    ));
    let image = f.pull(&format!("{FLEET}/os:stable"));
    assert_eq!(image.manifest_digest, f.digest);
    assert_eq!(
        image.pulled_from.as_deref(),
        Some(format!("{}/os", f.registry.addr).as_str())
    );
    let lines = logged();
    eprintln!("logged: {lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("WARN: ")
            && lines[0].contains(&format!("mirror {down}/os does not serve it"))
            && lines[0].contains(&format!("trying mirror {}/os", f.registry.addr)),
        "{lines:?}"
    );

    // A mirror without the image (404) is skipped the same way.
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = start_registry(empty_dir.path(), None);
    f.configure(&format!(
        "[[registry]]\nprefix = \"{FLEET}\"\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
        empty.addr, f.registry.addr
    ));
    LINES.lock().unwrap().clear();
    f.pull(&format!("{FLEET}/os:stable"));
    let lines = logged();
    assert!(
        lines.len() == 1 && lines[0].contains(&format!("mirror {}/os", empty.addr)),
        "{lines:?}"
    );
}

#[test]
fn pull_from_mirror_digest_only_leaves_tags_to_the_registry() {
    let f = Fixture::new();
    f.configure(&format!(
        "[[registry]]\nprefix = \"{FLEET}\"\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\npull-from-mirror = \"digest-only\"\n",
        f.registry.addr
    ));
    // By tag the mirror is not asked: only the registry, which does not
    // exist; the message says why the mirror was left out.
    let err = f.refused(&format!("{FLEET}/os:stable"));
    assert!(
        err.contains("fleet.invalid")
            && err.contains(&format!("mirror {} is not used", f.registry.addr))
            && err.contains("digest-only"),
        "{err}"
    );
    // By digest it is.
    let image = f.pull(&format!("{FLEET}/os@{}", f.digest));
    assert_eq!(image.manifest_digest, f.digest);
}

#[test]
fn a_blocked_registry_is_refused_with_its_mirrors() {
    let f = Fixture::new();
    let conf = f.configure(&format!(
        "[[registry]]\nprefix = \"{FLEET}\"\nblocked = true\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
        f.registry.addr
    ));
    let err = f.refused(&format!("{FLEET}/os:stable"));
    assert!(
        err.contains("is blocked") && err.contains(&conf.display().to_string()),
        "{err}"
    );
    // Another registry is not affected, and warnings about the file are
    // logged once however often it is read.
    f.configure(&format!(
        "[[registry]]\nprefix = \"{FLEET}\"\nblocked = true\nblock = false\n"
    ));
    let direct = ImageSource::Registry {
        reference: format!("{}/os:stable", f.registry.addr),
        plain_http: true,
    };
    assert_eq!(resolve(&direct).unwrap(), f.digest);
    assert_eq!(resolve(&direct).unwrap(), f.digest);
    let lines = logged();
    assert!(
        lines.len() == 1 && lines[0].contains("unknown key \"block\""),
        "{lines:?}"
    );
}

#[test]
fn credentials_are_those_of_the_mirror_contacted() {
    use base64::Engine as _;
    let htpasswd = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        htpasswd.path(),
        format!("fleet:{}\n", bcrypt::hash("mirror-pw", 4).unwrap()),
    )
    .unwrap();
    let f = Fixture::with_registry(
        &format!(
            "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
            htpasswd.path().display()
        ),
        &["--dest-creds", "fleet:mirror-pw"],
    );
    f.configure(&format!(
        "[[registry]]\nprefix = \"{FLEET}\"\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
        f.registry.addr
    ));
    let auth = f.work.path().join("auth.json");
    let entry = |key: &str| {
        let secret = base64::engine::general_purpose::STANDARD.encode("fleet:mirror-pw");
        std::fs::write(
            &auth,
            format!(r#"{{"auths": {{"{key}": {{"auth": "{secret}"}}}}}}"#),
        )
        .unwrap();
    };
    // Set under TURN, as CONTAINERS_REGISTRIES_CONF.
    std::env::set_var("REGISTRY_AUTH_FILE", &auth);

    // Credentials for the name asked for are not sent to the mirror: it
    // refuses, and the error says which host wanted which credentials.
    entry(FLEET);
    let err = f.refused(&format!("{FLEET}/os:stable"));
    assert!(
        err.contains(&format!("none were found for {}", f.registry.addr)),
        "{err}"
    );
    assert!(!err.contains("mirror-pw"), "{err}");
    // The mirror's own entry is used.
    entry(&f.registry.addr);
    let image = f.pull(&format!("{FLEET}/os:stable"));
    assert_eq!(image.manifest_digest, f.digest);
    std::env::remove_var("REGISTRY_AUTH_FILE");
}

/// Serves `body` as the answer to every request on a 127.0.0.1 port, for a
/// bounded number of connections and at most a minute: a mirror that lies.
fn lying_mirror(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < 20 && Instant::now() < deadline {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            served += 1;
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    addr
}

#[test]
fn a_mirror_serving_another_manifest_for_the_digest_stops_the_pull() {
    let f = Fixture::new();
    // A well-formed manifest, but not the one the digest names.
    let other = write_layout(
        &f.work.path().join("other"),
        "x",
        &[immuboot_oci::LayerSource::Entries(vec![
            immuboot_oci::LayerEntry::file("evil", "x", 0o644),
        ])],
        Default::default(),
    )
    .unwrap();
    let body = std::fs::read(
        f.work
            .path()
            .join("other/blobs/sha256")
            .join(other.trim_start_matches("sha256:")),
    )
    .unwrap();
    let liar = lying_mirror(body);
    f.configure(&format!(
        "[[registry]]\nprefix = \"{FLEET}\"\n[[registry.mirror]]\nlocation = \"{liar}\"\ninsecure = true\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
        f.registry.addr
    ));
    let err = f.refused(&format!("{FLEET}/os@{}", f.digest));
    assert!(
        err.contains(&format!("from mirror {liar}/os"))
            && err.contains(&f.digest)
            && err.contains("Invalid digest"),
        "{err}"
    );
    // Not quietly pulled from the honest mirror instead.
    assert!(logged().is_empty(), "{:?}", logged());
}

#[test]
fn cosign_signatures_come_from_the_mirror_that_served_the_image() {
    use common::signing::{key_pair, payload, store_signature};
    use immuboot_oci::cosign::CosignKey;
    let f = Fixture::new();
    f.configure(&format!(
        "[[registry]]\nprefix = \"{FLEET}\"\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
        f.registry.addr
    ));
    let (signing, pem) = key_pair();
    let keys = vec![CosignKey::from_pem(&pem, "cosign.pub").unwrap()];
    let source = registry_source(&format!("{FLEET}/os:stable"));

    // The mirror has the image but not its signature: refused, not
    // looked for elsewhere.
    let err = format!("{:#}", verify_cosign(&source, &keys).unwrap_err());
    assert!(
        err.contains("is not signed") && err.contains(&format!("in {}/os", f.registry.addr)),
        "{err}"
    );

    store_signature(&f.layout, &f.digest, &payload(&f.digest), &signing);
    let sig_tag = format!("sha256-{}.sig", f.digest.trim_start_matches("sha256:"));
    f.push(&sig_tag);
    let (verified, pinned) = verify_cosign(&source, &keys).unwrap();
    assert_eq!(verified.manifest_digest, f.digest);
    // Pinned to the digest under the name asked for: the unpack goes
    // through the mirror again and must get exactly that manifest.
    assert_eq!(pinned, registry_source(&format!("{FLEET}/os@{}", f.digest)));
    let ImageSource::Registry { reference, .. } = &pinned else {
        unreachable!()
    };
    let image = f.pull(reference);
    assert_eq!(image.manifest_digest, f.digest);

    // A signature by another key on the mirror is refused.
    let (other, _) = key_pair();
    store_signature(&f.layout, &f.digest, &payload(&f.digest), &other);
    f.push(&sig_tag);
    let err = format!("{:#}", verify_cosign(&source, &keys).unwrap_err());
    assert!(err.contains("not made by a trusted cosign key"), "{err}");
}
