//! Layer bytes verified: the blob's digest and size before anything is shipped, and the
//! uncompressed bytes (diff_id, `--max-uncompressed`) as they pass on their way to the worker
//! ([`Unpacking`], driven by `crate::ship`), so each byte is decompressed once. [`verify`]
//! does it all in one pass up front, for `--fetch-first` and the injected files. The host
//! never parses layer content; it only hashes, counts and decompresses bytes.

use std::io::{self, Read};
use std::sync::mpsc;

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

/// How far a layer was checked before it ships.
#[derive(Debug, Clone)]
pub enum Checked {
    /// Everything ([`verify`], or a registry download verified as it arrived).
    Full(Verified),
    /// The blob's digest and size ([`check_blob`]): its diff_id and uncompressed size are
    /// checked as it ships.
    Blob { compression: Compression },
}

impl Checked {
    pub fn compression(&self) -> Compression {
        match self {
            Self::Full(v) => v.compression,
            Self::Blob { compression, .. } => *compression,
        }
    }
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

/// How a layer is compressed: from its media type, else from its blob's first bytes (read
/// from disk: a layer to sniff is always local).
pub fn compression_of(layer: &Layer, what: &str) -> Result<Compression, SourceError> {
    compression(layer).map_err(|source| SourceError::Io {
        what: what.into(),
        path: blob_path(layer),
        source,
    })
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
    check_diff_id(layer, what, &diff_id)?;
    *budget -= total;
    Ok(Verified { compression: comp, uncompressed: total, diff_id })
}

/// The uncompressed bytes' digest against the config's diff_id, when it has one.
fn check_diff_id(layer: &Layer, what: &str, diff_id: &Digest) -> Result<(), SourceError> {
    match &layer.diff_id {
        Some(expected) if expected != diff_id => Err(SourceError::DiffIdMismatch {
            what: what.into(),
            expected: expected.clone(),
            actual: diff_id.clone(),
        }),
        _ => Ok(()),
    }
}

/// Checks the blob's digest and size in one read of its compressed bytes (no decompression),
/// and notes the uncompressed size it declares.
pub fn check_blob(layer: &Layer, what: &str) -> Result<Checked, SourceError> {
    let io_err = |source| SourceError::Io { what: what.into(), path: blob_path(layer), source };
    let compression = compression(layer).map_err(io_err)?;
    // A flat tar's digest and length were computed by the source as it opened the file, and
    // nothing else vouches for it: reading it again here would check nothing.
    if !layer.verify_digest && layer.diff_id.is_none() && compression == Compression::None {
        return Ok(Checked::Blob { compression });
    }
    let mut raw = layer.blob.open().map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let digest = Digest::from_sha256(hasher);
    if layer.verify_digest && digest != layer.digest {
        return Err(SourceError::DigestMismatch {
            what: what.into(),
            expected: layer.digest.clone(),
            actual: digest,
        });
    }
    if bytes != layer.blob.len() {
        return Err(SourceError::SizeMismatch {
            what: what.into(),
            expected: layer.blob.len(),
            actual: bytes,
        });
    }
    Ok(Checked::Blob { compression })
}

/// The uncompressed size the blob declares (the gzip trailer, the zstd frame header), read
/// from its first and last bytes only: a hint for sizing, known before the blob is checked
/// (a blob that fails its check ends the job before its size matters).
pub fn declared(layer: &Layer, what: &str) -> Result<Option<u64>, SourceError> {
    let io_err = |source| SourceError::Io { what: what.into(), path: blob_path(layer), source };
    let compression = compression(layer).map_err(io_err)?;
    let len = layer.blob.len();
    let mut head = [0u8; HEAD];
    let head = &mut head[..(HEAD as u64).min(len) as usize];
    layer.blob.read_exact_at(head, 0).map_err(io_err)?;
    // The last (up to) 4 bytes, right-aligned.
    let mut tail = [0u8; 4];
    let k = 4u64.min(len) as usize;
    layer.blob.read_exact_at(&mut tail[4 - k..], len - k as u64).map_err(io_err)?;
    Ok(match compression {
        Compression::None => Some(len),
        Compression::Gzip => Some(gzip_declared(u32::from_le_bytes(tail), len)),
        Compression::Zstd => zstd::zstd_safe::get_frame_content_size(head).ok().flatten(),
    })
}

/// Bytes of a blob's start kept for its zstd frame header.
const HEAD: usize = 18;

/// The uncompressed size a gzip blob of `compressed` bytes declares: its trailer holds it
/// modulo 2^32, so the smallest value with that remainder that is at least the compressed
/// size (deflate never shrinks data below that).
fn gzip_declared(isize: u32, compressed: u64) -> u64 {
    let mut n = u64::from(isize);
    while n < compressed {
        n += 1 << 32;
    }
    n
}

/// A layer's uncompressed bytes as they are read, hashed for the diff_id and counted against
/// the uncompressed budget; [`Unpacking::finish`] compares them with what the config says.
pub struct Unpacking<'a> {
    layer: &'a Layer,
    dec: Box<dyn Read + Send + 'a>,
    compression: Compression,
    expect: Expect,
    bytes: u64,
    budget: u64,
    limit: u64,
}

