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
    pub fn with_softdeps(mut self, softdep: &str, alias: &str) -> ModuleIndex {
        let mut aliases: HashMap<&str, Vec<String>> = HashMap::new();
        for line in alias.lines() {
            let mut f = line.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (f.next(), f.next(), f.next()) {
                aliases.entry(a).or_default().push(module_name(m));
            }
        }
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
                    dep if in_pre => {
                        let resolved = match aliases.get(dep) {
                            Some(mods) => mods.clone(),
                            None => vec![module_name(dep)],
                        };
                        self.pre
                            .entry(module_name(name))
                            .or_default()
                            .extend(resolved);
                    }
                    _ => {}
                }
            }
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

/// Returns the module's ELF image, decompressing by file extension.
pub fn decompress(path: &str, data: Vec<u8>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 3);
    if path.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut data.as_slice(), &mut out)
            .map_err(|e| anyhow::anyhow!("xz: {e:?}"))?;
    } else if path.ends_with(".zst") {
        ruzstd::decoding::StreamingDecoder::new(data.as_slice())
            .map_err(|e| anyhow::anyhow!("zstd: {e}"))?
            .read_to_end(&mut out)
            .context("zstd")?;
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(data.as_slice())
            .read_to_end(&mut out)
            .context("gzip")?;
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

/// Shell-style pattern match as used in modules.alias: `*`, `?` and
/// `[...]` classes (with `!` or `^` negation and ranges).
pub fn fnmatch(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(&p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; returns
/// whether it matched and the index after the class, or None if unclosed.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (p[i] != ']' || first) {
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            matched |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    (i < p.len()).then_some((matched != negate, i + 1))
}

/// modules.alias: which modules drive a device, by its modalias.
#[derive(Debug, Default)]
pub struct AliasIndex {
    entries: Vec<(String, String)>,
}

impl AliasIndex {
    pub fn parse(text: &str) -> AliasIndex {
        let entries = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                match (f.next(), f.next(), f.next()) {
                    (Some("alias"), Some(pattern), Some(module)) => {
                        Some((pattern.to_string(), module_name(module)))
                    }
                    _ => None,
                }
            })
            .collect();
        AliasIndex { entries }
    }

    /// Modules whose alias matches `modalias`.
    pub fn modules_for(&self, modalias: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(pattern, _)| fnmatch(pattern, modalias))
            .map(|(_, m)| m.as_str())
            .collect()
    }
}

