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
        // A control character (a lone '\r' at the end of the text, which
        // `lines` keeps) would not survive rendering and reading the list
        // again; sha256sum escapes such names, image files never have them.
        if name.chars().any(char::is_control) {
            bail!("line {}: the name {name:?} has a control character", n + 1);
        }
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

/// A reader that hashes and counts what passes through it: the one SHA-256
/// read loop of the image writer, its read-back check and [`sha256_hex`].
/// Callers that do more with each chunk (write it, report progress, feed a
/// signature verifier) read with [`HashingReader::next_chunk`].
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the next chunk into `buf` (retrying when interrupted), hashed;
    /// `None` at the end.
    pub fn next_chunk<'b>(&mut self, buf: &'b mut [u8]) -> std::io::Result<Option<&'b [u8]>> {
        loop {
            match self.read(buf) {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The SHA-256 of what was read, as lowercase hex, and its length.
    pub fn finish(self) -> (String, u64) {
        (hex(&self.hasher.finalize()), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// The buffer size of the image readers and writers.
pub const CHUNK: usize = 1 << 20;

/// SHA-256 of everything `reader` yields, as lowercase hex, and the length.
pub fn sha256_hex(reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut reader = HashingReader::new(reader);
    let mut buf = vec![0u8; CHUNK];
    while reader.next_chunk(&mut buf)?.is_some() {}
    Ok(reader.finish())
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

    /// Reads one byte at a time and fails with EINTR every other call.
    struct Stuttering<'a>(&'a [u8], bool);

    impl Read for Stuttering<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = self.0.len().min(buf.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn hashing_reader_hands_out_every_chunk_and_retries_interrupts() {
        let mut r = HashingReader::new(Stuttering(b"abc", false));
        let mut buf = [0u8; 8];
        let mut seen = Vec::new();
        while let Some(chunk) = r.next_chunk(&mut buf).unwrap() {
            seen.extend_from_slice(chunk);
            assert_eq!(r.len(), seen.len() as u64);
        }
        assert_eq!(seen, b"abc");
        assert_eq!(r.finish(), sha256_hex(&b"abc"[..]).unwrap());
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

    /// Found by the `digest_list` fuzz target: a name ending in a lone '\r'
    /// parsed, but rendered and read back it lost the '\r'.
    #[test]
    fn names_with_control_characters_are_refused() {
        let h = "a".repeat(64);
        let err = parse(&format!("{h}  a.img\r")).unwrap_err();
        assert!(err.to_string().contains("control character"), "{err}");
        assert!(parse(&format!("{h}  a\tb\n")).is_err());
        // CRLF line ends are still line ends.
        assert_eq!(parse(&format!("{h}  a.img\r\n")).unwrap()[0].name, "a.img");
    }
}
