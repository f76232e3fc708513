//! Module parameters and blacklists, as modprobe takes them, so that a
//! module the init loads gets the parameters it would get from modprobe:
//!
//! - `options MODULE PARAMS…` and `blacklist MODULE` lines of the
//!   modprobe.d files (`/etc/modprobe.d`, `/run/modprobe.d`,
//!   `/usr/local/lib/modprobe.d`, `/usr/lib/modprobe.d`,
//!   `/lib/modprobe.d`; files sorted by name, a name in an earlier
//!   directory hiding the same name in a later one);
//! - then `MODULE.PARAM=VALUE` and `modprobe.blacklist=A,B` on the kernel
//!   command line. They come after the files, so a parameter set in both
//!   takes the command line's value (the kernel applies the last one);
//! - the kernel's own `module_blacklist=A,B`: the kernel refuses to load
//!   those, so the init does not try and says why.
//!
//! As with modprobe, a blacklist keeps a module from being loaded for a
//! device's alias (the `[hardware]` drivers), not when it is named: an
//! `[always]` module or a dependency still loads. Other modprobe.d
//! commands (`install`, `remove`, `alias`, `softdep`) run shell commands or
//! rename modules; the init has no shell and ignores them.

use crate::module_name;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The modprobe.d directories, in precedence order, relative to the root.
pub const CONF_DIRS: [&str; 5] = [
    "etc/modprobe.d",
    "run/modprobe.d",
    "usr/local/lib/modprobe.d",
    "usr/lib/modprobe.d",
    "lib/modprobe.d",
];

/// Parameters and blacklists for modules, by module name (`-` read as `_`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleOptions {
    /// Parameters in the order given, files first.
    params: BTreeMap<String, Vec<String>>,
    /// Not loaded for a device's alias (`blacklist`, `modprobe.blacklist=`).
    blacklist: BTreeSet<String>,
    /// Refused by the kernel (`module_blacklist=`).
    refused: BTreeSet<String>,
}

/// A parameter as the kernel reads it from a module's parameter string:
/// a value with spaces in double quotes.
fn param_word(name: &str, value: Option<&str>) -> String {
    match value {
        None => name.to_string(),
        Some(v) if v.chars().any(|c| c.is_ascii_whitespace()) => format!("{name}=\"{v}\""),
        Some(v) => format!("{name}={v}"),
    }
}

fn names(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(module_name)
}

impl ModuleOptions {
    /// Reads one modprobe.d file's text; `source` names it in the warnings
    /// about lines that are not understood (returned, one per line).
    pub fn parse_conf(&mut self, source: &str, text: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut joined = String::new();
        let mut first_line = 0;
        for (i, raw) in text.lines().enumerate() {
            if joined.is_empty() {
                first_line = i + 1;
            }
            // A backslash at the end of a line continues it on the next.
            if let Some(head) = raw.strip_suffix('\\') {
                joined.push_str(head);
                joined.push(' ');
                continue;
            }
            joined.push_str(raw);
            let line = std::mem::take(&mut joined);
            if let Err(why) = self.conf_line(&line) {
                warnings.push(format!("{source} line {first_line}: {why}"));
            }
        }
        if !joined.is_empty() {
            if let Err(why) = self.conf_line(&joined) {
                warnings.push(format!("{source} line {first_line}: {why}"));
            }
        }
        warnings
    }

