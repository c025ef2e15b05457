//! Layer bytes verified in one pass (blob digest, size, diff_id, bounds) before anything is
//! shipped (`crate::ship` decompresses them again and streams them to the worker). The host
//! never parses layer content; it only hashes, counts and decompresses bytes.

use std::io::{self, Read};

use flate2::read::MultiGzDecoder;
use sha2::{Digest as _, Sha256};

use super::spec::{sniff_compression, Compression};
use super::{CompressionHint, Layer, SourceError};
use crate::digest::Digest;

/// What the verification pass learned about a layer.
#[derive(Debug, Clone)]
pub struct Verified {
    pub compression: Compression,
    pub uncompressed: u64,
    pub diff_id: Digest,
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn compression(layer: &Layer) -> io::Result<Compression> {
    match layer.compression {
        CompressionHint::Known(c) => Ok(c),
        CompressionHint::Sniff => {
            let mut head = [0u8; 4];
            let mut r = layer.blob.open()?;
            let mut n = 0;
            while n < head.len() {
                match r.read(&mut head[n..])? {
                    0 => break,
                    k => n += k,
                }
            }
            Ok(sniff_compression(&head[..n]))
        }
    }
}

pub fn decoder<'a>(
    c: Compression,
    r: impl Read + Send + 'a,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Reads the whole layer once: checks the blob digest and size, the uncompressed digest
/// against the config's diff_id, and charges its uncompressed size to `budget`.
pub fn verify(
    layer: &Layer,
    what: &str,
    budget: &mut u64,
    limit: u64,
) -> Result<Verified, SourceError> {
    let io_err = |source| SourceError::Io { what: what.into(), path: blob_path(layer), source };
    let comp = compression(layer).map_err(io_err)?;
    let mut raw =
        Hashing { inner: layer.blob.open().map_err(io_err)?, hasher: Sha256::new(), bytes: 0 };
    let mut out = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let result: io::Result<()> = (|| {
        let mut dec = decoder(comp, &mut raw)?;
        loop {
            let n = match dec.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += n as u64;
            if total > *budget {
                return Err(io::Error::other(LimitHit));
            }
            out.update(&buf[..n]);
        }
    })();
    // Hash what the decoder left (trailing bytes, or the rest after an error) so a tampered
    // blob is reported as a digest mismatch rather than as whatever broke first.
    let drained = io::copy(&mut raw, &mut io::sink());
    let blob_digest = Digest::from_sha256(std::mem::take(&mut raw.hasher));
    if layer.verify_digest && blob_digest != layer.digest {
        return Err(SourceError::DigestMismatch {
            what: what.into(),
            expected: layer.digest.clone(),
            actual: blob_digest,
        });
    }
    if let Err(e) = result {
        if e.get_ref().is_some_and(|i| i.is::<LimitHit>()) {
            return Err(SourceError::Limit { what: what.into(), limit });
        }
        return Err(SourceError::Decompress { what: what.into(), source: e });
    }
    drained.map_err(io_err)?;
    if raw.bytes != layer.blob.len() {
        return Err(SourceError::SizeMismatch {
            what: what.into(),
            expected: layer.blob.len(),
            actual: raw.bytes,
        });
    }
    let diff_id = Digest::from_sha256(out);
    if let Some(expected) = &layer.diff_id {
        if *expected != diff_id {
            return Err(SourceError::DiffIdMismatch {
                what: what.into(),
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    *budget -= total;
    Ok(Verified { compression: comp, uncompressed: total, diff_id })
}

#[derive(Debug)]
struct LimitHit;

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uncompressed size limit reached")
    }
}

impl std::error::Error for LimitHit {}

fn blob_path(layer: &Layer) -> std::path::PathBuf {
    match &layer.blob {
        super::BlobLocation::File { path, .. } | super::BlobLocation::Opened { path, .. } => {
            path.clone()
        }
        super::BlobLocation::Spooled { .. } => "<stdin>".into(),
    }
}
