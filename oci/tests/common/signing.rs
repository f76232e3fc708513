//! cosign signatures made the way `cosign sign --key` stores them: a
//! signature manifest under the tag `sha256-HEX.sig`, whose one layer is
//! the simple-signing payload with its ECDSA P-256 signature in an
//! annotation. Written into an OCI layout (from where skopeo can push it).

use std::fs;
use std::path::Path;

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use sha2::{Digest as _, Sha256};

/// A new key pair: the signing key and the public key's PEM (`cosign.pub`).
pub fn key_pair() -> (SigningKey, String) {
    let signing = SigningKey::random(&mut rand_core::OsRng);
    let pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (signing, pem)
}

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let hex = hex::encode(Sha256::digest(bytes));
    fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// The simple-signing payload naming `digest`.
pub fn payload(digest: &str) -> String {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"test/os"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
}

/// The base64 DER signature by `key` of `payload`, as the annotation
/// carries it.
pub fn sign(key: &SigningKey, payload: &[u8]) -> String {
    let sig: Signature = key.sign(payload);
    base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
}

/// Stores a signature by `key` of `payload` under `sha256-HEX.sig` of
/// `signed` (the digest whose tag it is) in `layout`, replacing an
/// existing one. `payload` is normally [`payload`] of `signed`.
pub fn store_signature(layout: &Path, signed: &str, payload: &str, key: &SigningKey) {
    let sig = sign(key, payload.as_bytes());
    let (payload_digest, payload_size) = put_blob(layout, payload.as_bytes());
    let (config_digest, config_size) = put_blob(layout, b"{}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": payload_digest,
            "size": payload_size,
            "annotations": {"dev.cosignproject.cosign/signature": sig},
        }],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let (manifest_digest, manifest_size) = put_blob(layout, &bytes);
    let tag = format!("sha256-{}.sig", signed.trim_start_matches("sha256:"));
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let manifests = index["manifests"].as_array_mut().unwrap();
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag.as_str());
    manifests.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}