/// What the bytes read must amount to.
enum Expect {
    /// Verified in full already: only the length is checked again.
    Counted(Verified),
    /// The config's diff_id, hashed as the bytes pass.
    DiffId(Background),
}

impl<'a> Unpacking<'a> {
    /// Opens the layer's blob; `budget` uncompressed bytes may pass (of `limit` in all).
    pub fn open(layer: &'a Layer, checked: &Checked, budget: u64, limit: u64) -> io::Result<Self> {
        let compression = checked.compression();
        let dec = decoder(compression, layer.blob.open()?)?;
        let expect = match checked {
            Checked::Full(v) => Expect::Counted(v.clone()),
            Checked::Blob { .. } => Expect::DiffId(Background::start()),
        };
        Ok(Self { layer, dec, compression, expect, bytes: 0, budget, limit })
    }

    /// Fills `buf` with the next bytes, short only at the end of the layer; `Ok(0)` at the
    /// end. An `io::Error` wrapping [`LimitHit`] when the budget runs out. The caller hands
    /// the bytes on with [`Unpacking::hash`] once it is done with them.
    ///
    /// Filled, not one decoder read: a gzip decoder returns what one 32 KiB input buffer
    /// inflates to (~35 KiB on average for the Debian image), and every read became a data
    /// frame, a hand-off to the hashing thread and the worker's wake-up: 5,700 of each per
    /// Debian build instead of ~200.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = match self.dec.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            filled += n;
            self.bytes += n as u64;
            if self.bytes > self.budget {
                return Err(io::Error::other(LimitHit));
            }
        }
        Ok(filled)
    }

    /// Counts the first `n` bytes of `buf` into the diff_id, on another thread; returns a
    /// buffer (of `buf`'s length) to read the next bytes into.
    pub fn hash(&mut self, buf: Vec<u8>, n: usize) -> Vec<u8> {
        match &mut self.expect {
            Expect::DiffId(h) => h.update(buf, n),
            Expect::Counted(_) => buf,
        }
    }

    /// What the bytes read amount to: checked against the layer's diff_id, or (verified in
    /// full before) against what that verification counted.
    pub fn finish(self, what: &str) -> Result<Verified, SourceError> {
        match self.expect {
            Expect::Counted(v) if v.uncompressed == self.bytes => Ok(v),
            Expect::Counted(v) => Err(SourceError::SizeMismatch {
                what: format!("{what}, uncompressed (it changed since it was verified)"),
                expected: v.uncompressed,
                actual: self.bytes,
            }),
            Expect::DiffId(hasher) => {
                let diff_id = Digest::from_sha256(hasher.finish()?);
                check_diff_id(self.layer, what, &diff_id)?;
                Ok(Verified { compression: self.compression, uncompressed: self.bytes, diff_id })
            }
        }
    }

    /// The error a failed read means for the layer `what`.
    pub fn error(&self, e: io::Error, what: &str) -> SourceError {
        if e.get_ref().is_some_and(|i| i.is::<LimitHit>()) {
            return SourceError::Limit { what: what.into(), limit: self.limit };
        }
        SourceError::Decompress { what: what.into(), source: e }
    }
}

/// sha256 on its own thread, so hashing a layer overlaps decompressing it: filled buffers
/// go over a channel and come back to be filled again (at most [`Background::DEPTH`] in
/// flight).
struct Background {
    tx: Option<mpsc::SyncSender<(Vec<u8>, usize)>>,
    back: mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<Sha256>>,
    made: usize,
}

impl Background {
    const DEPTH: usize = 3;

