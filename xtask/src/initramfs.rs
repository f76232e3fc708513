//! The initramfs: the static init, the kernel modules it loads (with their
//! dependencies), the image's modprobe.d files (their module parameters and
//! blacklists) and nothing else, as a zstd-compressed newc cpio archive.

use crate::image::resolve_in_root;
use anyhow::{bail, Context, Result};
use immuboot_kmod::{conf_file_names, decompress, module_name, ModuleIndex, ModuleList};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

struct Archive {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Archive {
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: Option<(u32, u32)>,
    ) -> Result<()> {
        self.ino += 1;
        let mut b = cpio::newc::Builder::new(name)
            .ino(self.ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(1)
            .mtime(0);
        if let Some((major, minor)) = rdev {
            b = b.rdev_major(major).rdev_minor(minor);
        }
        let mut w = b.write(&mut self.out, data.len() as u32);
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    /// Adds a directory and its missing parents.
    fn dir(&mut self, path: &str) -> Result<()> {
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            if self.dirs.insert(cur.clone()) {
                let name = cur.clone();
                self.entry(&name, 0o040755, &[], None)?;
            }
        }
        Ok(())
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.entry(path, 0o100000 | mode, data, None)
    }
}

/// Reads the module list file (see `immuboot_kmod::ModuleList`).
pub fn module_list(path: &Path) -> Result<ModuleList> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    ModuleList::parse(&text).with_context(|| format!("in {}", path.display()))
}

/// The image's modprobe.d files as modprobe reads them (see
/// `immuboot_kmod::conf_file_names`: by name, a name in an earlier directory
/// hiding the same name in a later one, a link to /dev/null hiding it too),
/// each as its path in the archive and its contents. Links are followed
/// inside the image, not on the build host.
pub fn modprobe_conf(root: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for (dir, name) in conf_file_names(|dir| resolve_in_root(root, dir))? {
        let rel = format!("{dir}/{name}");
        // The trailing "." makes resolve_in_root follow a link in the last
        // component too.
        let path = resolve_in_root(root, &format!("{rel}/."))?;
        if path.is_file() {
            let data =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            files.push((rel, data));
        }
    }
    Ok(files)
}

/// Builds the initramfs for the image staged at `root`; returns its
/// compressed size in bytes.
pub fn build(
    init: &Path,
    root: &Path,
    kver: &str,
    module_list_file: &Path,
    out: &Path,
) -> Result<u64> {
    let init_bytes =
        std::fs::read(init).with_context(|| format!("cannot read {}", init.display()))?;
    build_with(&init_bytes, &[], root, kver, module_list_file, out)
}

/// Builds an initramfs with `init_bytes` as `/init`, the `extra` executables
/// (path in the archive, contents) and the same kernel modules and
/// modprobe.d files of the image staged at `root` as [`build`]; returns its
/// compressed size in bytes.
pub fn build_with(
    init_bytes: &[u8],
    extra: &[(&str, &[u8])],
    root: &Path,
    kver: &str,
    module_list_file: &Path,
    out: &Path,
) -> Result<u64> {
    let modules_dir = &resolve_in_root(root, "usr/lib/modules")?.join(kver);
    let list = module_list(module_list_file)?;
    let wanted = list.all();
    let read = |f: &str| {
        std::fs::read_to_string(modules_dir.join(f))
            .with_context(|| format!("cannot read {}/{f}", modules_dir.display()))
    };
    let (dep, builtin, softdep, alias) = (
        read("modules.dep")?,
        read("modules.builtin")?,
        read("modules.softdep")?,
        read("modules.alias")?,
    );
    let index = ModuleIndex::parse(&dep, &builtin).with_softdeps(&softdep, &alias);
    let files: Vec<String> = index
        .load_order(&wanted)
        .with_context(|| format!("modules listed in {}", module_list_file.display()))?
        .into_iter()
        .map(|p| p.path)
        .collect();

    let mut a = Archive {
        out: Vec::new(),
        ino: 0,
        dirs: BTreeSet::new(),
    };
    for d in ["dev", "proc", "sys", "run", "sysroot", "tmp"] {
        a.dir(d)?;
    }
    // The kernel opens /dev/console for init's stdio before /dev is mounted.
    a.entry("dev/console", 0o020600, &[], Some((5, 1)))?;
    a.entry("dev/null", 0o020666, &[], Some((1, 3)))?;
    a.file("init", 0o755, init_bytes)?;
    for (path, data) in extra {
        a.file(path, 0o755, data)?;
    }
    a.file("etc/immuboot/modules", 0o644, list.render().as_bytes())?;
    let conf = modprobe_conf(root)?;
    for (path, data) in &conf {
        a.file(path, 0o644, data)?;
    }
    // The index files, limited to the modules in the archive.
    let kept: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    let kept_names: BTreeSet<String> = files.iter().map(|f| module_name(f)).collect();
    let filter = |text: &str, keep: &dyn Fn(&str) -> bool| -> String {
        text.lines()
            .filter(|l| keep(l))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    // Modules are stored decompressed (`.ko.xz` → `.ko`): the archive is
    // zstd-compressed as a whole, so this costs little space, and the init
    // then spends no boot time decompressing them (lzma-rs took 2.4 s of a
    // trixie boot under TCG before the disk's driver was live).
    let small_dep = stored_names(&filter(&dep, &|l| {
        l.split(':').next().is_some_and(|m| kept.contains(m.trim()))
    }));
    let small_softdep = filter(&softdep, &|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|m| kept_names.contains(&module_name(m)))
    });
    let small_alias = filter(&alias, &|l| {
        l.split_whitespace()
            .nth(2)
            .is_some_and(|m| kept_names.contains(&module_name(m)))
    });
    let mdir = format!("lib/modules/{kver}");
    a.file(&format!("{mdir}/modules.dep"), 0o644, small_dep.as_bytes())?;
    a.file(
        &format!("{mdir}/modules.softdep"),
        0o644,
        small_softdep.as_bytes(),
    )?;
    a.file(
        &format!("{mdir}/modules.alias"),
        0o644,
        small_alias.as_bytes(),
    )?;
    a.file(
        &format!("{mdir}/modules.builtin"),
        0o644,
        builtin.as_bytes(),
    )?;
    let mut decompressed = 0;
    for f in &files {
        let data = std::fs::read(modules_dir.join(f))
            .with_context(|| format!("cannot read module {f}"))?;
        let stored = stored_name(f);
        if stored != f.as_str() {
            decompressed += 1;
        }
        let image = decompress(f, data).with_context(|| format!("cannot decompress module {f}"))?;
        a.file(&format!("{mdir}/{stored}"), 0o644, &image)?;
    }
    cpio::newc::trailer(&mut a.out)?;

    let mut child = Command::new("zstd")
        .args(["-19", "-q", "-c", "-T0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run zstd")?;
    let mut stdin = child.stdin.take().context("zstd stdin")?;
    let data = std::mem::take(&mut a.out);
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let output = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("zstd writer panicked"))??;
    if !output.status.success() {
        bail!("zstd failed");
    }
    std::fs::write(out, &output.stdout)?;
    eprintln!(
        "    initramfs: {} modules ({decompressed} decompressed at build time), {} modprobe.d files, {} bytes compressed",
        files.len(),
        conf.len(),
        output.stdout.len()
    );
    Ok(output.stdout.len() as u64)
}

