//! Boot state shared between GRUB and immuboot: which slot is active, what the
//! next boot should be, and how a boot request maps to an image.
//!
//! The state lives in a GRUB environment block ([`grubenv`]) on COS_STATE so
//! that GRUB's menu entries and the init read the same facts. All names are
//! prefixed `immuboot_` except `next_entry`, which keeps the meaning it has for
//! `grub-reboot`. Boot counters (tries, known-good flags) are added as further
//! `immuboot_*` variables without changing the existing ones.
#![forbid(unsafe_code)]

pub mod crashpoint;
pub mod decide;
pub mod digest;
pub mod fsutil;
pub mod grubenv;
pub mod integrity;
pub mod store;

use anyhow::{bail, Result};
pub use decide::{Assessment, Verify};
use grubenv::GrubEnv;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Variable names in the environment block.
pub mod vars {
    /// `a` or `b`: the slot the `active` menu entry boots.
    pub const ACTIVE_SLOT: &str = "immuboot_active_slot";
    /// One-shot choice for the next boot (`active`, `passive`, `recovery`);
    /// GRUB clears it when it uses it.
    pub const NEXT_ENTRY: &str = "next_entry";
    /// `good`, `trial` or `bad`, per slot (unset counts as good: the
    /// installer writes known-good images).
    pub const A_STATE: &str = "immuboot_a_state";
    pub const B_STATE: &str = "immuboot_b_state";
    /// Boots left for a slot on trial (0-9); GRUB decrements it before each.
    pub const A_TRIES: &str = "immuboot_a_tries";
    pub const B_TRIES: &str = "immuboot_b_tries";
    /// Boots of a good slot that GRUB (or the init) started since its last
    /// boot that finished (`mark-good`, after boot-complete.target, sets it
    /// back to 0). GRUB counts it up before each boot of a good slot and
    /// skips the slot once it reaches [`super::UNFINISHED_BOOTS_LIMIT`].
    pub const A_UNFINISHED: &str = "immuboot_a_unfinished";
    pub const B_UNFINISHED: &str = "immuboot_b_unfinished";
    /// Why the last slot failed, for `immuboot status` (never read by GRUB).
    pub const LAST_FAILURE: &str = "immuboot_last_failure";
    /// Why the recovery image failed its last `immuboot verify`, for
    /// `immuboot status` (never read by GRUB; the recovery image has no
    /// slot state).
    pub const RECOVERY_FAILURE: &str = "immuboot_recovery_failure";

    pub fn state(slot: super::Slot) -> &'static str {
        match slot {
            super::Slot::A => A_STATE,
            super::Slot::B => B_STATE,
        }
    }

    pub fn tries(slot: super::Slot) -> &'static str {
        match slot {
            super::Slot::A => A_TRIES,
            super::Slot::B => B_TRIES,
        }
    }

    pub fn unfinished(slot: super::Slot) -> &'static str {
        match slot {
            super::Slot::A => A_UNFINISHED,
            super::Slot::B => B_UNFINISHED,
        }
    }
}

/// Boots a slot on trial gets before it is given up (configurable per
/// activation).
pub const DEFAULT_TRIES: u8 = 3;

/// A good slot whose last this many boots all started and none finished is
/// no longer booted automatically: a slot that was good can go bad (a
/// flipped bit in a file systemd needs), and without this GRUB would boot it
/// forever. The same number is written out in grub.cfg's if-chains (a unit
/// test compares them).
pub const UNFINISHED_BOOTS_LIMIT: u8 = 3;

/// What is known about a slot's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "health", rename_all = "lowercase")]
pub enum Health {
    /// Booted and was marked good.
    Good,
    /// New: boots until marked good, at most `tries` more times.
    Trial { tries: u8 },
    /// Failed; not booted again until rewritten or activated.
    Bad,
}

impl Health {
    /// Whether GRUB may boot it.
    pub fn bootable(self) -> bool {
        match self {
            Health::Good => true,
            Health::Trial { tries } => tries > 0,
            Health::Bad => false,
        }
    }
}

/// Where an image comes from, as GRUB's menu entries name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Active,
    Passive,
    Recovery,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Active, Mode::Passive, Mode::Recovery];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Active => "active",
            Mode::Passive => "passive",
            Mode::Recovery => "recovery",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "active" => Ok(Mode::Active),
            "passive" => Ok(Mode::Passive),
            "recovery" => Ok(Mode::Recovery),
            other => bail!("unknown boot mode {other:?}: expected active, passive or recovery"),
        }
    }
}

/// One of the two image slots on COS_STATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Path of the slot's squashfs on COS_STATE.
    pub fn image_path(self) -> &'static str {
        match self {
            Slot::A => "/cOS/a.img",
            Slot::B => "/cOS/b.img",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Slot {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            other => bail!("unknown slot {other:?}: expected a or b"),
        }
    }
}

