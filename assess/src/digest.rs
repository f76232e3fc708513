//! Digests recorded beside each image when it is written, in `sha256sum`
//! format so a person can check them with coreutils too:
//!
//! - `IMAGE.sha256`: the whole squashfs file; the init checks it before the
//!   root is used.
//! - `IMAGE.boot.sha256`: the kernel and initramfs inside the image, relative
//!   to the image root; GRUB checks them (`sha256sum -c LIST -p (loop)`)
//!   before loading, because a corrupted kernel can halt before any watchdog
//!   is armed.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;

/// Files GRUB loads from inside an image, relative to its root.
pub const BOOT_FILES: [&str; 2] = ["boot/vmlinuz", "boot/initrd.img"];

/// `/cOS/a.img` → `/cOS/a.img.sha256`.
pub fn image_digest_path(image: &str) -> String {
    format!("{image}.sha256")
}

/// `/cOS/a.img` → `/cOS/a.img.boot.sha256`.
pub fn boot_digest_path(image: &str) -> String {
    format!("{image}.boot.sha256")
}

/// One line of a `sha256sum` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: String,
    pub name: String,
}

/// Parses `sha256sum` output: `HEX  NAME` per line (`HEX *NAME` for binary
/// mode is accepted too).
pub fn parse(text: &str) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((hash, rest)) = line.split_once(' ') else {
            bail!("line {}: expected 'SHA256  NAME'", n + 1);
        };
        let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'));
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            bail!(
                "line {}: expected two spaces between digest and name",
                n + 1
            );
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("line {}: '{hash}' is not a SHA-256 digest", n + 1);
        }
        entries.push(Entry {
            sha256: hash.to_ascii_lowercase(),
            name: name.to_string(),
        });
    }
    if entries.is_empty() {
        bail!("no digests");
    }
    Ok(entries)
}

/// Renders a list GRUB 2.06's `sha256sum -c` and coreutils both read.
pub fn render(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| format!("{}  {}\n", e.sha256, e.name))
        .collect()
}

/// The digest a single-entry list records.
pub fn single(text: &str) -> Result<String> {
    let entries = parse(text)?;
    match entries.as_slice() {
        [one] => Ok(one.sha256.clone()),
        _ => bail!("expected one digest, found {}", entries.len()),
    }
}

/// SHA-256 of everything `reader` yields, as lowercase hex, and the length.
pub fn sha256_hex(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

/// SHA-256 of a file, with the file named in the error.
pub fn sha256_file(path: &std::path::Path) -> Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(sha256_hex(file)
        .with_context(|| format!("cannot read {}", path.display()))?
        .0)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_known_value() {
        let (h, n) = sha256_hex(&b"abc"[..]).unwrap();
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn round_trips_a_list() {
        let entries = vec![
            Entry {
                sha256: "a".repeat(64),
                name: "boot/vmlinuz".into(),
            },
            Entry {
                sha256: "b".repeat(64),
                name: "boot/initrd.img".into(),
            },
        ];
        let text = render(&entries);
        assert_eq!(
            text.lines().next().unwrap(),
            format!("{}  boot/vmlinuz", "a".repeat(64))
        );
        assert_eq!(parse(&text).unwrap(), entries);
    }

    #[test]
    fn reads_coreutils_binary_mode_and_uppercase() {
        let text = format!("{} *a.img\n", "AB".repeat(32));
        assert_eq!(single(&text).unwrap(), "ab".repeat(32));
    }

    #[test]
    fn rejects_malformed_lists() {
        assert!(parse("").is_err());
        assert!(parse("xyz  a.img").is_err());
        assert!(parse(&format!("{} a.img", "a".repeat(64))).is_err());
        assert!(parse(&format!("{}  ", "a".repeat(64))).is_err());
        assert!(single(&format!("{0}  a\n{0}  b\n", "a".repeat(64))).is_err());
    }
}
