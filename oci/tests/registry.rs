//! Pulls through a real registry (Debian's docker-registry) on 127.0.0.1,
//! with images pushed by skopeo; also checks that skopeo's docker-archive
//! and zstd layouts unpack like ours. Fails when the tools, declared host
//! dependencies, are not installed (`cargo xtask deps`).

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;

use common::registry::{need, skopeo, start_registry, Registry, REGISTRY, SKOPEO};
use immuboot_oci::{unpack, write_layout, ImageSource};

fn layout_with_fixture(work: &Path) -> (std::path::PathBuf, String, std::path::PathBuf) {
    let layout = work.join("layout");
    let digest = write_layout(&layout, "v1", &common::layers(work), common::config()).unwrap();
    let reference = work.join("from-layout");
    unpack(
        &ImageSource::Layout {
            dir: layout.clone(),
            tag: Some("v1".into()),
        },
        &reference,
        &mut |_| {},
    )
    .unwrap();
    common::assert_fixture(&reference);
    (layout, digest, reference)
}

#[test]
fn pull_from_registry() {
    need(REGISTRY, "docker-registry");
    need(SKOPEO, "skopeo");
    let work = tempfile::tempdir().unwrap();
    let (layout, _digest, reference_tree) = layout_with_fixture(work.path());
    let registry = start_registry(work.path(), None);
    let image_ref = format!("{}/test/os:v1", registry.addr);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{image_ref}"),
    ]);

    let source = ImageSource::parse(&image_ref, true).unwrap();
    assert_eq!(
        source,
        ImageSource::Registry {
            reference: image_ref.clone(),
            plain_http: true
        }
    );
    let dest = work.path().join("from-registry");
    let mut phases = Vec::new();
    let image = unpack(&source, &dest, &mut |p| phases.push(p)).unwrap();
    eprintln!("pulled {image_ref}: {image:?}");
    assert_eq!(
        immuboot_oci::resolve(&source).unwrap(),
        image.manifest_digest
    );
    common::assert_fixture(&dest);
    assert_eq!(common::snapshot(&reference_tree), common::snapshot(&dest));
    assert_eq!(image.layers, 3);
    assert_eq!(image.labels, common::config().labels);
    let last_download = phases.iter().rev().find(|p| p.phase == "download").unwrap();
    assert_eq!(Some(last_download.done), last_download.total);
    // The staging directory next to dest is gone.
    let leftovers: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".immuboot-oci"))
        .collect();
    assert!(leftovers.is_empty(), "staging directory left behind");

    // Without the plain-HTTP opt-in the error says what to do.
    let err = unpack(
        &ImageSource::Registry {
            reference: image_ref.clone(),
            plain_http: false,
        },
        &work.path().join("https-attempt"),
        &mut |_| {},
    )
    .unwrap_err();
    let err = format!("{err:#}");
    eprintln!("expected error without plain_http: {err}");
    assert!(err.contains("--plain-http"), "{err}");

    // A missing tag is named.
    let err = unpack(
        &ImageSource::Registry {
            reference: format!("{}/test/os:nope", registry.addr),
            plain_http: true,
        },
        &work.path().join("missing-tag"),
        &mut |_| {},
    )
    .unwrap_err();
    let err = format!("{err:#}");
    eprintln!("expected error for a missing tag: {err}");
    assert!(err.contains("test/os:nope"), "{err}");

    // A blob corrupted in the registry's storage is caught and named.
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(
            layout
                .join("blobs/sha256")
                .join(&image.manifest_digest[7..]),
        )
        .unwrap(),
    )
    .unwrap();
    let layer2 = manifest["layers"][1]["digest"].as_str().unwrap().to_owned();
    let data = work
        .path()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&layer2[7..9])
        .join(&layer2[7..])
        .join("data");
    let mut bytes = fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    let dest = work.path().join("corrupt");
    let err = unpack(&source, &dest, &mut |_| {}).unwrap_err();
    let err = format!("{err:#}");
    eprintln!("expected error for a corrupt blob: {err}");
    assert!(
        err.contains("layer 2 of 3") && err.contains(&layer2),
        "{err}"
    );
    assert!(
        !dest.join("etc/new").exists(),
        "the corrupt layer was unpacked"
    );
    bytes[last] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    // A multi-platform image: the amd64 entry is chosen from the index.
    multi_platform(work.path(), &registry, &reference_tree, &layout);
}

/// Pushes an index of an arm64 image (listed first) and our amd64 image.
fn multi_platform(work: &Path, registry: &Registry, reference_tree: &Path, layout: &Path) {
    use serde_json::{json, Value};
    let arm_layout = work.join("arm-layout");
    let arm_digest = write_layout(
        &arm_layout,
        "arm",
        &[immuboot_oci::LayerSource::Entries(vec![
            immuboot_oci::LayerEntry::file("which", "arm64", 0o644),
        ])],
        Default::default(),
    )
    .unwrap();
    // Copy the arm image's blobs into the fixture layout, then add an index.
    for entry in fs::read_dir(arm_layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(
            entry.path(),
            layout.join("blobs/sha256").join(entry.file_name()),
        )
        .unwrap();
    }
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let amd = index["manifests"][0].clone();
    let size = |digest: &str| {
        fs::metadata(layout.join("blobs/sha256").join(&digest[7..]))
            .unwrap()
            .len()
    };
    let nested = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_digest, "size": size(&arm_digest),
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd["digest"], "size": amd["size"],
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    let bytes = serde_json::to_vec(&nested).unwrap();
    let digest = format!("sha256:{}", sha256_hex(&bytes));
    fs::write(layout.join("blobs/sha256").join(&digest[7..]), &bytes).unwrap();
    let mut top = index.clone();
    top["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}
    }));
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();

    let image_ref = format!("{}/test/multi:latest", registry.addr);
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{image_ref}"),
    ]);
    let dest = work.join("from-index");
    let source = ImageSource::Registry {
        reference: image_ref,
        plain_http: true,
    };
    let image = unpack(&source, &dest, &mut |_| {}).unwrap();
    assert_eq!(image.manifest_digest, amd["digest"].as_str().unwrap());
    // From an index, resolve picks the same platform's manifest.
    assert_eq!(
        immuboot_oci::resolve(&source).unwrap(),
        image.manifest_digest
    );
    assert_eq!(common::snapshot(reference_tree), common::snapshot(&dest));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// skopeo's own docker-archive and zstd-compressed layout unpack the same.
