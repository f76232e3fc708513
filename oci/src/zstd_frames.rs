//! zstd-compressed layers read with ruzstd (the pure-Rust decoder the init
//! uses for modules too), as the zstd tool reads them: every frame in turn,
//! skippable frames skipped, each frame's checksum checked. ruzstd's own
//! `StreamingDecoder` stops after one frame and leaves checksums unchecked.

use std::io::{self, BufRead, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// A reader of the decompressed content of all the zstd frames of `source`.
pub(crate) struct ZstdFrames<R: BufRead> {
    source: R,
    decoder: FrameDecoder,
    /// Whether `decoder` is inside a frame (its header was read).
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    pub(crate) fn new(source: R) -> Self {
        ZstdFrames {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }

    /// Reads the next frame header, skipping skippable frames; false at the
    /// end of the input.
    fn start_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            // A fresh decoder per frame: ruzstd checks a reused decoder's
            // window against 100 MiB but not a new one's, and every frame
            // must meet the same rule (libzstd-written `--long` layers have
            // 128 MiB windows). Its buffers grow with the data, not the window.
            self.decoder = FrameDecoder::new();
            match self.decoder.init(&mut self.source) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped =
                        io::copy(&mut (&mut self.source).take(length.into()), &mut io::sink())?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "zstd: the input ends inside a skippable frame",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, zstd_error(e))),
            }
        }
    }

    /// At the end of a frame: its content checksum, when it has one, must be
    /// the one of what was decoded.
    fn check_frame_checksum(&self) -> io::Result<()> {
        match (
            self.decoder.get_checksum_from_data(),
            self.decoder.get_calculated_checksum(),
        ) {
            (Some(stored), Some(computed)) if stored != computed => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "zstd: frame checksum mismatch (stored {stored:08x}, content {computed:08x})"
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn zstd_error(e: FrameDecoderError) -> String {
    format!("zstd: {e}")
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.start_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            // decode_blocks may decode less than asked for: loop until enough
            // can be collected or the frame ends (as StreamingDecoder does).
            while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                let wanted = buf.len() - self.decoder.can_collect();
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(wanted))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, zstd_error(e)))?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() {
                self.check_frame_checksum()?;
                self.in_frame = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    fn frame(content: &[u8]) -> Vec<u8> {
        compress_to_vec(content, CompressionLevel::Fastest)
    }

    fn skippable_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = 0x184D_2A50u32.to_le_bytes().to_vec();
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn decode(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ZstdFrames::new(io::BufReader::with_capacity(64, input)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn every_frame_is_read_and_skippable_frames_are_skipped() {
        let first = b"first frame ".repeat(1000);
        let second = b"second frame".repeat(3000);
        let mut input = frame(&first);
        input.extend(skippable_frame(b"a table of contents, say"));
        input.extend(frame(&second));
        input.extend(skippable_frame(b""));
        let mut expected = first.clone();
        expected.extend_from_slice(&second);
        assert_eq!(decode(&input).unwrap(), expected);
    }

    #[test]
    fn an_empty_frame_decodes_to_nothing() {
        assert_eq!(decode(&frame(b"")).unwrap(), b"");
    }

    #[test]
    fn truncated_and_corrupt_input_is_an_error() {
        let content = b"some layer content".repeat(500);
        let whole = frame(&content);
        assert!(decode(&whole[..whole.len() / 2]).is_err());
        let mut after_frame_garbage = whole.clone();
        after_frame_garbage.extend_from_slice(b"not zstd");
        assert!(decode(&after_frame_garbage).is_err());
        let mut short_skippable = skippable_frame(b"twelve bytes");
        short_skippable.truncate(10);
        assert!(decode(&short_skippable).is_err());
    }

    #[test]
    fn a_wrong_checksum_is_an_error() {
        let content = b"checksummed content".repeat(100);
        let mut whole = frame(&content);
        // ruzstd writes a content checksum: the frame's last four bytes.
        let n = whole.len();
        whole[n - 1] ^= 0xff;
        let err = decode(&whole).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
