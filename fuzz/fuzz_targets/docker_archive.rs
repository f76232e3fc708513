//! A whole docker-archive (`docker save`, skopeo): the tar's table of
//! contents, member links, manifest.json, the config and the layers'
//! verification before anything is unpacked, as `immuboot upgrade
//! docker-archive:FILE` reads it.
//!
//! Invariant: as for tar_layer, nothing lands outside the destination.
#![no_main]

use immuboot_fuzz::Sandbox;
use immuboot_oci::{unpack, ImageSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sb = Sandbox::new("docker_archive");
    let archive = sb.base.join("archive.tar");
    std::fs::write(&archive, data).unwrap();
    let source = ImageSource::DockerArchive { path: archive };
    let _ = unpack(&source, &sb.root, &mut |_| {});
    sb.check(&["archive.tar"]);
});
