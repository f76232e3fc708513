//! Tests needing crate internals: other layer compressions, hand-made
//! hostile tars, nested image indexes.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use oci_spec::image::{
    Descriptor, ImageIndex, ImageIndexBuilder, MediaType, PlatformBuilder, ANNOTATION_REF_NAME,
};

use crate::apply::Unpacker;
use crate::build::{write_layout_with, Compression};
use crate::digest::sha256_of;
use crate::{unpack, write_layout, ImageConfigInput, ImageSource, LayerEntry, LayerSource};

#[path = "../tests/common/mod.rs"]
pub(crate) mod common;

fn layout(dir: &Path, tag: &str) -> ImageSource {
    ImageSource::Layout {
        dir: dir.to_owned(),
        tag: Some(tag.to_owned()),
    }
}

#[test]
fn plain_and_zstd_layers_unpack_like_gzip() {
    let work = tempfile::tempdir().unwrap();
    let layers = common::layers(work.path());
    let mut snapshots = Vec::new();
    for (name, compression) in [
        ("gzip", Compression::Gzip),
        ("zstd", Compression::Zstd),
        ("none", Compression::None),
    ] {
        let dir = work.path().join(format!("layout-{name}"));
        write_layout_with(&dir, "v1", &layers, common::config(), compression).unwrap();
        let index: ImageIndex = ImageIndex::from_file(dir.join("index.json")).unwrap();
        let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(
            &fs::read(
                dir.join("blobs/sha256")
                    .join(index.manifests()[0].digest().digest()),
            )
            .unwrap(),
        )
        .unwrap();
        let expected = match compression {
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
            Compression::None => MediaType::ImageLayer,
        };
        assert!(manifest
            .layers()
            .iter()
            .all(|l| *l.media_type() == expected));
        let dest = work.path().join(format!("rootfs-{name}"));
        unpack(&layout(&dir, "v1"), &dest, &mut |_| {}).unwrap();
        common::assert_fixture(&dest);
        snapshots.push(common::snapshot(&dest));
    }
    assert_eq!(snapshots[0], snapshots[1]);
    assert_eq!(snapshots[0], snapshots[2]);
}

/// A tar entry with a name the tar crate's builder would refuse to write.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish_tar(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn hostile_names_are_refused() {
    let cases: [(&str, tar::EntryType, &str, &str); 5] = [
        ("../evil", tar::EntryType::Regular, "", "`..`"),
        ("a/../../evil", tar::EntryType::Regular, "", "`..`"),
        ("/etc/evil", tar::EntryType::Regular, "", "absolute"),
        ("link", tar::EntryType::Link, "../../etc/passwd", "`..`"),
        ("link", tar::EntryType::Link, "/etc/passwd", "absolute"),
    ];
    for (name, kind, link, expect) in cases {
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        fs::create_dir(&root).unwrap();
        let mut tar = Vec::new();
        raw_entry(
            &mut tar,
            name,
            kind,
            link,
            if kind == tar::EntryType::Regular {
                b"x"
            } else {
                b""
            },
        );
        let mut unpacker = Unpacker::new(&root).unwrap();
        let err = format!(
            "{:#}",
            unpacker
                .apply_layer(finish_tar(tar).as_slice(), "layer 1")
                .unwrap_err()
        );
        assert!(
            err.contains(expect) && err.contains("layer 1") && err.contains(name),
            "{name}: {err}"
        );
        assert!(!work.path().join("evil").exists());
        assert!(
            fs::read_dir(&root).unwrap().next().is_none(),
            "{name}: something was written"
        );
    }
}