/// The modalias of every device the kernel knows, from /sys/bus/*/devices.
pub fn present_modaliases(sys_bus: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for bus in std::fs::read_dir(sys_bus).into_iter().flatten().flatten() {
        for dev in std::fs::read_dir(bus.path().join("devices"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(alias) = std::fs::read_to_string(dev.path().join("modalias")) {
                let alias = alias.trim();
                if !alias.is_empty() {
                    out.push(alias.to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The module list of an initramfs: `[always]` modules are loaded whatever
/// the hardware (file systems, loop); `[hardware]` ones only when a present
/// device's modalias matches them (disk controllers, watchdogs);
/// `[on-demand]` ones are carried but loaded only when the init asks (the
/// software watchdog, when no hardware one exists). Lines before any
/// section header count as `[always]`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleList {
    pub always: Vec<String>,
    pub hardware: Vec<String>,
    pub on_demand: Vec<String>,
}

impl ModuleList {
    pub fn parse(text: &str) -> anyhow::Result<ModuleList> {
        let mut list = ModuleList::default();
        let mut section = 0;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            match line {
                "" => {}
                "[always]" => section = 0,
                "[hardware]" => section = 1,
                "[on-demand]" => section = 2,
                l if l.starts_with('[') => bail!(
                    "line {}: unknown section {l} (expected [always], [hardware] or [on-demand])",
                    n + 1
                ),
                l => match section {
                    0 => list.always.push(l.to_string()),
                    1 => list.hardware.push(l.to_string()),
                    _ => list.on_demand.push(l.to_string()),
                },
            }
        }
        Ok(list)
    }

    pub fn all(&self) -> Vec<String> {
        self.always
            .iter()
            .chain(&self.hardware)
            .chain(&self.on_demand)
            .cloned()
            .collect()
    }

    pub fn render(&self) -> String {
        format!(
            "[always]\n{}\n[hardware]\n{}\n[on-demand]\n{}\n",
            self.always.join("\n"),
            self.hardware.join("\n"),
            self.on_demand.join("\n")
        )
    }
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

/// Loads one module file; `Ok(false)` if it was loaded already.
fn load_file(dir: &Path, rel: &str) -> Result<bool> {
    let path = dir.join(rel);
    let data = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let image =
        decompress(rel, data).with_context(|| format!("cannot decompress {}", path.display()))?;
    match nix::kmod::init_module(&image, c"") {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EEXIST) => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("init_module {}", module_name(rel)))),
    }
}

/// What one loading thread did.
#[derive(Debug, Default)]
pub struct Report {
    pub loaded: usize,
    pub errors: Vec<String>,
}

/// Loads `name` and its dependencies now, in this thread.
pub fn load_now(dir: &Path, name: &str) -> Result<Report> {
    let order = read_index(dir)?.load_order(&[name.to_string()])?;
    let mut report = Report::default();
    load_chain(dir, &order, &mut report);
    Ok(report)
}

/// Loads one module with its dependencies, in order; stops at the first
/// failure of a hard dependency (what depends on it cannot load either).
fn load_chain(dir: &Path, order: &[Planned], report: &mut Report) {
    for p in order {
        match load_file(dir, &p.path) {
            Ok(true) => {
                report.loaded += 1;
                log::debug!("loaded module {}", module_name(&p.path));
            }
            Ok(false) => {}
            Err(e) if p.optional => log::debug!("optional module: {e:#}"),
            Err(e) => {
                report.errors.push(format!("{e:#}"));
                break;
            }
        }
    }
}

/// Loads, for the devices present, the `[hardware]` modules whose alias
/// matches them. Each module loads in its own thread, so one slow probe
/// (an AHCI controller resetting its ports) does not hold up another driver;
/// whenever a load finishes the devices are scanned again, since loading can
/// make new devices appear (a PCI virtio controller brings virtio devices).
fn coldplug(
    dir: &Path,
    index: &std::sync::Arc<ModuleIndex>,
    aliases: &AliasIndex,
    hardware: &[String],
) -> Report {
    let mut report = Report::default();
    let mut tried: HashSet<String> = HashSet::new();
    let mut running: Vec<std::thread::JoinHandle<Report>> = Vec::new();
    loop {
        for modalias in present_modaliases(Path::new("/sys/bus")) {
            for m in aliases.modules_for(&modalias) {
                if !hardware.iter().any(|h| module_name(h) == m) || !tried.insert(m.to_string()) {
                    continue;
                }
                log::debug!("{modalias} needs {m}");
                match index.load_order(&[m.to_string()]) {
                    Ok(order) => {
                        let dir = dir.to_path_buf();
                        running.push(std::thread::spawn(move || {
                            let mut r = Report::default();
                            load_chain(&dir, &order, &mut r);
                            r
                        }));
                    }
                    Err(e) => report.errors.push(format!("{e:#}")),
                }
            }
        }
        if running.is_empty() {
            return report;
        }
        // Wait for any load to finish, then look for new devices.
        while !running.iter().any(|h| h.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let (finished, still): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|h| h.is_finished());
        running = still;
        for h in finished {
            match h.join() {
                Ok(r) => {
                    report.loaded += r.loaded;
                    report.errors.extend(r.errors);
                }
                Err(_) => report.errors.push("a module loading thread failed".into()),
            }
        }
    }
}

/// Modules loading in the background: a thread per `[always]` module (with
/// its dependencies) and one thread that loads `[hardware]` modules for the
/// devices present. Slow probes (a disk controller waiting for its ports)
/// overlap with the rest of the boot; callers wait only for the modules
/// they need next. The kernel serialises loads of one module: a second
/// thread asking for it gets EEXIST once it is live.
pub struct Loader {
    pending: Vec<(String, std::thread::JoinHandle<Report>)>,
    done: Report,
}

/// Name of the coldplug thread in [`Loader`]'s list.
const COLDPLUG: &str = "(hardware)";

impl Loader {
    pub fn start(dir: &Path, list: &ModuleList) -> Result<Loader> {
        let index = std::sync::Arc::new(read_index(dir)?);
        let mut loader = Loader {
            pending: Vec::new(),
            done: Report::default(),
        };
        if !list.hardware.is_empty() {
            let alias_text = std::fs::read_to_string(dir.join("modules.alias")).unwrap_or_default();
            let (dir, index, hardware) = (dir.to_path_buf(), index.clone(), list.hardware.clone());
            let handle = std::thread::spawn(move || {
                coldplug(&dir, &index, &AliasIndex::parse(&alias_text), &hardware)
            });
            loader.pending.push((COLDPLUG.into(), handle));
        }
        for name in &list.always {
            let order = match index.load_order(std::slice::from_ref(name)) {
                Ok(o) => o,
                Err(e) => {
                    loader.done.errors.push(format!("{e:#}"));
                    continue;
                }
            };
            let dir = dir.to_path_buf();
            let handle = std::thread::spawn(move || {
                let mut report = Report::default();
                load_chain(&dir, &order, &mut report);
                report
            });
            loader.pending.push((module_name(name), handle));
        }
        Ok(loader)
    }

    fn join(&mut self, keep: impl Fn(&str) -> bool) {
        let (wait, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(n, _)| !keep(n));
        self.pending = rest;
        for (name, handle) in wait {
            match handle.join() {
                Ok(r) => {
                    self.done.loaded += r.loaded;
                    self.done.errors.extend(r.errors);
                }
                Err(_) => self
                    .done
                    .errors
                    .push(format!("loading {name}: thread failed")),
            }
        }
    }

    /// Waits until `name` (if it is an `[always]` module) has loaded or failed.
    pub fn wait_for(&mut self, name: &str) {
        let name = module_name(name);
        self.join(|n| n != name);
    }

    /// Waits for the hardware modules of the devices present at start.
    pub fn wait_for_hardware(&mut self) {
        self.join(|n| n != COLDPLUG);
    }

    /// Waits for every module; returns what was loaded and every error.
    pub fn finish(&mut self) -> &Report {
        self.join(|_| false);
        &self.done
    }

    /// Errors so far, taken (so each is reported once).
    pub fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.done.errors)
    }
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
        assert_eq!(
            module_name("kernel/crypto/crc32c-generic.ko.zst"),
            "crc32c_generic"
        );
        assert_eq!(module_name("virtio-blk"), "virtio_blk");
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
    }

    #[test]
    fn dependencies_come_first_once() {
        let idx = ModuleIndex::parse(DEP, "kernel/fs/overlayfs/overlay.ko\n");
        let order: Vec<String> = idx
            .load_order(&[
                "ext4".into(),
                "jbd2".into(),
                "virtio-blk".into(),
                "overlay".into(),
            ])
            .unwrap()
            .into_iter()
            .map(|p| p.path)
            .collect();
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

    #[test]
    fn fnmatch_handles_modalias_patterns() {
        assert!(fnmatch(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
        ));
        assert!(fnmatch("virtio:d00000002v*", "virtio:d00000002v00001AF4"));
        assert!(!fnmatch("virtio:d00000002v*", "virtio:d00000001v00001AF4"));
        assert!(fnmatch(
            "pci:v*d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
        ));
        assert!(fnmatch("a?c", "abc") && !fnmatch("a?c", "ac"));
        assert!(fnmatch("x[0-9]y", "x5y") && !fnmatch("x[0-9]y", "xay"));
        assert!(fnmatch("x[!0-9]y", "xay") && !fnmatch("x[!0-9]y", "x5y"));
        assert!(fnmatch("*", "") && !fnmatch("a", ""));
    }

    #[test]
    fn alias_index_finds_drivers() {
        let idx = AliasIndex::parse(
            "alias virtio:d00000002v* virtio_blk\nalias pci:v*d*sv*sd*bc01sc06i01* ahci\nalias crypto-crc32c crc32c_generic\n",
        );
        assert_eq!(idx.modules_for("virtio:d00000002v00001AF4"), ["virtio_blk"]);
        assert!(idx.modules_for("virtio:d00000001v00001AF4").is_empty());
    }

    #[test]
    fn module_list_sections() {
        let l = ModuleList::parse(
            "ext4 # fs\nloop\n[hardware]\nvirtio_pci\n\n[on-demand]\nsoftdog\n[always]\noverlay\n",
        )
        .unwrap();
        assert_eq!(l.always, ["ext4", "loop", "overlay"]);
        assert_eq!(l.hardware, ["virtio_pci"]);
        assert_eq!(l.on_demand, ["softdog"]);
        assert_eq!(
            l.all(),
            ["ext4", "loop", "overlay", "virtio_pci", "softdog"]
        );
        assert_eq!(ModuleList::parse(&l.render()).unwrap(), l);
        assert!(ModuleList::parse("[sometimes]\n").is_err());
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

    #[test]
    fn decompresses_by_extension() {
        let payload = b"\x7fELF fake module".repeat(50);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut payload.as_slice(), &mut xz).unwrap();
        assert_eq!(decompress("a.ko.xz", xz).unwrap(), payload);
        let zst = ruzstd::encoding::compress_to_vec(
            payload.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(decompress("a.ko.zst", zst).unwrap(), payload);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &payload).unwrap();
        assert_eq!(
            decompress("a.ko.gz", gz.finish().unwrap()).unwrap(),
            payload
        );
        assert_eq!(decompress("a.ko", payload.clone()).unwrap(), payload);
        assert!(decompress("a.ko.xz", b"garbage".to_vec()).is_err());
    }
}
