//! sha256 digests: parsing, hashing readers/writers, verification.

use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

/// Returns the hex part of a `sha256:HEX` digest, refusing anything else.
/// The hex part becomes a file name (`blobs/sha256/HEX`), so it is checked
/// strictly: exactly 64 lowercase hex digits.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        bail!("malformed digest {digest:?}: expected sha256:HEX");
    };
    if algorithm != "sha256" {
        bail!("unsupported digest algorithm {algorithm:?} in {digest:?}: only sha256 is supported");
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("malformed digest {digest:?}: expected 64 lowercase hex digits");
    }
    Ok(hex)
}

pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks in-memory blob content against its descriptor.
pub(crate) fn verify_bytes(
    bytes: &[u8],
    digest: &str,
    size: Option<u64>,
    what: &str,
) -> Result<()> {
    let actual = sha256_of(bytes);
    check(&actual, bytes.len() as u64, digest, size, what)
}

/// Compares what was read with what the descriptor promised.
pub(crate) fn check(
    actual: &str,
    len: u64,
    digest: &str,
    size: Option<u64>,
    what: &str,
) -> Result<()> {
    if actual != digest {
        bail!("digest mismatch for {what}: blob {digest} has content hashing to {actual} (corrupt or tampered blob)");
    }
    if let Some(size) = size {
        if size != len {
            bail!("size mismatch for {what}: blob {digest} is {len} bytes, the descriptor says {size}");
        }
    }
    Ok(())
}

/// A reader that hashes and counts what passes through it.
pub(crate) struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Reads the rest (tar readers stop at the end-of-archive marker, the
    /// digest covers the padding after it too) and returns digest and length.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.len,
        ))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    pub(crate) fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.len)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes a whole reader and checks it against a descriptor.
pub(crate) fn verify_reader(
    reader: impl Read,
    digest: &str,
    size: Option<u64>,
    what: &str,
) -> Result<()> {
    let (actual, len) = HashReader::new(reader)
        .finish()
        .with_context(|| format!("reading {what}"))?;
    check(&actual, len, digest, size, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parsing() {
        let hex = "a".repeat(64);
        assert_eq!(sha256_hex(&format!("sha256:{hex}")).unwrap(), hex);
        assert!(sha256_hex("sha512:abcd").is_err());
        assert!(sha256_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(sha256_hex("sha256:../../etc/passwd").is_err());
        assert!(sha256_hex("nocolon").is_err());
    }

    #[test]
    fn verify() {
        let d = sha256_of(b"hello");
        verify_bytes(b"hello", &d, Some(5), "blob").unwrap();
        let e = verify_bytes(b"hellO", &d, Some(5), "layer 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 1") && e.contains(&d), "{e}");
        assert!(verify_bytes(b"hello", &d, Some(6), "blob").is_err());
        verify_reader(&b"hello"[..], &d, None, "blob").unwrap();
    }
}
