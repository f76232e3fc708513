//! `modules.dep`, `modules.builtin` and `modules.softdep`: which files to
//! load, in which order, for the modules wanted.

use crate::module_name;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What a modules directory says about loading: each module's file and
/// hard dependencies, the built-in modules and the soft pre-dependencies.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// name → (path relative to the modules directory, dependency paths)
    entries: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
    /// name → modules to load before it (`softdep NAME pre: ...`), with
    /// aliases resolved to module names.
    pre: HashMap<String, Vec<String>>,
}

/// One module file to load, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub path: String,
    /// A soft dependency: its failure (e.g. a CPU-specific variant) is not
    /// an error.
    pub optional: bool,
}

impl ModuleIndex {
    /// Parses `modules.dep` and `modules.builtin` texts.
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> ModuleIndex {
        let mut idx = ModuleIndex::default();
        for line in modules_dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(str::to_string).collect();
            idx.entries
                .insert(module_name(path), (path.to_string(), deps));
        }
        idx.builtin = modules_builtin
            .lines()
            .map(module_name)
            .filter(|n| !n.is_empty())
            .collect();
        idx
    }

    /// Adds `modules.softdep` pre-dependencies; names that are aliases are
    /// resolved with `modules.alias` (every module offering the alias).
    /// Only the aliases the soft dependencies name are looked up: a
    /// distribution's alias file has thousands of lines (dracut's: 236 kB),
    /// and a map of all of them cost a TCG boot tens of milliseconds.
    pub fn with_softdeps(mut self, softdep: &str, alias: &str) -> ModuleIndex {
        let mut pre: Vec<(&str, &str)> = Vec::new();
        for line in softdep.lines() {
            let mut f = line.split_whitespace();
            let (Some("softdep"), Some(name)) = (f.next(), f.next()) else {
                continue;
            };
            let mut in_pre = false;
            for word in f {
                match word {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    dep if in_pre => pre.push((name, dep)),
                    _ => {}
                }
            }
        }
        let wanted: HashSet<&str> = pre.iter().map(|&(_, dep)| dep).collect();
        let mut aliases: HashMap<&str, Vec<String>> = HashMap::new();
        for line in alias.lines() {
            let Some((a, rest)) = line
                .strip_prefix("alias ")
                .and_then(|l| l.trim_start().split_once(char::is_whitespace))
            else {
                continue;
            };
            if wanted.contains(a) {
                if let Some(m) = rest.split_whitespace().next() {
                    aliases.entry(a).or_default().push(module_name(m));
                }
            }
        }
        for (name, dep) in pre {
            let resolved = match aliases.get(dep) {
                Some(mods) => mods.clone(),
                None => vec![module_name(dep)],
            };
            self.pre
                .entry(module_name(name))
                .or_default()
                .extend(resolved);
        }
        self
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }

    /// Files to load for `wanted`: soft pre-dependencies, then hard
    /// dependencies, then the module, each once. Built-in modules are
    /// skipped; unknown ones are an error naming them.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<Planned>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let mut unknown = Vec::new();
        for name in wanted {
            let name = module_name(name);
            if self.is_builtin(&name) {
                continue;
            }
            if !self.entries.contains_key(&name) {
                unknown.push(name);
                continue;
            }
            for soft in self.pre.get(&name).into_iter().flatten() {
                if let Some((path, deps)) = self.entries.get(soft) {
                    self.push_with_deps(path, deps, true, &mut seen, &mut order);
                }
            }
            let (path, deps) = &self.entries[&name];
            self.push_with_deps(path, deps, false, &mut seen, &mut order);
        }
        if !unknown.is_empty() {
            bail!(
                "not in modules.dep and not built in: {}",
                unknown.join(", ")
            );
        }
        Ok(order)
    }

    fn push_with_deps(
        &self,
        path: &str,
        deps: &[String],
        optional: bool,
        seen: &mut HashSet<String>,
        order: &mut Vec<Planned>,
    ) {
        // modules.dep lists all dependencies, deepest last.
        for p in deps
            .iter()
            .rev()
            .map(String::as_str)
            .chain(std::iter::once(path))
        {
            if seen.insert(p.to_string()) {
                order.push(Planned {
                    path: p.to_string(),
                    optional,
                });
            }
        }
    }
}

