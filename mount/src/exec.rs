//! Runs a mount plan. Each planned mount succeeds, falls back or fails on its
//! own: one failure never skips the others, and every outcome is reported.

use crate::plan::{Kind, Op, PlannedMount};
use crate::syscall::{FileKind, Syscall};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Mounted,
    /// The primary ops failed and the fallback (e.g. tmpfs) was used.
    FellBack {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub path: String,
    pub kind: Kind,
    #[serde(flatten)]
    pub status: Status,
}

pub fn execute(sys: &dyn Syscall, plan: &[PlannedMount]) -> Vec<Outcome> {
    plan.iter()
        .map(|m| {
            let status = match run_ops(sys, &m.ops) {
                Ok(()) => Status::Mounted,
                Err(reason) if m.fallback.is_empty() => Status::Failed { reason },
                Err(reason) => match run_ops(sys, &m.fallback) {
                    Ok(()) => Status::FellBack { reason },
                    Err(second) => Status::Failed {
                        reason: format!("{reason}; fallback failed too: {second}"),
                    },
                },
            };
            Outcome {
                path: m.path.clone(),
                kind: m.kind,
                status,
            }
        })
        .collect()
}

fn run_ops(sys: &dyn Syscall, ops: &[Op]) -> Result<(), String> {
    for op in ops {
        run_op(sys, op)?;
    }
    Ok(())
}

fn run_op(sys: &dyn Syscall, op: &Op) -> Result<(), String> {
    match op {
        Op::MkdirAll(path) => sys
            .mkdir_all(path)
            .map_err(|e| format!("cannot create directory {}: {e}", path.display())),
        Op::Mountpoint(path) => {
            no_symlink_on_the_way(sys, path)?;
            if sys.exists(path) {
                return Ok(());
            }
            sys.mkdir_all(path).map_err(|e| {
                if e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) {
                    format!(
                        "mount point {} does not exist in the read-only image \
                         (hint: create the directory in the image, or make a parent directory ephemeral)",
                        path.display()
                    )
                } else {
                    format!("cannot create mount point {}: {e}", path.display())
                }
            })
        }
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => sys
            .mount(source, target, fstype, *flags, data)
            .map_err(|e| {
                format!(
                    "cannot mount {fstype} {source} on {}: {e}",
                    target.display()
                )
            }),
        Op::Bind { source, target } => sys.bind(source, target).map_err(|e| {
            format!(
                "cannot bind-mount {} on {}: {e}",
                source.display(),
                target.display()
            )
        }),
        Op::SeedIfMissing { from, to } => {
            match sys.file_kind(to) {
                Some(FileKind::Directory) => return Ok(()),
                Some(_) => {
                    return Err(format!(
                        "persistent copy {} is not a directory (hint: move it away on the \
                         persistent partition; the next boot copies the image's directory again)",
                        to.display()
                    ))
                }
                None => {}
            }
            seed(sys, from, to).map_err(|e| {
                format!(
                    "cannot prepare persistent copy {} of {}: {e}",
                    to.display(),
                    from.display()
                )
            })
        }
    }
}

/// A mount on a path through a symlink would land where the link points:
/// for an absolute link, outside the new root (the init resolves it in the
/// initramfs), gone at the switch; for a relative one, somewhere the layout
/// and fstab do not name. So a mount point must be a real directory all
/// the way.
fn no_symlink_on_the_way(sys: &dyn Syscall, path: &Path) -> Result<(), String> {
    for at in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
        if let Some(FileKind::Symlink(to)) = sys.file_kind(at) {
            return Err(format!(
                "mount point {}: {} is a symlink to {} in the image; a mount there would \
                 not land at {} (hint: name the directory the link points to in the layout)",
                path.display(),
                at.display(),
                to.display(),
                path.display()
            ));
        }
    }
    Ok(())
}

