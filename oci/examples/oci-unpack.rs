//! Unpacks an image into a directory, printing progress:
//! `oci-unpack [--plain-http] SOURCE DEST`. A manual check of the library
//! (and of static linking) outside the tests.

use std::io::Write;
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let plain_http = args.iter().any(|a| a == "--plain-http");
    args.retain(|a| a != "--plain-http");
    let [source, dest] = args.as_slice() else {
        anyhow::bail!("usage: oci-unpack [--plain-http] SOURCE DEST");
    };
    let source = immuboot_oci::ImageSource::parse(source, plain_http)?;
    let image = immuboot_oci::unpack(&source, Path::new(dest), &mut |p| {
        let total = p.total.map(|t| format!("/{t}")).unwrap_or_default();
        eprint!(
            "\r{} layer {}/{}: {}{} bytes   ",
            p.phase, p.layer, p.layers, p.done, total
        );
        let _ = std::io::stderr().flush();
    })?;
    eprintln!();
    println!("{image:#?}");
    Ok(())
}