/// The compression suffixes the kernel's module tools know.
const COMPRESSED_SUFFIXES: &[&str] = &[".xz", ".zst", ".gz"];

/// A module's path as stored in the initramfs: `x.ko.xz` becomes `x.ko`.
fn stored_name(path: &str) -> &str {
    COMPRESSED_SUFFIXES
        .iter()
        .find_map(|s| path.strip_suffix(s).filter(|p| p.ends_with(".ko")))
        .unwrap_or(path)
}

/// modules.dep with every module path renamed as [`stored_name`] does.
fn stored_names(modules_dep: &str) -> String {
    modules_dep
        .lines()
        .map(|line| {
            let (module, deps) = line.split_once(':').unwrap_or((line, ""));
            let deps: Vec<&str> = deps.split_whitespace().map(stored_name).collect();
            if deps.is_empty() {
                format!("{}:\n", stored_name(module.trim()))
            } else {
                format!("{}: {}\n", stored_name(module.trim()), deps.join(" "))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_module_paths_are_stored_without_their_suffix() {
        assert_eq!(
            stored_name("kernel/fs/ext4/ext4.ko.xz"),
            "kernel/fs/ext4/ext4.ko"
        );
        assert_eq!(stored_name("kernel/a.ko.zst"), "kernel/a.ko");
        assert_eq!(stored_name("kernel/a.ko.gz"), "kernel/a.ko");
        assert_eq!(stored_name("kernel/a.ko"), "kernel/a.ko");
        // Only a module's own suffix goes, nothing else ending in .xz.
        assert_eq!(stored_name("kernel/notes.xz"), "kernel/notes.xz");
    }

    #[test]
    fn modules_dep_names_the_stored_files() {
        let dep = "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/lib/crc16.ko.xz\n\
                   kernel/lib/crc16.ko.xz:\n";
        let out = stored_names(dep);
        assert_eq!(
            out,
            "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko\n\
             kernel/lib/crc16.ko:\n"
        );
        let index = ModuleIndex::parse(&out, "");
        let order = index.load_order(&["ext4".to_string()]).unwrap();
        let paths: Vec<&str> = order.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths.last(), Some(&"kernel/fs/ext4/ext4.ko"));
        assert!(paths.contains(&"kernel/lib/crc16.ko"));
    }

    /// The image's modprobe.d files as modprobe reads them, links followed
    /// inside the image: merged /usr (`lib -> usr/lib`) gives each
    /// distribution file once, /etc's file hides the same name, a link to
    /// /dev/null masks, and an absolute link points into the image, not to
    /// the build host.
    #[test]
    fn modprobe_d_files_are_taken_as_modprobe_reads_them_inside_the_image() {
        use std::os::unix::fs::symlink;
        let root =
            std::env::temp_dir().join(format!("immuboot-initramfs-conf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            "usr/lib/modprobe.d/systemd.conf",
            "options dummy numdummies=0\n",
        );
        write("usr/lib/modprobe.d/aliases.conf", "alias net-pf-3 off\n");
        write("usr/lib/modprobe.d/blacklist.conf", "blacklist pcspkr\n");
        write("etc/modprobe.d/blacklist.conf", "blacklist floppy\n");
        write("usr/share/vendor/loop.conf", "options loop max_part=2\n");
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/dev/null", root.join("etc/modprobe.d/aliases.conf")).unwrap();
        symlink(
            "/usr/share/vendor/loop.conf",
            root.join("etc/modprobe.d/loop.conf"),
        )
        .unwrap();
        let files = modprobe_conf(&root).unwrap();
        let got: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, d)| (p.as_str(), std::str::from_utf8(d).unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("etc/modprobe.d/blacklist.conf", "blacklist floppy\n"),
                ("etc/modprobe.d/loop.conf", "options loop max_part=2\n"),
                (
                    "usr/lib/modprobe.d/systemd.conf",
                    "options dummy numdummies=0\n"
                ),
            ]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
