//! What the kernel command line asks of the init: immuboot's own
//! `immuboot.*` parameters, plus the cOS/Elemental forms so that existing
//! GRUB entries keep working.
//!
//! | parameter | meaning |
//! |---|---|
//! | `immuboot.mode=active\|passive\|recovery` | which image to boot |
//! | `immuboot.slot=a\|b` | slot of an active/passive boot (default: from the boot state) |
//! | `immuboot.image=PATH`, `cos-img/filename=PATH` | image path on its partition |
//! | `root=LABEL=X` | label of the partition holding the image (cOS form) |
//! | `immuboot.state_uuid=UUID` | the file system GRUB booted from (COS_STATE): only partitions on its disk are used |
//! | `immuboot.state_label=`, `.recovery_label=`, `.oem_label=`, `.persistent_label=`, `rd.cos.oemlabel=` | partition labels |
//! | `immuboot.timeout=SECONDS` | how long to wait for the image partition (default 30) |
//! | `immuboot.modules=a,b`, `rd.driver.pre=a,b` | extra kernel modules to load |
//! | `immuboot.disable`, `rd.cos.disable` | no immutable layout: mount `root=` and boot it |
//! | `immuboot.shell` | on a fatal error, start a shell before rebooting |
//! | `immuboot.reboot_delay=SECONDS` | pause before a reboot after a fatal error (default 10) |
//! | `immuboot.debug`, `rd.immuboot.debug` | log debug details |
//! | `immuboot.counted=1` | GRUB already counted this boot (a try of a slot on trial, an unfinished boot of a good one) |
//! | `immuboot.verify=trial\|always\|never` | check the image's SHA-256 before switch_root: on a slot's trial boots (default), every boot, or never |
//! | `immuboot.watchdog=SECONDS` | watchdog timeout armed before switch_root, until systemd takes over (default 60, 0 = off) |
//! | `init=PATH` | program to run in the new root (default /sbin/init) |
//! | `MODULE.PARAM=VALUE`, `modprobe.blacklist=A,B`, `module_blacklist=A,B` | module parameters and blacklists, as modprobe applies them (`immuboot_kmod::ModuleOptions`) |

use crate::cmdline::Cmdline;
use immuboot_assess::{BootRequest, Mode};
use immuboot_mount::labels::Labels;
use std::time::Duration;

pub use immuboot_assess::Verify;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    pub request: BootRequest,
    pub labels: Labels,
    /// Label of the partition that holds the image, when `root=LABEL=` names it.
    pub image_label: Option<String>,
    /// `immuboot.state_uuid`: the UUID of the COS_STATE file system GRUB
    /// read; binds the boot to that disk.
    pub state_uuid: Option<String>,
    /// `rd.cos.disable`: boot `root=` as a plain root file system.
    pub disabled: bool,
    pub root_spec: Option<String>,
    pub root_read_write: bool,
    pub device_timeout: Duration,
    pub extra_modules: Vec<String>,
    pub shell_on_failure: bool,
    pub reboot_delay: Duration,
    pub debug: bool,
    /// `immuboot.counted=1`: GRUB already counted this boot of the slot.
    pub counted_by_bootloader: bool,
    pub verify: Verify,
    /// Watchdog timeout armed before switch_root; zero leaves it off.
    pub watchdog: Duration,
    pub init: String,
    /// Every parameter of the command line, for the module parameters and
    /// blacklists among them (`MODULE.PARAM=VALUE`, as modprobe reads them).
    pub kernel_params: Vec<(String, Option<String>)>,
    /// Problems with parameters; the boot goes on with defaults.
    pub warnings: Vec<String>,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            request: BootRequest::default(),
            labels: Labels::default(),
            image_label: None,
            state_uuid: None,
            disabled: false,
            root_spec: None,
            root_read_write: false,
            device_timeout: Duration::from_secs(30),
            extra_modules: Vec::new(),
            shell_on_failure: false,
            reboot_delay: Duration::from_secs(10),
            debug: false,
            counted_by_bootloader: false,
            verify: Verify::Trial,
            watchdog: Duration::from_secs(60),
            init: "/sbin/init".into(),
            kernel_params: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Every `immuboot.*` parameter the init knows; another one is a typo
