//! The mount plan: pure data computed from the layout and the partitions that
//! were found, executed later by [`crate::exec`]. Keeping it pure lets the
//! whole sequence be checked in unit tests without root.

use crate::layout::{state_name, Layout, BUILTIN_EPHEMERAL};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the init keeps the tmpfs that holds ephemeral changes (moved into the
/// new root with /run).
pub const EPHEMERAL_DIR: &str = "/run/immuboot/ephemeral";
/// Directory on the persistent partition that backs persistent paths.
pub const STATE_DIR: &str = ".state";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountFlags {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
}

impl MountFlags {
    pub const RW: MountFlags = MountFlags {
        read_only: false,
        nosuid: false,
        nodev: false,
    };
    pub const RO: MountFlags = MountFlags {
        read_only: true,
        nosuid: false,
        nodev: false,
    };

    fn options(&self, data: &str) -> String {
        let mut opts = vec![if self.read_only { "ro" } else { "rw" }];
        if self.nosuid {
            opts.push("nosuid");
        }
        if self.nodev {
            opts.push("nodev");
        }
        if !data.is_empty() {
            opts.push(data);
        }
        opts.join(",")
    }
}

/// One primitive step of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Op {
    /// Create a directory and its parents (in a writable place).
    MkdirAll(PathBuf),
    /// A mount point that should exist in the image; created if missing and
    /// its parent is writable, otherwise the step fails with a hint.
    Mountpoint(PathBuf),
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
        flags: MountFlags,
        data: String,
    },
    Bind {
        source: PathBuf,
        target: PathBuf,
    },
    /// First use of a persistent path: copy what the image has at `from`
    /// into `to`, so the bind mount does not hide the image's files.
    /// Nothing happens when `to` exists already.
    SeedIfMissing {
        from: PathBuf,
        to: PathBuf,
    },
}

/// What a group of ops provides; failures are reported per group and never
/// stop the other groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ephemeral,
    Persistent,
    Oem,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FstabEntry {
    pub source: String,
    /// Path in the new root.
    pub target: String,
    pub fstype: String,
    pub options: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedMount {
    /// The path (in the new root) this group makes available.
    pub path: String,
    pub kind: Kind,
    pub ops: Vec<Op>,
    /// Ops to run instead when `ops` fail (e.g. tmpfs when a partition cannot
    /// be mounted); a warning names the failure.
    pub fallback: Vec<Op>,
    pub fstab: Option<FstabEntry>,
}

/// Everything the plan depends on.
#[derive(Debug, Clone)]
pub struct PlanInputs<'a> {
    /// Where the new root is mounted in the initramfs (e.g. /sysroot).
    pub sysroot: &'a Path,
    pub layout: &'a Layout,
    /// COS_PERSISTENT's device, if found.
    pub persistent_device: Option<&'a Path>,
    pub persistent_fstype: &'a str,
}

fn in_root(sysroot: &Path, path: &str) -> PathBuf {
    sysroot.join(path.trim_start_matches('/'))
}

fn depth(path: &str) -> usize {
    path.split('/').filter(|c| !c.is_empty()).count()
}

/// The OEM partition on /oem, or an empty tmpfs when there is none (so that
/// writes to /oem fail loudly at reboot time rather than at boot).
pub fn oem_mount(sysroot: &Path, device: Option<&Path>, fstype: &str) -> PlannedMount {
    let target = in_root(sysroot, "/oem");
    let tmpfs = vec![
        Op::Mountpoint(target.clone()),
        Op::Mount {
            source: "tmpfs".into(),
            target: target.clone(),
            fstype: "tmpfs".into(),
            flags: MountFlags {
                read_only: false,
                nosuid: true,
                nodev: true,
            },
            data: "mode=0755,size=16m".into(),
        },
    ];
    match device {
        Some(dev) => PlannedMount {
            path: "/oem".into(),
            kind: Kind::Oem,
            ops: vec![
                Op::Mountpoint(target.clone()),
                Op::Mount {
                    source: dev.display().to_string(),
                    target,
                    fstype: fstype.into(),
                    flags: MountFlags {
                        read_only: false,
                        nosuid: true,
                        nodev: true,
                    },
                    data: String::new(),
                },
            ],
            fallback: tmpfs,
            fstab: Some(FstabEntry {
                source: dev.display().to_string(),
                target: "/oem".into(),
                fstype: fstype.into(),
                options: MountFlags {
                    read_only: false,
                    nosuid: true,
                    nodev: true,
                }
                .options(""),
            }),
        },
        None => PlannedMount {
            path: "/oem".into(),
            kind: Kind::Oem,
            ops: tmpfs,
            fallback: vec![],
            fstab: None,
        },
    }
}

