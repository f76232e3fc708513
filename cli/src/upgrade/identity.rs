//! What a slot holds, compared with what an upgrade would write, so that
//! running the same upgrade twice (a timer, a fleet controller retrying)
//! does not rewrite a slot with the image it already has.
//!
//! A squashfs source is identified by its SHA-256, which is the slot's own
//! digest (`IMAGE.sha256`, the file is copied byte for byte). An OCI source
//! is identified by its manifest digest (for an index: this platform's
//! manifest), resolved without downloading layers and recorded beside the
//! image when it is written (`IMAGE.source`). A directory has no identity:
//! it is always squashed anew.

use super::Source;
use crate::progress::Reporter;
use anyhow::{Context, Result};
use immuboot_assess::{digest, fsutil, BootState, Health, Slot};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What an image written from an OCI source came from, recorded beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The source as given (`oci:DIR:TAG`, `REGISTRY/REPO:TAG`, …).
    pub source: String,
    /// The manifest digest of what was unpacked.
    pub manifest_digest: String,
}

/// `/cOS/a.img` → `/cOS/a.img.source`.
pub fn source_record_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".source");
    PathBuf::from(name)
}

/// Writes (or, for an image not written from an OCI source, removes) the
/// record beside `image`. The caller fsyncs the directory.
pub fn write_source_record(image: &Path, record: Option<&SourceRecord>) -> Result<()> {
    let path = source_record_path(image);
    match record {
        Some(r) => fsutil::write_atomic(
            &path,
            (serde_json::to_string(r).expect("plain strings serialize") + "\n").as_bytes(),
        ),
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        },
    }
}

/// The record beside `image`, if there is a readable one.
pub fn read_source_record(image: &Path) -> Option<SourceRecord> {
    let text = std::fs::read_to_string(source_record_path(image)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The SHA-256 recorded for `image` when it was written (`IMAGE.sha256`).
pub fn recorded_sha256(image: &Path) -> Option<String> {
    std::fs::read_to_string(digest::image_digest_path(&image.display().to_string()))
        .ok()
        .and_then(|t| digest::single(&t).ok())
}

/// What an upgrade source is, for comparing with a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A squashfs file: its SHA-256 (hex) and length.
    Squashfs { sha256: String, bytes: u64 },
    /// An OCI image: its manifest digest (`sha256:…`).
    Oci { manifest_digest: String },
    /// A directory: nothing to compare, always written.
    Unknown,
}

impl Identity {
    pub fn describe(&self) -> String {
        match self {
            Identity::Squashfs { sha256, .. } => format!("sha256 {sha256}"),
            Identity::Oci { manifest_digest } => format!("manifest {manifest_digest}"),
            Identity::Unknown => "no identity (a directory is always squashed anew)".into(),
        }
    }

    /// A stable name for the identity, as the unattended upgrades remember
    /// it: the manifest digest of an OCI image, `squashfs:sha256:HEX` of a
    /// squashfs file; `None` for a directory.
    pub fn key(&self) -> Option<String> {
        match self {
            Identity::Squashfs { sha256, .. } if !sha256.is_empty() => {
                Some(format!("squashfs:sha256:{sha256}"))
            }
            Identity::Oci { manifest_digest } => Some(manifest_digest.clone()),
            _ => None,
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Identity::Squashfs { sha256, .. } => serde_json::json!({"sha256": sha256}),
            Identity::Oci { manifest_digest } => {
                serde_json::json!({"manifest_digest": manifest_digest})
            }
            Identity::Unknown => serde_json::Value::Null,
        }
    }

    /// Whether the image file `image` holds exactly this.
    pub fn held_by(&self, image: &Path) -> bool {
        match self {
            Identity::Squashfs { sha256, bytes } => {
                let same_size = std::fs::metadata(image).is_ok_and(|m| m.len() == *bytes);
                same_size && recorded_sha256(image).as_deref() == Some(sha256.as_str())
            }
            Identity::Oci { manifest_digest } => {
                read_source_record(image).is_some_and(|r| r.manifest_digest == *manifest_digest)
            }
            Identity::Unknown => false,
        }
    }
}

/// The identity keys ([`Identity::key`]) the image file `image` holds:
/// its recorded SHA-256 as a squashfs, and its OCI manifest when it was
/// written from one.
pub fn keys_held_by(image: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(sha) = recorded_sha256(image) {
        keys.push(format!("squashfs:sha256:{sha}"));
    }
    if let Some(r) = read_source_record(image) {
        keys.push(r.manifest_digest);
    }
    keys
}

/// Why a slot counts as holding what the machine runs or is about to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The slot this system booted.
    Booted,
    /// The slot an earlier upgrade activated on trial: it boots next.
    OnTrial,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Booted => "booted",
            Role::OnTrial => "on trial, boots next",
        }
    }
}

