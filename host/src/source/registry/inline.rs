//! A layer checked while it downloads: the sha256 and length of what it decompresses to
//! (plain tar, gzip, zstd), at most `cap` bytes, so a downloaded layer needs no second
//! verification pass. Any trouble (a corrupt stream, too much content, a compression only
//! known by sniffing) just gives up: the verification pass then reads the blob again and
//! reports what is wrong, and only a complete diff_id match stands in for it.

use std::io::Write;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::source::spec::Compression;
use crate::source::verify::Verified;
use crate::source::CompressionHint;

struct DiffSink {
    hasher: Sha256,
    n: u64,
    cap: u64,
}

impl Write for DiffSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.n += b.len() as u64;
        if self.n > self.cap {
            return Err(std::io::Error::other("over the uncompressed limit"));
        }
        self.hasher.update(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The check of one download, fed its compressed bytes in order.
pub struct Inline(State);

enum State {
    Plain(DiffSink),
    Gzip(Box<flate2::write::MultiGzDecoder<DiffSink>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, DiffSink>>),
    GaveUp,
}

impl Inline {
    pub fn new(hint: CompressionHint, cap: u64) -> Self {
        let sink = DiffSink { hasher: Sha256::new(), n: 0, cap };
        Inline(match hint {
            CompressionHint::Known(Compression::None) => State::Plain(sink),
            CompressionHint::Known(Compression::Gzip) => {
                State::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink)))
            }
            CompressionHint::Known(Compression::Zstd) => {
                match zstd::stream::write::Decoder::new(sink) {
                    Ok(d) => State::Zstd(Box::new(d)),
                    Err(_) => State::GaveUp,
                }
            }
            CompressionHint::Sniff => State::GaveUp,
        })
    }

    pub fn feed(&mut self, b: &[u8]) {
        let ok = match &mut self.0 {
            State::Plain(s) => s.write_all(b).is_ok(),
            State::Gzip(g) => g.write_all(b).is_ok(),
            State::Zstd(z) => z.write_all(b).is_ok(),
            State::GaveUp => true,
        };
        if !ok {
            self.0 = State::GaveUp;
        }
    }

    pub fn finish(self) -> Option<Verified> {
        let (compression, sink) = match self.0 {
            State::Plain(s) => (Compression::None, s),
            State::Gzip(g) => (Compression::Gzip, g.finish().ok()?),
            State::Zstd(mut z) => {
                z.flush().ok()?;
                (Compression::Zstd, z.into_inner())
            }
            State::GaveUp => return None,
        };
        Some(Verified {
            compression,
            uncompressed: sink.n,
            diff_id: Digest::from_sha256(sink.hasher),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(hint: CompressionHint, blob: &[u8], cap: u64, chunk: usize) -> Option<Verified> {
        let mut i = Inline::new(hint, cap);
        for c in blob.chunks(chunk) {
            i.feed(c);
        }
        i.finish()
    }

    #[test]
    fn every_compression_gives_the_diff_id() {
        let tar: Vec<u8> = (0..300_000u32).flat_map(|n| n.to_le_bytes()).collect();
        let diff_id = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for (c, blob) in
            [(Compression::None, &tar), (Compression::Gzip, &gz), (Compression::Zstd, &zst)]
        {
            for chunk in [1 << 20, 4096, 7] {
                let v = run(CompressionHint::Known(c), blob, u64::MAX, chunk).unwrap();
                assert_eq!((v.diff_id.clone(), v.uncompressed), (diff_id.clone(), 1_200_000));
                assert_eq!(v.compression, c);
            }
        }
    }

    #[test]
    fn trouble_gives_up_or_mismatches() {
        let tar = vec![7u8; 100_000];
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        // Over the cap: no answer, the verification pass reports the limit.
        assert!(run(CompressionHint::Known(Compression::Zstd), &zst, 1000, 4096).is_none());
        // Garbage is no zstd frame.
        assert!(run(CompressionHint::Known(Compression::Zstd), &[0x55; 64], u64::MAX, 8).is_none());
        // A truncated frame never matches the diff_id.
        let cut =
            run(CompressionHint::Known(Compression::Zstd), &zst[..zst.len() / 2], u64::MAX, 9);
        assert!(cut.is_none_or(|v| v.diff_id != Digest::of(&tar)));
        assert!(run(CompressionHint::Sniff, &tar, u64::MAX, 4096).is_none());
    }
}