#[test]
fn skopeo_formats_unpack_alike() {
    need(SKOPEO, "skopeo");
    let work = tempfile::tempdir().unwrap();
    let (layout, _, reference_tree) = layout_with_fixture(work.path());
    let src = format!("oci:{}:v1", layout.display());

    let archive = work.path().join("image.tar");
    skopeo(&[
        "copy",
        &src,
        &format!("docker-archive:{}:test/os:v1", archive.display()),
    ]);
    let dest = work.path().join("from-archive");
    let source =
        ImageSource::parse(&format!("docker-archive:{}", archive.display()), false).unwrap();
    unpack(&source, &dest, &mut |_| {}).unwrap();
    assert_eq!(common::snapshot(&reference_tree), common::snapshot(&dest));

    let zstd_layout = work.path().join("zstd-layout");
    skopeo(&[
        "copy",
        "--dest-compress-format",
        "zstd",
        &src,
        &format!("oci:{}:v1", zstd_layout.display()),
    ]);
    let index = fs::read_to_string(zstd_layout.join("index.json")).unwrap();
    let manifest_digest = index.split("sha256:").nth(1).unwrap()[..64].to_owned();
    let manifest =
        fs::read_to_string(zstd_layout.join("blobs/sha256").join(manifest_digest)).unwrap();
    assert!(
        manifest.contains("tar+zstd"),
        "skopeo did not write zstd layers: {manifest}"
    );
    let dest = work.path().join("from-zstd");
    unpack(
        &ImageSource::parse(&format!("oci:{}:v1", zstd_layout.display()), false).unwrap(),
        &dest,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(common::snapshot(&reference_tree), common::snapshot(&dest));

    // skopeo reads what write_layout wrote as a valid image.
    let out = Command::new(SKOPEO)
        .args(["inspect", "--config", &src])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = BufReader::new(out.stdout.as_slice())
        .lines()
        .map(|l| l.unwrap())
        .collect();
    assert!(lines.join("\n").contains("immuboot.test"));
}

/// An image and its cosign signature pushed to a registry (the signature
/// manifest as `cosign sign` stores it, tag `sha256-HEX.sig`): verified
/// with the trusted key, refused with another, refused unsigned; the pull
/// is pinned to the verified digest.
#[test]
fn cosign_signatures_from_a_registry() {
    use common::signing::{key_pair, payload, store_signature};
    use immuboot_oci::cosign::CosignKey;
    need(REGISTRY, "docker-registry");
    need(SKOPEO, "skopeo");
    let work = tempfile::tempdir().unwrap();
    let (layout, _digest, reference_tree) = layout_with_fixture(work.path());
    let registry = start_registry(work.path(), None);
    let image_ref = format!("{}/test/os:v1", registry.addr);
    let push = |tag: &str, to: &str| {
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--preserve-digests",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}/test/os:{to}", registry.addr),
        ])
    };
    push("v1", "v1");
    let source = ImageSource::Registry {
        reference: image_ref.clone(),
        plain_http: true,
    };
    let digest = immuboot_oci::resolve(&source).unwrap();
    let (signing, pem) = key_pair();
    let keys = vec![CosignKey::from_pem(&pem, "cosign.pub").unwrap()];
    let err = immuboot_oci::verify_cosign(&source, &keys).unwrap_err();
    assert!(format!("{err:#}").contains("is not signed"), "{err:#}");

    store_signature(&layout, &digest, &payload(&digest), &signing);
    let sig_tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    push(&sig_tag, &sig_tag);
    let (verified, pinned) = immuboot_oci::verify_cosign(&source, &keys).unwrap();
    assert_eq!(verified.manifest_digest, digest);
    assert_eq!(
        pinned,
        ImageSource::Registry {
            reference: format!("{}/test/os@{digest}", registry.addr),
            plain_http: true
        }
    );
    let dest = work.path().join("pinned");
    let image = unpack(&pinned, &dest, &mut |_| {}).unwrap();
    assert_eq!(image.manifest_digest, digest);
    assert_eq!(common::snapshot(&reference_tree), common::snapshot(&dest));

    let (_, other) = key_pair();
    let others = vec![CosignKey::from_pem(&other, "other.pub").unwrap()];
    let err = immuboot_oci::verify_cosign(&source, &others).unwrap_err();
    assert!(
        format!("{err:#}").contains("not made by a trusted cosign key"),
        "{err:#}"
    );
}
