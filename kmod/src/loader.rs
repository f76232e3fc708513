//! Loading modules: init_module for each file of a load order, in threads
//! so slow driver probes overlap with the rest of the boot.

use crate::alias::{present_modaliases, AliasIndex};
use crate::decompress::decompress;
use crate::index::{read_index, ModuleIndex, Planned};
use crate::list::ModuleList;
use crate::module_name;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::path::Path;

/// Loads one module file; `Ok(false)` if it was loaded already.
fn load_file(dir: &Path, rel: &str) -> Result<bool> {
    let path = dir.join(rel);
    let data = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let image =
        decompress(rel, data).with_context(|| format!("cannot decompress {}", path.display()))?;
    match rustix::system::init_module(&image, c"") {
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
