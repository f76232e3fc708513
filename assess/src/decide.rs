//! The decisions the init takes about a boot once it knows what it boots:
//! pure functions of the boot state, table-tested here, so the init (and
//! the dracut mode) only carry them out.

use crate::{BootState, BootTarget, Health, Slot};

/// When the init checks the whole image against its recorded digest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verify {
    /// On the boots of a slot on trial: a newly written image is checked
    /// before it is trusted; a slot marked good was checked then. (Hashing
    /// 104 MB took 3 s under QEMU's emulation, a fraction of that on
    /// hardware.)
    #[default]
    Trial,
    Always,
    Never,
}

impl Verify {
    /// Whether this boot of `target` hashes the whole image.
    pub fn applies(self, target: &BootTarget, state: Option<&BootState>) -> bool {
        match self {
            Verify::Always => true,
            Verify::Never => false,
            Verify::Trial => match (target.slot, state) {
                (Some(slot), Some(s)) => matches!(s.health(slot), Health::Trial { .. }),
                _ => false,
            },
        }
    }
}

/// What assessing one boot changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// The init took this boot off the slot's tries (GRUB did not).
    pub counted: bool,
    /// The active slot used up its tries and was given up (this boot is its
    /// fallback).
    pub gave_up: Option<Slot>,
    /// Why this boot is a fallback, in words for the console and `status`.
    pub fallback: Option<String>,
}

impl Assessment {
    /// Whether the state changed and must be written.
    pub fn changed(&self) -> bool {
        self.counted || self.gave_up.is_some()
    }
}

impl BootState {
    /// The init's part of boot counting, for a boot of `target`:
    /// - a slot on trial whose boot GRUB did not count (a manual or custom
    ///   entry; `immuboot.counted` is absent) loses a try here, so manual
    ///   boots cannot make a failing slot boot forever;
    /// - when this boot is not the active slot and the active slot is on
    ///   trial with no tries left, that slot is given up (marked bad): we are
    ///   its fallback;
    /// - the reason for a fallback boot is worked out before the state
    ///   changes, so it names the original failure.
    pub fn assess_boot(&mut self, target: &BootTarget, counted_by_bootloader: bool) -> Assessment {
        let mut a = Assessment::default();
        if let Some(slot) = target.slot {
            if matches!(self.health(slot), Health::Trial { .. }) && !counted_by_bootloader {
                self.count_attempt(slot);
                a.counted = true;
            }
        }
        a.fallback = self.fallback_reason(target.mode, target.slot);
        let active = self.active_slot;
        if target.slot != Some(active) && self.health(active) == (Health::Trial { tries: 0 }) {
            self.mark_bad(active, "used up its boot tries without being marked good");
            a.gave_up = Some(active);
        }
        a
    }

