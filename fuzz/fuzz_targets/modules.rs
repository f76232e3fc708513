//! modules.dep, modules.builtin, modules.softdep and modules.alias (from
//! the kernel package's depmod run), a device's modalias (from sysfs), and
//! a modprobe.d file. The input is those six parts joined by the separator
//! line.
//!
//! Invariants: a load order names each module file once, and names every
//! wanted module that is not built in. A modprobe.d line `options MODULE
//! PARAMS` (one line, no NUL) puts PARAMS into MODULE's parameter string.
#![no_main]

use immuboot_fuzz::split;
use immuboot_kmod::{fnmatch, module_name, AliasIndex, ModuleIndex, ModuleOptions};
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;

fuzz_target!(|data: &[u8]| {
    let parts: Vec<String> = split(data)
        .into_iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let part = |i: usize| parts.get(i).map(String::as_str).unwrap_or("");
    let (dep, builtin, softdep, alias, modalias) = (part(0), part(1), part(2), part(3), part(4));
    let modprobe_d = part(5);
    let mut options = ModuleOptions::default();
    let _ = options.parse_conf("fuzz.conf", modprobe_d);
    let mut continued = false;
    for line in modprobe_d.lines() {
        let joins = continued || line.ends_with('\\');
        continued = line.ends_with('\\');
        if joins || line.contains('\0') {
            continue;
        }
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        if words.len() >= 3 && words[0] == "options" {
            let params = options.params(words[1]);
            let params = params.to_string_lossy();
            assert!(params.contains(words[2]), "{line:?}: {params:?}");
        }
    }

    let index = ModuleIndex::parse(dep, builtin).with_softdeps(softdep, alias);
    // The names depmod's lines give, as the list of wanted modules.
    let wanted: Vec<String> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(path, _)| module_name(path.trim()))
        .take(16)
        .collect();
    if let Ok(order) = index.load_order(&wanted) {
        let mut seen = HashSet::new();
        for p in &order {
            assert!(seen.insert(p.path.clone()), "{} planned twice", p.path);
        }
        // Every wanted module that is not built in is planned (its path
        // as the last modules.dep line for its name gives it).
        for name in &wanted {
            if index.is_builtin(name) {
                continue;
            }
            let path = dep
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(p, _)| p.trim())
                .filter(|p| !p.is_empty() && module_name(p) == *name)
                .last();
            if let Some(path) = path {
                assert!(
                    order.iter().any(|p| p.path == path),
                    "{name} ({path}) not planned"
                );
            }
        }
    }
    let aliases = AliasIndex::parse(alias);
    let _ = aliases.modules_for(modalias);
    for line in alias.lines().take(8) {
        if let Some(pattern) = line.split_whitespace().nth(1) {
            let _ = fnmatch(pattern, modalias);
        }
    }
});
