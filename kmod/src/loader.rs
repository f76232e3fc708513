//! Loading modules: init_module for each file of a load order, in threads
//! so slow driver probes overlap with the rest of the boot.

use crate::alias::{present_modaliases, AliasIndex};
use crate::decompress::decompress;
use crate::index::{read_index, ModuleIndex, Planned};
use crate::list::ModuleList;
use crate::module_name;
use crate::options::ModuleOptions;
use crate::uevent::Uevents;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// `finit_module` flag: the file is compressed, the kernel decompresses it
/// (Linux 5.17+ built with CONFIG_MODULE_DECOMPRESS, as Debian's 6.12 is).
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

/// Whether a module file is compressed (by its extension, as modules.dep
/// names it).
fn is_compressed(rel: &str) -> bool {
    [".xz", ".zst", ".gz"].iter().any(|ext| rel.ends_with(ext))
}

/// Whether a failed `finit_module` of a compressed file means the kernel
/// cannot decompress it (flag unknown before 5.17, no
/// CONFIG_MODULE_DECOMPRESS, or another compression than the kernel's), so
/// the file is worth decompressing here. A module that is itself bad fails
/// the same way again, with the kernel's own answer.
fn kernel_cannot_decompress(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [Errno::INVAL, Errno::OPNOTSUPP, Errno::NOSYS].contains(&e)
}

/// Loads one module file with the parameters `options` give it;
/// `Ok(false)` if it was loaded already. A parameter value the module does
/// not take makes the kernel refuse the whole load (`EINVAL`, with the
/// kernel's own message naming the parameter): the boot needs the module
/// more than the parameter, so it is loaded again with its defaults and
/// the refusal goes into `report` as a warning (modprobe would fail here,
/// and a typo on the command line would then stop every boot).
fn load_file(dir: &Path, rel: &str, options: &ModuleOptions, report: &mut Report) -> Result<bool> {
    let name = module_name(rel);
    if options.is_refused(&name) {
        anyhow::bail!(
            "{name} is not loaded: module_blacklist= on the kernel command line names it"
        );
    }
    let params = options.params(&name);
    if params.is_empty() {
        return load_file_with(dir, rel, c"");
    }
    log::debug!("{name}: parameters {params:?}");
    match load_file_with(dir, rel, &params) {
        Err(e) if e.downcast_ref::<rustix::io::Errno>() == Some(&rustix::io::Errno::INVAL) => {
            let loaded = load_file_with(dir, rel, c"").map_err(|_| e)?;
            report.errors.push(format!(
                "{name}: the kernel refused its parameters {params:?} (its message above \
                 names the one); loaded with its defaults"
            ));
            Ok(loaded)
        }
        other => other,
    }
}

