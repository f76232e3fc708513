//! Boot state shared between GRUB and immuboot: which slot is active, what the
//! next boot should be, and how a boot request maps to an image.
//!
//! The state lives in a GRUB environment block ([`grubenv`]) on COS_STATE so
//! that GRUB's menu entries and the init read the same facts. All names are
//! prefixed `immuboot_` except `next_entry`, which keeps the meaning it has for
//! `grub-reboot`. Boot counters (tries, known-good flags) are added as further
//! `immuboot_*` variables without changing the existing ones.

pub mod grubenv;

use anyhow::{bail, Result};
use grubenv::GrubEnv;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// Variable names in the environment block.
pub mod vars {
    /// `a` or `b`: the slot the `active` menu entry boots.
    pub const ACTIVE_SLOT: &str = "immuboot_active_slot";
    /// One-shot choice for the next boot (`active`, `passive`, `recovery`);
    /// GRUB clears it when it uses it.
    pub const NEXT_ENTRY: &str = "next_entry";
}

/// Where an image comes from, as GRUB's menu entries name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootState {
    pub active_slot: Slot,
    pub next_entry: Option<Mode>,
}

impl Default for BootState {
    fn default() -> Self {
        BootState {
            active_slot: Slot::A,
            next_entry: None,
        }
    }
}

impl BootState {
    /// Reads the state from an environment block. Invalid values fall back to
    /// the defaults (GRUB's config does the same) and are reported as warnings.
    pub fn from_env(env: &GrubEnv) -> (BootState, Vec<String>) {
        let mut warnings = Vec::new();
        let mut state = BootState::default();
        if let Some(v) = env.get_nonempty(vars::ACTIVE_SLOT) {
            match v.parse() {
                Ok(slot) => state.active_slot = slot,
                Err(e) => warnings.push(format!("{}: {e:#}; using slot a", vars::ACTIVE_SLOT)),
            }
        }
        if let Some(v) = env.get_nonempty(vars::NEXT_ENTRY) {
            match v.parse() {
                Ok(mode) => state.next_entry = Some(mode),
                Err(e) => warnings.push(format!("{}: {e:#}; ignored", vars::NEXT_ENTRY)),
            }
        }
        (state, warnings)
    }

    /// Writes this state's variables into `env`, keeping any others.
    pub fn store(&self, env: &mut GrubEnv) -> Result<()> {
        env.set(vars::ACTIVE_SLOT, self.active_slot.as_str())?;
        env.set(
            vars::NEXT_ENTRY,
            self.next_entry.map(Mode::as_str).unwrap_or(""),
        )?;
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

/// What the kernel command line asked for; any part may be missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootRequest {
    pub mode: Option<Mode>,
    pub slot: Option<Slot>,
    pub image: Option<String>,
}

/// The image the init will boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
        }
        .store(&mut e)
        .unwrap();
        assert_eq!(e.get("other"), Some("1"));
        assert_eq!(e.get(vars::ACTIVE_SLOT), Some("b"));
        assert_eq!(e.get(vars::NEXT_ENTRY), Some("passive"));
    }

    #[test]
    fn resolves_modes_to_slots() {
        let state = BootState {
            active_slot: Slot::B,
            next_entry: None,
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