/// worth a warning (it would otherwise be ignored without a word).
const KNOWN_IMMUBOOT_PARAMETERS: &[&str] = &[
    "immuboot.mode",
    "immuboot.slot",
    "immuboot.image",
    "immuboot.state_label",
    "immuboot.state_uuid",
    "immuboot.recovery_label",
    "immuboot.oem_label",
    "immuboot.persistent_label",
    "immuboot.timeout",
    "immuboot.modules",
    "immuboot.disable",
    "immuboot.shell",
    "immuboot.reboot_delay",
    "immuboot.debug",
    "immuboot.counted",
    "immuboot.verify",
    "immuboot.watchdog",
];

/// The longest wait any of the `SECONDS` parameters accepts: an hour. A
/// larger value is a typo (or 99999999999), not a wish to wait for days.
const MAX_SECONDS: u64 = 3600;

fn seconds(c: &Cmdline, name: &str, default: Duration, warnings: &mut Vec<String>) -> Duration {
    match c.value(name) {
        None => default,
        Some(v) => match v.parse::<u64>() {
            Ok(s) if s <= MAX_SECONDS => Duration::from_secs(s),
            Ok(_) => {
                warnings.push(format!(
                    "{name}={v}: more than {MAX_SECONDS} seconds; using {}",
                    default.as_secs()
                ));
                default
            }
            Err(_) => {
                warnings.push(format!(
                    "{name}={v}: not a number of seconds; using {}",
                    default.as_secs()
                ));
                default
            }
        },
    }
}

/// An image path from the command line, made absolute; `None` (with a
/// warning) if it could leave its partition's root or is not a plain path.
fn image_path(name: &str, v: &str, warnings: &mut Vec<String>) -> Option<String> {
    use std::path::{Component, Path};
    let plain = Path::new(v)
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain || v.contains('\0') {
        warnings.push(format!(
            "{name}={v}: an image path must stay inside its partition (no `..`); \
             choosing from the boot state"
        ));
        return None;
    }
    Some(if v.starts_with('/') {
        v.to_string()
    } else {
        format!("/{v}")
    })
}

/// Warnings about parameters that look like ours but are not, and about
/// ours given more than once with different values (the last one counts).
fn unknown_and_repeated(c: &Cmdline) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (k, _) in &c.params {
        if seen.contains(&k.as_str()) {
            continue;
        }
        seen.push(k);
        if k.starts_with("immuboot.") && !KNOWN_IMMUBOOT_PARAMETERS.contains(&k.as_str()) {
            out.push(format!(
                "{k}: unknown parameter, ignored (known: {})",
                KNOWN_IMMUBOOT_PARAMETERS.join(", ")
            ));
            continue;
        }
        if !k.starts_with("immuboot.") && k != "cos-img/filename" {
            continue;
        }
        let values: Vec<&str> = c
            .params
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
            .collect();
        if values.iter().any(|v| *v != values[0]) {
            out.push(format!(
                "{k} is given {} times ({}); the last one counts",
                values.len(),
                values.join(", ")
            ));
        }
    }
    out
}