    fn conf_line(&mut self, line: &str) -> Result<(), String> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        if line.contains('\0') {
            return Err("a NUL byte; line ignored".into());
        }
        let (command, rest) = line
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((line, ""));
        let rest = rest.trim();
        let (module, args) = rest
            .split_once(|c: char| c.is_ascii_whitespace())
            .map(|(m, a)| (m, a.trim()))
            .unwrap_or((rest, ""));
        match command {
            "options" if !module.is_empty() && !args.is_empty() => {
                self.params
                    .entry(module_name(module))
                    .or_default()
                    .push(args.replace('\t', " "));
                Ok(())
            }
            "blacklist" if !module.is_empty() && args.is_empty() => {
                self.blacklist.insert(module_name(module));
                Ok(())
            }
            "options" => Err("expected `options MODULE PARAM=VALUE…`; line ignored".into()),
            "blacklist" => Err("expected `blacklist MODULE`; line ignored".into()),
            "install" | "remove" | "alias" | "softdep" => Ok(()),
            other => Err(format!("unknown command `{other}`; line ignored")),
        }
    }

    /// Takes the module parameters of a kernel command line (split as the
    /// kernel splits it: name and value, quotes removed), as modprobe does:
    /// a name with a dot is `MODULE.PARAM` (`rd.driver.pre` reads as
    /// module `rd`, which no module is called).
    pub fn add_kernel_cmdline(&mut self, params: &[(String, Option<String>)]) {
        for (key, value) in params {
            // /proc/cmdline has none; a NUL would cut the parameter string.
            if key.contains('\0') || value.as_deref().is_some_and(|v| v.contains('\0')) {
                continue;
            }
            if key == "module_blacklist" {
                self.refused
                    .extend(value.as_deref().map(names).into_iter().flatten());
                continue;
            }
            let Some((module, param)) = key.split_once('.') else {
                continue;
            };
            if module.is_empty() || param.is_empty() {
                continue;
            }
            if module == "modprobe" && param == "blacklist" {
                self.blacklist
                    .extend(value.as_deref().map(names).into_iter().flatten());
                continue;
            }
            self.params
                .entry(module_name(module))
                .or_default()
                .push(param_word(param, value.as_deref()));
        }
    }

    /// The options of the modprobe.d files under `root`, then those of the
    /// kernel command line; warnings about the files' lines and files that
    /// could not be read.
    pub fn read(root: &Path, cmdline: &[(String, Option<String>)]) -> (ModuleOptions, Vec<String>) {
        let mut options = ModuleOptions::default();
        let mut warnings = Vec::new();
        for path in conf_files(root) {
            match std::fs::read_to_string(&path) {
                Ok(text) => warnings.extend(options.parse_conf(&path.display().to_string(), &text)),
                Err(e) => warnings.push(format!("cannot read {}: {e}", path.display())),
            }
        }
        options.add_kernel_cmdline(cmdline);
        (options, warnings)
    }

    /// The parameter string for loading `module` (empty without options).
    pub fn params(&self, module: &str) -> CString {
        let text = self
            .params
            .get(&module_name(module))
            .map(|p| p.join(" "))
            .unwrap_or_default();
        // No NUL can be in it: lines and parameters with one are refused.
        CString::new(text).unwrap_or_default()
    }

    /// Whether `module` is not to be loaded for a device's alias.
    pub fn is_blacklisted(&self, module: &str) -> bool {
        self.blacklist.contains(&module_name(module))
    }

    /// Whether the kernel refuses `module` (`module_blacklist=`).
    pub fn is_refused(&self, module: &str) -> bool {
        self.refused.contains(&module_name(module))
    }

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty() && self.blacklist.is_empty() && self.refused.is_empty()
    }
}

/// The modprobe.d file names in the order modprobe reads them, each with
/// the directory of [`CONF_DIRS`] it is taken from: `*.conf` sorted by file
/// name, a name in an earlier directory hiding the same name in a later
/// one. `dir_path` says where a directory of [`CONF_DIRS`] is (the build
/// resolves it inside the image); a directory that cannot be read has no
/// files.
pub fn conf_file_names<E>(
    mut dir_path: impl FnMut(&str) -> Result<PathBuf, E>,
) -> Result<Vec<(&'static str, String)>, E> {
    let mut by_name: BTreeMap<String, &'static str> = BTreeMap::new();
    for dir in CONF_DIRS {
        let Ok(entries) = std::fs::read_dir(dir_path(dir)?) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".conf") && !name.starts_with('.') {
                by_name.entry(name).or_insert(dir);
            }
        }
    }
    Ok(by_name.into_iter().map(|(name, dir)| (dir, name)).collect())
}