/// The modules directory of the running kernel in the initramfs.
pub fn modules_dir() -> Result<PathBuf> {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    for base in ["/lib/modules", "/usr/lib/modules"] {
        let dir = Path::new(base).join(&release);
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    bail!("no modules for kernel {release} in /lib/modules (the initramfs was built for another kernel?)")
}

/// Reads the index of a modules directory (modules.dep, modules.builtin,
/// modules.softdep, modules.alias; all but the first may be missing).
pub fn read_index(dir: &Path) -> Result<ModuleIndex> {
    let dep = std::fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("cannot read {}/modules.dep", dir.display()))?;
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    Ok(ModuleIndex::parse(&dep, &read("modules.builtin"))
        .with_softdeps(&read("modules.softdep"), &read("modules.alias")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
kernel/fs/jbd2/jbd2.ko.xz:\n\
kernel/lib/crc16.ko.xz:\n\
kernel/fs/mbcache.ko.xz:\n\
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz\n\
kernel/drivers/virtio/virtio_ring.ko.xz:\n\
kernel/drivers/virtio/virtio.ko.xz:\n\
kernel/crypto/crc32c_generic.ko.xz:\n";

    /// The files `load_order` gives for `wanted`, in order.
    fn load_paths(idx: &ModuleIndex, wanted: &[&str]) -> Vec<String> {
        let wanted: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
        idx.load_order(&wanted)
            .unwrap()
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    #[test]
    fn dependencies_come_first_once() {
        let idx = ModuleIndex::parse(DEP, "kernel/fs/overlayfs/overlay.ko\n");
        assert_eq!(
            load_paths(&idx, &["ext4", "jbd2", "virtio-blk", "overlay"]),
            [
                "kernel/fs/jbd2/jbd2.ko.xz",
                "kernel/fs/mbcache.ko.xz",
                "kernel/lib/crc16.ko.xz",
                "kernel/fs/ext4/ext4.ko.xz",
                "kernel/drivers/virtio/virtio_ring.ko.xz",
                "kernel/drivers/virtio/virtio.ko.xz",
                "kernel/drivers/block/virtio_blk.ko.xz",
            ]
        );
    }

    #[test]
    fn soft_pre_dependencies_come_first_and_are_optional() {
        let idx = ModuleIndex::parse(DEP, "").with_softdeps(
            "softdep ext4 pre: crypto-crc32c\nsoftdep cifs gcm\n",
            "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\n",
        );
        let order = idx.load_order(&["ext4".into()]).unwrap();
        // crc32c_intel is not in this modules.dep: skipped.
        assert_eq!(
            order[0],
            Planned {
                path: "kernel/crypto/crc32c_generic.ko.xz".into(),
                optional: true
            }
        );
        assert_eq!(order.last().unwrap().path, "kernel/fs/ext4/ext4.ko.xz");
        assert!(!order.last().unwrap().optional);
    }

    /// Only whole alias names count, whatever else the alias file holds
    /// (hardware patterns, longer names beginning the same, comments).
    #[test]
    fn soft_dependency_aliases_match_whole_names_only() {
        let idx = ModuleIndex::parse(DEP, "").with_softdeps(
            "# comment\nsoftdep jbd2 pre: crypto-crc32c crc16 post: mbcache\n",
            "# Aliases extracted from modules themselves.\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             alias crypto-crc32c-x mbcache\n\
             alias crypto-crc32c  crc32c_generic\n\
             alias  crypto-crc32c virtio\n",
        );
        assert_eq!(
            load_paths(&idx, &["jbd2"]),
            [
                "kernel/crypto/crc32c_generic.ko.xz",
                "kernel/drivers/virtio/virtio.ko.xz",
                "kernel/lib/crc16.ko.xz",
                "kernel/fs/jbd2/jbd2.ko.xz",
            ]
        );
    }

    #[test]
    fn unknown_modules_are_named() {
        let idx = ModuleIndex::parse(DEP, "");
        let err = idx
            .load_order(&["ext4".into(), "nosuch".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nosuch"), "{err}");
    }
}
