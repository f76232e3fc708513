//! COS_OEM on /oem, the layout file, and the layout's mounts (ephemeral
//! overlays, COS_PERSISTENT on /usr/local, persistent binds).

use super::{partitions, Boot};
use immuboot_mount::exec::{execute, Outcome, Status};
use immuboot_mount::layout::{self, Layout};
use immuboot_mount::plan::{self, FstabEntry, PlanInputs};
use immuboot_mount::probe::BlockDevice;
use immuboot_mount::syscall::Syscall;

/// Mounts COS_OEM on /oem (an empty tmpfs with a warning when missing);
/// returns its fstab entry when mounted.
pub fn mount_oem<S: Syscall>(
    b: &mut Boot<S>,
    oem: Option<&BlockDevice>,
    label: &str,
) -> Option<FstabEntry> {
    if oem.is_none() {
        b.warn(format!(
            "no partition labelled {label}: /oem is an empty tmpfs and its contents will not survive a reboot"
        ));
    }
    b.facts.oem_device = oem.map(|d| d.path.clone());
    let planned = plan::oem_mount(
        &b.paths.sysroot,
        oem.map(|d| d.path.as_path()),
        partitions::fstype(oem),
    );
    let outcomes = execute(&b.sys, std::slice::from_ref(&planned));
    report(b, &outcomes);
    planned.fstab.filter(|_| {
        outcomes
            .first()
            .is_some_and(|o| o.status == Status::Mounted)
    })
}

/// The layout from /oem if valid, else the image's, else the built-in one;
/// each rejected file is reported with the reason.
pub fn read<S: Syscall>(b: &mut Boot<S>) -> Layout {
    for path in [layout::OEM_LAYOUT_PATH, layout::IMAGE_LAYOUT_PATH] {
        let full = b.paths.sysroot.join(path.trim_start_matches('/'));
        if !full.exists() {
            continue;
        }
        match layout::read(&full) {
            Ok(l) => {
                log::info!(
                    "layout from {path}: ephemeral {:?}, persistent {:?}",
                    l.ephemeral,
                    l.persistent
                );
                b.facts.layout_source = path.into();
                return l;
            }
            Err(e) => {
                let sysroot = format!("{}/", b.paths.sysroot.display());
                let msg = format!("{e:#}").replace(&sysroot, "/");
                log::error!("{msg}; ignoring this file");
                b.facts.layout_errors.push(msg.clone());
                b.facts.warnings.push(msg);
            }
        }
    }
    b.facts.layout_source = "built-in".into();
    log::info!("layout: built-in default");
    Layout::default()
}

/// Mounts the layout: tmpfs for ephemeral changes, COS_PERSISTENT on
/// /usr/local (tmpfs with a warning when missing), `/etc` and the
/// configured paths; one failing mount never skips the others. Returns the
/// fstab entries of what is mounted.
pub fn mount<S: Syscall>(
    b: &mut Boot<S>,
    layout: &Layout,
    persistent: Option<&BlockDevice>,
    label: &str,
) -> Vec<FstabEntry> {
    if persistent.is_none() {
        b.warn(format!(
            "persistence unavailable: no partition labelled {label}; /usr/local and the persistent paths \
             ({}) are on tmpfs and will be lost at reboot",
            layout.persistent.join(", ")
        ));
    }
    b.facts.persistent_device = persistent.map(|d| d.path.clone());
    let planned = plan::layout_mounts(&PlanInputs {
        sysroot: &b.paths.sysroot,
        layout,
        persistent_device: persistent.map(|d| d.path.as_path()),
        persistent_fstype: partitions::fstype(persistent),
    });
    let outcomes = execute(&b.sys, &planned);
    report(b, &outcomes);
    b.facts.persistence = persistent.is_some()
        && outcomes
            .iter()
            .any(|o| o.path == "/usr/local" && o.status == Status::Mounted);
    planned
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.status == Status::Mounted)
        .filter_map(|(p, _)| p.fstab.clone())
        .collect()
}

fn report<S: Syscall>(b: &mut Boot<S>, outcomes: &[Outcome]) {
    for o in outcomes {
        match &o.status {
            Status::Mounted => log::debug!("{}: mounted", o.path),
            Status::FellBack { reason } => {
                b.warn(format!("{}: {reason}; using tmpfs instead", o.path))
            }
            Status::Failed { reason } => b.warn(format!("{} unavailable: {reason}", o.path)),
        }
    }
    b.facts.mounts.extend(outcomes.iter().cloned());
}
