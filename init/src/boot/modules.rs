//! Kernel modules during the boot: loaded in the background from the
//! initramfs' list, and the system calls that wait for the module they need
//! (a mount waits only for its file system's module).

use super::Boot;
use crate::config::InitConfig;
use anyhow::{Context, Result};
use immuboot_kmod as kmod;
use immuboot_mount::plan::MountFlags;
use immuboot_mount::syscall::{LinuxSyscall, Syscall};
use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Modules the initramfs loads, one name a line (written by the image build).
pub const MODULE_LIST: &str = "/etc/immuboot/modules";

/// The system calls of the boot, waiting for a file system's module (still
/// loading in the background) before mounting that file system.
#[derive(Default)]
pub struct InitSyscall {
    linux: LinuxSyscall,
    modules: RefCell<Option<kmod::Loader>>,
    /// Module parameters and blacklists (modprobe.d, the command line).
    options: RefCell<Arc<kmod::ModuleOptions>>,
    /// Problems of the loads a mount waited for: logged when they came,
    /// kept for the boot facts.
    logged_module_warnings: RefCell<Vec<String>>,
}

/// File systems whose modules the initramfs carries but does not load at
/// every boot (`[on-demand]`), with what a mount of them needs: vfat mounts
/// ask the kernel for the default codepage and charset (Debian: 437,
/// ascii), which it cannot load by itself without modprobe.
pub fn on_demand_modules(fstype: &str) -> &'static [&'static str] {
    match fstype {
        "vfat" => &["vfat", "nls_cp437", "nls_ascii"],
        _ => &[],
    }
}

impl InitSyscall {
    /// The parameters and blacklists modules load with.
    pub fn module_options(&self) -> Arc<kmod::ModuleOptions> {
        self.options.borrow().clone()
    }

    /// Loads the on-demand modules a mount of `fstype` needs (a COS_OEM
    /// made with vfat, as many installs have it).
    fn load_for_fstype(&self, fstype: &str) {
        let options = self.module_options();
        for name in on_demand_modules(fstype) {
            match kmod::modules_dir().and_then(|d| kmod::load_now(&d, name, &options)) {
                Ok(report) => {
                    for e in report.errors {
                        log::warn!("kernel module for {fstype}: {e}");
                    }
                }
                Err(e) => log::warn!("kernel module {name} for {fstype}: {e:#}"),
            }
        }
    }

    /// Where the search for the image partition tells the module loader
    /// whether the deferred disk drivers are needed (none without one).
    pub fn disk_gate(&self) -> Option<std::sync::Arc<kmod::Gate>> {
        self.modules.borrow().as_ref().map(kmod::Loader::gate)
    }

    pub fn need_module(&self, name: &str) {
        if let Some(loader) = self.modules.borrow_mut().as_mut() {
            loader.wait_for(name);
            for e in loader.take_errors() {
                let warning = format!("kernel module: {e}");
                log::warn!("{warning}");
                self.logged_module_warnings.borrow_mut().push(warning);
            }
        }
    }
}

impl Syscall for InitSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        self.need_module(fstype);
        self.load_for_fstype(fstype);
        self.linux.mount(source, target, fstype, flags, data)
    }
    fn bind(&self, source: &Path, target: &Path) -> io::Result<()> {
        self.linux.bind(source, target)
    }
    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.linux.mkdir_all(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.linux.exists(path)
    }
    fn file_kind(&self, path: &Path) -> Option<immuboot_mount::syscall::FileKind> {
        self.linux.file_kind(path)
    }
    fn copy_tree(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.linux.copy_tree(from, to)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.linux.rename(from, to)
    }
    fn remount(&self, target: &Path, flags: MountFlags) -> io::Result<()> {
        self.linux.remount(target, flags)
    }
    fn is_read_only(&self, path: &Path) -> io::Result<bool> {
        self.linux.is_read_only(path)
    }
    fn attach_loop(&self, image: &Path) -> io::Result<PathBuf> {
        self.need_module("loop");
        self.linux.attach_loop(image)
    }
    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        self.linux.write_file(path, contents)
    }
    fn move_mount(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.linux.move_mount(from, to)
    }
}

