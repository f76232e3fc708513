//! The kernel command line (bootloader entry, `/proc/cmdline`) and the init's
//! configuration read from it.
//!
//! Invariant: the parse is a fixed point. Writing the parameters back with
//! each one quoted whole and parsing that gives the same parameters and
//! init arguments (quotes only group, `=` splits once, `--` once). Every
//! `MODULE.PARAM` parameter reaches that module's parameter string.
#![no_main]

use immuboot_init::cmdline::Cmdline;
use immuboot_init::config::InitConfig;
use immuboot_kmod::ModuleOptions;
use libfuzzer_sys::fuzz_target;

fn render(c: &Cmdline) -> String {
    let mut out = Vec::new();
    for (k, v) in &c.params {
        match v {
            Some(v) => out.push(format!("\"{k}={v}\"")),
            None => out.push(format!("\"{k}\"")),
        }
    }
    if !c.init_args.is_empty() {
        out.push("--".into());
        out.extend(c.init_args.iter().map(|a| format!("\"{a}\"")));
    }
    out.join(" ")
}

fuzz_target!(|data: &[u8]| {
    let c = Cmdline::parse_bytes(data);
    let _ = InitConfig::from_cmdline(&c);
    for (k, _) in &c.params {
        let _ = c.value(k);
        let _ = c.flag(k);
    }
    let mut options = ModuleOptions::default();
    options.add_kernel_cmdline(&c.params);
    for (k, v) in &c.params {
        let Some((module, param)) = k.split_once('.') else {
            continue;
        };
        if module.is_empty() || param.is_empty() || k == "modprobe.blacklist" {
            continue;
        }
        if k.contains('\0') || v.as_deref().is_some_and(|v| v.contains('\0')) {
            continue;
        }
        let params = options.params(module);
        let params = params.to_string_lossy();
        assert!(params.contains(param), "{k}: {params:?}");
    }
    let again = Cmdline::parse(&render(&c));
    assert_eq!(again, c, "the parse is not a fixed point");
});