    /// The image of `slot` failed its checks or could not be mounted: it is
    /// marked bad so the next boot falls back at once instead of using up
    /// its tries. Nothing changes for the recovery image (`None`).
    pub fn image_failed(&mut self, slot: Option<Slot>, error: &str) -> bool {
        match slot {
            Some(slot) => {
                self.mark_bad(slot, error);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;

    fn target(mode: Mode, slot: Option<Slot>) -> BootTarget {
        BootTarget {
            mode,
            slot,
            image: slot
                .map(Slot::image_path)
                .unwrap_or(crate::RECOVERY_IMAGE)
                .into(),
        }
    }

    fn state(active: Slot, a: Health, b: Health) -> BootState {
        BootState {
            active_slot: active,
            a,
            b,
            ..Default::default()
        }
    }

    const T2: Health = Health::Trial { tries: 2 };
    const T0: Health = Health::Trial { tries: 0 };
    const G: Health = Health::Good;
    const BAD: Health = Health::Bad;

    /// (state before, boot target, counted by GRUB) →
    /// (state after, counted here, slot given up, fallback reason starts with)
    #[test]
    fn assessment_table() {
        use Mode::*;
        use Slot::*;
        let rows: Vec<(
            BootState,
            BootTarget,
            bool,
            BootState,
            bool,
            Option<Slot>,
            Option<&str>,
        )> = vec![
            // A good slot boots: nothing changes.
            (
                state(A, G, G),
                target(Active, Some(A)),
                false,
                state(A, G, G),
                false,
                None,
                None,
            ),
            // Trial, counted by GRUB: nothing to do.
            (
                state(B, G, T2),
                target(Active, Some(B)),
                true,
                state(B, G, T2),
                false,
                None,
                None,
            ),
            // Trial, manual entry: the init counts.
            (
                state(B, G, T2),
                target(Active, Some(B)),
                false,
                state(B, G, Health::Trial { tries: 1 }),
                true,
                None,
                None,
            ),
            // Manual passive boot while b is on trial: b keeps its tries.
            (
                state(B, G, T2),
                target(Passive, Some(A)),
                false,
                state(B, G, T2),
                false,
                None,
                None,
            ),
            // b used its tries, GRUB fell back to a: b is given up.
            (
                state(B, G, T0),
                target(Passive, Some(A)),
                true,
                {
                    let mut s = state(B, G, BAD);
                    s.last_failure =
                        Some("slot b: used up its boot tries without being marked good".into());
                    s
                },
                false,
                Some(B),
                Some("fallback to slot a: slot b used up its tries"),
            ),
            // Both slots out: recovery boots, the active slot is given up.
            (
                state(B, BAD, T0),
                target(Recovery, None),
                false,
                {
                    let mut s = state(B, BAD, BAD);
                    s.last_failure =
                        Some("slot b: used up its boot tries without being marked good".into());
                    s
                },
                false,
                Some(B),
                Some("fallback to recovery: slot b used up its tries"),
            ),
            // A bad active slot: the fallback is named, nothing else changes.
            (
                state(A, BAD, G),
                target(Passive, Some(B)),
                true,
                state(A, BAD, G),
                false,
                None,
                Some("fallback to slot b: slot a is marked bad"),
            ),
            // A manual boot of the slot with no tries left is still counted
            // (it stays at 0) and not given up: it is the booted one.
            (
                state(B, G, T0),
                target(Active, Some(B)),
                false,
                state(B, G, T0),
                true,
                None,
                None,
            ),
        ];
        for (i, (before, t, counted_by_grub, after, counted, gave_up, fallback)) in
            rows.into_iter().enumerate()
        {
            let mut s = before.clone();
            let a = s.assess_boot(&t, counted_by_grub);
            assert_eq!(s, after, "row {i}: state");
            assert_eq!(a.counted, counted, "row {i}: counted");
            assert_eq!(a.gave_up, gave_up, "row {i}: gave up");
            assert_eq!(a.changed(), counted || gave_up.is_some(), "row {i}");
            match (fallback, &a.fallback) {
                (None, None) => {}
                (Some(want), Some(got)) => assert!(got.starts_with(want), "row {i}: {got}"),
                (want, got) => panic!("row {i}: fallback {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn verify_policy_table() {
        let trial = state(Slot::B, G, T2);
        let good = state(Slot::A, G, G);
        let b = target(Mode::Active, Some(Slot::B));
        let a = target(Mode::Active, Some(Slot::A));
        let rec = target(Mode::Recovery, None);
        for (policy, t, s, want) in [
            (Verify::Trial, &b, Some(&trial), true),
            (Verify::Trial, &a, Some(&good), false),
            (Verify::Trial, &a, Some(&trial), false),
            (Verify::Trial, &b, None, false),
            (Verify::Trial, &rec, Some(&trial), false),
            (Verify::Always, &a, Some(&good), true),
            (Verify::Always, &rec, None, true),
            (Verify::Never, &b, Some(&trial), false),
        ] {
            assert_eq!(policy.applies(t, s), want, "{policy:?} {t:?} {s:?}");
        }
    }

    #[test]
    fn a_failed_image_marks_its_slot_bad_but_never_recovery() {
        let mut s = state(Slot::B, G, T2);
        assert!(s.image_failed(Some(Slot::B), "corrupted"));
        assert_eq!(s.b, BAD);
        assert_eq!(s.last_failure.as_deref(), Some("slot b: corrupted"));
        let before = s.clone();
        assert!(!s.image_failed(None, "corrupted"));
        assert_eq!(s, before);
    }
}
