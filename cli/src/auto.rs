//! Unattended upgrades: the configuration on COS_OEM, and what the runs
//! remember between them (the image they installed last, and the images
//! that failed on this machine, so a broken release is not installed again
//! and again). The pure part: parsing, and the transitions of the memory
//! given the boot state; `cmd::auto_upgrade` runs it.

use anyhow::{anyhow, bail, Context, Result};
use immuboot_assess::{BootState, Health, Slot};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the configuration lives: on COS_OEM, per machine.
pub const CONFIG: &str = "/oem/immuboot/upgrade.yaml";

/// The memory, on COS_STATE beside the slot images it talks about.
pub const MEMORY: &str = "cOS/auto-upgrade.json";

/// `/oem/immuboot/upgrade.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoConfig {
    /// What `immuboot upgrade` is given: a registry reference, an OCI
    /// layout, a squashfs file.
    pub source: String,
    /// Allow an unencrypted registry (a local mirror).
    #[serde(default)]
    pub plain_http: bool,
    /// When the timer runs: a systemd calendar expression (OnCalendar=).
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// After an upgrade: `never` (the new slot boots whenever the machine
    /// reboots next), `now`, or a time `HH:MM` (the next one, local time:
    /// `shutdown -r HH:MM`, the start of a maintenance window).
    #[serde(default = "default_reboot")]
    pub reboot: String,
    /// Boots the new slot gets to be marked good.
    #[serde(default = "default_tries")]
    pub tries: u8,
}

fn default_schedule() -> String {
    "daily".into()
}

fn default_reboot() -> String {
    "never".into()
}

fn default_tries() -> u8 {
    immuboot_assess::DEFAULT_TRIES
}

/// What to do after an upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reboot {
    Never,
    Now,
    /// `HH:MM`, as `shutdown -r` takes it.
    At(String),
}

impl AutoConfig {
    /// Parses and checks the file's text; errors name line and column.
    pub fn parse(text: &str) -> Result<AutoConfig> {
        let cfg: AutoConfig = serde_yaml_ng::from_str(text).map_err(|e| anyhow!("{e}"))?;
        if cfg.source.trim().is_empty() {
            bail!("source is empty: name the image to follow (REGISTRY/REPO:TAG, oci:DIR:TAG, a squashfs file)");
        }
        // It goes into a unit file (OnCalendar=): one line, no comment.
        if cfg.schedule.trim().is_empty() || cfg.schedule.contains(['\n', '\r', '#', ';']) {
            bail!(
                "schedule {:?}: expected a systemd calendar expression such as daily, hourly or \
                 \"Mon..Fri 02:00\" (`systemd-analyze calendar` checks one)",
                cfg.schedule
            );
        }
        if !(1..=9).contains(&cfg.tries) {
            bail!("tries {}: expected 1 to 9", cfg.tries);
        }
        cfg.reboot_plan()?;
        Ok(cfg)
    }

    pub fn reboot_plan(&self) -> Result<Reboot> {
        match self.reboot.as_str() {
            "never" => Ok(Reboot::Never),
            "now" => Ok(Reboot::Now),
            t => {
                let ok = t.split_once(':').is_some_and(|(h, m)| {
                    h.len() == 2
                        && m.len() == 2
                        && h.parse::<u8>().is_ok_and(|h| h < 24)
                        && m.parse::<u8>().is_ok_and(|m| m < 60)
                });
                if !ok {
                    bail!("reboot {t:?}: expected never, now, or a time HH:MM (the start of a maintenance window)");
                }
                Ok(Reboot::At(t.to_owned()))
            }
        }
    }
}

/// Reads the configuration; `Ok(None)` when there is none (unattended
/// upgrades are off).
pub fn read_config(path: &Path) -> Result<Option<AutoConfig>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    AutoConfig::parse(&text)
        .map(Some)
        .with_context(|| format!("invalid {}", path.display()))
}

/// One image an unattended run installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub slot: Slot,
    /// The source's identity (manifest digest, or `sha256:HEX` of a
    /// squashfs).
    pub identity: String,
    pub source: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// An image that did not become good on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub identity: String,
    pub source: String,
    pub slot: Slot,
    pub reason: Option<String>,
    pub at: u64,
}

/// What the unattended runs remember.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Installed by the last run and not yet found good or bad.
    #[serde(default)]
    pub pending: Option<Installed>,
    #[serde(default)]
    pub failed: Vec<Failed>,
}

impl Memory {
    pub fn parse(text: &str) -> Result<Memory> {
        serde_json::from_str(text).context("not the JSON an unattended upgrade writes")
    }

    pub fn failed(&self, identity: &str) -> Option<&Failed> {
        self.failed.iter().find(|f| f.identity == identity)
    }

    /// Settles the pending installation against the boot state: a slot
    /// that became good is done, one that is bad failed (its image goes on
    /// the failed list), one still on trial stays pending. `still_holds`
    /// says whether the slot still has the installed image (an operator may
    /// have written another one meanwhile: then nothing is concluded).
    /// Returns what changed, for the log.
    pub fn settle(
        &mut self,
        state: &BootState,
        still_holds: impl Fn(&Installed) -> bool,
        now: u64,
    ) -> Option<String> {
        let pending = self.pending.clone()?;
        if !still_holds(&pending) {
            self.pending = None;
            return Some(format!(
                "slot {} no longer holds {} ({}): it was rewritten since",
                pending.slot, pending.source, pending.identity
            ));
        }
        match state.health(pending.slot) {
            Health::Good => {
                self.pending = None;
                Some(format!(
                    "slot {} with {} ({}) was marked good",
                    pending.slot, pending.source, pending.identity
                ))
            }
            // Bad, or out of tries (the init marks such a slot bad on the
            // fallback boot; this covers a state where that did not land).
            Health::Bad | Health::Trial { tries: 0 } => {
                self.pending = None;
                self.failed.retain(|f| f.identity != pending.identity);
                self.failed.push(Failed {
                    identity: pending.identity.clone(),
                    source: pending.source.clone(),
                    slot: pending.slot,
                    reason: state.last_failure.clone(),
                    at: now,
                });
                Some(format!(
                    "slot {} with {} ({}) failed{}: it will not be installed again \
                     (`immuboot auto-upgrade --forget-failed` allows it)",
                    pending.slot,
                    pending.source,
                    pending.identity,
                    state
                        .last_failure
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ))
            }
            Health::Trial { .. } => None,
        }
    }
}

