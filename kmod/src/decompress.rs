//! Module files as the kernel wants them: `.ko.xz`, `.ko.zst` and `.ko.gz`
//! are decompressed in memory, since init_module takes an ELF image.

use anyhow::{Context, Result};
use std::io::{Read, Write};

/// The largest module image accepted after decompression. The biggest
/// modules of a distribution kernel (GPU drivers) are tens of MiB; a file
/// that decompresses to more is corrupt or hostile and is refused before it
/// is allocated, instead of taking the init's memory with it.
pub const MAX_MODULE_BYTES: usize = 128 << 20;

/// Returns the module's ELF image, decompressing by file extension.
pub fn decompress(path: &str, data: Vec<u8>) -> Result<Vec<u8>> {
    decompress_bounded(path, data, MAX_MODULE_BYTES)
}

/// [`decompress`] with the bound on the decompressed size as a parameter.
pub fn decompress_bounded(path: &str, data: Vec<u8>, limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(3).min(limit));
    let too_big = || {
        anyhow::anyhow!(
            "{path} decompresses to more than {limit} bytes; refused as corrupt \
             (no kernel module is that large)"
        )
    };
    if path.ends_with(".xz") {
        let mut w = Bounded {
            out: &mut out,
            limit,
            exceeded: false,
        };
        let r = lzma_rs::xz_decompress(&mut data.as_slice(), &mut w);
        if w.exceeded {
            return Err(too_big());
        }
        r.map_err(|e| anyhow::anyhow!("xz: {e:?}"))?;
    } else if path.ends_with(".zst") {
        let decoder = ruzstd::decoding::StreamingDecoder::new(data.as_slice())
            .map_err(|e| anyhow::anyhow!("zstd: {e}"))?;
        read_bounded(decoder, &mut out, limit).context("zstd")?;
    } else if path.ends_with(".gz") {
        read_bounded(
            flate2::read::GzDecoder::new(data.as_slice()),
            &mut out,
            limit,
        )
        .context("gzip")?;
    } else {
        return Ok(data);
    }
    if out.len() > limit {
        return Err(too_big());
    }
    Ok(out)
}

/// Reads at most one byte more than `limit`, so the caller sees the excess
/// without the rest being decompressed.
fn read_bounded(r: impl Read, out: &mut Vec<u8>, limit: usize) -> std::io::Result<()> {
    r.take(limit as u64 + 1).read_to_end(out).map(|_| ())
}

/// A writer that fails once more than `limit` bytes were written (lzma-rs
/// pushes its output into a `Write`).
struct Bounded<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl Write for Bounded<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("decompressed size over the limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompresses_by_extension() {
        let payload = b"\x7fELF fake module".repeat(50);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut payload.as_slice(), &mut xz).unwrap();
        assert_eq!(decompress("a.ko.xz", xz).unwrap(), payload);
        let zst = ruzstd::encoding::compress_to_vec(
            payload.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(decompress("a.ko.zst", zst).unwrap(), payload);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &payload).unwrap();
        assert_eq!(
            decompress("a.ko.gz", gz.finish().unwrap()).unwrap(),
            payload
        );
        assert_eq!(decompress("a.ko", payload.clone()).unwrap(), payload);
        assert!(decompress("a.ko.xz", b"garbage".to_vec()).is_err());
    }

    /// A zstd frame of RLE blocks (4 bytes each for 128 KiB of output) that
    /// claims `claimed` bytes of content and delivers `blocks` blocks.
    fn zstd_rle_bomb(claimed: u64, blocks: usize) -> Vec<u8> {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd];
        // Frame header: 8-byte content size, single segment (no window byte).
        f.push(0b1110_0000);
        f.extend_from_slice(&claimed.to_le_bytes());
        const BLOCK: u32 = 128 << 10;
        for i in 0..blocks {
            let last = u32::from(i + 1 == blocks);
            let header = last | (1 << 1) | (BLOCK << 3); // type 1 = RLE
            f.extend_from_slice(&header.to_le_bytes()[..3]);
            f.push(0);
        }
        f
    }

    /// The bound the `decompress` fuzz target asserts: before it, output was
    /// unbounded and a 4 KiB file could make the init allocate 100s of MiB.
    #[test]
    fn a_module_larger_than_the_bound_is_refused() {
        let blocks = MAX_MODULE_BYTES / (128 << 10) + 1;
        let bomb = zstd_rle_bomb((blocks as u64) << 17, blocks);
        assert!(bomb.len() < 64 << 10);
        let err = decompress("huge.ko.zst", bomb).unwrap_err();
        assert!(format!("{err:#}").contains("more than"), "{err:#}");

        let zeros = vec![0u8; 4096];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, &zeros).unwrap();
        let gz = gz.finish().unwrap();
        assert!(decompress_bounded("a.ko.gz", gz.clone(), 4095).is_err());
        assert_eq!(decompress_bounded("a.ko.gz", gz, 4096).unwrap(), zeros);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut zeros.as_slice(), &mut xz).unwrap();
        assert!(decompress_bounded("a.ko.xz", xz.clone(), 4095).is_err());
        assert_eq!(decompress_bounded("a.ko.xz", xz, 4096).unwrap(), zeros);
    }

    #[test]
    fn a_crafted_xz_footer_is_an_error() {
        // Found by the `decompress` fuzz target: a footer read where the
        // index ended early, its backward size 0xFFFFFFFF.
        let crafted = include_bytes!("testdata/xz-footer-overflow.bin").to_vec();
        assert!(decompress("crafted.ko.xz", crafted).is_err());
    }

    /// A frame header that claims 4 GiB is not believed: only what the
    /// blocks deliver is allocated (the kernel then refuses the ELF).
    #[test]
    fn a_claimed_4_gib_is_not_allocated() {
        let claim = zstd_rle_bomb(4 << 30, 1);
        let out = decompress("claims.ko.zst", claim).unwrap();
        assert_eq!(out.len(), 128 << 10);
        assert!(out.capacity() < 1 << 20);
    }
}