impl InitConfig {
    pub fn from_cmdline(c: &Cmdline) -> InitConfig {
        let mut cfg = InitConfig {
            warnings: unknown_and_repeated(c),
            ..Default::default()
        };
        let w = &mut cfg.warnings;

        if let Some(v) = c.value("immuboot.mode") {
            match v.parse::<Mode>() {
                Ok(m) => cfg.request.mode = Some(m),
                Err(e) => w.push(format!(
                    "immuboot.mode: {e:#}; choosing from the boot state"
                )),
            }
        }
        if let Some(v) = c.value("immuboot.slot") {
            match v.parse() {
                Ok(s) => cfg.request.slot = Some(s),
                Err(e) => w.push(format!(
                    "immuboot.slot: {e:#}; choosing from the boot state"
                )),
            }
        }
        cfg.request.image = ["immuboot.image", "cos-img/filename"]
            .iter()
            .find_map(|name| c.value(name).filter(|v| !v.is_empty()).map(|v| (name, v)))
            .and_then(|(name, v)| image_path(name, v, w));

        let label = |names: &[&str], default: &str| {
            names
                .iter()
                .find_map(|n| c.value(n).filter(|v| !v.is_empty()))
                .unwrap_or(default)
                .to_string()
        };
        cfg.labels.state = label(&["immuboot.state_label"], &cfg.labels.state);
        cfg.labels.recovery = label(&["immuboot.recovery_label"], &cfg.labels.recovery);
        cfg.labels.oem = label(&["immuboot.oem_label", "rd.cos.oemlabel"], &cfg.labels.oem);
        cfg.labels.persistent = label(&["immuboot.persistent_label"], &cfg.labels.persistent);

        cfg.state_uuid = c
            .value("immuboot.state_uuid")
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        cfg.root_spec = c.value("root").map(str::to_string);
        if let Some(label) = cfg
            .root_spec
            .as_deref()
            .and_then(|r| r.strip_prefix("LABEL="))
        {
            cfg.image_label = Some(label.to_string());
            if cfg.request.mode.is_none() && label == cfg.labels.recovery {
                cfg.request.mode = Some(Mode::Recovery);
            }
        }
        cfg.disabled = c.flag("immuboot.disable") || c.flag("rd.cos.disable");
        cfg.root_read_write = c.flag("rw") && !c.flag("ro");
        cfg.device_timeout = seconds(c, "immuboot.timeout", cfg.device_timeout, w);
        cfg.reboot_delay = seconds(c, "immuboot.reboot_delay", cfg.reboot_delay, w);
        cfg.watchdog = seconds(c, "immuboot.watchdog", cfg.watchdog, w);
        match c.value("immuboot.verify") {
            None => {}
            Some("trial") => cfg.verify = Verify::Trial,
            Some("always") => cfg.verify = Verify::Always,
            Some("never") => cfg.verify = Verify::Never,
            Some(v) => w.push(format!(
                "immuboot.verify={v}: expected trial, always or never; using trial"
            )),
        }
        for name in ["rd.driver.pre", "immuboot.modules"] {
            if let Some(v) = c.value(name) {
                cfg.extra_modules
                    .extend(v.split(',').filter(|m| !m.is_empty()).map(str::to_string));
            }
        }
        cfg.shell_on_failure = c.flag("immuboot.shell");
        cfg.debug = c.flag("immuboot.debug") || c.flag("rd.immuboot.debug");
        cfg.counted_by_bootloader = c.flag("immuboot.counted");
        if let Some(init) = c.value("init").filter(|v| v.starts_with('/')) {
            cfg.init = init.to_string();
        }
        cfg.kernel_params = c.params.clone();
        cfg
    }