    fn start() -> Self {
        let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(Self::DEPTH);
        let (back_tx, back) = mpsc::sync_channel(Self::DEPTH + 1);
        let thread = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for (buf, n) in rx {
                h.update(&buf[..n]);
                let _ = back_tx.send(buf);
            }
            h
        });
        Self { tx: Some(tx), back, thread: Some(thread), made: 0 }
    }

    fn update(&mut self, buf: Vec<u8>, n: usize) -> Vec<u8> {
        let len = buf.len();
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send((buf, n)).is_ok());
        if sent && self.made < Self::DEPTH {
            self.made += 1;
            return vec![0u8; len];
        }
        // The thread ended only by panicking: finish() reports it.
        self.back.recv().unwrap_or_else(|_| vec![0u8; len])
    }

    fn finish(mut self) -> Result<Sha256, SourceError> {
        self.tx = None;
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .ok_or_else(|| SourceError::Invalid("the diff_id hashing thread failed".into()))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::BlobLocation;
    use std::io::Write as _;

    fn layer(dir: &tempfile::TempDir, blob: &[u8], c: Compression) -> Layer {
        let path = dir.path().join("blob");
        std::fs::write(&path, blob).unwrap();
        Layer {
            digest: Digest::of(blob),
            verify_digest: true,
            diff_id: None,
            compression: CompressionHint::Known(c),
            blob: BlobLocation::File { path, offset: 0, len: blob.len() as u64 },
        }
    }

    fn declared_by(blob: &[u8], c: Compression) -> Option<u64> {
        let dir = tempfile::tempdir().unwrap();
        declared(&layer(&dir, blob, c), "the layer").unwrap()
    }

    #[test]
    fn blobs_declare_their_uncompressed_size() {
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(declared_by(&gz, Compression::Gzip), Some(data.len() as u64));
        assert_eq!(declared_by(&data, Compression::None), Some(data.len() as u64));
        let framed = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(declared_by(&framed, Compression::Zstd), Some(data.len() as u64));
        // A streamed zstd frame does not say.
        let streamed = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert_eq!(declared_by(&streamed, Compression::Zstd), None);
        // Blobs shorter than a trailer or a frame header (broken: they fail as they ship)
        // declare what their few bytes say, read right-aligned, and never panic.
        assert_eq!(declared_by(&[], Compression::Gzip), Some(0));
        assert_eq!(declared_by(&[7], Compression::Gzip), Some(0x0700_0000));
        assert_eq!(declared_by(&[1, 2, 3], Compression::Gzip), Some(0x0302_0100));
        assert_eq!(declared_by(&framed[..5], Compression::Zstd), None);
        assert_eq!(declared_by(&[1, 2, 3], Compression::None), Some(3));
    }

    /// Every read of a layer as it ships comes back full (one data frame each), short only
    /// at the end, whatever sizes the decoder returns; the diff_id and the budget are still
    /// counted over every byte.
    #[test]
    fn a_shipped_layer_is_read_in_full_buffers() {
        let data: Vec<u8> = (0..3_000_005u32).map(|i| (i % 251) as u8).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut l = layer(&dir, &gz, Compression::Gzip);
        l.diff_id = Some(Digest::of(&data));
        let checked = Checked::Blob { compression: Compression::Gzip };
        let mut unpack = Unpacking::open(&l, &checked, u64::MAX, u64::MAX).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut sizes = Vec::new();
        loop {
            let n = unpack.read(&mut buf).unwrap();
            sizes.push(n);
            if n == 0 {
                break;
            }
            buf = unpack.hash(buf, n);
        }
        assert_eq!(sizes, [1 << 20, 1 << 20, 3_000_005 - (2 << 20), 0]);
        assert!(unpack.finish("the layer").is_ok(), "the diff_id covers every byte");

        let mut unpack = Unpacking::open(&l, &checked, 1_500_000, 1_500_000).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        assert_eq!(unpack.read(&mut buf).unwrap(), 1 << 20);
        let e = unpack.read(&mut buf).expect_err("past the budget");
        assert!(e.get_ref().is_some_and(|e| e.is::<LimitHit>()), "{e}");
    }

    #[test]
    fn the_gzip_trailer_is_read_modulo_4_gib() {
        assert_eq!(gzip_declared(100, 50), 100);
        assert_eq!(gzip_declared(5, 6), 5 + (1 << 32));
        assert_eq!(gzip_declared(5, 1 << 33), 5 + (1 << 33));
    }

    #[test]
    fn a_blob_is_checked_by_digest_and_size_without_decompressing() {
        let dir = tempfile::tempdir().unwrap();
        // Not gzip at all: only its digest and size are checked here.
        let mut l = layer(&dir, b"not gzip", Compression::Gzip);
        assert!(check_blob(&l, "the layer").is_ok());
        l.digest = Digest::of(b"other");
        assert!(matches!(check_blob(&l, "the layer"), Err(SourceError::DigestMismatch { .. })));
        let mut l = layer(&dir, b"not gzip", Compression::Gzip);
        // The manifest says 100 bytes: the file holds fewer.
        if let BlobLocation::File { len, .. } = &mut l.blob {
            *len = 100;
        }
        l.verify_digest = false;
        assert!(matches!(check_blob(&l, "the layer"), Err(SourceError::SizeMismatch { .. })));
    }
}
