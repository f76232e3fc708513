//! cosign signatures of OCI images, verified with a public key.
//!
//! The convention cosign uses (and registries store as plain artifacts):
//! the signatures of the image whose manifest digest is `sha256:HEX` sit
//! in the same repository under the tag `sha256-HEX.sig`, an OCI manifest
//! whose layers are "simple signing" payloads
//! (`application/vnd.dev.cosign.simplesigning.v1+json`): a small JSON
//! naming the signed manifest digest in
//! `critical.image.docker-manifest-digest`. Each layer carries the
//! signature of its payload, base64, in the annotation
//! `dev.cosignproject.cosign/signature`: ECDSA P-256 over SHA-256 of the
//! payload bytes, the key in cosign's PEM format (`cosign generate-key-pair`
//! writes `cosign.pub`, a `PUBLIC KEY` block).
//!
//! The signature binds the manifest digest; the manifest binds the config
//! and the layers by their digests, which [`crate::unpack`] checks. So a
//! verified signature plus an unpack of exactly that manifest verifies
//! every byte that lands in the tree. Keyless signatures (Fulcio
//! certificates, Rekor) are not supported: a fleet signs with its own key.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;

/// Media type of a signature payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the payload's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` of a cosign image signature.
const PAYLOAD_TYPE: &str = "cosign container image signature";

/// A trusted cosign public key.
#[derive(Clone)]
pub struct CosignKey {
    /// Where it came from, for messages.
    pub name: String,
    key: VerifyingKey,
}

impl std::fmt::Debug for CosignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CosignKey({})", self.name)
    }
}

impl CosignKey {
    /// Parses a `PUBLIC KEY` PEM block (ECDSA P-256), as `cosign.pub`.
    pub fn from_pem(pem: &str, name: &str) -> Result<CosignKey> {
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            anyhow!("{name} is not a cosign public key (a PEM PUBLIC KEY block, ECDSA P-256): {e}")
        })?;
        Ok(CosignKey {
            name: name.to_owned(),
            key,
        })
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<CosignKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read cosign key {}", path.display()))?;
        CosignKey::from_pem(&text, &path.display().to_string())
    }
}

/// A verified signature: what it binds and which key made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub manifest_digest: String,
    pub key: String,
}

/// `sha256:HEX` → `sha256-HEX.sig`.
pub fn signature_tag(manifest_digest: &str) -> Result<String> {
    let (alg, hex) = manifest_digest
        .split_once(':')
        .ok_or_else(|| anyhow!("{manifest_digest:?} is not a digest"))?;
    if alg != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{manifest_digest:?} is not a sha256 digest");
    }
    Ok(format!("sha256-{hex}.sig"))
}

/// One signature layer: its payload bytes and the annotation's value.
pub struct SignatureLayer {
    pub payload: Vec<u8>,
    pub signature: Option<String>,
}

/// The manifest digest a simple-signing payload names.
fn payload_digest(payload: &[u8]) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).context("the signature payload is not JSON")?;
    let critical = v
        .get("critical")
        .ok_or_else(|| anyhow!("the signature payload has no \"critical\" section"))?;
    let kind = critical.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if kind != PAYLOAD_TYPE {
        bail!("the signature payload's type is {kind:?}, not {PAYLOAD_TYPE:?}");
    }
    critical
        .pointer("/image/docker-manifest-digest")
        .and_then(|d| d.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the signature payload names no docker-manifest-digest"))
}