    /// Label of the partition that holds the image for `mode`.
    pub fn image_partition_label(&self, mode: Mode) -> &str {
        if let Some(label) = &self.image_label {
            return label;
        }
        match mode {
            Mode::Recovery => &self.labels.recovery,
            _ => &self.labels.state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use immuboot_assess::Slot;

    fn cfg(line: &str) -> InitConfig {
        InitConfig::from_cmdline(&Cmdline::parse(line))
    }

    #[test]
    fn immuboot_parameters() {
        let c = cfg("immuboot.mode=passive immuboot.slot=b immuboot.timeout=5 immuboot.modules=nvme,ahci immuboot.shell immuboot.watchdog=0");
        assert_eq!(c.watchdog, Duration::ZERO);
        assert_eq!(cfg("").watchdog, Duration::from_secs(60));
        assert_eq!(cfg("").verify, Verify::Trial);
        assert_eq!(cfg("immuboot.verify=always").verify, Verify::Always);
        assert_eq!(cfg("immuboot.verify=sometimes").warnings.len(), 1);
        assert_eq!(c.request.mode, Some(Mode::Passive));
        assert_eq!(c.request.slot, Some(Slot::B));
        assert_eq!(c.device_timeout, Duration::from_secs(5));
        assert_eq!(c.extra_modules, ["nvme", "ahci"]);
        assert!(c.shell_on_failure);
        assert!(c.warnings.is_empty());
        assert_eq!(c.image_partition_label(Mode::Passive), "COS_STATE");
    }

    /// Module parameters on the command line reach the module loader as
    /// modprobe reads them (quotes removed by the kernel's splitting), and
    /// warn about nothing: they are the modules', not ours.
    #[test]
    fn module_parameters_are_kept_for_the_module_loader() {
        let c = cfg(r#"loop.max_loop=2 modprobe.blacklist=i6300esb dummy.names="a b" quiet"#);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let mut options = immuboot_kmod::ModuleOptions::default();
        options.add_kernel_cmdline(&c.kernel_params);
        assert_eq!(options.params("loop").to_str().unwrap(), "max_loop=2");
        assert_eq!(options.params("dummy").to_str().unwrap(), r#"names="a b""#);
        assert!(options.is_blacklisted("i6300esb"));
    }

    #[test]
    fn cos_forms() {
        let c = cfg(
            "root=LABEL=COS_RECOVERY cos-img/filename=/cOS/recovery.img rd.cos.oemlabel=MY_OEM",
        );
        assert_eq!(c.request.mode, Some(Mode::Recovery));
        assert_eq!(c.request.image.as_deref(), Some("/cOS/recovery.img"));
        assert_eq!(c.labels.oem, "MY_OEM");
        assert_eq!(c.image_partition_label(Mode::Recovery), "COS_RECOVERY");
        let c = cfg("root=LABEL=OTHER cos-img/filename=cOS/active.img");
        assert_eq!(c.image_partition_label(Mode::Active), "OTHER");
        assert_eq!(c.request.image.as_deref(), Some("/cOS/active.img"));
    }

    #[test]
    fn disable_and_root() {
        let c = cfg("root=/dev/vda2 rw rd.cos.disable");
        assert!(c.disabled);
        assert!(c.root_read_write);
        assert_eq!(c.root_spec.as_deref(), Some("/dev/vda2"));
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let c = cfg("immuboot.mode=sideways immuboot.slot=c immuboot.timeout=soon");
        assert_eq!(c.request.mode, None);
        assert_eq!(c.request.slot, None);
        assert_eq!(c.device_timeout, Duration::from_secs(30));
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    }

    /// Bad input at the command line's door: each a warning and the
    /// default, never a panic or a path outside the partition.
    #[test]
    fn hostile_command_lines_warn_and_use_defaults() {
        let warned = |line: &str, what: &str| {
            let c = cfg(line);
            assert!(
                c.warnings.iter().any(|w| w.contains(what)),
                "{line}: {:?}",
                c.warnings
            );
            c
        };
        let c = warned("immuboot.timeout=-1", "not a number");
        assert_eq!(c.device_timeout, Duration::from_secs(30));
        let c = warned("immuboot.timeout=99999999999", "more than 3600 seconds");
        assert_eq!(c.device_timeout, Duration::from_secs(30));
        let c = warned("immuboot.watchdog=18446744073709551616", "not a number");
        assert_eq!(c.watchdog, Duration::from_secs(60));
        assert_eq!(cfg("immuboot.timeout=3600").device_timeout.as_secs(), 3600);
        for line in [
            "immuboot.image=../../etc/shadow",
            "cos-img/filename=/cOS/../../etc/shadow",
            "immuboot.image=cOS/..",
        ] {
            let c = warned(line, "must stay inside its partition");
            assert_eq!(c.request.image, None, "{line}");
        }
        assert_eq!(
            cfg("cos-img/filename=cOS/b.img").request.image.as_deref(),
            Some("/cOS/b.img")
        );
        let c = warned("immuboot.tiemout=5", "immuboot.tiemout: unknown parameter");
        assert_eq!(c.device_timeout, Duration::from_secs(30));
        let c = warned(
            "immuboot.slot=a immuboot.slot=b",
            "immuboot.slot is given 2 times (a, b)",
        );
        assert_eq!(c.request.slot, Some(immuboot_assess::Slot::B));
        // The same value twice, and parameters of other programs: no word.
        assert!(
            cfg("immuboot.slot=a immuboot.slot=a quiet foo.bar=1 console=tty0 console=ttyS0")
                .warnings
                .is_empty()
        );
        let c = warned("immuboot.slot=c", "unknown slot");
        assert_eq!(c.request.slot, None);
        // Odd but harmless: empty values, quotes, a lone `=`.
        for line in [
            "immuboot.mode= immuboot.slot",
            "\"immuboot.mode=active",
            "= == immuboot.=x",
        ] {
            let _ = cfg(line);
        }
    }

    #[test]
    fn label_overrides_and_init() {
        let c =
            cfg("immuboot.state_label=S immuboot.persistent_label=P init=/usr/lib/systemd/systemd");
        assert_eq!(c.labels.state, "S");
        assert_eq!(c.labels.persistent, "P");
        assert_eq!(c.init, "/usr/lib/systemd/systemd");
    }
}
