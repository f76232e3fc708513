//! Unpacking OCI layouts and docker-archives written by the tests.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use immuboot_oci::{
    unpack, write_layout, ImageConfigInput, ImageSource, LayerEntry, LayerSource, Progress,
};
use serde_json::Value;

fn layout_source(dir: &Path, tag: &str) -> ImageSource {
    ImageSource::Layout {
        dir: dir.to_owned(),
        tag: Some(tag.to_owned()),
    }
}

fn no_progress() -> impl FnMut(Progress) {
    |_| {}
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The manifest of the layout's `tag`.
fn manifest(layout: &Path, tag: &str) -> Value {
    let index = json(&layout.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    json(&blob(layout, desc["digest"].as_str().unwrap()))
}

#[test]
fn layout_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let digest = write_layout(
        &layout,
        "v1",
        &common::layers(work.path()),
        common::config(),
    )
    .unwrap();

    let m = manifest(&layout, "v1");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert!(m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"));
    let config = json(&blob(&layout, m["config"]["digest"].as_str().unwrap()));
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
    assert_eq!(config["config"]["Labels"]["immuboot.test"], "yes");

    let dest = work.path().join("rootfs");
    let mut events = Vec::new();
    let image = unpack(&layout_source(&layout, "v1"), &dest, &mut |p| {
        events.push(p)
    })
    .unwrap();
    common::assert_fixture(&dest);
    assert_eq!(image.manifest_digest, digest);
    assert_eq!(image.config_digest, m["config"]["digest"].as_str().unwrap());
    assert_eq!(image.layers, 3);
    assert_eq!(image.labels, common::config().labels);
    let total: u64 = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    assert_eq!(image.bytes, total);

    // Progress: both phases end at the total, layer numbers go 1..=3.
    let last = |phase: &str| {
        events
            .iter()
            .rev()
            .find(|p| p.phase == phase)
            .unwrap()
            .clone()
    };
    assert_eq!(last("verify").done, total);
    assert_eq!(last("unpack").done, total);
    assert_eq!(last("unpack").layer, 3);
    assert!(events
        .iter()
        .all(|p| p.layers == 3 && p.total == Some(total)));

    // Without a tag the only image is taken.
    let dest2 = work.path().join("rootfs2");
    let again = unpack(
        &ImageSource::parse(&format!("oci:{}", layout.display()), false).unwrap(),
        &dest2,
        &mut no_progress(),
    )
    .unwrap();
    assert_eq!(again, image);
    assert_eq!(common::snapshot(&dest), common::snapshot(&dest2));
}

#[test]
fn layouts_are_deterministic_and_keep_other_tags() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let layers = common::small_layers();
    let a = write_layout(&layout, "a", &layers, ImageConfigInput::default()).unwrap();
    let b = write_layout(&layout, "b", &layers, common::config()).unwrap();
    let a2 = write_layout(&layout, "a", &layers, ImageConfigInput::default()).unwrap();
    assert_eq!(a, a2, "equal input must give equal digests");
    assert_ne!(a, b);
    let index = json(&layout.join("index.json"));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index:#}");

    // Two images: a tag is needed, and a wrong one is named in the error.
    let err = unpack(
        &ImageSource::Layout {
            dir: layout.clone(),
            tag: None,
        },
        &work.path().join("x"),
        &mut no_progress(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("2 images"), "{err:#}");
    let err = unpack(
        &layout_source(&layout, "c"),
        &work.path().join("y"),
        &mut no_progress(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("tags present: "), "{err:#}");
    let image = unpack(
        &layout_source(&layout, "b"),
        &work.path().join("z"),
        &mut no_progress(),
    )
    .unwrap();
    assert_eq!(image.manifest_digest, b);
}

#[test]
fn corrupt_blobs_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "v1",
        &common::small_layers(),
        ImageConfigInput::default(),
    )
    .unwrap();
    let m = manifest(&layout, "v1");
    let layer2 = m["layers"][1]["digest"].as_str().unwrap().to_owned();

    // Flip one byte of the second layer.
    let path = blob(&layout, &layer2);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let dest = work.path().join("rootfs");
    let err = format!(
        "{:#}",
        unpack(&layout_source(&layout, "v1"), &dest, &mut no_progress()).unwrap_err()
    );
    assert!(
        err.contains("digest mismatch") && err.contains(&layer2) && err.contains("layer 2 of 2"),
        "{err}"
    );
    // Layer 1 was unpacked, nothing of the corrupt layer 2.
    assert!(dest.join("etc/motd").exists() && !dest.join("etc/new").exists());

    // A missing blob is named too.
    fs::remove_file(&path).unwrap();
    let err = format!(
        "{:#}",
        unpack(
            &layout_source(&layout, "v1"),
            &work.path().join("r2"),
            &mut no_progress()
        )
        .unwrap_err()
    );
    assert!(err.contains(&layer2), "{err}");

    // A corrupt config.
    let config = blob(&layout, m["config"]["digest"].as_str().unwrap());
    let mut bytes = fs::read(&config).unwrap();
    bytes[0] = b' ';
    fs::write(&config, &bytes).unwrap();
    let err = format!(
        "{:#}",
        unpack(
            &layout_source(&layout, "v1"),
            &work.path().join("r3"),
            &mut no_progress()
        )
        .unwrap_err()
    );
    assert!(
        err.contains("digest mismatch for the image config"),
        "{err}"
    );
}

#[test]
fn destination_must_be_empty() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "v1",
        &common::small_layers(),
        ImageConfigInput::default(),
    )
    .unwrap();
    let dest = work.path().join("rootfs");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("stray"), b"").unwrap();
    let err = format!(
        "{:#}",
        unpack(&layout_source(&layout, "v1"), &dest, &mut no_progress()).unwrap_err()
    );
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn symlinks_never_lead_outside() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"secret").unwrap();
    fs::write(outside.join("shadow"), b"untouched").unwrap();
    let outside_s = outside.to_str().unwrap();

    let lower = vec![
        LayerEntry::symlink("etc", "/"),
        LayerEntry::symlink("escape", outside_s),
        LayerEntry::symlink("up", "../../../../../../.."),
        LayerEntry::dir("var", 0o755),
        LayerEntry::symlink("var/shadow", &format!("{outside_s}/shadow")),
    ];
    let upper = vec![
        // Resolved inside the tree: etc -> / means the tree's root.
        LayerEntry::file("etc/passwd", "inside\n", 0o644),
        LayerEntry::file("escape/pwned", "inside\n", 0o644),
        LayerEntry::file("up/pwned2", "inside\n", 0o644),
        // The final component is replaced, not followed.
        LayerEntry::file("var/shadow", "replaced the symlink\n", 0o600),
    ];
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "v1",
        &[
            LayerSource::Entries(lower.clone()),
            LayerSource::Entries(upper),
        ],
        ImageConfigInput::default(),
    )
    .unwrap();
    let dest = work.path().join("rootfs");
    unpack(&layout_source(&layout, "v1"), &dest, &mut no_progress()).unwrap();

    assert_eq!(fs::read_to_string(dest.join("passwd")).unwrap(), "inside\n");
    let rel_outside = outside.strip_prefix("/").unwrap();
    assert_eq!(
        fs::read_to_string(dest.join(rel_outside).join("pwned")).unwrap(),
        "inside\n"
    );
    assert_eq!(fs::read_to_string(dest.join("pwned2")).unwrap(), "inside\n");
    assert!(!fs::symlink_metadata(dest.join("var/shadow"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(outside.join("shadow")).unwrap(), b"untouched");
    let mut names: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["secret", "shadow"],
        "something was written outside the tree"
    );

    // A hard link can only reach into the tree: escape/secret resolves to
    // DEST/<outside>/secret, which does not exist.
    let upper = vec![LayerEntry::hardlink("stolen", "escape/secret")];
    let layout2 = work.path().join("layout2");
    write_layout(
        &layout2,
        "v1",
        &[LayerSource::Entries(lower), LayerSource::Entries(upper)],
        ImageConfigInput::default(),
    )
    .unwrap();
    let err = format!(
        "{:#}",
        unpack(
            &layout_source(&layout2, "v1"),
            &work.path().join("r2"),
            &mut no_progress()
        )
        .unwrap_err()
    );
    assert!(
        err.contains("\"stolen\"") && err.contains("does not exist"),
        "{err}"
    );
}

