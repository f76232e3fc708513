//! The boot facts: what the init did, written to `/run/immuboot/boot.json`
//! for userspace (the `immuboot` tool, health checks, operators). One typed,
//! versioned contract: the init serialises it, the CLI deserialises it, and
//! the CLI takes the labels and mount points the boot actually used from it
//! instead of assuming the defaults.

use crate::exec::Outcome;
use crate::labels::Labels;
use anyhow::{bail, Context, Result};
use immuboot_assess::{BootTarget, Mode, Slot};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the init writes the facts (moved into the new root with /run).
pub const FACTS_DIR: &str = "/run/immuboot";
pub const FACTS_FILE: &str = "boot.json";

/// Raised when a field changes meaning or disappears; new optional fields
/// keep the version (readers ignore what they do not know).
pub const FACTS_VERSION: u32 = 1;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub name: String,
    pub ms: u128,
    /// Kernel uptime (seconds) when the step started; 0 in facts written
    /// before this field existed.
    #[serde(default)]
    pub start_s: f64,
}

/// One partition the boot found: its device and file system type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub label: String,
    pub device: PathBuf,
    pub fstype: String,
}

/// Which initramfs ran the boot: immuboot's own (the init is PID 1) or a
/// distribution's dracut initramfs with the immuboot module (systemd in the
/// initrd runs the same boot as a service).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitramfsKind {
    #[default]
    Standalone,
    Dracut,
}

impl InitramfsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InitramfsKind::Standalone => "standalone",
            InitramfsKind::Dracut => "dracut",
        }
    }
}

/// The initramfs that booted: its kind and, for dracut, dracut's version
/// (from the initrd's `initrd-release`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Initramfs {
    pub kind: InitramfsKind,
    pub dracut_version: Option<String>,
}

impl Initramfs {
    /// One line for people: `standalone (immuboot 0.1.0)` or
    /// `dracut 059-4 with the immuboot 0.1.0 module`.
    pub fn describe(&self, init_version: &str) -> String {
        match self.kind {
            InitramfsKind::Standalone => format!("standalone (immuboot {init_version} as PID 1)"),
            InitramfsKind::Dracut => format!(
                "dracut {} with the immuboot {init_version} module (systemd in the initrd)",
                self.dracut_version
                    .as_deref()
                    .unwrap_or("(version unknown)")
            ),
        }
    }
}

/// dracut's version from the text of an `initrd-release` file: its
/// `DRACUT_VERSION` (written beside the distribution's os-release), or the
/// `VERSION_ID` of the `ID=dracut` file dracut writes when it has no
/// os-release to start from (dracut-ng on Debian trixie).
pub fn dracut_version(initrd_release: &str) -> Option<String> {
    let field = |key: &str| {
        initrd_release.lines().find_map(|l| {
            let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
            let v = v.trim_matches(|c| c == '"' || c == '\'');
            (!v.is_empty()).then(|| v.to_string())
        })
    };
    field("DRACUT_VERSION").or_else(|| {
        (field("ID").as_deref() == Some("dracut"))
            .then(|| field("VERSION_ID"))
            .flatten()
    })
}

