//! Shared test fixture: a three-layer image exercising every flattening rule,
//! and a snapshot of a tree to compare unpack results.
//!
//! Used by the integration tests and, through `#[path]`, by the crate's unit
//! tests. Needs root (chown, mknod, security.capability), as the tests here
//! run.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use immuboot_oci::{ImageConfigInput, LayerEntry, LayerSource};

pub mod registry;
pub mod signing;
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};

/// security.capability v2 granting cap_net_raw (bit 13), effective.
pub const NET_RAW_CAP: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic: VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    0x00, 0x20, 0x00, 0x00, // permitted, low word: 1 << 13
    0x00, 0x00, 0x00, 0x00, // inheritable, low word
    0x00, 0x00, 0x00, 0x00, // permitted, high word
    0x00, 0x00, 0x00, 0x00, // inheritable, high word
];

pub fn set_mtime(path: &Path, secs: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn write(root: &Path, rel: &str, content: &str, mode: u32) -> PathBuf {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// The lower layer as a directory tree on disk.
pub fn base_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    write(root, "etc/motd", "welcome\n", 0o644);
    write(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
    write(root, "etc/app/a.conf", "a\n", 0o600);
    write(root, "etc/app/sub/deep.conf", "deep\n", 0o644);
    symlink("/usr/share/zoneinfo/UTC", root.join("etc/localtime")).unwrap();
    let su = write(root, "usr/bin/su", "#!su\n", 0o755);
    // chown first: it would clear the setuid bit.
    std::os::unix::fs::chown(&su, Some(0), Some(0)).unwrap();
    fs::set_permissions(&su, fs::Permissions::from_mode(0o4755)).unwrap();
    let ping = write(root, "usr/bin/ping", "#!ping\n", 0o755);
    rustix::fs::lsetxattr(
        &ping,
        "security.capability",
        &NET_RAW_CAP,
        XattrFlags::empty(),
    )
    .unwrap();
    let tagged = write(root, "usr/share/doc/tagged", "x\n", 0o644);
    rustix::fs::lsetxattr(&tagged, "user.origin", b"base layer", XattrFlags::empty()).unwrap();
    // Longer than the 100 bytes of a tar header's name field, with an xattr:
    // GNU long-name and PAX records on the same entry.
    let long = format!("usr/share/{}/{}/file", "a".repeat(60), "b".repeat(60));
    let long_file = write(root, &long, "long\n", 0o644);
    rustix::fs::lsetxattr(&long_file, "user.long", b"1", XattrFlags::empty()).unwrap();
    symlink(format!("/{long}"), root.join("usr/share/long-link")).unwrap();
    write(root, "usr/bin/hl-a", "same inode\n", 0o755);
    fs::hard_link(root.join("usr/bin/hl-a"), root.join("usr/bin/hl-b")).unwrap();
    symlink("usr/bin", root.join("bin")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    rustix::fs::mknodat(
        CWD,
        root.join("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        root.join("dev/loop0"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        rustix::fs::makedev(7, 0),
    )
    .unwrap();
    fs::create_dir_all(root.join("run")).unwrap();
    rustix::fs::mknodat(
        CWD,
        root.join("run/initctl"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // mknod applies the umask.
    for (node, mode) in [
        ("dev/null", 0o666),
        ("dev/loop0", 0o660),
        ("run/initctl", 0o600),
    ] {
        fs::set_permissions(root.join(node), fs::Permissions::from_mode(mode)).unwrap();
    }
    let home = root.join("home/user");
    write(root, "home/user/.profile", "export A=1\n", 0o644);
    std::os::unix::fs::lchown(&home, Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::lchown(home.join(".profile"), Some(1000), Some(1001)).unwrap();
    write(
        root,
        "opt/thing",
        "a file that becomes a directory\n",
        0o644,
    );
    write(
        root,
        "srv/data/old",
        "a directory that becomes a symlink\n",
        0o644,
    );
    let sticky = root.join("tmp");
    fs::create_dir_all(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();

    // Fixed mtimes, directories last (writing into them changes theirs).
    for (i, entry) in walk(root).iter().enumerate() {
        if !fs::symlink_metadata(root.join(entry)).unwrap().is_dir() {
            set_mtime(&root.join(entry), 1_600_000_000 + i as i64);
        }
    }
    for (i, entry) in walk(root).iter().enumerate() {
        if fs::symlink_metadata(root.join(entry)).unwrap().is_dir() {
            set_mtime(&root.join(entry), 1_500_000_000 + i as i64);
        }
    }
}

/// Upper layers: whiteouts, an opaque directory, type replacements, a hard
/// link into the lower layer, a write through a symlinked parent.
pub fn upper_layers() -> Vec<LayerSource> {
    let layer2 = vec![
        LayerEntry::whiteout("etc/motd"),
        // Added before the opaque marker in the same layer: must survive it.
        LayerEntry::file("etc/app/b.conf", "b\n", 0o644).mtime(1_700_000_001),
        LayerEntry::opaque("etc/app"),
        LayerEntry::file("etc/app/c.conf", "c\n", 0o640)
            .owner(0, 42)
            .mtime(1_700_000_002),
        LayerEntry::file("etc/new", "new in layer 2\n", 0o644).mtime(1_700_000_003),
        LayerEntry::hardlink("usr/bin/su-link", "usr/bin/su"),
        LayerEntry::dir("opt/thing", 0o750).mtime(1_700_000_004),
        LayerEntry::file("opt/thing/inside", "now a directory\n", 0o644).mtime(1_700_000_005),
        LayerEntry::symlink("srv/data", "/tmp").mtime(1_700_000_006),
        LayerEntry::file("usr/bin/hl-b", "replaced; hl-a keeps its content\n", 0o755)
            .mtime(1_700_000_007),
    ];
    let layer3 = vec![
        LayerEntry::whiteout("home/user"),
        // bin -> usr/bin: lands in usr/bin/newtool.
        LayerEntry::file("bin/newtool", "#!newtool\n", 0o755).mtime(1_700_000_008),
        LayerEntry::file("etc/passwd", "root:x:0:0:root:/root:/bin/bash\n", 0o644)
            .mtime(1_700_000_009),
    ];
    vec![LayerSource::Entries(layer2), LayerSource::Entries(layer3)]
}

/// Two small layers needing nothing on disk.
pub fn small_layers() -> Vec<LayerSource> {
    vec![
        LayerSource::Entries(vec![
            LayerEntry::dir("etc", 0o755),
            LayerEntry::file("etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644),
            LayerEntry::file("etc/motd", "hi\n", 0o644),
        ]),
        LayerSource::Entries(vec![
            LayerEntry::whiteout("etc/motd"),
            LayerEntry::file("etc/new", "new\n", 0o644),
        ]),
    ]
}

pub fn config() -> ImageConfigInput {
    ImageConfigInput {
        labels: BTreeMap::from([
            (
                "org.opencontainers.image.version".to_owned(),
                "42".to_owned(),
            ),
            ("immuboot.test".to_owned(), "yes".to_owned()),
        ]),
        created: None,
    }
}

/// All layers of the fixture, with the base tree made under `work`.
pub fn layers(work: &Path) -> Vec<LayerSource> {
    let base = work.join("base");
    base_tree(&base);
    let mut layers = vec![LayerSource::Dir(base)];
    layers.extend(upper_layers());
    layers
}

/// Relative paths under `root`, sorted, depth first.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    fn go(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let rel = rel.join(name);
            out.push(rel.clone());
            if fs::symlink_metadata(root.join(&rel)).unwrap().is_dir() {
                go(root, &rel, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, Path::new(""), &mut out);
    out
}

fn xattrs(path: &Path) -> Vec<String> {
    let size = rustix::fs::llistxattr_query(path).unwrap();
    let mut list = vec![0u8; size];
    let n = if size == 0 {
        0
    } else {
        rustix::fs::llistxattr(path, &mut list[..]).unwrap()
    };
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        if name == "security.selinux" {
            continue;
        }
        let len = rustix::fs::lgetxattr_query(path, name).unwrap();
        let mut value = vec![0u8; len];
        if len > 0 {
            rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
        }
        out.push(format!("{name}={value:?}"));
    }
    out.sort();
    out
}

/// Everything about a tree that unpacking must get right, one line per
/// entry. Hard links show as `link#N`, N numbering inodes seen twice.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let entries = walk(root);
    let mut inode_count: HashMap<u64, usize> = HashMap::new();
    for rel in &entries {
        let m = fs::symlink_metadata(root.join(rel)).unwrap();
        *inode_count.entry(m.ino()).or_default() += 1;
    }
    let mut inode_names: HashMap<u64, usize> = HashMap::new();
    let mut out = BTreeMap::new();
    for rel in entries {
        let path = root.join(&rel);
        let m = fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir".to_owned()
        } else if ft.is_symlink() {
            format!("symlink -> {}", fs::read_link(&path).unwrap().display())
        } else if ft.is_file() {
            format!(
                "file {:?}",
                String::from_utf8_lossy(&fs::read(&path).unwrap())
            )
        } else if ft.is_char_device() {
            format!(
                "char {}:{}",
                rustix::fs::major(m.rdev()),
                rustix::fs::minor(m.rdev())
            )
        } else if ft.is_block_device() {
            format!(
                "block {}:{}",
                rustix::fs::major(m.rdev()),
                rustix::fs::minor(m.rdev())
            )
        } else if ft.is_fifo() {
            "fifo".to_owned()
        } else {
            "other".to_owned()
        };
        let link = if !ft.is_dir() && inode_count[&m.ino()] > 1 {
            let next = inode_names.len();
            format!(" link#{}", inode_names.entry(m.ino()).or_insert(next))
        } else {
            String::new()
        };
        let mode = if ft.is_symlink() {
            String::new()
        } else {
            format!(" mode={:o}", m.mode() & 0o7777)
        };
        out.insert(
            String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned(),
            format!(
                "{kind}{mode} owner={}:{} mtime={}{link} xattrs={:?}",
                m.uid(),
                m.gid(),
                m.mtime(),
                xattrs(&path)
            ),
        );
    }
    out
}

/// Checks an unpacked fixture.
pub fn assert_fixture(root: &Path) {
    let snap = snapshot(root);
    let get = |p: &str| {
        snap.get(p)
            .unwrap_or_else(|| panic!("{p} missing from {snap:#?}"))
    };
    let has = |p: &str| snap.contains_key(p);

    // Whiteouts.
    assert!(!has("etc/motd"), "whited-out file is still there");
    assert!(!has("home/user"), "whited-out directory is still there");
    assert!(has("home"));
    assert!(
        snap.keys()
            .all(|k| !k.rsplit('/').next().unwrap().starts_with(".wh.")),
        "whiteout files leaked: {snap:#?}"
    );
    // Opaque: lower a.conf and sub/ gone, same-layer b.conf (before the marker) and c.conf kept.
    assert!(!has("etc/app/a.conf") && !has("etc/app/sub"), "{snap:#?}");
    assert!(get("etc/app/b.conf").starts_with("file \"b\\n\" mode=644"));
    assert!(get("etc/app/c.conf").starts_with("file \"c\\n\" mode=640 owner=0:42 mtime=1700000002"));
    // Replacements.
    assert!(get("etc/passwd").contains("/bin/bash"));
    assert!(get("opt/thing").starts_with("dir mode=750"));
    assert!(has("opt/thing/inside"));
    assert!(get("srv/data").starts_with("symlink -> /tmp"));
    assert!(!has("srv/data/old"));
    // Setuid, capabilities, other xattrs, ownership.
    assert!(
        get("usr/bin/su").contains("mode=4755 owner=0:0"),
        "{}",
        get("usr/bin/su")
    );
    assert!(
        get("usr/bin/ping").contains("security.capability="),
        "{}",
        get("usr/bin/ping")
    );
    assert!(get("usr/share/doc/tagged").contains("user.origin="));
    assert!(get("tmp").starts_with("dir mode=1777"));
    // Hard links: within the lower layer, and from layer 2 into it.
    let su = fs::metadata(root.join("usr/bin/su")).unwrap();
    let su_link = fs::metadata(root.join("usr/bin/su-link")).unwrap();
    assert_eq!(su.ino(), su_link.ino(), "su-link is not a hard link to su");
    assert_eq!(su_link.mode() & 0o7777, 0o4755);
    assert!(get("usr/bin/hl-a").contains("same inode"));
    assert!(get("usr/bin/hl-b").contains("replaced"));
    // Symlinks and writing through a symlinked parent.
    assert!(get("bin").starts_with("symlink -> usr/bin"));
    assert!(get("etc/localtime").starts_with("symlink -> /usr/share/zoneinfo/UTC"));
    assert!(get("usr/bin/newtool").starts_with("file \"#!newtool\\n\" mode=755"));
    // Long names and link targets.
    let long = format!("usr/share/{}/{}/file", "a".repeat(60), "b".repeat(60));
    assert!(
        get(&long).starts_with("file \"long\\n\" mode=644") && get(&long).contains("user.long"),
        "{}",
        get(&long)
    );
    assert!(get("usr/share/long-link").starts_with(&format!("symlink -> /{long}")));
    // Special files.
    assert!(get("dev/null").starts_with("char 1:3 mode=666"));
    assert!(get("dev/loop0").starts_with("block 7:0 mode=660"));
    assert!(get("run/initctl").starts_with("fifo mode=600"));
    // mtimes: files keep theirs; directories too, though later layers added entries.
    assert!(get("etc/new").contains("mtime=1700000003"));
    assert!(get("opt/thing").contains("mtime=1700000004"));
    let etc_mtime = get("etc")
        .split("mtime=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    assert!(
        (1_500_000_000..1_600_000_000).contains(&etc_mtime),
        "etc mtime {etc_mtime}"
    );
}
