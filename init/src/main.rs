//! PID 1 of the immuboot initramfs. See `boot.rs` for the sequence.
#![forbid(unsafe_code)]

use immuboot_init::{boot, fatal, logger};

fn main() {
    if std::process::id() != 1 {
        eprintln!("immuboot-init is the init of the immuboot initramfs and only runs as PID 1");
        std::process::exit(2);
    }
    logger::install();
    // A panic must not kill PID 1 (the kernel would panic without saying why
    // on most consoles): it takes the fatal path, with the command line's
    // reboot delay and shell once the boot has published them.
    std::panic::set_hook(Box::new(|info| {
        fatal::fatal(
            "internal error",
            &anyhow::anyhow!("{info}"),
            &fatal::POLICY.current(),
        )
    }));
    boot::run()
}
