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
    /// The init counted this boot (a try off a slot on trial, or an
    /// unfinished boot of a good slot) because GRUB did not.
    pub counted: bool,
    /// Slots given up (marked bad) because this boot is their fallback: the
    /// active slot on trial with no tries left, or a good slot that did not
    /// finish its last [`crate::UNFINISHED_BOOTS_LIMIT`] boots.
    pub gave_up: Vec<Slot>,
    /// Why this boot is a fallback, in words for the console and `status`.
    pub fallback: Option<String>,
}

impl Assessment {
    /// Whether the state changed and must be written.
    pub fn changed(&self) -> bool {
        self.counted || !self.gave_up.is_empty()
    }
}

impl BootState {
    /// The init's part of boot counting, for a boot of `target`:
    /// - a boot GRUB did not count (a manual or custom entry;
    ///   `immuboot.counted` is absent) is counted here: a try off a slot on
    ///   trial, an unfinished boot of a good one; so manual boots cannot make
    ///   a failing slot boot forever;
    /// - a slot this boot is the fallback of is given up (marked bad, with
    ///   the reason): the active slot on trial with no tries left, and any
    ///   other slot that was good but did not finish its last
    ///   [`crate::UNFINISHED_BOOTS_LIMIT`] boots;
    /// - the reason for a fallback boot is worked out before the state
    ///   changes, so it names the original failure.
    pub fn assess_boot(&mut self, target: &BootTarget, counted_by_bootloader: bool) -> Assessment {
        let mut a = Assessment::default();
        if let Some(slot) = target.slot {
            if self.health(slot) != Health::Bad && !counted_by_bootloader {
                self.count_attempt(slot);
                a.counted = true;
            }
        }
        a.fallback = self.fallback_reason(target.mode, target.slot);
        let active = self.active_slot;
        for slot in [active, active.other()] {
            if target.slot == Some(slot) {
                continue;
            }
            if slot == active && self.health(slot) == (Health::Trial { tries: 0 }) {
                self.mark_bad(slot, "used up its boot tries without being marked good");
                a.gave_up.push(slot);
            } else if self.stopped_finishing(slot) {
                let n = self.unfinished(slot);
                self.mark_bad(
                    slot,
                    &format!(
                        "was marked good, but its last {n} boots did not finish (a crash, a \
                         panic or a reset before boot-complete.target)"
                    ),
                );
                a.gave_up.push(slot);
            }
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

    fn unfinished(mut s: BootState, a: u8, b: u8) -> BootState {
        s.a_unfinished = a;
        s.b_unfinished = b;
        s
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
        type Row<'a> = (
            BootState,
            BootTarget,
            bool,
            BootState,
            bool,
            Option<Slot>,
            Option<&'a str>,
        );
        let rows: Vec<Row> = vec![
            // A good slot boots, counted by GRUB: nothing changes.
            (
                state(A, G, G),
                target(Active, Some(A)),
                true,
                state(A, G, G),
                false,
                None,
                None,
            ),
            // A good slot boots from a manual entry: the init counts the
            // unfinished boot.
            (
                state(A, G, G),
                target(Active, Some(A)),
                false,
                unfinished(state(A, G, G), 1, 0),
                true,
                None,
                None,
            ),
            // The good active slot did not finish its last 3 boots, GRUB
            // fell back to b: a is given up, with the reason.
            (
                unfinished(state(A, G, G), 3, 0),
                target(Passive, Some(B)),
                true,
                {
                    let mut s = state(A, BAD, G);
                    s.last_failure = Some(
                        "slot a: was marked good, but its last 3 boots did not finish (a crash, \
                         a panic or a reset before boot-complete.target)"
                            .into(),
                    );
                    s
                },
                false,
                Some(A),
                Some("fallback to slot b: slot a, marked good before, did not finish its last 3 boots"),
            ),
            // Two unfinished boots are not yet a reason to give up a slot.
            (
                unfinished(state(A, G, G), 2, 0),
                target(Passive, Some(B)),
                true,
                unfinished(state(A, G, G), 2, 0),
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
            // Manual passive boot while b is on trial: b keeps its tries,
            // the good slot a counts an unfinished boot.
            (
                state(B, G, T2),
                target(Passive, Some(A)),
                false,
                unfinished(state(B, G, T2), 1, 0),
                true,
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
            assert_eq!(a.gave_up, Vec::from_iter(gave_up), "row {i}: gave up");
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
    fn recovery_gives_up_every_good_slot_that_stopped_finishing() {
        let mut s = unfinished(state(Slot::A, G, G), 3, 4);
        let a = s.assess_boot(&target(Mode::Recovery, None), true);
        assert_eq!(a.gave_up, vec![Slot::A, Slot::B]);
        assert_eq!((s.a, s.b), (BAD, BAD));
        assert_eq!((s.a_unfinished, s.b_unfinished), (0, 0));
        assert!(a
            .fallback
            .unwrap()
            .starts_with("fallback to recovery: slot a, marked good before, did not finish"));
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
