//! Helpers shared by the fuzz targets.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Splits an input into parts at a separator line, so one input can carry
/// several files (a seed stays readable: the parts joined by `SEP`).
pub const SEP: &[u8] = b"\n--immuboot-fuzz--\n";

pub fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(SEP.len()).position(|w| w == SEP) {
        parts.push(&rest[..i]);
        rest = &rest[i + SEP.len()..];
    }
    parts.push(rest);
    parts
}

/// A directory to unpack into, with a sibling directory that nothing may
/// touch. The path is fixed per target (temp dir / immuboot-fuzz-NAME) so
/// seeds can name it in absolute symlinks and hard links, as an attacker
/// who knows the layout would.
pub struct Sandbox {
    pub base: PathBuf,
    pub root: PathBuf,
    outside: PathBuf,
}

const CANARY: &[u8] = b"must not change\n";

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let base = std::env::temp_dir().join(format!("immuboot-fuzz-{name}"));
        let sb = Sandbox {
            root: base.join("root"),
            outside: base.join("outside"),
            base,
        };
        clear(&sb.base);
        fs::create_dir_all(&sb.outside).unwrap();
        fs::write(sb.outside.join("canary"), CANARY).unwrap();
        sb
    }

    /// The invariant of every unpacking target: whatever the input, nothing
    /// outside `root` was created, removed, changed or hard-linked into it.
    pub fn check(&self, extra_allowed: &[&str]) {
        let mut names: Vec<String> = fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "root" && n != "outside" && !extra_allowed.contains(&n.as_str()))
            .collect();
        names.sort();
        assert!(names.is_empty(), "written outside the root: {names:?}");
        let outside: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside, ["canary"], "the sibling directory changed");
        let canary = self.outside.join("canary");
        let meta = fs::symlink_metadata(&canary).unwrap();
        assert!(meta.is_file(), "the canary was replaced");
        assert_eq!(meta.nlink(), 1, "the canary was hard-linked into the tree");
        assert_eq!(fs::read(&canary).unwrap(), CANARY, "the canary was written");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        clear(&self.base);
    }
}

/// Removes a tree the unpacker may have left read-only.
fn clear(path: &Path) {
    if fs::symlink_metadata(path).is_err() {
        return;
    }
    make_writable(path);
    fs::remove_dir_all(path).unwrap_or_else(|e| panic!("cannot clear {}: {e}", path.display()));
}

fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
}
