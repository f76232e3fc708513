//! immuboot's init. Three ways to start it:
//! - as PID 1 of immuboot's own initramfs (no arguments): the whole boot,
//!   see `boot.rs`;
//! - as `immuboot-generator NORMAL EARLY LATE` (a link by that name, in
//!   dracut's initrd): writes the units that make systemd run the boot;
//! - as `immuboot-init --dracut` (`immuboot-initrd.service`): the same boot
//!   inside dracut's initrd, where systemd switches root;
//! - as `immuboot-init --wake-initqueue` (`immuboot-initqueue-wake.service`):
//!   makes dracut's initqueue look again once the image partition is there.
#![forbid(unsafe_code)]

use immuboot_init::{boot, fatal, generator, logger};

const USAGE: &str = "immuboot-init is the init of the immuboot initramfs (PID 1, no arguments); \
in a dracut initramfs it runs as `immuboot-init --dracut` (immuboot-initrd.service), as \
`immuboot-init --wake-initqueue` (immuboot-initqueue-wake.service) and as immuboot-generator \
(a systemd generator)";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    logger::install();
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if called == "immuboot-generator" {
        // Generators run before any unit; the kernel log is where their
        // errors can be read.
        logger::attach_kmsg();
        std::process::exit(generator::main(&args[1..]));
    }
    let in_initrd = match (std::process::id(), &args[1..]) {
        (1, []) => false,
        (pid, [flag]) if pid != 1 && flag == "--dracut" => true,
        (pid, [flag]) if pid != 1 && flag == "--wake-initqueue" => wake_initqueue(),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    // A panic must not kill PID 1 (the kernel would panic without saying why
    // on most consoles) nor fail the initrd service silently: it takes the
    // fatal path, with the command line's reboot delay and shell once the
    // boot has published them.
    std::panic::set_hook(Box::new(|info| {
        fatal::fatal(
            "internal error",
            &anyhow::anyhow!("{info}"),
            &fatal::POLICY.current(),
        )
    }));
    if in_initrd {
        boot::run_in_initrd();
    } else {
        boot::run()
    }
}

/// `immuboot-init --wake-initqueue` (immuboot-initqueue-wake.service). Not
/// the boot: a failure exits with an error, never the fatal path's reboot.
fn wake_initqueue() -> ! {
    let woken = generator::wake_initqueue(
        std::path::Path::new(generator::INITQUEUE_DIR),
        std::path::Path::new(generator::UDEV_RUN_DIR),
    );
    if let Err(e) = woken {
        // The service's output goes to the journal and the console.
        eprintln!("immuboot: cannot wake dracut's initqueue: {e:#}");
        std::process::exit(1);
    }
    std::process::exit(0)
}