/// Path of the recovery squashfs on COS_RECOVERY.
pub const RECOVERY_IMAGE: &str = "/cOS/recovery.img";
/// Path of the boot-state environment block on COS_STATE.
pub const GRUBENV_PATH: &str = "/grub/grubenv";

/// The boot state as read from the environment block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    pub active_slot: Slot,
    pub next_entry: Option<Mode>,
    pub a: Health,
    pub b: Health,
    pub last_failure: Option<String>,
    /// See [`vars::A_UNFINISHED`]; only counted while the slot is good.
    #[serde(default)]
    pub a_unfinished: u8,
    #[serde(default)]
    pub b_unfinished: u8,
    /// The recovery image differs from its digest (set and cleared by
    /// `immuboot verify`, cleared when the recovery image is rewritten).
    #[serde(default)]
    pub recovery_failure: Option<String>,
}

impl Default for BootState {
    fn default() -> Self {
        BootState {
            active_slot: Slot::A,
            next_entry: None,
            a: Health::Good,
            b: Health::Good,
            last_failure: None,
            a_unfinished: 0,
            b_unfinished: 0,
            recovery_failure: None,
        }
    }
}

impl BootState {
    /// Reads the state from an environment block. Invalid values fall back to
    /// the defaults (GRUB's config does the same) and are reported as warnings.
    pub fn from_env(env: &GrubEnv) -> (BootState, Vec<String>) {
        let mut warnings = Vec::new();
        let mut state = BootState::default();
        // Our variables are text: one that is not valid UTF-8 (GRUB stores
        // any bytes) is an invalid value like any other, read as unset.
        let mut ours = |name: &str| -> Option<String> {
            match env.get_bytes(name) {
                Some(v) if std::str::from_utf8(v).is_err() => {
                    warnings.push(format!(
                        "{name}: {:?} is not valid UTF-8; using the default",
                        String::from_utf8_lossy(v)
                    ));
                    None
                }
                _ => env.get_nonempty(name).map(str::to_string),
            }
        };
        let active = ours(vars::ACTIVE_SLOT);
        let next = ours(vars::NEXT_ENTRY);
        let health_vars =
            [Slot::A, Slot::B].map(|slot| (ours(vars::state(slot)), ours(vars::tries(slot))));
        let unfinished_vars = [Slot::A, Slot::B].map(|slot| ours(vars::unfinished(slot)));
        let last_failure = ours(vars::LAST_FAILURE);
        let recovery_failure = ours(vars::RECOVERY_FAILURE);
        if let Some(v) = active {
            match v.parse() {
                Ok(slot) => state.active_slot = slot,
                Err(e) => warnings.push(format!("{}: {e:#}; using slot a", vars::ACTIVE_SLOT)),
            }
        }
        if let Some(v) = next {
            match v.parse() {
                Ok(mode) => state.next_entry = Some(mode),
                Err(e) => warnings.push(format!("{}: {e:#}; ignored", vars::NEXT_ENTRY)),
            }
        }
        for (slot, (st, tries)) in [Slot::A, Slot::B].into_iter().zip(health_vars) {
            let health = match (st.as_deref(), tries.as_deref()) {
                (None | Some("good"), _) => Health::Good,
                (Some("bad"), _) => Health::Bad,
                (Some("trial"), Some(t)) if t.len() == 1 && t.as_bytes()[0].is_ascii_digit() => {
                    Health::Trial {
                        tries: t.as_bytes()[0] - b'0',
                    }
                }
                (Some("trial"), t) => {
                    // GRUB treats this as no tries left: so do we.
                    warnings.push(format!(
                        "{}: {t:?} is not a digit; no tries left",
                        vars::tries(slot)
                    ));
                    Health::Trial { tries: 0 }
                }
                (Some(other), _) => {
                    warnings.push(format!(
                        "{}: unknown value {other:?}; counted as good",
                        vars::state(slot)
                    ));
                    Health::Good
                }
            };
            *state.health_mut(slot) = health;
        }
        for (slot, v) in [Slot::A, Slot::B].into_iter().zip(unfinished_vars) {
            let Some(v) = v else { continue };
            // Only a good slot counts unfinished boots: GRUB's counting and
            // `immuboot_may_boot` look at them only then, and `store` drops
            // them for a slot on trial or bad. A count left beside such a
            // slot (by another tool, or a torn write) means nothing; read
            // as one, it would come back as a real count if the slot turned
            // good without passing through `mark_good`. Found by fuzzing.
            if state.health(slot) != Health::Good {
                continue;
            }
            match v.parse::<u8>() {
                Ok(n) => *state.unfinished_mut(slot) = n.min(9),
                // GRUB's if-chains see no count they know: they count from 0.
                Err(_) => warnings.push(format!(
                    "{}: {v:?} is not a number; counted as 0",
                    vars::unfinished(slot)
                )),
            }
        }
        state.last_failure = last_failure;
        state.recovery_failure = recovery_failure;
        (state, warnings)
    }

