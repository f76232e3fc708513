//! The layout file (`/etc/immuboot/layout.yaml` in the image, overridden by
//! `/oem/immuboot/layout.yaml`, which an operator writes).
//!
//! Invariants: an accepted layout only names absolute, normalised paths
//! (no `..`, `.` or empty components), and serialising it and parsing that
//! gives the same layout.
#![no_main]

use immuboot_mount::layout::Layout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(layout) = Layout::parse(text) else {
        return;
    };
    for p in layout.ephemeral.iter().chain(&layout.persistent) {
        assert!(p.starts_with('/'), "relative path accepted: {p:?}");
        assert!(
            !p[1..]
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".."),
            "unnormalised path accepted: {p:?}"
        );
    }
    let yaml = serde_yaml_ng::to_string(&layout).unwrap();
    let again = Layout::parse(&yaml).expect("a serialised layout must parse");
    assert_eq!(again, layout);
});