/// Reads the memory under `state_dir`; a missing file is an empty memory.
pub fn read_memory(state_dir: &Path) -> Result<Memory> {
    let path = state_dir.join(MEMORY);
    match std::fs::read_to_string(&path) {
        Ok(t) => Memory::parse(&t).with_context(|| format!("invalid {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Memory::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the memory (atomically, fsynced).
pub fn write_memory(state_dir: &Path, memory: &Memory) -> Result<()> {
    let text = serde_json::to_string_pretty(memory).expect("plain data serializes") + "\n";
    immuboot_assess::fsutil::write_atomic(&state_dir.join(MEMORY), text.as_bytes())
}

/// The generator's drop-in for `immuboot-upgrade.timer`.
pub fn timer_dropin(cfg: &AutoConfig) -> String {
    format!(
        "# Written by immuboot-upgrade-generator from {CONFIG}.\n[Timer]\nOnCalendar=\nOnCalendar={}\n",
        cfg.schedule.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_config_gets_the_defaults() {
        let cfg = AutoConfig::parse("source: reg.example/fleet/os:stable\n").unwrap();
        assert_eq!(cfg.schedule, "daily");
        assert_eq!(cfg.reboot_plan().unwrap(), Reboot::Never);
        assert_eq!(cfg.tries, 3);
        assert!(!cfg.plain_http);
        let cfg = AutoConfig::parse(
            "source: oci:/srv/os:v2\nplain_http: true\nschedule: \"Mon..Fri 02:00\"\nreboot: \"03:30\"\ntries: 2\n",
        )
        .unwrap();
        assert_eq!(cfg.reboot_plan().unwrap(), Reboot::At("03:30".into()));
        assert_eq!(
            timer_dropin(&cfg),
            "# Written by immuboot-upgrade-generator from /oem/immuboot/upgrade.yaml.\n[Timer]\nOnCalendar=\nOnCalendar=Mon..Fri 02:00\n"
        );
    }

    #[test]
    fn bad_configs_say_where_and_why() {
        let err = |text: &str| format!("{:#}", AutoConfig::parse(text).unwrap_err());
        let e = err("source: x\nreboots: now\n");
        assert!(
            e.contains("unknown field `reboots`") && e.contains("line 2"),
            "{e}"
        );
        assert!(err("schedule: daily\n").contains("missing field `source`"));
        assert!(err("source: ''\n").contains("source is empty"));
        assert!(err("source: x\nreboot: 25:00\n").contains("HH:MM"));
        assert!(err("source: x\nreboot: sometimes\n").contains("never, now"));
        assert!(err("source: x\ntries: 0\n").contains("1 to 9"));
        assert!(err("source: x\nschedule: \"daily\\nExecStart=/bin/sh\"\n").contains("calendar"));
        assert!(err("source: [\n").contains("line"));
    }

    fn state(b: Health, reason: Option<&str>) -> BootState {
        let mut s = BootState {
            last_failure: reason.map(String::from),
            ..Default::default()
        };
        *s.health_mut(Slot::B) = b;
        s
    }

    fn installed() -> Installed {
        Installed {
            slot: Slot::B,
            identity: "sha256:new".into(),
            source: "reg/os:stable".into(),
            at: 1,
        }
    }

    #[test]
    fn a_pending_install_settles_by_the_slots_health() {
        let mut m = Memory {
            pending: Some(installed()),
            failed: vec![],
        };
        // Still on trial: nothing concluded.
        assert_eq!(
            m.settle(&state(Health::Trial { tries: 2 }, None), |_| true, 5),
            None
        );
        assert!(m.pending.is_some());
        // Marked good: done, nothing failed.
        let mut good = m.clone();
        assert!(good
            .settle(&state(Health::Good, None), |_| true, 5)
            .unwrap()
            .contains("marked good"));
        assert_eq!(good, Memory::default());
        // Bad: on the failed list with the reason, once.
        let mut bad = m.clone();
        let msg = bad
            .settle(
                &state(Health::Bad, Some("slot b: /sbin/init missing")),
                |_| true,
                9,
            )
            .unwrap();
        assert!(msg.contains("will not be installed again"), "{msg}");
        assert_eq!(bad.pending, None);
        let f = bad.failed("sha256:new").unwrap();
        assert_eq!(f.reason.as_deref(), Some("slot b: /sbin/init missing"));
        assert_eq!(f.at, 9);
        bad.pending = Some(installed());
        bad.settle(&state(Health::Bad, None), |_| true, 10);
        assert_eq!(bad.failed.len(), 1);
        // Rewritten by someone else meanwhile: dropped, nothing concluded.
        assert!(m
            .settle(&state(Health::Bad, None), |_| false, 5)
            .unwrap()
            .contains("rewritten"));
        assert!(m.failed.is_empty() && m.pending.is_none());
        // Round trip.
        assert_eq!(
            Memory::parse(&serde_json::to_string(&bad).unwrap()).unwrap(),
            bad
        );
    }
}