/// The mounts that make the layout: the tmpfs for ephemeral changes,
/// COS_PERSISTENT on /usr/local, then every ephemeral and persistent path,
/// parents before children.
pub fn layout_mounts(inp: &PlanInputs) -> Vec<PlannedMount> {
    let mut plan = Vec::new();
    let eph = PathBuf::from(EPHEMERAL_DIR);
    plan.push(PlannedMount {
        path: EPHEMERAL_DIR.into(),
        kind: Kind::Internal,
        ops: vec![
            Op::MkdirAll(eph.clone()),
            Op::Mount {
                source: "tmpfs".into(),
                target: eph.clone(),
                fstype: "tmpfs".into(),
                flags: MountFlags {
                    read_only: false,
                    nosuid: false,
                    nodev: true,
                },
                data: format!("mode=0755,size={}", inp.layout.ephemeral_size),
            },
        ],
        fallback: vec![],
        fstab: None,
    });

    let usr_local = in_root(inp.sysroot, "/usr/local");
    let tmpfs_usr_local = vec![
        Op::Mountpoint(usr_local.clone()),
        Op::Mount {
            source: "tmpfs".into(),
            target: usr_local.clone(),
            fstype: "tmpfs".into(),
            flags: MountFlags::RW,
            data: "mode=0755".into(),
        },
    ];
    plan.push(match inp.persistent_device {
        Some(dev) => PlannedMount {
            path: "/usr/local".into(),
            kind: Kind::Persistent,
            ops: vec![
                Op::Mountpoint(usr_local.clone()),
                Op::Mount {
                    source: dev.display().to_string(),
                    target: usr_local.clone(),
                    fstype: inp.persistent_fstype.into(),
                    flags: MountFlags::RW,
                    data: String::new(),
                },
            ],
            fallback: tmpfs_usr_local,
            fstab: Some(FstabEntry {
                source: dev.display().to_string(),
                target: "/usr/local".into(),
                fstype: inp.persistent_fstype.into(),
                options: MountFlags::RW.options(""),
            }),
        },
        None => PlannedMount {
            path: "/usr/local".into(),
            kind: Kind::Persistent,
            ops: tmpfs_usr_local,
            fallback: vec![],
            fstab: None,
        },
    });

    let mut paths: Vec<(Kind, &str)> = BUILTIN_EPHEMERAL
        .iter()
        .map(|p| (Kind::Ephemeral, *p))
        .chain(
            inp.layout
                .ephemeral
                .iter()
                .map(|p| (Kind::Ephemeral, p.as_str())),
        )
        .chain(
            inp.layout
                .persistent
                .iter()
                .map(|p| (Kind::Persistent, p.as_str())),
        )
        .collect();
    // Parents first, so a persistent /var/log lands on top of an ephemeral /var.
    paths.sort_by(|a, b| depth(a.1).cmp(&depth(b.1)).then(a.1.cmp(b.1)));

    for (kind, path) in paths {
        let target = in_root(inp.sysroot, path);
        let name = state_name(path);
        plan.push(match kind {
            Kind::Ephemeral => {
                let upper = eph.join(&name).join("upper");
                let work = eph.join(&name).join("work");
                let data = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    target.display(),
                    upper.display(),
                    work.display()
                );
                PlannedMount {
                    path: path.into(),
                    kind,
                    ops: vec![
                        Op::Mountpoint(target.clone()),
                        Op::MkdirAll(upper),
                        Op::MkdirAll(work),
                        Op::Mount {
                            source: "overlay".into(),
                            target: target.clone(),
                            fstype: "overlay".into(),
                            flags: MountFlags::RW,
                            data: data.clone(),
                        },
                    ],
                    fallback: vec![],
                    fstab: Some(FstabEntry {
                        source: "overlay".into(),
                        target: path.into(),
                        fstype: "overlay".into(),
                        options: MountFlags::RW.options(&data),
                    }),
                }
            }
            _ => {
                let backing = usr_local.join(STATE_DIR).join(format!("{name}.bind"));
                PlannedMount {
                    path: path.into(),
                    kind,
                    ops: vec![
                        Op::Mountpoint(target.clone()),
                        Op::SeedIfMissing {
                            from: target.clone(),
                            to: backing.clone(),
                        },
                        Op::Bind {
                            source: backing.clone(),
                            target,
                        },
                    ],
                    fallback: vec![],
                    fstab: Some(FstabEntry {
                        source: format!("/usr/local/{STATE_DIR}/{name}.bind"),
                        target: path.into(),
                        fstype: "none".into(),
                        options: "bind".into(),
                    }),
                }
            }
        });
    }
    plan
}