/// Loads one module file with the parameter string `params`. The kernel
/// reads the file itself (`finit_module`), and decompresses it where it can
/// (lzma-rs in the init took 2.4 s of a trixie boot under TCG; no copy of
/// the module passes through the init's memory either). Else the file is
/// decompressed here and handed over with `init_module`.
fn load_file_with(dir: &Path, rel: &str, params: &std::ffi::CStr) -> Result<bool> {
    let path = dir.join(rel);
    let file =
        std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let compressed = is_compressed(rel);
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    let result = match rustix::system::finit_module(&file, params, flags) {
        Err(e) if compressed && kernel_cannot_decompress(e) => {
            log::debug!("{rel}: the kernel cannot decompress it ({e}); decompressing here");
            let data =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let image = decompress(rel, data)
                .with_context(|| format!("cannot decompress {}", path.display()))?;
            rustix::system::init_module(&image, params)
        }
        other => other,
    };
    match result {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
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
pub fn load_now(dir: &Path, name: &str, options: &ModuleOptions) -> Result<Report> {
    let order = read_index(dir)?.load_order(&[name.to_string()])?;
    let mut report = Report::default();
    load_chain(dir, &order, options, &mut report);
    Ok(report)
}

/// Loads one module with its dependencies, in order; stops at the first
/// failure of a hard dependency (what depends on it cannot load either).
fn load_chain(dir: &Path, order: &[Planned], options: &ModuleOptions, report: &mut Report) {
    for p in order {
        match load_file(dir, &p.path, options, report) {
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

/// Whether the `[hardware-if-needed]` drivers load: decided by the search
/// for the image partition, once the `[hardware]` drivers have settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Undecided,
    /// The image partition is not on the disks found so far: load them.
    Load,
    /// The image partition was found: the boot does not need them (udev in
    /// the real root loads them for their hardware).
    Skip,
}

#[derive(Debug)]
struct GateState {
    /// The `[hardware]` drivers for the devices present have all loaded
    /// (and the devices they brought were looked at), and some
    /// `[hardware-if-needed]` driver has a device waiting.
    settled: bool,
    decision: Decision,
}

/// Where the coldplug thread and the search for the image partition meet.
/// Loading a disk controller's driver can cost a second of CPU (AHCI resets
/// and probes six ports under QEMU's q35, a disk or not behind them); on
/// one CPU that second is the boot's. So the drivers of controllers that
/// rarely hold an image-based system's disk in a VM, yet often sit beside
/// it, wait until the search has looked at every disk the others brought.
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

/// How long the coldplug thread waits for a decision before it loads the
/// deferred drivers anyway (a caller that never searches must not lose its
/// disks).
pub const UNDECIDED_LOAD_AFTER: Duration = Duration::from_secs(5);

impl Gate {
    fn new() -> Gate {
        Gate {
            state: Mutex::new(GateState {
                settled: false,
                decision: Decision::Undecided,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the first drivers have settled with deferred ones waiting: a
    /// search that starts after this saw every disk they brought.
    pub fn settled(&self) -> bool {
        self.lock().settled
    }

    pub fn decision(&self) -> Decision {
        self.lock().decision
    }

    /// The first decision counts; later ones change nothing. Returns
    /// whether this one was the first.
    pub fn decide(&self, d: Decision) -> bool {
        let mut s = self.lock();
        let first = s.decision == Decision::Undecided;
        if first {
            s.decision = d;
            self.changed.notify_all();
        }
        first
    }

    /// Called by the coldplug thread when the first drivers settled with
    /// deferred ones waiting: the decision, after at most `patience`
    /// (then: load).
    fn settle_and_wait(&self, patience: Duration) -> Decision {
        let mut s = self.lock();
        s.settled = true;
        let deadline = Instant::now() + patience;
        while s.decision == Decision::Undecided {
            let now = Instant::now();
            if now >= deadline {
                s.decision = Decision::Load;
                break;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.decision
    }
}

/// Which drivers of a scan start now: those of `first`, and of `later`
/// once `later_allowed`; `deferred` tells whether a `later` driver has a
/// device waiting.
fn pick<'a>(
    wanted: impl IntoIterator<Item = &'a str>,
    first: &[String],
    later: &[String],
    later_allowed: bool,
) -> (Vec<&'a str>, bool) {
    let is_in = |list: &[String], m: &str| list.iter().any(|h| module_name(h) == m);
    let mut start = Vec::new();
    let mut deferred = false;
    for m in wanted {
        if is_in(first, m) || (later_allowed && is_in(later, m)) {
            start.push(m);
        } else if is_in(later, m) {
            deferred = true;
        }
    }
    (start, deferred)
}

/// Loads, for the devices present, the `[hardware]` modules whose alias
/// matches them. Each module loads in its own thread, so one slow probe
/// does not hold up another driver. Loading can make new devices appear (a
/// PCI virtio controller brings virtio devices): sysfs is read once, and
/// the devices added later come from the kernel's uevents (sysfs is read
/// again only where those are not to be had, or some were lost). The
/// `[hardware-if-needed]` modules (`later`) start only when the [`Gate`]
/// says so. A blacklisted module is not loaded for a device, as modprobe
/// does for udev.
fn coldplug(
    dir: &Path,
    index: &Arc<ModuleIndex>,
    aliases: &AliasIndex,
    (first, later): (&[String], &[String]),
    gate: &Gate,
    options: &Arc<ModuleOptions>,
) -> Report {
    let mut report = Report::default();
    let mut tried: HashSet<String> = HashSet::new();
    let mut blacklisted: HashSet<String> = HashSet::new();
    let mut running: Vec<std::thread::JoinHandle<Report>> = Vec::new();
    let mut later_allowed = later.is_empty();
    // Opened before sysfs is read, so no device added after the read is missed.
    let events = Uevents::open()
        .map_err(|e| log::debug!("no uevents ({e}): sysfs is read after each driver load"))
        .ok();
    let mut present = present_modaliases(Path::new("/sys/bus"));
    loop {
        let mut deferred = false;
        for modalias in &present {
            let wanted = aliases.modules_for(modalias).into_iter().filter(|m| {
                let skip = options.is_blacklisted(m);
                if skip && blacklisted.insert(m.to_string()) {
                    log::info!("{m} (for {modalias}) not loaded: blacklisted");
                }
                !skip
            });
            let (start, waiting) = pick(wanted, first, later, later_allowed);
            deferred |= waiting;
            for m in start {
                if !tried.insert(m.to_string()) {
                    continue;
                }
                log::debug!("{modalias} needs {m}");
                match index.load_order(&[m.to_string()]) {
                    Ok(order) => {
                        let (dir, options) = (dir.to_path_buf(), options.clone());
                        running.push(std::thread::spawn(move || {
                            let mut r = Report::default();
                            load_chain(&dir, &order, &options, &mut r);
                            r
                        }));
                    }
                    Err(e) => report.errors.push(format!("{e:#}")),
                }
            }
        }
        if running.is_empty() {
            if !deferred || later_allowed {
                return report;
            }
            match gate.settle_and_wait(UNDECIDED_LOAD_AFTER) {
                Decision::Skip => {
                    log::info!(
                        "disk drivers not needed for this boot left to udev: {}",
                        later.join(" ")
                    );
                    return report;
                }
                _ => {
                    later_allowed = true;
                    continue;
                }
            }
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
        present = match events.as_ref().map(Uevents::added_modaliases) {
            Some(Ok(added)) => merged(present, added),
            _ => present_modaliases(Path::new("/sys/bus")),
        };
    }
}

/// The modaliases known so far and those of devices added since, sorted,
/// each once.
fn merged(mut present: Vec<String>, added: Vec<String>) -> Vec<String> {
    present.extend(added);
    present.sort();
    present.dedup();
    present
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
    gate: Arc<Gate>,
}

/// Name of the coldplug thread in [`Loader`]'s list.
const COLDPLUG: &str = "(hardware)";

impl Loader {
    /// Starts loading `list`'s modules with the parameters and blacklists
    /// of `options`.
    pub fn start(dir: &Path, list: &ModuleList, options: Arc<ModuleOptions>) -> Result<Loader> {
        let index = Arc::new(read_index(dir)?);
        let mut loader = Loader {
            pending: Vec::new(),
            done: Report::default(),
            gate: Arc::new(Gate::new()),
        };
        if !list.hardware.is_empty() || !list.hardware_if_needed.is_empty() {
            let alias_text = std::fs::read_to_string(dir.join("modules.alias")).unwrap_or_default();
            let (dir, index, gate) = (dir.to_path_buf(), index.clone(), loader.gate.clone());
            let (first, later) = (list.hardware.clone(), list.hardware_if_needed.clone());
            let options = options.clone();
            let handle = std::thread::spawn(move || {
                let aliases = AliasIndex::parse(&alias_text);
                coldplug(&dir, &index, &aliases, (&first, &later), &gate, &options)
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
            let (dir, options) = (dir.to_path_buf(), options.clone());
            let handle = std::thread::spawn(move || {
                let mut report = Report::default();
                load_chain(&dir, &order, &options, &mut report);
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

    /// The meeting point with the search for the image partition.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Waits for every module; returns what was loaded and every error. The
    /// boot has its disks by now: deferred drivers not asked for stay
    /// unloaded.
    pub fn finish(&mut self) -> &Report {
        self.gate.decide(Decision::Skip);
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

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn compressed_files_go_to_the_kernel_with_the_flag_and_fall_back_here() {
        assert!(is_compressed("kernel/fs/ext4/ext4.ko.xz"));
        assert!(is_compressed("kernel/fs/ext4/ext4.ko.zst"));
        assert!(is_compressed("kernel/fs/ext4/ext4.ko.gz"));
        assert!(!is_compressed("kernel/fs/ext4/ext4.ko"));
        use rustix::io::Errno;
        // Unknown flag (before 5.17), no in-kernel decompression, no
        // finit_module at all: decompress here.
        for e in [Errno::INVAL, Errno::OPNOTSUPP, Errno::NOSYS] {
            assert!(kernel_cannot_decompress(e), "{e}");
        }
        // Loaded already, no permission, no memory, a signature refused:
        // the kernel's answer stands.
        for e in [Errno::EXIST, Errno::PERM, Errno::NOMEM, Errno::KEYREJECTED] {
            assert!(!kernel_cannot_decompress(e), "{e}");
        }
    }

    #[test]
    fn devices_added_join_those_known_once() {
        let known = names(&["pci:a", "virtio:b"]);
        assert_eq!(
            merged(known, names(&["acpi:c", "virtio:b"])),
            names(&["acpi:c", "pci:a", "virtio:b"])
        );
    }

    #[test]
    fn deferred_drivers_wait_until_allowed() {
        let (first, later) = (names(&["virtio_blk", "virtio-pci"]), names(&["ahci"]));
        let wanted = ["ahci", "virtio_pci", "snd_hda_intel"];
        let (start, deferred) = pick(wanted, &first, &later, false);
        assert_eq!((start, deferred), (vec!["virtio_pci"], true));
        let (start, deferred) = pick(wanted, &first, &later, true);
        assert_eq!((start, deferred), (vec!["ahci", "virtio_pci"], false));
        // Nothing of the later list present: nothing deferred.
        assert!(!pick(["virtio_blk"], &first, &later, false).1);
    }

    #[test]
    fn a_partition_found_before_the_first_drivers_settle_skips_the_rest() {
        let gate = Gate::new();
        assert!(!gate.settled());
        assert!(gate.decide(Decision::Skip));
        // A later change of mind does not count.
        assert!(!gate.decide(Decision::Load));
        assert_eq!(
            gate.settle_and_wait(Duration::from_secs(60)),
            Decision::Skip
        );
        assert!(gate.settled());
    }

    #[test]
    fn the_search_asks_for_the_rest_after_the_first_drivers_settled() {
        let gate = Arc::new(Gate::new());
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.settle_and_wait(Duration::from_secs(60)))
        };
        // The search sees the first drivers settled, looks, finds nothing.
        while !gate.settled() {
            std::thread::sleep(Duration::from_millis(1));
        }
        gate.decide(Decision::Load);
        assert_eq!(waiter.join().unwrap(), Decision::Load);
    }

    #[test]
    fn without_a_decision_the_deferred_drivers_load_after_a_while() {
        let gate = Gate::new();
        let t = Instant::now();
        assert_eq!(
            gate.settle_and_wait(Duration::from_millis(50)),
            Decision::Load
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(gate.decision(), Decision::Load);
    }
}