/// Peak resident memory in KiB (`VmHWM`) from the text of
/// `/proc/PID/status`.
pub fn peak_rss_kib(proc_status: &str) -> Option<u64> {
    proc_status.lines().find_map(|l| {
        let v = l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?;
        v.trim().parse().ok()
    })
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootFacts {
    /// [`FACTS_VERSION`] of the init that wrote them.
    pub version: u32,
    pub init_version: String,
    /// Facts written before this field existed read as standalone.
    pub initramfs: Initramfs,
    pub mode: Option<Mode>,
    pub target: Option<BootTarget>,
    /// The partition labels this boot looked for (the command line can
    /// change every one of them).
    pub labels: Labels,
    /// The partitions with one of [`Labels`]' labels, as found.
    pub partitions: Vec<Partition>,
    /// Partitions with one of the boot's labels on another disk than the
    /// one the boot loader read: ignored.
    #[serde(default)]
    pub look_alikes: Vec<Partition>,
    pub image_partition: Option<String>,
    pub image_device: Option<PathBuf>,
    pub loop_device: Option<PathBuf>,
    pub state_device: Option<PathBuf>,
    /// Where COS_STATE is mounted (read-only; writers remount it).
    pub state_mount: Option<String>,
    /// Where COS_RECOVERY is mounted, when this boot mounted it.
    pub recovery_mount: Option<String>,
    /// Why this boot is not the active slot's normal boot, if it is not.
    pub fallback: Option<String>,
    /// The watchdog armed for the hand-over to systemd.
    pub watchdog: Option<String>,
    pub oem_device: Option<PathBuf>,
    pub persistent_device: Option<PathBuf>,
    pub persistence: bool,
    pub layout_source: String,
    pub layout_errors: Vec<String>,
    pub mounts: Vec<Outcome>,
    pub warnings: Vec<String>,
    pub steps: Vec<StepTiming>,
    /// Kernel uptime when the init started and when it switched root.
    pub uptime_start_s: f64,
    pub uptime_switch_s: f64,
    /// The init's peak resident memory (KiB) when it wrote the facts.
    #[serde(default)]
    pub peak_rss_kib: Option<u64>,
}

impl BootFacts {
    pub fn new(init_version: &str) -> BootFacts {
        BootFacts {
            version: FACTS_VERSION,
            init_version: init_version.into(),
            ..Default::default()
        }
    }

    /// The slot this system booted (None: the recovery image).
    pub fn booted_slot(&self) -> Option<Slot> {
        self.target.as_ref().and_then(|t| t.slot)
    }

    /// The partition found with `label`, if any.
    pub fn partition(&self, label: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.label == label)
    }

    pub fn parse(text: &str) -> Result<BootFacts> {
        let facts: BootFacts = serde_json::from_str(text)
            .context("the boot facts are not valid JSON of their kind")?;
        if facts.version > FACTS_VERSION {
            bail!(
                "the boot facts have version {}, this tool reads up to {FACTS_VERSION} \
                 (the init is newer than this tool)",
                facts.version
            );
        }
        Ok(facts)
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// Reads `DIR/boot.json`. `Ok(None)`: there is none (not booted by
    /// immuboot); a file that exists but cannot be parsed is an error.
    pub fn read(dir: &Path) -> Result<Option<BootFacts>> {
        let path = dir.join(FACTS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => BootFacts::parse(&text)
                .with_context(|| format!("cannot read {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_memory_is_read_from_vmhwm() {
        let status = "Name:\tinit\nVmPeak:\t   9000 kB\nVmHWM:\t    4321 kB\nVmRSS:\t 4000 kB\n";
        assert_eq!(peak_rss_kib(status), Some(4321));
        assert_eq!(peak_rss_kib("Name:\tinit\n"), None);
        assert_eq!(peak_rss_kib("VmHWM:\t lots kB\n"), None);
    }

    #[test]
    fn initramfs_kind_and_dracut_version() {
        let release = "NAME=\"Debian GNU/Linux\"\nVERSION=\"12 (bookworm) dracut-059-4\"\nDRACUT_VERSION=059-4\n";
        assert_eq!(dracut_version(release).as_deref(), Some("059-4"));
        assert_eq!(
            dracut_version("DRACUT_VERSION=\"106-5\"\n").as_deref(),
            Some("106-5")
        );
        assert_eq!(dracut_version("NAME=x\n"), None);
        let dracut_ng = "NAME=dracut\nID=dracut\nVERSION_ID=\"106-6\"\nANSI_COLOR=\"0;34\"\n";
        assert_eq!(dracut_version(dracut_ng).as_deref(), Some("106-6"));
        assert_eq!(dracut_version("ID=debian\nVERSION_ID=\"13\"\n"), None);
        let old = BootFacts::parse(r#"{"version":1,"init_version":"0.1.0"}"#).unwrap();
        assert_eq!(old.initramfs.kind, InitramfsKind::Standalone);
        let dracut = Initramfs {
            kind: InitramfsKind::Dracut,
            dracut_version: Some("059-4".into()),
        };
        let mut facts = BootFacts::new("0.1.0");
        facts.initramfs = dracut.clone();
        let back = BootFacts::parse(&facts.to_json().unwrap()).unwrap();
        assert_eq!(back.initramfs, dracut);
        assert!(facts.to_json().unwrap().contains("\"kind\": \"dracut\""));
        assert_eq!(
            dracut.describe("0.1.0"),
            "dracut 059-4 with the immuboot 0.1.0 module (systemd in the initrd)"
        );
    }
    use crate::exec::Status;
    use crate::plan::Kind;

    #[test]
    fn round_trips_and_answers_the_cli_questions() {
        let mut f = BootFacts::new("0.1.0");
        f.mode = Some(Mode::Passive);
        f.target = Some(BootTarget {
            mode: Mode::Passive,
            slot: Some(Slot::B),
            image: "/cOS/b.img".into(),
        });
        f.labels.recovery = "MY_RECOVERY".into();
        f.partitions.push(Partition {
            label: "MY_RECOVERY".into(),
            device: "/dev/vda3".into(),
            fstype: "ext4".into(),
        });
        f.mounts.push(Outcome {
            path: "/etc".into(),
            kind: Kind::Ephemeral,
            status: Status::FellBack { reason: "x".into() },
        });
        let back = BootFacts::parse(&f.to_json().unwrap()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.booted_slot(), Some(Slot::B));
        assert_eq!(
            back.partition(&back.labels.recovery)
                .map(|p| p.device.as_path()),
            Some(Path::new("/dev/vda3"))
        );
    }

    #[test]
    fn older_facts_without_new_fields_still_read() {
        // What the init wrote before the facts were versioned.
        let f = BootFacts::parse(r#"{"init_version":"0.1.0","mode":"recovery","target":{"mode":"recovery","slot":null,"image":"/cOS/recovery.img"},"persistence":true}"#).unwrap();
        assert_eq!(f.booted_slot(), None);
        assert_eq!(f.labels, Labels::default());
        assert!(f.persistence);
    }

    #[test]
    fn newer_versions_and_garbage_are_refused_with_a_reason() {
        let e = BootFacts::parse(r#"{"version": 99}"#).unwrap_err();
        assert!(format!("{e:#}").contains("version 99"), "{e:#}");
        assert!(BootFacts::parse("{").is_err());
    }

    #[test]
    fn missing_file_is_none_and_a_broken_one_an_error() {
        let dir = std::env::temp_dir().join(format!("immuboot-facts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join(FACTS_FILE));
        assert!(BootFacts::read(&dir).unwrap().is_none());
        std::fs::write(dir.join(FACTS_FILE), "not json").unwrap();
        let e = BootFacts::read(&dir).unwrap_err();
        assert!(format!("{e:#}").contains("boot.json"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
