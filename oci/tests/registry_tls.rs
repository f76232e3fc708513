//! Pulls over HTTPS from a local registry whose certificate is signed by a
//! test CA: checks that rustls verifies against the CA store (pointed at the
//! test CA with SSL_CERT_FILE, which the system-store loader honours) and
//! that an untrusted certificate fails with a hint. Its own test binary
//! because it sets an environment variable for the whole process.
//! Fails without docker-registry, skopeo or openssl (host dependencies).

mod common;

use std::path::Path;
use std::process::Command;

use common::registry::{need, skopeo, start_registry, REGISTRY, SKOPEO};
use immuboot_oci::{unpack, write_layout, ImageConfigInput, ImageSource};

const OPENSSL: &str = "/usr/bin/openssl";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(OPENSSL)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it (rustls refuses
/// a self-signed CA certificate used directly as the server's).
fn make_certs(dir: &Path) {
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=immuboot test CA",
            ][..],
            &days,
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-extfile",
                "ext.cnf",
            ][..],
            &days,
        ]
        .concat(),
    );
}

#[test]
fn pull_over_tls() {
    need(REGISTRY, "docker-registry");
    need(SKOPEO, "skopeo");
    need(OPENSSL, "openssl");
    let work = tempfile::tempdir().unwrap();
    make_certs(work.path());
    let registry = start_registry(
        work.path(),
        Some((
            &work.path().join("server.pem"),
            &work.path().join("server.key"),
        )),
    );
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "v1",
        &common::small_layers(),
        ImageConfigInput::default(),
    )
    .unwrap();
    let image_ref = format!("{}/test/tls:v1", registry.addr);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{image_ref}"),
    ]);
    let source = ImageSource::parse(&format!("docker://{image_ref}"), false).unwrap();

    // Not trusted yet.
    let err = format!(
        "{:#}",
        unpack(&source, &work.path().join("untrusted"), &mut |_| {}).unwrap_err()
    );
    eprintln!("expected error for an untrusted certificate: {err}");
    assert!(
        err.contains("UnknownIssuer") && err.contains("hint: the TLS certificate"),
        "{err}"
    );

    // Trusted through the CA store. Edition 2021: set_var is safe; this
    // binary runs no other test that could read the environment meanwhile.
    std::env::set_var("SSL_CERT_FILE", work.path().join("ca.pem"));
    let dest = work.path().join("rootfs");
    let image = unpack(&source, &dest, &mut |_| {}).unwrap();
    eprintln!("pulled {image_ref} over TLS: {image:?}");
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/new")).unwrap(),
        "new\n"
    );
    assert!(!dest.join("etc/motd").exists());

    // --plain-http against an HTTPS registry says so.
    let plain = ImageSource::Registry {
        reference: image_ref,
        plain_http: true,
    };
    let err = format!(
        "{:#}",
        unpack(&plain, &work.path().join("plain"), &mut |_| {}).unwrap_err()
    );
    assert!(err.contains("drop --plain-http"), "{err}");
}