/// Builds a docker-archive from a layout the way `docker save` lays it out:
/// `<id>/layer.tar` (uncompressed), `<hex>.json` config, `manifest.json`.
/// Layer 2 is kept gzip-compressed (as skopeo may write), layer 3 is a
/// symlink to its data elsewhere in the archive (as old `docker save` did).
fn docker_archive(layout: &Path, tag: &str, out: &Path, corrupt_layer: Option<usize>) -> String {
    let m = manifest(layout, tag);
    let config_digest = m["config"]["digest"].as_str().unwrap();
    let config_hex = config_digest.strip_prefix("sha256:").unwrap();
    let mut builder = tar::Builder::new(fs::File::create(out).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut h, name, data).unwrap();
    };
    let mut layer_names = Vec::new();
    for (i, l) in m["layers"].as_array().unwrap().iter().enumerate() {
        let gz = fs::read(blob(layout, l["digest"].as_str().unwrap())).unwrap();
        let mut data = if i == 1 {
            gz
        } else {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(gz.as_slice())
                .read_to_end(&mut plain)
                .unwrap();
            plain
        };
        if corrupt_layer == Some(i) {
            // Inside the first member's content, so the tar still parses.
            data[600] ^= 0x01;
        }
        let name = if i == 2 {
            format!("data{i}/layer.tar")
        } else {
            format!("layer{i}/layer.tar")
        };
        add(&name, &data);
        layer_names.push(format!("layer{i}/layer.tar"));
    }
    add(
        &format!("{config_hex}.json"),
        &fs::read(blob(layout, config_digest)).unwrap(),
    );
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["test/os:latest"],
        "Layers": layer_names,
    }]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    builder
        .append_link(&mut h, "layer2/layer.tar", "../data2/layer.tar")
        .unwrap();
    builder.into_inner().unwrap();
    config_digest.to_owned()
}