    pub fn health(&self, slot: Slot) -> Health {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    pub fn health_mut(&mut self, slot: Slot) -> &mut Health {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// Boots of `slot` started since its last one that finished.
    pub fn unfinished(&self, slot: Slot) -> u8 {
        match slot {
            Slot::A => self.a_unfinished,
            Slot::B => self.b_unfinished,
        }
    }

    pub fn unfinished_mut(&mut self, slot: Slot) -> &mut u8 {
        match slot {
            Slot::A => &mut self.a_unfinished,
            Slot::B => &mut self.b_unfinished,
        }
    }

    /// A good slot whose last [`UNFINISHED_BOOTS_LIMIT`] boots all failed to
    /// finish: GRUB no longer boots it automatically.
    pub fn stopped_finishing(&self, slot: Slot) -> bool {
        self.health(slot) == Health::Good && self.unfinished(slot) >= UNFINISHED_BOOTS_LIMIT
    }

    /// Whether GRUB boots `slot` automatically (the if-chains of grub.cfg's
    /// `immuboot_may_boot`).
    pub fn may_boot(&self, slot: Slot) -> bool {
        self.health(slot).bootable() && !self.stopped_finishing(slot)
    }

    /// What GRUB's config does when no one-shot choice is set: the active
    /// slot if bootable, else the passive one, else recovery; a slot on
    /// trial loses one try. Kept here, beside its unit tests, as the
    /// reference the grub.cfg if-chains implement.
    pub fn grub_automatic_choice(&mut self) -> Mode {
        for (mode, slot) in [
            (Mode::Active, self.active_slot),
            (Mode::Passive, self.active_slot.other()),
        ] {
            if self.may_boot(slot) {
                self.count_attempt(slot);
                return mode;
            }
        }
        Mode::Recovery
    }

    /// Counts a boot of `slot` as started: a slot on trial loses a try, a
    /// good slot gains an unfinished boot (until one finishes). GRUB does this
    /// for its entries; the init does it for a boot GRUB did not count (a
    /// manual or custom entry), so manual boots cannot make a failing slot
    /// boot forever.
    pub fn count_attempt(&mut self, slot: Slot) {
        match self.health(slot) {
            Health::Trial { tries } => {
                *self.health_mut(slot) = Health::Trial {
                    tries: tries.saturating_sub(1),
                }
            }
            Health::Good => {
                let n = self.unfinished_mut(slot);
                *n = n.saturating_add(1).min(9);
            }
            Health::Bad => {}
        }
    }

    /// `slot` booted and passed its checks. A fallback slot that is marked
    /// good becomes the active one again, so the failed slot is the one the
    /// next upgrade writes.
    /// This boot finished: the slot's unfinished boots are cleared.
    pub fn mark_good(&mut self, slot: Slot) {
        *self.health_mut(slot) = Health::Good;
        *self.unfinished_mut(slot) = 0;
        if self.active_slot != slot && !self.may_boot(self.active_slot) {
            self.active_slot = slot;
        }
    }

    pub fn mark_bad(&mut self, slot: Slot, reason: &str) {
        *self.health_mut(slot) = Health::Bad;
        *self.unfinished_mut(slot) = 0;
        self.last_failure = Some(format!("slot {slot}: {reason}"));
    }

    /// Puts `slot` on trial as the active slot; the other stays the fallback.
    pub fn activate_on_trial(&mut self, slot: Slot, tries: u8) {
        self.active_slot = slot;
        *self.health_mut(slot) = Health::Trial {
            tries: tries.clamp(1, 9),
        };
        *self.unfinished_mut(slot) = 0;
    }

    /// The slot an upgrade writes, given the slot this system booted (None:
    /// the recovery image). Never the booted slot; when a fallback booted,
    /// the failed slot. From recovery: a bad slot if there is one, else the
    /// one that is not active.
    pub fn upgrade_target(&self, booted: Option<Slot>) -> Result<Slot> {
        match booted {
            Some(slot) => {
                if self.health(slot) != Health::Good {
                    bail!(
                        "the booted slot {slot} is not marked good yet ({}): after an upgrade it \
                         would be the only fallback; run `immuboot mark-good` once it works, or \
                         upgrade from the recovery system",
                        match self.health(slot) {
                            Health::Trial { tries } => format!("on trial, {tries} tries left"),
                            _ => "bad".into(),
                        }
                    );
                }
                Ok(slot.other())
            }
            None => Ok([Slot::A, Slot::B]
                .into_iter()
                .find(|s| self.health(*s) == Health::Bad)
                .unwrap_or(self.active_slot.other())),
        }
    }

    /// Makes the other slot active, if it is known good.
    pub fn rollback(&mut self) -> Result<Slot> {
        let other = self.active_slot.other();
        if self.stopped_finishing(other) {
            bail!(
                "slot {other} did not finish its last {} boots; nothing to roll back to \
                 (`immuboot mark-active {other}` puts it on trial instead)",
                self.unfinished(other)
            );
        }
        if self.health(other) != Health::Good {
            bail!(
                "slot {other} is not known good ({:?}); nothing to roll back to",
                self.health(other)
            );
        }
        self.active_slot = other;
        Ok(other)
    }

    /// Why a boot of `booted` (mode `mode`) is not the active slot's normal
    /// boot, in words for `immuboot status`.
    pub fn fallback_reason(&self, mode: Mode, booted: Option<Slot>) -> Option<String> {
        let active = self.active_slot;
        let why = match self.health(active) {
            Health::Bad => format!("slot {active} is marked bad"),
            Health::Trial { tries: 0 } => {
                format!("slot {active} used up its tries without being marked good")
            }
            Health::Good if self.stopped_finishing(active) => format!(
                "slot {active}, marked good before, did not finish its last {} boots",
                self.unfinished(active)
            ),
            _ => return None,
        };
        let detail = self
            .last_failure
            .as_deref()
            .map(|f| format!("; last failure: {f}"))
            .unwrap_or_default();
        match (mode, booted) {
            (Mode::Recovery, _) => Some(format!("fallback to recovery: {why}{detail}")),
            (_, Some(slot)) if slot != active => {
                Some(format!("fallback to slot {slot}: {why}{detail}"))
            }
            _ => None,
        }
    }

    /// Writes this state's variables into `env`, keeping any others.
    pub fn store(&self, env: &mut GrubEnv) -> Result<()> {
        env.set(vars::ACTIVE_SLOT, self.active_slot.as_str())?;
        env.set(
            vars::NEXT_ENTRY,
            self.next_entry.map(Mode::as_str).unwrap_or(""),
        )?;
        for slot in [Slot::A, Slot::B] {
            let (state, tries) = match self.health(slot) {
                Health::Good => ("good", String::new()),
                Health::Trial { tries } => ("trial", tries.min(9).to_string()),
                Health::Bad => ("bad", String::new()),
            };
            env.set(vars::state(slot), state)?;
            env.set(vars::tries(slot), &tries)?;
            let unfinished = match (self.health(slot), self.unfinished(slot)) {
                (Health::Good, n) if n > 0 => n.min(9).to_string(),
                _ => String::new(),
            };
            env.set(vars::unfinished(slot), &unfinished)?;
        }
        // Bounded so the block always fits.
        let failure: String = self
            .last_failure
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        env.set(vars::LAST_FAILURE, &failure.replace('\n', " "))?;
        // Unset rather than empty: a block without a recovery failure stays
        // as it was before this variable existed. Bounded like the last
        // failure (a 1024-byte block holds both).
        match &self.recovery_failure {
            Some(text) => {
                let text: String = text.chars().take(200).collect();
                env.set(vars::RECOVERY_FAILURE, &text.replace('\n', " "))?
            }
            None => env.unset(vars::RECOVERY_FAILURE),
        }
        Ok(())
    }

    /// The slot a mode boots (`None` for recovery).
    pub fn slot_for(&self, mode: Mode) -> Option<Slot> {
        match mode {
            Mode::Active => Some(self.active_slot),
            Mode::Passive => Some(self.active_slot.other()),
            Mode::Recovery => None,
        }
    }
}

/// The changes an image writer makes to the boot state around a write.
impl BootState {
    /// `slot` may not boot while its image is replaced: bad, and no longer
    /// the active slot (the other one takes over). Unlike
    /// [`BootState::mark_bad`] this records no failure: nothing failed.
    pub fn take_out_of_service(&mut self, slot: Slot) {
        *self.health_mut(slot) = Health::Bad;
        if self.active_slot == slot {
            self.active_slot = slot.other();
        }
    }

    /// Undoes [`take_out_of_service`](Self::take_out_of_service) of `slot`
    /// when its image was not replaced after all: its health as in
    /// `before`, and the active slot again if it was then and nothing else
    /// moved it since. The rest of the state is left as it is now (another
    /// writer may have changed it meanwhile).
    pub fn return_to_service(&mut self, slot: Slot, before: &BootState) {
        *self.health_mut(slot) = before.health(slot);
        if before.active_slot == slot && self.active_slot == slot.other() {
            self.active_slot = slot;
        }
    }

    /// A freshly written `slot` boots next: active on trial for `tries`
    /// boots (the other slot stays the fallback), and a pending one-shot
    /// choice is dropped so it cannot bypass the new slot.
    pub fn activate_written(&mut self, slot: Slot, tries: u8) {
        self.activate_on_trial(slot, tries);
        self.next_entry = None;
    }

    /// Both slots were rewritten from one image (reset from recovery):
    /// slot a is active, both have `health`, and the old failure and any
    /// one-shot choice are forgotten.
    pub fn reset_to(&mut self, health: Health) {
        self.active_slot = Slot::A;
        self.next_entry = None;
        self.last_failure = None;
        self.a = health;
        self.b = health;
        self.a_unfinished = 0;
        self.b_unfinished = 0;
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;

    #[test]
    fn a_slot_returned_to_service_is_as_before_and_keeps_later_changes() {
        let mut before = BootState::default();
        before.activate_on_trial(Slot::B, 2);
        let mut s = before.clone();
        s.take_out_of_service(Slot::B);
        // Another writer changed something meanwhile.
        s.next_entry = Some(Mode::Recovery);
        s.return_to_service(Slot::B, &before);
        assert_eq!((s.active_slot, s.b), (Slot::B, Health::Trial { tries: 2 }));
        assert_eq!(s.next_entry, Some(Mode::Recovery));
        // A slot that was not active does not become active.
        let before = BootState::default();
        let mut s = before.clone();
        s.take_out_of_service(Slot::B);
        s.return_to_service(Slot::B, &before);
        assert_eq!(s, before);
    }

    #[test]
    fn a_slot_out_of_service_is_never_chosen() {
        let mut s = BootState::default();
        s.take_out_of_service(Slot::B);
        assert_eq!(
            (s.active_slot, s.b, s.last_failure.clone()),
            (Slot::A, Health::Bad, None)
        );
        assert_eq!(s.grub_automatic_choice(), Mode::Active);
        assert_eq!(s.slot_for(Mode::Active), Some(Slot::A));
        // The active slot itself: the other one takes over.
        let mut s = BootState::default();
        s.take_out_of_service(Slot::A);
        assert_eq!(s.active_slot, Slot::B);
        s.take_out_of_service(Slot::B);
        assert_eq!(s.grub_automatic_choice(), Mode::Recovery);
    }

    #[test]
    fn a_written_slot_boots_next_on_trial() {
        let mut s = BootState {
            next_entry: Some(Mode::Passive),
            ..Default::default()
        };
        s.take_out_of_service(Slot::B);
        s.activate_written(Slot::B, 12);
        assert_eq!(
            (s.active_slot, s.b, s.a, s.next_entry),
            (Slot::B, Health::Trial { tries: 9 }, Health::Good, None)
        );
    }

    #[test]
    fn reset_makes_slot_a_active_with_the_given_health() {
        let mut s = BootState {
            active_slot: Slot::B,
            next_entry: Some(Mode::Recovery),
            last_failure: Some("slot b: panic".into()),
            ..Default::default()
        };
        s.take_out_of_service(Slot::A);
        s.take_out_of_service(Slot::B);
        s.reset_to(Health::Trial { tries: 2 });
        assert_eq!(
            s,
            BootState {
                active_slot: Slot::A,
                next_entry: None,
                a: Health::Trial { tries: 2 },
                b: Health::Trial { tries: 2 },
                last_failure: None,
                a_unfinished: 0,
                b_unfinished: 0,
                recovery_failure: None,
            }
        );
        s.reset_to(Health::Good);
        assert_eq!(s, BootState::default());
    }
}

/// What the kernel command line asked for; any part may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootRequest {
    pub mode: Option<Mode>,
    pub slot: Option<Slot>,
    pub image: Option<String>,
}

/// The image the init will boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTarget {
    pub mode: Mode,
    pub slot: Option<Slot>,
    /// Path of the squashfs, relative to the root of its partition.
    pub image: String,
}

/// Decides what to boot from the request and the stored state. The command
/// line wins; what it leaves open comes from the state (or its defaults).
pub fn resolve_target(req: &BootRequest, state: &BootState) -> BootTarget {
    let mode = req.mode.unwrap_or_else(|| match req.image.as_deref() {
        Some(img) if img.contains("recovery") => Mode::Recovery,
        Some(img) if img.contains("passive") => Mode::Passive,
        Some(img) if img == Slot::A.image_path() || img == Slot::B.image_path() => {
            let slot = if img == Slot::A.image_path() {
                Slot::A
            } else {
                Slot::B
            };
            if slot == state.active_slot {
                Mode::Active
            } else {
                Mode::Passive
            }
        }
        _ => Mode::Active,
    });
    let slot = match mode {
        Mode::Recovery => None,
        _ => req.slot.or_else(|| state.slot_for(mode)),
    };
    let image = match (&req.image, slot) {
        (Some(img), _) => img.clone(),
        (None, Some(slot)) => slot.image_path().to_string(),
        (None, None) => RECOVERY_IMAGE.to_string(),
    };
    BootTarget { mode, slot, image }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> GrubEnv {
        let mut e = GrubEnv::new();
        for (k, v) in pairs {
            e.set(k, v).unwrap();
        }
        e
    }

    #[test]
    fn state_defaults_and_reads() {
        let (s, w) = BootState::from_env(&GrubEnv::new());
        assert_eq!(s, BootState::default());
        assert!(w.is_empty());
        let (s, w) = BootState::from_env(&env(&[
            ("immuboot_active_slot", "b"),
            ("next_entry", "recovery"),
        ]));
        assert_eq!(s.active_slot, Slot::B);
        assert_eq!(s.next_entry, Some(Mode::Recovery));
        assert!(w.is_empty());
    }

    #[test]
    fn invalid_state_values_warn_and_fall_back() {
        let (s, w) = BootState::from_env(&env(&[
            ("immuboot_active_slot", "c; reboot"),
            ("next_entry", "x"),
        ]));
        assert_eq!(s, BootState::default());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("immuboot_active_slot"));
    }