/// Checks one layer: the signature over the payload with one of `keys`,
/// and the payload naming `manifest_digest`. Returns the key's name.
pub fn verify_layer<'k>(
    layer: &SignatureLayer,
    keys: &'k [CosignKey],
    manifest_digest: &str,
) -> Result<&'k str> {
    let encoded = layer
        .signature
        .as_deref()
        .ok_or_else(|| anyhow!("the signature layer has no {SIGNATURE_ANNOTATION} annotation"))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .context("the signature is not base64")?;
    let sig = Signature::from_der(&raw)
        .or_else(|_| Signature::from_slice(&raw))
        .map_err(|_| anyhow!("the signature is not an ECDSA P-256 signature"))?;
    let key = keys
        .iter()
        .find(|k| k.key.verify(&layer.payload, &sig).is_ok())
        .ok_or_else(|| {
            anyhow!(
                "the signature was not made by a trusted cosign key ({})",
                keys.iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let signed = payload_digest(&layer.payload)?;
    if signed != manifest_digest {
        bail!(
            "the signature (by {}) is for manifest {signed}, but the image's manifest is \
             {manifest_digest}: the image changed after it was signed",
            key.name
        );
    }
    Ok(&key.name)
}

/// Verifies the layers of a signature manifest: one valid signature by a
/// trusted key for `manifest_digest` suffices; otherwise the first layer's
/// reason is the error.
pub fn verify_layers(
    layers: &[SignatureLayer],
    keys: &[CosignKey],
    manifest_digest: &str,
) -> Result<Verified> {
    if keys.is_empty() {
        bail!("no trusted cosign key is configured");
    }
    let mut first_error = None;
    for layer in layers {
        match verify_layer(layer, keys, manifest_digest) {
            Ok(key) => {
                return Ok(Verified {
                    manifest_digest: manifest_digest.to_owned(),
                    key: key.to_owned(),
                })
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| anyhow!("the signature manifest holds no signature")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tests::common::signing::{self, key_pair, sign};

    fn payload(digest: &str) -> Vec<u8> {
        signing::payload(digest).into_bytes()
    }

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const E: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn a_signature_by_a_trusted_key_for_this_manifest_verifies() {
        let (signing, pem) = key_pair();
        let keys = vec![CosignKey::from_pem(&pem, "cosign.pub").unwrap()];
        let p = payload(D);
        let layer = SignatureLayer {
            signature: Some(sign(&signing, &p)),
            payload: p,
        };
        let v = verify_layers(std::slice::from_ref(&layer), &keys, D).unwrap();
        assert_eq!(v.key, "cosign.pub");
        // Another manifest: the image changed after signing.
        let err = format!(
            "{:#}",
            verify_layers(std::slice::from_ref(&layer), &keys, E).unwrap_err()
        );
        assert!(err.contains("changed after it was signed"), "{err}");
        // Another key: refused, the trusted keys named.
        let (_, other) = key_pair();
        let others = vec![CosignKey::from_pem(&other, "/oem/immuboot/cosign.pub").unwrap()];
        let err = format!("{:#}", verify_layers(&[layer], &others, D).unwrap_err());
        assert!(
            err.contains("not made by a trusted cosign key (/oem/immuboot/cosign.pub)"),
            "{err}"
        );
    }

    #[test]
    fn tampered_payloads_missing_and_garbled_signatures_are_refused() {
        let (signing, pem) = key_pair();
        let keys = vec![CosignKey::from_pem(&pem, "k").unwrap()];
        let p = payload(D);
        let sig = sign(&signing, &p);
        // The payload rewritten to name another digest, the old signature kept.
        let forged = SignatureLayer {
            payload: payload(E),
            signature: Some(sig.clone()),
        };
        assert!(verify_layers(&[forged], &keys, E).is_err());
        let unsigned = SignatureLayer {
            payload: p.clone(),
            signature: None,
        };
        let err = format!("{:#}", verify_layers(&[unsigned], &keys, D).unwrap_err());
        assert!(err.contains(SIGNATURE_ANNOTATION), "{err}");
        let garbled = SignatureLayer {
            payload: p.clone(),
            signature: Some("!!".into()),
        };
        assert!(verify_layers(&[garbled], &keys, D).is_err());
        // One good layer among bad ones is enough.
        let good = SignatureLayer {
            payload: p.clone(),
            signature: Some(sig),
        };
        let bad = SignatureLayer {
            payload: p,
            signature: None,
        };
        assert!(verify_layers(&[bad, good], &keys, D).is_ok());
        assert!(verify_layers(&[], &keys, D).is_err());
        assert!(verify_layers(&[], &[], D).is_err());
    }

    /// A key and signature made by OpenSSL (`openssl ecparam -genkey -name
    /// prime256v1`, `openssl dgst -sha256 -sign`), the fuzz target's seed:
    /// another implementation's signatures verify.
    #[test]
    fn openssl_signatures_verify() {
        let seed =
            String::from_utf8(include_bytes!("../../fuzz/corpus/cosign/signed").to_vec()).unwrap();
        let parts: Vec<&str> = seed.split("\n--immuboot-fuzz--\n").collect();
        let keys = vec![CosignKey::from_pem(parts[0], "openssl.pub").unwrap()];
        let layer = SignatureLayer {
            payload: parts[1].as_bytes().to_vec(),
            signature: Some(parts[2].to_owned()),
        };
        assert_eq!(
            verify_layers(std::slice::from_ref(&layer), &keys, parts[3])
                .unwrap()
                .key,
            "openssl.pub"
        );
        assert!(verify_layers(&[layer], &keys, E).is_err());
    }

    #[test]
    fn keys_and_tags() {
        assert!(CosignKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "x"
        )
        .unwrap_err()
        .to_string()
        .contains("x is not a cosign public key"));
        assert_eq!(
            signature_tag(D).unwrap(),
            "sha256-1111111111111111111111111111111111111111111111111111111111111111.sig"
        );
        assert!(signature_tag("sha512:00").is_err());
        assert!(signature_tag("nodigest").is_err());
    }
}
