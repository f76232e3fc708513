//! `immuboot verify`: what a check of each image against the digest recorded
//! when it was written found, and what that changes in the boot state. A
//! corrupted image that is not running is recorded so the boot loader never
//! falls back into it and `immuboot status` names it, long before a
//! fallback needs the bytes (the init hashes a slot only on its trial
//! boots).

use crate::{BootState, Health, Slot};
use serde::Serialize;
use std::fmt;

/// The images `immuboot verify` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Image {
    A,
    B,
    Recovery,
}

impl Image {
    pub const ALL: [Image; 3] = [Image::A, Image::B, Image::Recovery];

    pub fn slot(self) -> Option<Slot> {
        match self {
            Image::A => Some(Slot::A),
            Image::B => Some(Slot::B),
            Image::Recovery => None,
        }
    }
}

impl From<Slot> for Image {
    fn from(slot: Slot) -> Image {
        match slot {
            Slot::A => Image::A,
            Slot::B => Image::B,
        }
    }
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.slot() {
            Some(slot) => write!(f, "slot {slot}"),
            None => f.write_str("recovery"),
        }
    }
}

/// What the check of one image found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The image hashes to the recorded digest.
    Ok,
    /// The image hashes to something else: its bytes changed on disk.
    Corrupted { expected: String, actual: String },
    /// Reading the image failed part way (an I/O error: the boot loader or
    /// the init would fail on the same bytes).
    Unreadable { error: String },
    /// Nothing to compare with (no digest list, or an invalid one).
    NoDigest { why: String },
    /// No image there (or its partition cannot be mounted).
    Missing { why: String },
}

impl Verdict {
    /// The verdict of a complete read: `actual` against the recorded digest.
    pub fn of_digest(expected: &str, actual: &str) -> Verdict {
        if expected.eq_ignore_ascii_case(actual) {
            Verdict::Ok
        } else {
            Verdict::Corrupted {
                expected: expected.to_ascii_lowercase(),
                actual: actual.to_ascii_lowercase(),
            }
        }
    }

    /// The image cannot be trusted to boot: `immuboot verify` fails.
    pub fn is_failure(&self) -> bool {
        matches!(self, Verdict::Corrupted { .. } | Verdict::Unreadable { .. })
    }

    /// Why the image is not to be booted, in words for the boot state
    /// (bounded: the digests are shortened to 12 digits).
    pub fn failure_reason(&self) -> Option<String> {
        match self {
            Verdict::Corrupted { expected, actual } => Some(format!(
                "{CORRUPTED} (sha256 {}…, recorded {}…)",
                short(actual),
                short(expected)
            )),
            Verdict::Unreadable { error } => Some(format!(
                "immuboot verify: image cannot be read ({})",
                error.chars().take(100).collect::<String>()
            )),
            _ => None,
        }
    }
}

/// The reason recorded for a corrupted image.
pub const CORRUPTED: &str =
    "immuboot verify: image differs from the digest recorded when it was written";

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Ok => f.write_str("ok"),
            Verdict::Corrupted { expected, actual } => write!(
                f,
                "CORRUPTED: sha256 {actual}, but {expected} was recorded when it was written"
            ),
            Verdict::Unreadable { error } => write!(f, "UNREADABLE: {error}"),
            Verdict::NoDigest { why } => write!(f, "not checked: no digest recorded ({why})"),
            Verdict::Missing { why } => write!(f, "missing ({why})"),
        }
    }
}