#[test]
fn whiteout_details() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    fs::create_dir(&root).unwrap();
    let mut unpacker = Unpacker::new(&root).unwrap();

    let mut lower = Vec::new();
    raw_entry(&mut lower, "d/", tar::EntryType::Directory, "", b"");
    raw_entry(&mut lower, "d/keep", tar::EntryType::Regular, "", b"k");
    raw_entry(&mut lower, "d/gone", tar::EntryType::Regular, "", b"g");
    raw_entry(&mut lower, "e/", tar::EntryType::Directory, "", b"");
    raw_entry(&mut lower, "e/lower", tar::EntryType::Regular, "", b"l");
    unpacker
        .apply_layer(finish_tar(lower).as_slice(), "layer 1")
        .unwrap();

    let mut upper = Vec::new();
    // A whiteout of something this layer adds (before it) does not hide it.
    raw_entry(&mut upper, "d/new", tar::EntryType::Regular, "", b"n");
    raw_entry(&mut upper, "d/.wh.new", tar::EntryType::Regular, "", b"");
    raw_entry(&mut upper, "d/.wh.gone", tar::EntryType::Regular, "", b"");
    // Whiteouts of missing things and in missing directories are no-ops.
    raw_entry(&mut upper, "d/.wh.never", tar::EntryType::Regular, "", b"");
    raw_entry(&mut upper, "nodir/.wh.x", tar::EntryType::Regular, "", b"");
    // aufs bookkeeping is ignored.
    raw_entry(
        &mut upper,
        ".wh..wh.plnk/",
        tar::EntryType::Directory,
        "",
        b"",
    );
    // Opaque marker after the layer's own entry in the directory.
    raw_entry(&mut upper, "e/upper", tar::EntryType::Regular, "", b"u");
    raw_entry(
        &mut upper,
        "e/.wh..wh..opq",
        tar::EntryType::Regular,
        "",
        b"",
    );
    unpacker
        .apply_layer(finish_tar(upper).as_slice(), "layer 2")
        .unwrap();
    unpacker.finish().unwrap();

    let mut found: Vec<String> = common::walk(&root)
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, ["d", "d/keep", "d/new", "e", "e/upper"]);
}

#[test]
fn nested_index_picks_this_platform() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("layout");
    let amd = write_layout(
        &dir,
        "amd",
        &[LayerSource::Entries(vec![LayerEntry::file(
            "which", "amd64", 0o644,
        )])],
        ImageConfigInput::default(),
    )
    .unwrap();
    let arm = write_layout(
        &dir,
        "arm",
        &[LayerSource::Entries(vec![LayerEntry::file(
            "which", "arm64", 0o644,
        )])],
        ImageConfigInput::default(),
    )
    .unwrap();
    let index: ImageIndex = ImageIndex::from_file(dir.join("index.json")).unwrap();
    let entry = |digest: &str, arch| {
        let d = index
            .manifests()
            .iter()
            .find(|d| d.digest().to_string() == digest)
            .unwrap();
        let mut d = d.clone();
        d.set_annotations(None);
        d.set_platform(Some(
            PlatformBuilder::default()
                .architecture(arch)
                .os(oci_spec::image::Os::Linux)
                .build()
                .unwrap(),
        ));
        d
    };
    // arm64 first, so taking the first entry would be wrong.
    let nested = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![
            entry(&arm, oci_spec::image::Arch::ARM64),
            entry(&amd, oci_spec::image::Arch::Amd64),
        ])
        .build()
        .unwrap();
    let nested_json = serde_json::to_vec(&nested).unwrap();
    let nested_digest = sha256_of(&nested_json);
    fs::write(
        dir.join("blobs/sha256").join(&nested_digest[7..]),
        &nested_json,
    )
    .unwrap();
    let mut top = Descriptor::new(
        MediaType::ImageIndex,
        nested_json.len() as u64,
        oci_spec::image::Digest::try_from(nested_digest.as_str()).unwrap(),
    );
    top.set_annotations(Some(HashMap::from([(
        ANNOTATION_REF_NAME.to_owned(),
        "multi".to_owned(),
    )])));
    let mut manifests = index.manifests().clone();
    manifests.push(top);
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .manifests(manifests)
        .build()
        .unwrap();
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();

    let dest = work.path().join("rootfs");
    let image = unpack(&layout(&dir, "multi"), &dest, &mut |_| {}).unwrap();
    assert_eq!(fs::read_to_string(dest.join("which")).unwrap(), "amd64");
    assert_eq!(image.manifest_digest, amd);
}
