//! Module files as the kernel wants them: `.ko.xz`, `.ko.zst` and `.ko.gz`
//! are decompressed in memory, since init_module takes an ELF image.

use anyhow::{Context, Result};
use std::io::Read;

/// Returns the module's ELF image, decompressing by file extension.
pub fn decompress(path: &str, data: Vec<u8>) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 3);
    if path.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut data.as_slice(), &mut out)
            .map_err(|e| anyhow::anyhow!("xz: {e:?}"))?;
    } else if path.ends_with(".zst") {
        ruzstd::decoding::StreamingDecoder::new(data.as_slice())
            .map_err(|e| anyhow::anyhow!("zstd: {e}"))?
            .read_to_end(&mut out)
            .context("zstd")?;
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(data.as_slice())
            .read_to_end(&mut out)
            .context("gzip")?;
    } else {
        return Ok(data);
    }
    Ok(out)
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
}
