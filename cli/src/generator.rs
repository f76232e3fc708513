//! The systemd generator of unattended upgrades: with a valid
//! `/oem/immuboot/upgrade.yaml`, `immuboot-upgrade.timer` is enabled with
//! the configured schedule for this boot (a drop-in and a `timers.target`
//! want in systemd's normal generator directory); without one, nothing.

use crate::auto::{self, AutoConfig};
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::PathBuf;

/// The program's name, as systemd logs it.
pub const NAME: &str = "immuboot-upgrade-generator";

/// Where the image installs `immuboot-upgrade.timer`.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// What the generator is told.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// systemd's normal generator directory (the early and late ones,
    /// which systemd also passes, are not used).
    pub normal_dir: PathBuf,
    pub config: PathBuf,
    pub unit_dir: PathBuf,
}

pub const USAGE: &str = "usage: immuboot-upgrade-generator NORMAL_DIR [EARLY_DIR LATE_DIR] \
[--config FILE] [--unit-dir DIR]\n\
systemd runs it with its three generator directories at every boot and at \
each daemon-reload. With a valid /oem/immuboot/upgrade.yaml (or --config \
FILE), it enables immuboot-upgrade.timer (installed in --unit-dir, default \
/etc/systemd/system) with the configured schedule; without one, it does \
nothing.";

/// Whether the arguments ask for the usage (`-h`, `--help`).
pub fn asks_for_help(args: &[OsString]) -> bool {
    args.iter().any(|a| a == "-h" || a == "--help")
}

/// Reads the arguments after the program's name. Read by hand, not with
/// clap: systemd waits for this program at every boot, and two options do
/// not pay for a parser's size and start-up.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args> {
    let mut dirs = Vec::new();
    let mut config = PathBuf::from(auto::CONFIG);
    let mut unit_dir = PathBuf::from(UNIT_DIR);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some(opt @ ("--config" | "--unit-dir")) => {
                let Some(value) = args.next() else {
                    bail!("{opt} needs a value\n{USAGE}");
                };
                if opt == "--config" {
                    config = value.into();
                } else {
                    unit_dir = value.into();
                }
            }
            Some(s) if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    if !matches!(dirs.len(), 1 | 3) {
        bail!(
            "expected systemd's generator directories (1 or 3), got {}\n{USAGE}",
            dirs.len()
        );
    }
    Ok(Args {
        normal_dir: dirs.swap_remove(0),
        config,
        unit_dir,
    })
}

/// Writes the timer's drop-in and want into `args.normal_dir` when the
/// configuration is valid. An invalid one is reported on stderr (systemd
/// logs it) and leaves unattended upgrades off: it never fails the boot's
/// generators.
pub fn generate(args: &Args) -> Result<()> {
    let cfg: AutoConfig = match auto::read_config(&args.config) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => return Ok(()),
        Err(e) => {
            eprintln!("{NAME}: {e:#}; unattended upgrades stay off");
            return Ok(());
        }
    };
    let timer = "immuboot-upgrade.timer";
    let dir = &args.normal_dir;
    let dropin = dir.join(format!("{timer}.d"));
    std::fs::create_dir_all(&dropin)
        .with_context(|| format!("cannot create {}", dropin.display()))?;
    std::fs::write(dropin.join("50-schedule.conf"), auto::timer_dropin(&cfg))
        .with_context(|| format!("cannot write {}", dropin.display()))?;
    let wants = dir.join("timers.target.wants");
    std::fs::create_dir_all(&wants)
        .with_context(|| format!("cannot create {}", wants.display()))?;
    let link = wants.join(timer);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(args.unit_dir.join(timer), &link)
        .with_context(|| format!("cannot create {}", link.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args> {
        parse_args(v.iter().map(OsString::from))
    }

    #[test]
    fn systemds_three_directories_or_one() {
        let three = args(&[
            "/run/systemd/generator",
            "/run/systemd/generator.early",
            "/run/systemd/generator.late",
        ])
        .unwrap();
        assert_eq!(
            three,
            Args {
                normal_dir: "/run/systemd/generator".into(),
                config: auto::CONFIG.into(),
                unit_dir: UNIT_DIR.into(),
            }
        );
        let one = args(&["/tmp/gen", "--config", "/tmp/u.yaml", "--unit-dir", "/u"]).unwrap();
        assert_eq!(one.normal_dir, PathBuf::from("/tmp/gen"));
        assert_eq!(one.config, PathBuf::from("/tmp/u.yaml"));
        assert_eq!(one.unit_dir, PathBuf::from("/u"));
        let help: Vec<OsString> = ["/a", "--help"].iter().map(OsString::from).collect();
        assert!(asks_for_help(&help));
        assert!(!asks_for_help(&help[..1]));
        for bad in [
            &[][..],
            &["/a", "/b"],
            &["/a", "--config"],
            &["/a", "--conf", "x"],
        ] {
            let e = args(bad).unwrap_err().to_string();
            assert!(e.contains("usage:"), "{bad:?}: {e}");
        }
    }
}