    #[test]
    fn store_keeps_other_variables() {
        let mut e = env(&[("other", "1")]);
        BootState {
            active_slot: Slot::B,
            next_entry: Some(Mode::Passive),
            ..Default::default()
        }
        .store(&mut e)
        .unwrap();
        assert_eq!(e.get("other"), Some("1"));
        assert_eq!(e.get(vars::ACTIVE_SLOT), Some("b"));
        assert_eq!(e.get(vars::NEXT_ENTRY), Some("passive"));
    }

    #[test]
    fn health_round_trips_through_the_env_block() {
        let mut s = BootState::default();
        s.activate_on_trial(Slot::B, 3);
        s.mark_bad(Slot::A, "image check failed");
        let mut e = GrubEnv::new();
        s.store(&mut e).unwrap();
        let (back, w) = BootState::from_env(&GrubEnv::parse(&e.to_block().unwrap()).unwrap());
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(back, s);
    }

    #[test]
    fn non_utf8_state_values_warn_and_fall_back() {
        let mut e = env(&[("immuboot_b_state", "trial"), ("other", "1")]);
        e.set_bytes("immuboot_active_slot", b"b\xe9").unwrap();
        e.set_bytes("immuboot_b_tries", b"\xff").unwrap();
        e.set_bytes("immuboot_last_failure", b"caf\xe9").unwrap();
        let (s, w) = BootState::from_env(&e);
        assert_eq!(s.active_slot, Slot::A);
        assert_eq!(s.b, Health::Trial { tries: 0 });
        assert_eq!(s.last_failure, None);
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w
            .iter()
            .any(|w| w.contains("immuboot_active_slot") && w.contains("UTF-8")));
        // Storing the state replaces the invalid values of ours.
        s.store(&mut e).unwrap();
        let (_, w) = BootState::from_env(&e);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn bad_tries_value_means_no_tries() {
        let (s, w) = BootState::from_env(&env(&[
            ("immuboot_b_state", "trial"),
            ("immuboot_b_tries", "x"),
        ]));
        assert_eq!(s.b, Health::Trial { tries: 0 });
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn trial_slot_falls_back_after_its_tries() {
        let mut s = BootState::default();
        s.activate_on_trial(Slot::B, 3);
        // Three boots of the new slot that never get marked good...
        for _ in 0..3 {
            assert_eq!(s.grub_automatic_choice(), Mode::Active);
        }
        // ...then GRUB boots the passive slot a, and keeps doing so.
        assert_eq!(s.grub_automatic_choice(), Mode::Passive);
        assert_eq!(s.slot_for(Mode::Passive), Some(Slot::A));
        assert!(s
            .fallback_reason(Mode::Passive, Some(Slot::A))
            .unwrap()
            .contains("used up its tries"));
        // The fallback boot is marked good: a becomes active again.
        s.mark_good(Slot::A);
        assert_eq!(s.active_slot, Slot::A);
        assert_eq!(s.grub_automatic_choice(), Mode::Active);
        assert_eq!(s.fallback_reason(Mode::Active, Some(Slot::A)), None);
    }

    #[test]
    fn good_trial_slot_stays_active_and_old_one_is_passive() {
        let mut s = BootState::default();
        s.activate_on_trial(Slot::B, 3);
        assert_eq!(s.grub_automatic_choice(), Mode::Active);
        s.mark_good(Slot::B);
        assert_eq!(
            (s.active_slot, s.b, s.a),
            (Slot::B, Health::Good, Health::Good)
        );
        assert_eq!(s.slot_for(Mode::Passive), Some(Slot::A));
    }

    #[test]
    fn both_slots_bad_boots_recovery() {
        let mut s = BootState::default();
        s.mark_bad(Slot::A, "x");
        s.activate_on_trial(Slot::B, 1);
        assert_eq!(s.grub_automatic_choice(), Mode::Active);
        assert_eq!(s.grub_automatic_choice(), Mode::Recovery);
        assert!(s
            .fallback_reason(Mode::Recovery, None)
            .unwrap()
            .starts_with("fallback to recovery"));
    }

    #[test]
    fn a_good_slot_that_stops_finishing_its_boots_falls_back() {
        let mut s = BootState::default();
        // A boot that finishes clears the count.
        assert_eq!(s.grub_automatic_choice(), Mode::Active);
        assert_eq!(s.a_unfinished, 1);
        s.mark_good(Slot::A);
        assert_eq!(s.a_unfinished, 0);
        // Then slot a goes bad: three boots start, none finishes...
        for _ in 0..UNFINISHED_BOOTS_LIMIT {
            assert_eq!(s.grub_automatic_choice(), Mode::Active);
        }
        assert!(s.stopped_finishing(Slot::A) && !s.may_boot(Slot::A));
        // ...so GRUB boots the passive slot, and the reason names it.
        assert_eq!(s.grub_automatic_choice(), Mode::Passive);
        assert_eq!(s.b_unfinished, 1);
        assert!(s
            .fallback_reason(Mode::Passive, Some(Slot::B))
            .unwrap()
            .contains("slot a, marked good before, did not finish its last 3 boots"));
        // The fallback finishes: b becomes active, a is not rolled back to.
        s.mark_good(Slot::B);
        assert_eq!((s.active_slot, s.b_unfinished), (Slot::B, 0));
        assert!(s.rollback().is_err());
        // Both good slots stop finishing: recovery.
        for _ in 0..UNFINISHED_BOOTS_LIMIT {
            assert_eq!(s.grub_automatic_choice(), Mode::Active);
        }
        assert_eq!(s.grub_automatic_choice(), Mode::Recovery);
    }

    #[test]
    fn unfinished_boots_round_trip_and_bad_values_count_as_none() {
        let mut s = BootState::default();
        s.count_attempt(Slot::B);
        s.count_attempt(Slot::B);
        let mut e = GrubEnv::new();
        s.store(&mut e).unwrap();
        assert_eq!(e.get(vars::B_UNFINISHED), Some("2"));
        assert_eq!(e.get(vars::A_UNFINISHED), Some(""));
        let (back, w) = BootState::from_env(&e);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(back, s);
        // Counting saturates at 9, the end of GRUB's if-chain.
        for _ in 0..20 {
            s.count_attempt(Slot::B);
        }
        assert_eq!(s.b_unfinished, 9);
        let (s, w) = BootState::from_env(&env(&[(vars::A_UNFINISHED, "x")]));
        assert_eq!((s.a_unfinished, w.len()), (0, 1), "{w:?}");
        // Only a good slot counts unfinished boots.
        let mut s = BootState::default();
        s.activate_on_trial(Slot::B, 2);
        s.count_attempt(Slot::B);
        assert_eq!((s.b, s.b_unfinished), (Health::Trial { tries: 1 }, 0));
    }

    /// Found by the `grubenv` fuzz target: `immuboot_b_unfinished=1` beside
    /// a slot on trial was read as a count, then dropped by `store`, so the
    /// state changed in a store/read round trip.
    #[test]
    fn unfinished_boots_beside_a_slot_on_trial_or_bad_are_not_counted() {
        let e = env(&[
            (vars::A_STATE, "bad"),
            (vars::A_UNFINISHED, "4"),
            (vars::B_STATE, "trial"),
            (vars::B_TRIES, "0"),
            (vars::B_UNFINISHED, "1"),
        ]);
        let (s, w) = BootState::from_env(&e);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!((s.a_unfinished, s.b_unfinished), (0, 0));
        let mut stored = e.clone();
        s.store(&mut stored).unwrap();
        assert_eq!(BootState::from_env(&stored).0, s);
        // A good slot's count is still read.
        let (g, _) = BootState::from_env(&env(&[(vars::B_UNFINISHED, "3")]));
        assert_eq!(g.b_unfinished, 3);
    }

    /// Every change GRUB saves goes through `immuboot_save`, which writes
    /// the copy GRUB read and the backup after it when that was the
    /// primary: the copies stay equal and the init has nothing to repair.
    #[test]
    fn grub_cfg_saves_every_change_to_both_copies() {
        let cfg = include_str!("../../image/grub/grub.cfg");
        let body: Vec<&str> = cfg
            .split("function immuboot_save {")
            .nth(1)
            .and_then(|rest| rest.split("\n}").next())
            .expect("grub.cfg defines immuboot_save")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            body,
            [
                "save_env -f ${env_file} $1",
                "if [ -n \"${env_backup}\" ]; then",
                "save_env -f ${env_backup} $1",
                "fi"
            ]
        );
        assert_eq!(
            cfg.matches("save_env").count(),
            2,
            "a save_env outside immuboot_save"
        );
        // The backup is written only when GRUB read the primary.
        assert!(cfg.contains("set env_file=($root)/grub/grubenv.bak\n  set env_backup=\n"));
        assert!(
            cfg.contains("export active_slot passive_slot immuboot_cmdline env_file env_backup")
        );
    }