#[test]
fn docker_archive_unpacks_like_the_layout() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "v1",
        &common::layers(work.path()),
        common::config(),
    )
    .unwrap();
    let from_layout = work.path().join("from-layout");
    let image = unpack(
        &layout_source(&layout, "v1"),
        &from_layout,
        &mut no_progress(),
    )
    .unwrap();

    let archive = work.path().join("image.tar");
    let config_digest = docker_archive(&layout, "v1", &archive, None);
    let source =
        ImageSource::parse(&format!("docker-archive:{}", archive.display()), false).unwrap();
    let from_archive = work.path().join("from-archive");
    let image2 = unpack(&source, &from_archive, &mut no_progress()).unwrap();
    assert_eq!(image2.config_digest, config_digest);
    assert_eq!(image2.config_digest, image.config_digest);
    // resolve names what unpack unpacks, without reading a layer.
    assert_eq!(
        immuboot_oci::resolve(&layout_source(&layout, "v1")).unwrap(),
        image.manifest_digest
    );
    assert_eq!(
        immuboot_oci::resolve(&source).unwrap(),
        image2.manifest_digest
    );
    assert_eq!(image2.labels, image.labels);
    assert_eq!(image2.layers, 3);
    common::assert_fixture(&from_archive);
    assert_eq!(
        common::snapshot(&from_layout),
        common::snapshot(&from_archive)
    );

    // A layer not matching the config's diff_ids is refused before unpacking.
    let bad = work.path().join("bad.tar");
    docker_archive(&layout, "v1", &bad, Some(0));
    let dest = work.path().join("from-bad");
    let err = format!(
        "{:#}",
        unpack(
            &ImageSource::DockerArchive { path: bad },
            &dest,
            &mut no_progress()
        )
        .unwrap_err()
    );
    assert!(
        err.contains("layer 1 of 3") && err.contains("diff_ids"),
        "{err}"
    );
    assert!(
        fs::read_dir(&dest).unwrap().next().is_none(),
        "a refused layer left files behind"
    );
}

#[test]
fn cosign_signatures_in_a_layout_bind_the_manifest() {
    use common::signing::{key_pair, payload, store_signature};
    use immuboot_oci::cosign::CosignKey;
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_layout(
        &layout,
        "v1",
        &common::layers(work.path()),
        common::config(),
    )
    .unwrap();
    let source = layout_source(&layout, "v1");
    let digest = immuboot_oci::resolve(&source).unwrap();
    let (signing, pem) = key_pair();
    let keys = vec![CosignKey::from_pem(&pem, "cosign.pub").unwrap()];
    let err = |keys: &[CosignKey]| {
        format!(
            "{:#}",
            immuboot_oci::verify_cosign(&source, keys).unwrap_err()
        )
    };

    // Unsigned.
    assert!(err(&keys).contains("is not signed"), "{}", err(&keys));
    // Signed by the trusted key: verified, the unpacked manifest is it.
    store_signature(&layout, &digest, &payload(&digest), &signing);
    let (verified, pinned) = immuboot_oci::verify_cosign(&source, &keys).unwrap();
    assert_eq!(verified.manifest_digest, digest);
    assert_eq!(verified.key, "cosign.pub");
    let image = unpack(&pinned, &work.path().join("tree"), &mut no_progress()).unwrap();
    assert_eq!(image.manifest_digest, digest);
    // Signed by another key.
    let (_, other) = key_pair();
    let others = vec![CosignKey::from_pem(&other, "other.pub").unwrap()];
    assert!(err(&others).contains("not made by a trusted cosign key (other.pub)"));
    // The tag moved to a changed image, and the old signature (of the old
    // manifest) was copied to the new digest's tag: refused.
    write_layout(
        &layout,
        "v1",
        &[LayerSource::Entries(vec![LayerEntry::file(
            "x", "changed", 0o644,
        )])],
        common::config(),
    )
    .unwrap();
    let changed = immuboot_oci::resolve(&source).unwrap();
    assert_ne!(changed, digest);
    store_signature(&layout, &changed, &payload(&digest), &signing);
    assert!(
        err(&keys).contains("changed after it was signed"),
        "{}",
        err(&keys)
    );
}
