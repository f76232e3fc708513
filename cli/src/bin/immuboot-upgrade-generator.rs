//! `immuboot-upgrade-generator`: the image's systemd generator of
//! unattended upgrades (see `immuboot_cli::generator`).
#![forbid(unsafe_code)]

use immuboot_cli::generator;

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if generator::asks_for_help(&args) {
        println!("{}", generator::USAGE);
        return;
    }
    let result = generator::parse_args(args).and_then(|args| generator::generate(&args));
    if let Err(e) = result {
        eprintln!("{}: {e:#}", generator::NAME);
        std::process::exit(1);
    }
}