/// The slots an upgrade would be a no-op for: the booted one, and the one
/// already on trial (it boots next). A good passive slot does not count:
/// writing the image into the other slot is then what is asked for.
pub fn candidates(state: &BootState, booted: Option<Slot>) -> Vec<(Slot, Role)> {
    let mut out = Vec::new();
    if let Some(slot) = booted {
        out.push((slot, Role::Booted));
    }
    let next = state.active_slot;
    if Some(next) != booted
        && matches!(state.health(next), Health::Trial { .. })
        && state.health(next).bootable()
    {
        out.push((next, Role::OnTrial));
    }
    out
}

/// The outcome of comparing a source with the slots.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub source: String,
    pub identity: Identity,
    /// The slot that holds the image already, and why it counts.
    pub held_by: Option<(Slot, Role)>,
    /// A slot on trial that boots next with another image, when the booted
    /// slot holds the source.
    pub other_pending: Option<Slot>,
}

impl Comparison {
    pub fn up_to_date(&self) -> bool {
        self.held_by.is_some()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "up_to_date": self.up_to_date(),
            "source": self.source,
            "identity": self.identity.json(),
            "held_by": self.held_by.map(|(slot, role)| serde_json::json!({
                "slot": slot.as_str(),
                "role": match role { Role::Booted => "booted", Role::OnTrial => "on-trial" },
            })),
            "other_slot_on_trial": self.other_pending.map(|s| s.as_str()),
        })
    }

    /// One line for a person.
    pub fn summary(&self) -> String {
        match self.held_by {
            Some((slot, role)) => {
                let mut line = format!(
                    "slot {slot} ({}) already holds {} ({}): nothing to do",
                    role.as_str(),
                    self.source,
                    self.identity.describe()
                );
                if let Some(other) = self.other_pending {
                    line += &format!(
                        "; note: slot {other} is on trial with another image and boots next \
                         (`immuboot mark-active {slot}` keeps this one)"
                    );
                }
                line
            }
            None => format!(
                "{} ({}) is not in a slot this system runs or boots next: an upgrade would write it",
                self.source,
                self.identity.describe()
            ),
        }
    }
}

/// The identity of `source`: hashes a squashfs (with `images`, only when
/// one of them has the same length; with `None` always), resolves an OCI
/// manifest digest.
pub fn identify(
    source: &Source,
    plain_http: bool,
    images: Option<&[PathBuf]>,
    rep: &mut Reporter,
) -> Result<Identity> {
    Ok(match source {
        Source::Squashfs(path) => {
            let bytes = std::fs::metadata(path)
                .with_context(|| format!("cannot stat {}", path.display()))?
                .len();
            // Images of another length cannot be the same: no need to read
            // a large file for that.
            if images.is_some_and(|images| {
                !images
                    .iter()
                    .any(|i| std::fs::metadata(i).is_ok_and(|m| m.len() == bytes))
            }) {
                return Ok(Identity::Squashfs {
                    sha256: String::new(),
                    bytes,
                });
            }
            rep.step(&format!(
                "hashing {} to compare it with the slots",
                path.display()
            ));
            Identity::Squashfs {
                sha256: digest::sha256_file(path)?,
                bytes,
            }
        }
        Source::Oci(spec) => {
            rep.step(&format!("resolving the manifest digest of {spec}"));
            let image = immuboot_oci::ImageSource::parse(spec, plain_http)?;
            Identity::Oci {
                manifest_digest: immuboot_oci::resolve(&image)
                    .with_context(|| format!("cannot resolve {spec}"))?,
            }
        }
        Source::Directory(_) => Identity::Unknown,
    })
}

