//! Pulls from a registry that wants a password (docker-registry with
//! htpasswd), with credentials from an auth.json named by
//! `REGISTRY_AUTH_FILE`. Its own test binary: the variable is process-wide.
//! Fails when docker-registry or skopeo (declared host dependencies) are
//! not installed (`cargo xtask deps`).

mod common;

use base64::Engine as _;
use common::registry::{need, skopeo, start_registry_with, REGISTRY, SKOPEO};
use immuboot_oci::{resolve, unpack, write_layout, ImageSource};

fn auth_file(path: &std::path::Path, key: &str, user: &str, password: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        path,
        format!(r#"{{"auths": {{"{key}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
}

#[test]
fn credentials_come_from_the_auth_file_and_are_never_shown() {
    need(REGISTRY, "docker-registry");
    need(SKOPEO, "skopeo");
    let work = tempfile::tempdir().unwrap();
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("fleet:{}\n", bcrypt::hash("s3cret-pw", 4).unwrap()),
    )
    .unwrap();
    let registry = start_registry_with(
        work.path(),
        None,
        &format!(
            "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "v1",
        &common::layers(work.path()),
        common::config(),
    )
    .unwrap();
    let image_ref = format!("{}/fleet/os:v1", registry.addr);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "fleet:s3cret-pw",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{image_ref}"),
    ]);
    let source = ImageSource::Registry {
        reference: image_ref.clone(),
        plain_http: true,
    };
    let auth = work.path().join("auth.json");
    // The only test of this binary: no other thread reads the environment.
    std::env::set_var("REGISTRY_AUTH_FILE", &auth);

    // No entry for this registry: anonymous, refused, with a hint naming
    // where credentials go.
    auth_file(&auth, "elsewhere.example", "x", "y");
    let err = format!("{:#}", resolve(&source).unwrap_err());
    assert!(
        err.contains("none were found") && err.contains(&auth.display().to_string()),
        "{err}"
    );

    // A wrong password: refused, the user and file named, the secret not.
    auth_file(&auth, &registry.addr, "fleet", "wrong-pw");
    let err = format!("{:#}", resolve(&source).unwrap_err());
    assert!(
        err.contains("refused the credentials") && err.contains("\"fleet\""),
        "{err}"
    );
    assert!(!err.contains("wrong-pw"), "{err}");

    // The right one, under a key for the namespace: resolves and unpacks.
    auth_file(
        &auth,
        &format!("{}/fleet", registry.addr),
        "fleet",
        "s3cret-pw",
    );
    let digest = resolve(&source).unwrap();
    let dest = work.path().join("rootfs");
    let image = unpack(&source, &dest, &mut |_| {}).unwrap();
    assert_eq!(image.manifest_digest, digest);
    common::assert_fixture(&dest);
}
