//! `immuboot-upgrade-generator`: the image's systemd generator of
//! unattended upgrades (see `immuboot_cli::generator`).
#![forbid(unsafe_code)]

use immuboot_cli::generator;

fn main() {
    let result = generator::parse_args(std::env::args_os().skip(1))
        .and_then(|args| generator::generate(&args));
    if let Err(e) = result {
        eprintln!("{}: {e:#}", generator::NAME);
        std::process::exit(1);
    }
}