impl BootState {
    /// Records what `immuboot verify` found; `booted` is the slot running
    /// now (None: the recovery image). Returns a line per change.
    ///
    /// - A failed slot that is not running is marked bad (once: one already
    ///   bad keeps its state and reason), so GRUB never falls back into it
    ///   and the next upgrade rewrites it.
    /// - The running slot is not marked bad: it works from what it has read
    ///   so far, and marking it bad would silently move the next boot to
    ///   the other slot (perhaps an older system) without the operator
    ///   deciding it. Its failure is recorded as the last failure, which
    ///   `immuboot status` shows; `immuboot mark-bad` or an upgrade from
    ///   the other slot act on it.
    /// - The recovery image has no slot state: its failure is recorded in
    ///   `recovery_failure`, and cleared by a check that finds it ok.
    pub fn record_verify(
        &mut self,
        found: &[(Image, Verdict)],
        booted: Option<Slot>,
    ) -> Vec<String> {
        let mut changes = Vec::new();
        for (image, verdict) in found {
            let reason = verdict.failure_reason();
            match (image.slot(), reason) {
                (Some(slot), Some(reason)) if Some(slot) == booted => {
                    let text = format!("slot {slot}: {reason}; running, not marked bad");
                    if self.last_failure.as_deref() != Some(text.as_str()) {
                        self.last_failure = Some(text);
                        changes.push(format!(
                            "slot {slot} is the running slot: recorded as the last failure, not marked bad"
                        ));
                    }
                }
                (Some(slot), Some(reason)) if self.health(slot) != Health::Bad => {
                    self.mark_bad(slot, &reason);
                    changes.push(format!("slot {slot} marked bad: {reason}"));
                }
                (None, Some(reason)) if self.recovery_failure.as_deref() != Some(&reason) => {
                    changes.push(format!("recovery image recorded as corrupted: {reason}"));
                    self.recovery_failure = Some(reason);
                }
                (None, None) if *verdict == Verdict::Ok && self.recovery_failure.is_some() => {
                    self.recovery_failure = None;
                    changes.push("recovery image ok again: its recorded failure is cleared".into());
                }
                _ => {}
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grubenv::GrubEnv;
    use crate::Mode;

    fn d(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn corrupted() -> Verdict {
        Verdict::of_digest(&d('a'), &d('b'))
    }

    #[test]
    fn a_digest_decides_ok_or_corrupted() {
        assert_eq!(Verdict::of_digest(&d('a'), &d('A')), Verdict::Ok);
        assert_eq!(
            corrupted(),
            Verdict::Corrupted {
                expected: d('a'),
                actual: d('b')
            }
        );
        assert!(corrupted().is_failure());
        assert!(Verdict::Unreadable {
            error: "EIO".into()
        }
        .is_failure());
        for v in [
            Verdict::Ok,
            Verdict::NoDigest { why: "x".into() },
            Verdict::Missing { why: "x".into() },
        ] {
            assert!(!v.is_failure(), "{v:?}");
            assert_eq!(v.failure_reason(), None);
        }
        let reason = corrupted().failure_reason().unwrap();
        assert!(reason.starts_with(CORRUPTED), "{reason}");
        assert!(
            reason.contains("sha256 bbbbbbbbbbbb…, recorded aaaaaaaaaaaa…"),
            "{reason}"
        );
    }

    #[test]
    fn a_corrupted_passive_slot_is_marked_bad_and_never_chosen() {
        let mut s = BootState::default();
        let changes = s.record_verify(
            &[(Image::A, Verdict::Ok), (Image::B, corrupted())],
            Some(Slot::A),
        );
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!((s.a, s.b), (Health::Good, Health::Bad));
        assert!(s
            .last_failure
            .as_deref()
            .unwrap()
            .starts_with(&format!("slot b: {CORRUPTED}")));
        // The active slot failing: GRUB's fallback does not take slot b.
        s.a = Health::Bad;
        assert_eq!(s.grub_automatic_choice(), Mode::Recovery);
        // Checked again: nothing more to record.
        let mut again = s.clone();
        assert!(again
            .record_verify(&[(Image::B, corrupted())], Some(Slot::A))
            .is_empty());
        assert_eq!(again, s);
    }

    #[test]
    fn a_slot_already_bad_keeps_its_reason() {
        let mut s = BootState::default();
        s.mark_bad(Slot::B, "health check failed");
        let before = s.clone();
        assert!(s
            .record_verify(&[(Image::B, corrupted())], Some(Slot::A))
            .is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn the_running_slot_is_reported_but_not_marked_bad() {
        let mut s = BootState::default();
        let changes = s.record_verify(&[(Image::A, corrupted())], Some(Slot::A));
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(
            (s.a, s.b, s.active_slot),
            (Health::Good, Health::Good, Slot::A)
        );
        let f = s.last_failure.clone().unwrap();
        assert!(
            f.starts_with("slot a: immuboot verify") && f.ends_with("not marked bad"),
            "{f}"
        );
        // From recovery no slot runs: both are marked.
        let mut s = BootState::default();
        s.record_verify(
            &[
                (Image::A, corrupted()),
                (
                    Image::B,
                    Verdict::Unreadable {
                        error: "EIO".into(),
                    },
                ),
            ],
            None,
        );
        assert_eq!((s.a, s.b), (Health::Bad, Health::Bad));
        assert!(s.last_failure.unwrap().contains("cannot be read (EIO)"));
    }

    #[test]
    fn a_corrupted_recovery_image_is_recorded_and_cleared_when_ok() {
        let mut s = BootState::default();
        assert_eq!(
            s.record_verify(&[(Image::Recovery, corrupted())], Some(Slot::A))
                .len(),
            1
        );
        assert!(s
            .recovery_failure
            .as_deref()
            .unwrap()
            .starts_with(CORRUPTED));
        assert_eq!(
            (s.a, s.b, s.last_failure.clone()),
            (Health::Good, Health::Good, None)
        );
        // Missing or without a digest says nothing about the bytes: kept.
        for v in [
            Verdict::Missing { why: "x".into() },
            Verdict::NoDigest { why: "x".into() },
        ] {
            assert!(s
                .record_verify(&[(Image::Recovery, v)], Some(Slot::A))
                .is_empty());
            assert!(s.recovery_failure.is_some());
        }
        assert_eq!(
            s.record_verify(&[(Image::Recovery, Verdict::Ok)], Some(Slot::A))
                .len(),
            1
        );
        assert_eq!(s, BootState::default());
    }

    #[test]
    fn the_recovery_failure_round_trips_through_the_env_block_and_is_unset_when_cleared() {
        let mut s = BootState::default();
        s.record_verify(
            &[(Image::Recovery, corrupted()), (Image::B, corrupted())],
            Some(Slot::A),
        );
        let mut e = GrubEnv::new();
        s.store(&mut e).unwrap();
        assert!(e
            .get(crate::vars::RECOVERY_FAILURE)
            .unwrap()
            .starts_with(CORRUPTED));
        let (back, w) = BootState::from_env(&GrubEnv::parse(&e.to_block().unwrap()).unwrap());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(back, s);
        // Cleared: the variable is gone, not left empty.
        s.recovery_failure = None;
        s.store(&mut e).unwrap();
        assert_eq!(e.get_bytes(crate::vars::RECOVERY_FAILURE), None);
        let mut fresh = GrubEnv::new();
        s.store(&mut fresh).unwrap();
        assert_eq!(e, fresh);
    }
}
