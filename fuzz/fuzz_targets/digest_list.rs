//! Digest lists (`a.img.sha256`, `a.img.boot.sha256`): `sha256sum` output,
//! written by whoever built or copied the image.
//!
//! Invariant: a list that parses is rendered and parsed back to the same
//! entries.
#![no_main]

use immuboot_assess::digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = digest::single(text);
    let Ok(entries) = digest::parse(text) else {
        return;
    };
    let again = digest::parse(&digest::render(&entries)).expect("a rendered list must parse");
    assert_eq!(again, entries);
});