/// Starts loading the initramfs' module list (plus `immuboot.modules=`) in
/// the background, with the parameters and blacklists of the initramfs'
/// modprobe.d files and the command line; mounts wait for the module of
/// their file system.
pub fn start(b: &mut Boot, cfg: &InitConfig) -> Result<()> {
    let (options, warnings) = kmod::ModuleOptions::read(Path::new("/"), &cfg.kernel_params);
    for w in warnings {
        b.warn(format!("module options: {w}"));
    }
    let options = Arc::new(options);
    *b.sys.options.borrow_mut() = options.clone();
    let mut list = match std::fs::read_to_string(MODULE_LIST) {
        Ok(text) => kmod::ModuleList::parse(&text).with_context(|| format!("in {MODULE_LIST}"))?,
        Err(_) => kmod::ModuleList::default(),
    };
    list.always.extend(cfg.extra_modules.iter().cloned());
    if booted_through_uefi(Path::new("/sys")) {
        let efi = std::mem::take(&mut list.efi);
        list.always.extend(efi);
    }
    if list.always.is_empty() && list.hardware.is_empty() {
        return Ok(());
    }
    let dir = kmod::modules_dir()?;
    *b.sys.modules.borrow_mut() = Some(kmod::Loader::start(&dir, &list, options)?);
    Ok(())
}

/// Whether the firmware booted the kernel through UEFI, as systemd decides
/// before it mounts efivarfs (`/sys/firmware/efi` exists). `sys` is where
/// sysfs is mounted.
pub fn booted_through_uefi(sys: &Path) -> bool {
    sys.join("firmware/efi").is_dir()
}

/// Waits for the modules still loading (storage drivers probing their
/// hardware) so no load is in flight at switch_root; reports failures, and
/// those logged while a mount waited, in the boot facts.
pub fn finish(b: &mut Boot) {
    let logged = b.sys.logged_module_warnings.take();
    b.facts.warnings.extend(logged);
    let Some(mut loader) = b.sys.modules.borrow_mut().take() else {
        return;
    };
    let report = loader.finish();
    log::info!("loaded {} kernel modules", report.loaded);
    for e in report.errors.clone() {
        b.warn(format!("kernel module: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a mount loads on demand must be in the initramfs' list, in its
    /// `[on-demand]` section (else the load fails at boot, not here).
    #[test]
    fn on_demand_modules_of_a_mount_are_carried() {
        let list =
            kmod::ModuleList::parse(include_str!("../../../image/initramfs-modules")).unwrap();
        for fstype in ["vfat", "ext4", "squashfs"] {
            for name in on_demand_modules(fstype) {
                assert!(
                    list.on_demand.iter().any(|m| m == name),
                    "{name} (for {fstype}) is not in [on-demand]"
                );
            }
        }
        assert_eq!(on_demand_modules("vfat").len(), 3);
    }

    #[test]
    fn uefi_is_told_by_sysfs() {
        let sys = std::env::temp_dir().join(format!("immuboot-sysfs-{}", std::process::id()));
        std::fs::create_dir_all(sys.join("firmware")).unwrap();
        assert!(!booted_through_uefi(&sys));
        std::fs::create_dir_all(sys.join("firmware/efi")).unwrap();
        assert!(booted_through_uefi(&sys));
        std::fs::remove_dir_all(&sys).unwrap();
    }

    /// In dracut's initramfs the init loads the dracut module's list: what
    /// the layout mounts needs, each module put in by module-setup.sh (a
    /// module left out fails at boot, not here).
    #[test]
    fn the_dracut_modules_list_is_what_the_layout_needs_and_is_installed() {
        let list = kmod::ModuleList::parse(include_str!(
            "../../../dracut-module/90immuboot/immuboot-modules"
        ))
        .unwrap();
        for needed in ["ext4", "loop", "squashfs", "overlay"] {
            assert!(list.always.iter().any(|m| m == needed), "{needed}");
        }
        assert!(list.hardware.is_empty() && list.hardware_if_needed.is_empty());
        let setup = include_str!("../../../dracut-module/90immuboot/module-setup.sh");
        let installed: Vec<&str> = setup
            .lines()
            .filter(|l| l.trim_start().starts_with("hostonly='' instmods "))
            .flat_map(|l| l.split_whitespace().skip(2))
            .collect();
        for name in list
            .all()
            .iter()
            .map(String::as_str)
            .chain(["vfat", "softdog"])
        {
            assert!(
                installed.contains(&name),
                "{name} is not installed: {installed:?}"
            );
        }
        assert!(setup.contains("\"$moddir/immuboot-modules\" /etc/immuboot/modules"));
        assert_eq!(MODULE_LIST, "/etc/immuboot/modules");
    }
}
