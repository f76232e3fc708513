//! Loading kernel modules without modprobe: resolve `modules.dep` ourselves,
//! decompress `.ko.xz`/`.ko.zst`/`.ko.gz` in memory and call init_module.

use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A module's name as the kernel knows it: file name without `.ko*`, with
/// `-` turned into `_`.
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// name → (path relative to the modules directory, dependency paths)
    entries: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    /// Parses `modules.dep` and `modules.builtin` texts.
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> ModuleIndex {
        let mut idx = ModuleIndex::default();
        for line in modules_dep.lines() {
            let Some((path, deps)) = line.split_once(':') else { continue };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(str::to_string).collect();
            idx.entries.insert(module_name(path), (path.to_string(), deps));
        }
        idx.builtin = modules_builtin.lines().map(module_name).filter(|n| !n.is_empty()).collect();
        idx
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }

    /// Files to load for `wanted`, dependencies first, each once. Built-in
    /// modules are skipped; unknown ones are an error naming them.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let mut unknown = Vec::new();
        for name in wanted {
            let name = module_name(name);
            if self.is_builtin(&name) {
                continue;
            }
            match self.entries.get(&name) {
                Some((path, deps)) => {
                    // modules.dep lists all dependencies, deepest last.
                    for dep in deps.iter().rev().chain(std::iter::once(path)) {
                        if seen.insert(dep.clone()) {
                            order.push(dep.clone());
                        }
                    }
                }
                None => unknown.push(name),
            }
        }
        if !unknown.is_empty() {
            bail!("not in modules.dep and not built in: {}", unknown.join(", "));
        }
        Ok(order)
    }
}

/// Returns the module's ELF image, decompressing by file extension.
pub fn decompress(path: &str, data: Vec<u8>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 3);
    if path.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut data.as_slice(), &mut out).map_err(|e| anyhow::anyhow!("xz: {e:?}"))?;
    } else if path.ends_with(".zst") {
        ruzstd::decoding::StreamingDecoder::new(data.as_slice())
            .map_err(|e| anyhow::anyhow!("zstd: {e}"))?
            .read_to_end(&mut out)
            .context("zstd")?;
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(data.as_slice()).read_to_end(&mut out).context("gzip")?;
    } else {
        return Ok(data);
    }
    Ok(out)
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

/// Loads `wanted` and what they depend on. Returns how many were loaded.
/// A module that fails to load is reported and the others are still tried.
pub fn load(dir: &Path, wanted: &[String]) -> Result<(usize, Vec<String>)> {
    let dep = std::fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("cannot read {}/modules.dep", dir.display()))?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let index = ModuleIndex::parse(&dep, &builtin);
    let mut errors = Vec::new();
    let order = match index.load_order(wanted) {
        Ok(o) => o,
        Err(e) => {
            errors.push(format!("{e:#}"));
            // Load what is known anyway.
            let known: Vec<String> = wanted
                .iter()
                .filter(|w| index.load_order(std::slice::from_ref(w)).is_ok())
                .cloned()
                .collect();
            index.load_order(&known)?
        }
    };
    let mut loaded = 0;
    let empty = c"";
    for rel in order {
        let path = dir.join(&rel);
        let result = std::fs::read(&path)
            .with_context(|| format!("cannot read {}", path.display()))
            .and_then(|data| decompress(&rel, data).with_context(|| format!("cannot decompress {}", path.display())))
            .and_then(|image| match nix::kmod::init_module(&image, empty) {
                Ok(()) => Ok(true),
                Err(nix::errno::Errno::EEXIST) => Ok(false),
                Err(e) => Err(anyhow::Error::new(e).context(format!("init_module {}", module_name(&rel)))),
            });
        match result {
            Ok(true) => {
                loaded += 1;
                log::debug!("loaded module {}", module_name(&rel));
            }
            Ok(false) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    Ok((loaded, errors))
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

    #[test]
    fn names() {
        assert_eq!(module_name("kernel/crypto/crc32c-generic.ko.zst"), "crc32c_generic");
        assert_eq!(module_name("virtio-blk"), "virtio_blk");
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
    }

    #[test]
    fn dependencies_come_first_once() {
        let idx = ModuleIndex::parse(DEP, "kernel/fs/overlayfs/overlay.ko\n");
        let order = idx
            .load_order(&["ext4".into(), "jbd2".into(), "virtio-blk".into(), "overlay".into()])
            .unwrap();
        assert_eq!(
            order,
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
    fn unknown_modules_are_named() {
        let idx = ModuleIndex::parse(DEP, "");
        let err = idx.load_order(&["ext4".into(), "nosuch".into()]).unwrap_err().to_string();
        assert!(err.contains("nosuch"), "{err}");
    }

    #[test]
    fn decompresses_by_extension() {
        let payload = b"\x7fELF fake module".repeat(50);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut payload.as_slice(), &mut xz).unwrap();
        assert_eq!(decompress("a.ko.xz", xz).unwrap(), payload);
        let zst = ruzstd::encoding::compress_to_vec(payload.as_slice(), ruzstd::encoding::CompressionLevel::Fastest);
        assert_eq!(decompress("a.ko.zst", zst).unwrap(), payload);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &payload).unwrap();
        assert_eq!(decompress("a.ko.gz", gz.finish().unwrap()).unwrap(), payload);
        assert_eq!(decompress("a.ko", payload.clone()).unwrap(), payload);
        assert!(decompress("a.ko.xz", b"garbage".to_vec()).is_err());
    }
}