/// Compares `source` with the booted slot and the slot on trial under
/// `state_dir`. `full`: always compute the source's identity (a squashfs
/// is otherwise hashed only when a slot has its length).
pub fn compare(
    state: &BootState,
    state_dir: &Path,
    booted: Option<Slot>,
    source: &Source,
    plain_http: bool,
    full: bool,
    rep: &mut Reporter,
) -> Result<Comparison> {
    let image = |slot: Slot| state_dir.join("cOS").join(format!("{slot}.img"));
    let slots = candidates(state, booted);
    let images: Vec<PathBuf> = slots.iter().map(|(s, _)| image(*s)).collect();
    let identity = identify(
        source,
        plain_http,
        (!full).then_some(images.as_slice()),
        rep,
    )?;
    let held_by = slots
        .iter()
        .copied()
        .find(|(slot, _)| identity.held_by(&image(*slot)));
    let other_pending = match held_by {
        Some((_, Role::Booted)) => slots
            .iter()
            .find(|(_, role)| *role == Role::OnTrial)
            .map(|(s, _)| *s),
        _ => None,
    };
    Ok(Comparison {
        source: source.describe(),
        identity,
        held_by,
        other_pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(active: Slot, a: Health, b: Health) -> BootState {
        let mut s = BootState {
            active_slot: active,
            ..Default::default()
        };
        *s.health_mut(Slot::A) = a;
        *s.health_mut(Slot::B) = b;
        s
    }

    #[test]
    fn the_booted_slot_and_a_pending_trial_count_a_good_passive_does_not() {
        let good = state(Slot::A, Health::Good, Health::Good);
        assert_eq!(
            candidates(&good, Some(Slot::A)),
            vec![(Slot::A, Role::Booted)]
        );
        let pending = state(Slot::B, Health::Good, Health::Trial { tries: 3 });
        assert_eq!(
            candidates(&pending, Some(Slot::A)),
            vec![(Slot::A, Role::Booted), (Slot::B, Role::OnTrial)]
        );
        // Out of tries: it will not boot next, so it does not count.
        let spent = state(Slot::B, Health::Good, Health::Trial { tries: 0 });
        assert_eq!(
            candidates(&spent, Some(Slot::A)),
            vec![(Slot::A, Role::Booted)]
        );
        let bad = state(Slot::B, Health::Good, Health::Bad);
        assert_eq!(
            candidates(&bad, Some(Slot::A)),
            vec![(Slot::A, Role::Booted)]
        );
        // From recovery only a pending trial counts.
        assert_eq!(candidates(&pending, None), vec![(Slot::B, Role::OnTrial)]);
        assert!(candidates(&good, None).is_empty());
    }

    #[test]
    fn identities_match_only_their_own_records() {
        let dir = std::env::temp_dir().join(format!("immuboot-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("a.img");
        std::fs::write(&image, b"hsqs-image-bytes").unwrap();
        let sha = digest::sha256_file(&image).unwrap();
        std::fs::write(
            digest::image_digest_path(&image.display().to_string()),
            format!("{sha}  a.img\n"),
        )
        .unwrap();
        let same = Identity::Squashfs {
            sha256: sha.clone(),
            bytes: 16,
        };
        assert!(same.held_by(&image));
        let other_len = Identity::Squashfs {
            sha256: sha.clone(),
            bytes: 17,
        };
        assert!(!other_len.held_by(&image));
        let oci = Identity::Oci {
            manifest_digest: "sha256:1234".into(),
        };
        assert!(!oci.held_by(&image));
        let record = SourceRecord {
            source: "oci:/x:v1".into(),
            manifest_digest: "sha256:1234".into(),
        };
        write_source_record(&image, Some(&record)).unwrap();
        assert_eq!(read_source_record(&image), Some(record));
        assert!(oci.held_by(&image));
        assert!(!Identity::Oci {
            manifest_digest: "sha256:9999".into()
        }
        .held_by(&image));
        // A later write from another kind of source drops the record.
        write_source_record(&image, None).unwrap();
        assert!(!oci.held_by(&image));
        write_source_record(&image, None).unwrap();
        assert!(!Identity::Unknown.held_by(&image));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
