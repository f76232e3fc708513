//! Loading kernel modules without modprobe: resolve `modules.dep` ourselves,
//! hand the file to finit_module (the kernel decompresses `.ko.xz` where it
//! can), else decompress `.ko.xz`/`.ko.zst`/`.ko.gz` in memory for init_module;
//! with the parameters and blacklists modprobe would apply (modprobe.d, the
//! kernel command line).
#![forbid(unsafe_code)]

mod alias;
mod decompress;
mod index;
mod list;
mod loader;
mod options;
mod uevent;

pub use alias::{fnmatch, present_modaliases, AliasIndex};
pub use decompress::{decompress, decompress_bounded, MAX_MODULE_BYTES};
pub use index::{modules_dir, read_index, ModuleIndex, Planned};
pub use list::ModuleList;
pub use loader::{load_now, Decision, Gate, Loader, Report};
pub use options::{conf_file_names, conf_files, ModuleOptions, CONF_DIRS};
pub use uevent::{added_modalias, Lost, Uevents};

/// A module's name as the kernel knows it: file name without `.ko*`, with
/// `-` turned into `_`.
pub fn module_name(path_or_name: &str) -> String {
    let base = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/crypto/crc32c-generic.ko.zst"),
            "crc32c_generic"
        );
        assert_eq!(module_name("virtio-blk"), "virtio_blk");
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko"), "ext4");
    }
}