/// Renders fstab lines for what was mounted, so `findmnt --fstab` and systemd
/// describe the same mounts the init made. Whitespace in fields is escaped as
/// fstab requires.
pub fn render_fstab(root: &FstabEntry, mounted: &[&FstabEntry]) -> String {
    let esc = |s: &str| {
        s.replace('\\', "\\134")
            .replace(' ', "\\040")
            .replace('\t', "\\011")
    };
    let mut out = String::from(
        "# Written at boot by the immuboot init: these file systems are mounted\n\
         # already; the layout comes from /etc/immuboot/layout.yaml or /oem/immuboot/layout.yaml.\n",
    );
    for e in std::iter::once(root).chain(mounted.iter().copied()) {
        out.push_str(&format!(
            "{} {} {} {} 0 0\n",
            esc(&e.source),
            esc(&e.target),
            esc(&e.fstype),
            esc(&e.options)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(eph: &[&str], pers: &[&str]) -> Layout {
        Layout {
            ephemeral: eph.iter().map(|s| s.to_string()).collect(),
            persistent: pers.iter().map(|s| s.to_string()).collect(),
            ephemeral_size: "25%".into(),
        }
    }

    #[test]
    fn orders_parents_first_and_persistent_partition_before_binds() {
        let l = layout(&["/var"], &["/var/log", "/root"]);
        let plan = layout_mounts(&PlanInputs {
            sysroot: Path::new("/sysroot"),
            layout: &l,
            persistent_device: Some(Path::new("/dev/vda5")),
            persistent_fstype: "ext4",
        });
        let paths: Vec<&str> = plan.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                EPHEMERAL_DIR,
                "/usr/local",
                "/etc",
                "/root",
                "/var",
                "/var/log"
            ]
        );
    }

    #[test]
    fn ephemeral_path_is_an_overlay_on_the_tmpfs() {
        let l = layout(&[], &[]);
        let plan = layout_mounts(&PlanInputs {
            sysroot: Path::new("/sysroot"),
            layout: &l,
            persistent_device: None,
            persistent_fstype: "ext4",
        });
        let etc = plan.iter().find(|p| p.path == "/etc").unwrap();
        assert_eq!(
            etc.ops.last().unwrap(),
            &Op::Mount {
                source: "overlay".into(),
                target: "/sysroot/etc".into(),
                fstype: "overlay".into(),
                flags: MountFlags::RW,
                data: "lowerdir=/sysroot/etc,upperdir=/run/immuboot/ephemeral/etc/upper,workdir=/run/immuboot/ephemeral/etc/work".into(),
            }
        );
    }

    #[test]
    fn persistent_path_is_seeded_then_bound() {
        let l = layout(&[], &["/var/log"]);
        let plan = layout_mounts(&PlanInputs {
            sysroot: Path::new("/sysroot"),
            layout: &l,
            persistent_device: Some(Path::new("/dev/vda5")),
            persistent_fstype: "ext4",
        });
        let log = plan.iter().find(|p| p.path == "/var/log").unwrap();
        assert_eq!(
            log.ops,
            vec![
                Op::Mountpoint("/sysroot/var/log".into()),
                Op::SeedIfMissing {
                    from: "/sysroot/var/log".into(),
                    to: "/sysroot/usr/local/.state/var-log.bind".into()
                },
                Op::Bind {
                    source: "/sysroot/usr/local/.state/var-log.bind".into(),
                    target: "/sysroot/var/log".into()
                },
            ]
        );
        assert_eq!(
            log.fstab.as_ref().unwrap().source,
            "/usr/local/.state/var-log.bind"
        );
    }

    #[test]
    fn without_persistent_partition_usr_local_is_tmpfs() {
        let l = layout(&[], &[]);
        let plan = layout_mounts(&PlanInputs {
            sysroot: Path::new("/sysroot"),
            layout: &l,
            persistent_device: None,
            persistent_fstype: "ext4",
        });
        let ul = plan.iter().find(|p| p.path == "/usr/local").unwrap();
        assert!(matches!(&ul.ops[1], Op::Mount { fstype, .. } if fstype == "tmpfs"));
        assert!(ul.fstab.is_none());
        let with = layout_mounts(&PlanInputs {
            sysroot: Path::new("/sysroot"),
            layout: &l,
            persistent_device: Some(Path::new("/dev/vda5")),
            persistent_fstype: "ext4",
        });
        let ul = with.iter().find(|p| p.path == "/usr/local").unwrap();
        assert!(matches!(&ul.fallback[1], Op::Mount { fstype, .. } if fstype == "tmpfs"));
    }

    #[test]
    fn oem_falls_back_to_tmpfs() {
        let m = oem_mount(Path::new("/sysroot"), None, "ext4");
        assert!(matches!(&m.ops[1], Op::Mount { fstype, .. } if fstype == "tmpfs"));
        let m = oem_mount(Path::new("/sysroot"), Some(Path::new("/dev/vda2")), "ext4");
        assert!(matches!(&m.ops[1], Op::Mount { source, .. } if source == "/dev/vda2"));
        assert_eq!(m.fstab.unwrap().options, "rw,nosuid,nodev");
    }

    #[test]
    fn fstab_escapes_spaces() {
        let root = FstabEntry {
            source: "/dev/loop0".into(),
            target: "/".into(),
            fstype: "squashfs".into(),
            options: "ro".into(),
        };
        let odd = FstabEntry {
            source: "a b".into(),
            target: "/x y".into(),
            fstype: "none".into(),
            options: "bind".into(),
        };
        let text = render_fstab(&root, &[&odd]);
        assert!(text.contains("/dev/loop0 / squashfs ro 0 0\n"));
        assert!(text.contains("a\\040b /x\\040y none bind 0 0\n"));
    }
}
