//! Image layers (tar, tar+gzip, tar+zstd) with whiteouts, opaque
//! directories, symlinks and hard links, applied in order into a temporary
//! directory as an upgrade from an OCI image applies them. The input is up
//! to four layers joined by the separator line.
//!
//! Invariant: nothing lands outside the root, whatever the entries say
//! (`..`, absolute names, symlinked parents, hard links to outside files):
//! the sandbox's sibling directory and its canary file are untouched and
//! nothing else appears next to the root.
#![no_main]

use immuboot_fuzz::{split, Sandbox};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let layers: Vec<&[u8]> = split(data).into_iter().take(4).collect();
    let sb = Sandbox::new("tar_layer");
    std::fs::create_dir(&sb.root).unwrap();
    let _ = immuboot_oci::fuzzing::apply_layers(&sb.root, &layers);
    sb.check(&[]);
});
