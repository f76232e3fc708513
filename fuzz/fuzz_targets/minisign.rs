//! Minisign public keys (`--trusted-key`, the configured key files) and
//! signatures (`IMAGE.minisig`, shipped next to an upgrade image), decoded
//! and checked as `immuboot upgrade` does. The input is key, signature and
//! signed data joined by the separator line.
//!
//! Invariant: what verifies in one piece verifies as a stream fed in two
//! pieces, and the other way round (the upgrade verifies streams).
#![no_main]

use immuboot_fuzz::split;
use libfuzzer_sys::fuzz_target;
use minisign_verify::{PublicKey, Signature};

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let (Some(key), Some(sig)) = (parts.first(), parts.get(1)) else {
        return;
    };
    let message = parts.get(2).copied().unwrap_or_default();
    let key = String::from_utf8_lossy(key);
    let sig = String::from_utf8_lossy(sig);
    // Both forms the CLI accepts: a key file, or the bare base64 line.
    let key = PublicKey::decode(&key).or_else(|_| PublicKey::from_base64(key.trim()));
    let sig = Signature::decode(&sig);
    let (Ok(key), Ok(sig)) = (key, sig) else {
        return;
    };
    let whole = key.verify(message, &sig, false).is_ok();
    let streamed = key.verify_stream(&sig).and_then(|mut v| {
        let (a, b) = message.split_at(message.len() / 2);
        v.update(a);
        v.update(b);
        v.finalize()
    });
    assert_eq!(
        whole,
        streamed.is_ok(),
        "whole and streamed verification disagree"
    );
});