/// The modprobe.d files under `root` in the order they are read
/// ([`conf_file_names`]); a link to /dev/null in /etc hides a
/// distribution's file, as with systemd's configuration files.
pub fn conf_files(root: &Path) -> Vec<PathBuf> {
    let Ok(names) = conf_file_names(|dir| Ok::<_, std::convert::Infallible>(root.join(dir)));
    // Only files are read: /dev/null, a dangling link or a directory hides.
    names
        .into_iter()
        .map(|(dir, name)| root.join(dir).join(name))
        .filter(|p| p.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(line: &str) -> Vec<(String, Option<String>)> {
        line.split_whitespace()
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (p.to_string(), None),
            })
            .collect()
    }

    #[test]
    fn files_give_options_and_blacklists() {
        let mut o = ModuleOptions::default();
        let warnings = o.parse_conf(
            "a.conf",
            "# comment\n\
             options loop max_loop=1\n\
             options\tvirtio-blk  queue_depth=64\tpoll_queues=1\n\
             blacklist i6300esb\n\
             install usb-storage /bin/true\n\
             alias my-disk virtio_blk\n\
             options nvme \\\n  io_timeout=60\n\
             \n",
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(o.params("loop").to_str().unwrap(), "max_loop=1");
        assert_eq!(
            o.params("virtio_blk").to_str().unwrap(),
            "queue_depth=64 poll_queues=1"
        );
        assert_eq!(o.params("nvme").to_str().unwrap(), "io_timeout=60");
        assert!(o.is_blacklisted("i6300esb"));
        assert!(!o.is_blacklisted("virtio_blk"));
        assert_eq!(o.params("ext4").to_str().unwrap(), "");
        // install/alias are not applied: no options, no blacklist.
        assert!(!o.is_blacklisted("usb_storage"));
    }

    #[test]
    fn bad_lines_are_named_with_their_file_and_line_and_skipped() {
        let mut o = ModuleOptions::default();
        let warnings = o.parse_conf(
            "/etc/modprobe.d/x.conf",
            "options loop\nblacklist a b\nfrobnicate loop\noptions loop max_loop=2\n",
        );
        assert_eq!(
            warnings,
            [
                "/etc/modprobe.d/x.conf line 1: expected `options MODULE PARAM=VALUE…`; line ignored",
                "/etc/modprobe.d/x.conf line 2: expected `blacklist MODULE`; line ignored",
                "/etc/modprobe.d/x.conf line 3: unknown command `frobnicate`; line ignored",
            ]
        );
        assert_eq!(o.params("loop").to_str().unwrap(), "max_loop=2");
        assert!(!o.is_blacklisted("a"));
        let warnings = o.parse_conf("y.conf", "options loop a=\0b\n");
        assert_eq!(warnings, ["y.conf line 1: a NUL byte; line ignored"]);
    }

    #[test]
    fn the_kernel_command_line_comes_after_the_files() {
        let mut o = ModuleOptions::default();
        o.parse_conf("a.conf", "options loop max_loop=1\n");
        o.add_kernel_cmdline(&cmdline(
            "root=LABEL=COS_STATE loop.max_loop=4 virtio-blk.poll_queues=2 \
             i6300esb.nowayout modprobe.blacklist=ahci,snd-hda-intel \
             module_blacklist=floppy rd.driver.pre=ext4 quiet .x=1 y.=2",
        ));
        // The kernel takes the last value: the command line's.
        assert_eq!(o.params("loop").to_str().unwrap(), "max_loop=1 max_loop=4");
        assert_eq!(o.params("virtio_blk").to_str().unwrap(), "poll_queues=2");
        assert_eq!(o.params("i6300esb").to_str().unwrap(), "nowayout");
        assert!(o.is_blacklisted("ahci") && o.is_blacklisted("snd_hda_intel"));
        assert!(o.is_refused("floppy") && !o.is_blacklisted("floppy"));
        assert!(!o.is_refused("ahci"));
        assert_eq!(o.params("rd").to_str().unwrap(), "driver.pre=ext4");
        assert_eq!(o.params("root").to_str().unwrap(), "");
        assert_eq!(o.params("").to_str().unwrap(), "");
        assert_eq!(o.params("y").to_str().unwrap(), "");
    }

    #[test]
    fn a_value_with_spaces_is_quoted_for_the_kernel() {
        let mut o = ModuleOptions::default();
        o.add_kernel_cmdline(&[("dummy.names".into(), Some("a b".into()))]);
        assert_eq!(o.params("dummy").to_str().unwrap(), "names=\"a b\"");
        assert!(!o.is_empty());
        assert!(ModuleOptions::default().is_empty());
    }

    #[test]
    fn conf_files_take_the_first_directory_for_a_name_in_name_order() {
        let root = std::env::temp_dir().join(format!("immuboot-modprobe-d-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write(
            "usr/lib/modprobe.d/50-loop.conf",
            "options loop max_loop=8\n",
        );
        write("etc/modprobe.d/50-loop.conf", "options loop max_loop=1\n");
        write("lib/modprobe.d/10-blacklist.conf", "blacklist pcspkr\n");
        write("run/modprobe.d/90-late.conf", "options loop max_part=4\n");
        write("etc/modprobe.d/README", "not a .conf file\n");
        // Masked: a link to /dev/null hides the distribution's file.
        write(
            "usr/lib/modprobe.d/60-dummy.conf",
            "options dummy numdummies=0\n",
        );
        std::os::unix::fs::symlink("/dev/null", root.join("etc/modprobe.d/60-dummy.conf")).unwrap();
        std::fs::create_dir_all(root.join("etc/modprobe.d/dir.conf")).unwrap();
        let files = conf_files(&root);
        assert_eq!(
            files,
            [
                root.join("lib/modprobe.d/10-blacklist.conf"),
                root.join("etc/modprobe.d/50-loop.conf"),
                root.join("run/modprobe.d/90-late.conf"),
            ]
        );
        let (o, warnings) = ModuleOptions::read(&root, &cmdline("loop.max_loop=2"));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            o.params("loop").to_str().unwrap(),
            "max_loop=1 max_part=4 max_loop=2"
        );
        assert!(o.is_blacklisted("pcspkr"));
        assert_eq!(o.params("dummy").to_str().unwrap(), "");
        std::fs::remove_dir_all(&root).unwrap();
        assert!(conf_files(&root).is_empty());
    }
}
