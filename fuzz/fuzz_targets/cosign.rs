//! cosign signature layers (payload and annotation, fetched from a
//! registry or a layout someone else wrote) and public keys, verified as
//! `immuboot upgrade` does. The input is the key PEM, the payload, the
//! base64 signature and the expected manifest digest, joined by the
//! separator line.
//!
//! Invariant: a layer that verifies names exactly the expected digest in
//! its payload.
#![no_main]

use immuboot_fuzz::split;
use immuboot_oci::cosign::{verify_layers, CosignKey, SignatureLayer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let Some(pem) = parts.first() else { return };
    let Ok(key) = CosignKey::from_pem(&String::from_utf8_lossy(pem), "fuzz.pub") else {
        return;
    };
    let payload = parts.get(1).copied().unwrap_or_default().to_vec();
    let signature = parts
        .get(2)
        .map(|s| String::from_utf8_lossy(s).into_owned());
    let digest = parts
        .get(3)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default();
    let layer = SignatureLayer {
        payload: payload.clone(),
        signature,
    };
    if verify_layers(&[layer], &[key], &digest).is_ok() {
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v.pointer("/critical/image/docker-manifest-digest")
                .and_then(|d| d.as_str()),
            Some(digest.as_str())
        );
    }
});
