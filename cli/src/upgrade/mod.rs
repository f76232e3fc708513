//! `immuboot upgrade` and `immuboot reset`: write an image into a slot (or
//! the recovery image) the way RAUC and Android A/B do it:
//!
//! 1. write the image into a temporary file beside the slot (free space
//!    checked first; on any error the temporary file is removed);
//! 2. verify what is on disk: read it back past the page cache, compare
//!    digests, check the signature when a trusted key is configured, and
//!    the digests of the kernel and initramfs inside. Until here nothing
//!    changed: a refused image leaves the slot and the boot state as they
//!    were;
//! 3. mark the target slot not bootable (its old image is intact until the
//!    rename, so this is needed only from here on);
//! 4. rename into place (a failed rename restores the boot state), record
//!    the digest lists, fsync the directory;
//! 5. activate last: one atomic update of the boot state puts the slot on
//!    trial and keeps the booted slot as the fallback.
//!
//! The crash-test checkpoints (`IMMUBOOT_PAUSE_AT`, see [`checkpoint`]) in
//! order: start, write-N (N % of the image written, any N from 1 to 99),
//! written, verified, marked, renamed, synced, activating, activated; the
//! boot-state commits of marked and activating have their own points
//! ([`immuboot_assess::crashpoint::STATE_COMMIT`]).
//!
//! A rerun after an interruption removes the leftovers and starts again.
//! A rerun after success does nothing: when the booted slot or the slot on
//! trial holds the same image already ([`identity`]), no slot is written.

mod identity;
mod slot;
mod source;
mod squash;
mod verify;
mod write;

pub use identity::{compare, keys_held_by, read_source_record, recorded_sha256, Comparison};
pub use slot::{check_recovery_writable, recovery, Upgrade};
pub use source::Source;
pub use verify::image_version;

use serde_json::json;
use std::path::PathBuf;

/// Where minisign keys that may sign squashfs images live: in the image,
/// or on COS_OEM.
pub const TRUSTED_KEYS: &[&str] = &["/etc/immuboot/trusted.pub", "/oem/immuboot/trusted.pub"];

/// Where cosign keys that may sign OCI images live, beside them.
pub const COSIGN_KEYS: &[&str] = &["/etc/immuboot/cosign.pub", "/oem/immuboot/cosign.pub"];

/// Options of one upgrade.
#[derive(Debug, Clone)]
pub struct Request {
    pub source: Source,
    pub tries: u8,
    /// Allow an unencrypted registry.
    pub plain_http: bool,
    /// A minisign signature of the squashfs (default: SOURCE.minisig).
    pub signature: Option<PathBuf>,
    /// minisign key files; those that exist are trusted, and then images
    /// must be signed.
    pub trusted_keys: Vec<PathBuf>,
    /// cosign key files (PEM); likewise, for OCI images.
    pub cosign_keys: Vec<PathBuf>,
    /// Where an OCI image is unpacked before it is squashed.
    pub work_dir: PathBuf,
    /// Digest the squashfs must have (default: SOURCE.sha256 if present).
    pub expected_sha256: Option<String>,
    /// lzo level for images squashed here (default 5).
    pub compression_level: Option<u8>,
}

/// The outcome, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Installed {
    pub target: String,
    pub image: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    pub signed_by: Option<String>,
    /// For an OCI source: the manifest digest of what was unpacked
    /// (recorded beside the image, see [`identity`]).
    pub manifest_digest: Option<String>,
    /// For a registry image: the `REGISTRY/REPOSITORY` that served it, the
    /// one the source names or a mirror from registries.conf.
    pub pulled_from: Option<String>,
    pub seconds: f64,
}

/// Pauses at a named point of the upgrade when `IMMUBOOT_PAUSE_AT` names
/// it, so a test can cut the power there (the crash-safety scenarios).
pub fn checkpoint(name: &str) {
    immuboot_assess::crashpoint::reach(name);
}

/// JSON for the report.
pub fn to_json(items: &[Installed]) -> serde_json::Value {
    json!(items)
}