/// Copies into a temporary name and renames, so an interrupted first boot
/// never leaves a half-copied directory that later boots would take as done.
fn seed(sys: &dyn Syscall, from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
    let mut tmp_name = to.as_os_str().to_owned();
    tmp_name.push(".seeding");
    let tmp = PathBuf::from(tmp_name);
    if let Some(parent) = to.parent() {
        sys.mkdir_all(parent)?;
    }
    if sys.exists(from) {
        sys.copy_tree(from, &tmp)?;
    } else {
        sys.mkdir_all(&tmp)?;
    }
    sys.rename(&tmp, to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::plan::{layout_mounts, PlanInputs};
    use crate::syscall::{Call, RecordingSyscall};
    use std::path::Path;

    fn plan(persistent: &[&str], ephemeral: &[&str]) -> Vec<PlannedMount> {
        let layout = Layout {
            ephemeral: ephemeral.iter().map(|s| s.to_string()).collect(),
            persistent: persistent.iter().map(|s| s.to_string()).collect(),
            ephemeral_size: "25%".into(),
        };
        layout_mounts(&PlanInputs {
            sysroot: Path::new("/sysroot"),
            layout: &layout,
            persistent_device: Some(Path::new("/dev/vda5")),
            persistent_fstype: "ext4",
        })
    }

    fn image(paths: &[&str]) -> RecordingSyscall {
        let sys = RecordingSyscall::default();
        sys.existing
            .borrow_mut()
            .extend(paths.iter().map(PathBuf::from));
        sys
    }

    #[test]
    fn records_the_full_sequence() {
        let sys = image(&["/sysroot/etc", "/sysroot/usr/local", "/sysroot/var/log"]);
        let out = execute(&sys, &plan(&["/var/log"], &[]));
        assert!(out.iter().all(|o| o.status == Status::Mounted), "{out:?}");
        let calls = sys.calls.borrow();
        let mounts: Vec<String> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { fstype, target, .. } => {
                    Some(format!("{fstype} {}", target.display()))
                }
                Call::Bind { target, .. } => Some(format!("bind {}", target.display())),
                _ => None,
            })
            .collect();
        assert_eq!(
            mounts,
            [
                "tmpfs /run/immuboot/ephemeral",
                "ext4 /sysroot/usr/local",
                "overlay /sysroot/etc",
                "bind /sysroot/var/log"
            ]
        );
        // The first boot copies the image's /var/log before binding over it.
        assert!(calls.contains(&Call::CopyTree {
            from: "/sysroot/var/log".into(),
            to: "/sysroot/usr/local/.state/var-log.bind.seeding".into()
        }));
        assert!(calls.contains(&Call::Rename {
            from: "/sysroot/usr/local/.state/var-log.bind.seeding".into(),
            to: "/sysroot/usr/local/.state/var-log.bind".into()
        }));
    }

    fn status_of<'a>(out: &'a [Outcome], path: &str) -> &'a Status {
        &out.iter().find(|o| o.path == path).unwrap().status
    }

    fn binds(sys: &RecordingSyscall) -> Vec<PathBuf> {
        sys.recorded()
            .into_iter()
            .filter_map(|c| match c {
                Call::Bind { target, .. } => Some(target),
                _ => None,
            })
            .collect()
    }

    /// `/home -> /var/home` in the image (as on ostree systems): a bind on
    /// /sysroot/home would follow the absolute link inside the initramfs and
    /// vanish at the switch. It fails with the reason; the rest mounts.
    #[test]
    fn a_persistent_path_that_is_a_symlink_in_the_image_fails_alone() {
        let mut sys = image(&["/sysroot/etc", "/sysroot/usr/local", "/sysroot/root"]);
        sys.not_directories.push((
            "/sysroot/home".into(),
            FileKind::Symlink("/var/home".into()),
        ));
        // A parent that is a link counts too.
        sys.not_directories
            .push(("/sysroot/srv".into(), FileKind::Symlink("var/srv".into())));
        let out = execute(&sys, &plan(&["/home", "/srv/data", "/root"], &[]));
        for (path, link) in [("/home", "/sysroot/home"), ("/srv/data", "/sysroot/srv")] {
            assert!(
                matches!(status_of(&out, path), Status::Failed { reason }
                    if reason.contains(&format!("{link} is a symlink to")) && reason.contains("hint")),
                "{path}: {out:?}"
            );
        }
        assert_eq!(status_of(&out, "/root"), &Status::Mounted);
        assert_eq!(binds(&sys), [PathBuf::from("/sysroot/root")]);
    }

    /// A file on COS_PERSISTENT where the persistent copy of a directory
    /// belongs: that path fails with a hint, nothing is bound over it, and
    /// the others mount.
    #[test]
    fn a_persistent_copy_that_is_a_file_fails_alone_with_a_hint() {
        let mut sys = image(&[
            "/sysroot/etc",
            "/sysroot/usr/local",
            "/sysroot/root",
            "/sysroot/var/log",
        ]);
        sys.not_directories.push((
            "/sysroot/usr/local/.state/root.bind".into(),
            FileKind::Other,
        ));
        let out = execute(&sys, &plan(&["/root", "/var/log"], &[]));
        assert!(
            matches!(status_of(&out, "/root"), Status::Failed { reason }
                if reason.contains("root.bind is not a directory") && reason.contains("hint")),
            "{out:?}"
        );
        assert_eq!(status_of(&out, "/var/log"), &Status::Mounted);
        assert_eq!(binds(&sys), [PathBuf::from("/sysroot/var/log")]);
    }

    #[test]
    fn existing_persistent_copy_is_not_seeded_again() {
        let sys = image(&[
            "/sysroot/etc",
            "/sysroot/usr/local",
            "/sysroot/root",
            "/sysroot/usr/local/.state/root.bind",
        ]);
        execute(&sys, &plan(&["/root"], &[]));
        assert!(!sys
            .calls
            .borrow()
            .iter()
            .any(|c| matches!(c, Call::CopyTree { .. })));
    }

    #[test]
    fn one_failure_does_not_skip_the_rest() {
        let mut sys = image(&[
            "/sysroot/etc",
            "/sysroot/usr/local",
            "/sysroot/var",
            "/sysroot/root",
        ]);
        sys.failing.push(("/sysroot/var".into(), 19)); // ENODEV: no overlay support
        let out = execute(&sys, &plan(&["/root"], &["/var"]));
        let var = out.iter().find(|o| o.path == "/var").unwrap();
        assert!(
            matches!(&var.status, Status::Failed { reason } if reason.contains("overlay")),
            "{var:?}"
        );
        let root = out.iter().find(|o| o.path == "/root").unwrap();
        assert_eq!(root.status, Status::Mounted);
    }

    #[test]
    fn missing_mount_point_on_read_only_image_names_the_fix() {
        let mut sys = image(&["/sysroot/etc", "/sysroot/usr/local"]);
        sys.read_only.push("/sysroot".into());
        let out = execute(&sys, &plan(&["/data"], &[]));
        let data = out.iter().find(|o| o.path == "/data").unwrap();
        match &data.status {
            Status::Failed { reason } => {
                assert!(
                    reason.contains("/sysroot/data") && reason.contains("hint"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unmountable_persistent_partition_falls_back_to_tmpfs() {
        let mut sys = image(&["/sysroot/etc", "/sysroot/usr/local"]);
        sys.failing.push(("/sysroot/usr/local".into(), 22));
        // The fallback mounts on the same target; only the first call fails.
        let plan = plan(&[], &[]);
        let mut pm = plan[1].clone();
        pm.fallback = vec![Op::Mount {
            source: "tmpfs".into(),
            target: "/sysroot/usr/local-fallback".into(),
            fstype: "tmpfs".into(),
            flags: crate::plan::MountFlags::RW,
            data: String::new(),
        }];
        let out = execute(&sys, &[pm]);
        assert!(
            matches!(&out[0].status, Status::FellBack { reason } if reason.contains("ext4")),
            "{out:?}"
        );
    }
}