    /// grub.cfg writes the limit out in if-chains (GRUB has no arithmetic):
    /// the values that stop a good slot and the counting steps must match
    /// the Rust side.
    #[test]
    fn grub_cfg_counts_unfinished_boots_with_the_same_limit() {
        let cfg = include_str!("../../image/grub/grub.cfg");
        let stop_line = cfg
            .lines()
            .find(|l| l.contains("elif [ \"${un}\" = ") && l.contains(" -o "))
            .expect("the unfinished-boots limit line in immuboot_may_boot");
        let stops: Vec<u8> = stop_line
            .split("\"${un}\" = \"")
            .skip(1)
            .map(|p| p[..1].parse().unwrap())
            .collect();
        assert_eq!(stops, (UNFINISHED_BOOTS_LIMIT..=9).collect::<Vec<_>>());
        // The counting chain: unset or 0 → 1, then n → n+1 up to 9.
        let steps: Vec<(u8, u8)> = cfg
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let l = l.strip_prefix("elif [ \"${un}\" = \"")?;
                let (from, rest) = l.split_once('"')?;
                let to = rest.strip_prefix(" ]; then set more=")?;
                Some((from.parse().ok()?, to.parse().ok()?))
            })
            .collect();
        assert_eq!(steps, (1..=8).map(|n| (n, n + 1)).collect::<Vec<_>>());
        assert!(cfg.contains("if [ -z \"${un}\" -o \"${un}\" = \"0\" ]; then set more=1"));
        for v in [vars::A_UNFINISHED, vars::B_UNFINISHED] {
            assert!(
                cfg.lines()
                    .any(|l| l.starts_with("set immuboot_vars=") && l.contains(v)),
                "{v} is not loaded by grub.cfg"
            );
            assert!(cfg.contains(&format!("immuboot_save {v}")));
        }
    }

    #[test]
    fn manual_boots_are_counted_by_the_init() {
        let mut s = BootState::default();
        s.activate_on_trial(Slot::B, 2);
        s.count_attempt(Slot::B);
        s.count_attempt(Slot::B);
        s.count_attempt(Slot::B);
        assert_eq!(s.b, Health::Trial { tries: 0 });
        assert_eq!(s.grub_automatic_choice(), Mode::Passive);
    }

    #[test]
    fn upgrade_writes_the_slot_not_booted() {
        let mut s = BootState::default();
        assert_eq!(s.upgrade_target(Some(Slot::A)).unwrap(), Slot::B);
        // Booted into the fallback: the failed slot is written, never the good one.
        s.active_slot = Slot::B;
        s.mark_bad(Slot::B, "panic");
        assert_eq!(s.upgrade_target(Some(Slot::A)).unwrap(), Slot::B);
        // A booted slot that is still on trial would be the only fallback.
        s.activate_on_trial(Slot::A, 3);
        assert!(s.upgrade_target(Some(Slot::A)).is_err());
        // From recovery: the bad slot, else the one that is not active.
        let mut s = BootState::default();
        assert_eq!(s.upgrade_target(None).unwrap(), Slot::B);
        s.mark_bad(Slot::A, "x");
        assert_eq!(s.upgrade_target(None).unwrap(), Slot::A);
    }

    #[test]
    fn rollback_needs_a_good_other_slot() {
        let mut s = BootState::default();
        assert_eq!(s.rollback().unwrap(), Slot::B);
        s.mark_bad(Slot::A, "x");
        assert!(s.rollback().is_err());
    }

    #[test]
    fn resolves_modes_to_slots() {
        let state = BootState {
            active_slot: Slot::B,
            ..Default::default()
        };
        let t = resolve_target(&BootRequest::default(), &state);
        assert_eq!(
            (t.mode, t.slot, t.image.as_str()),
            (Mode::Active, Some(Slot::B), "/cOS/b.img")
        );
        let t = resolve_target(
            &BootRequest {
                mode: Some(Mode::Passive),
                ..Default::default()
            },
            &state,
        );
        assert_eq!((t.slot, t.image.as_str()), (Some(Slot::A), "/cOS/a.img"));
        let t = resolve_target(
            &BootRequest {
                mode: Some(Mode::Recovery),
                ..Default::default()
            },
            &state,
        );
        assert_eq!((t.slot, t.image.as_str()), (None, RECOVERY_IMAGE));
    }

    #[test]
    fn command_line_wins_over_state() {
        let state = BootState::default();
        let req = BootRequest {
            mode: Some(Mode::Active),
            slot: Some(Slot::B),
            image: Some("/cOS/custom.img".into()),
        };
        let t = resolve_target(&req, &state);
        assert_eq!(
            (t.mode, t.slot, t.image.as_str()),
            (Mode::Active, Some(Slot::B), "/cOS/custom.img")
        );
    }

    #[test]
    fn infers_mode_from_cos_image_names() {
        let state = BootState::default();
        let img = |p: &str| BootRequest {
            image: Some(p.into()),
            ..Default::default()
        };
        assert_eq!(
            resolve_target(&img("/cOS/recovery.squashfs"), &state).mode,
            Mode::Recovery
        );
        assert_eq!(
            resolve_target(&img("/cOS/passive.img"), &state).mode,
            Mode::Passive
        );
        assert_eq!(
            resolve_target(&img("/cOS/active.img"), &state).mode,
            Mode::Active
        );
        assert_eq!(
            resolve_target(&img("/cOS/b.img"), &state).mode,
            Mode::Passive
        );
        assert_eq!(
            resolve_target(&img("/cOS/a.img"), &state).slot,
            Some(Slot::A)
        );
    }
}
