//! Layers on their way to the worker: fetched and checked by a few threads at once, handed
//! to the job strictly in order. A local source's blobs (and cached registry blobs) are
//! checked (digest, size) without decompressing them, while the sandbox starts and the
//! worker makes the filesystem: their diff_id and uncompressed size are checked as they ship
//! (`crate::ship`), so every byte is decompressed once; a local image's scratch file is sized
//! from the sizes its blobs declare (their first and last bytes). A registry source streams:
//! layer i ships as soon as it is downloaded and verified while later layers still download,
//! so a cold pull takes about max(download, build) instead of their sum. `--fetch-first`
//! verifies everything in full before the build, and sizes it exactly.
//!
//! No byte of a layer reaches the sandbox before that layer's blob digest and size are
//! checked, and no layer ends (`LayerEnd`) before its diff_id is; the `--max-uncompressed`
//! budget is charged in layer order. A cached blob that fails its check is discarded and
//! fetched once more.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use crate::progress::Progress;
use crate::source::spec::Compression;
use crate::source::verify::{self, Checked};
use crate::source::{Image, Layer, Source, SourceError};

/// Downloads (and verifications) in flight at once.
pub const PARALLEL: usize = 3;

/// A layer ready to ship: how far it was checked, and its name in errors.
#[derive(Debug, Clone)]
pub struct Ready {
    pub layer: Layer,
    pub checked: Checked,
    pub what: String,
}

pub type Item = Result<Ready, SourceError>;

/// How layer `i` (0-based) of `n` of image `name` is named in errors.
fn layer_what(name: &str, i: usize, n: usize, l: &Layer) -> String {
    format!("{name} layer {} of {n} ({})", i + 1, l.digest)
}

/// Fetches and checks one layer (in `full`, or its blob only), retrying once from scratch if
/// the fetched blob is corrupt.
fn prepare(
    src: &dyn Source,
    l: &Layer,
    label: &str,
    what: &str,
    limit: u64,
    full: bool,
) -> Result<Checked, SourceError> {
    let mut retried = false;
    loop {
        if let Some(v) = src.fetch(l, label, limit)? {
            return Ok(Checked::Full(v));
        }
        let mut budget = limit;
        let checked = if full {
            verify::verify(l, what, &mut budget, limit).map(Checked::Full)
        } else {
            verify::check_blob(l, what)
        };
        match checked {
            Err(SourceError::DigestMismatch { .. } | SourceError::SizeMismatch { .. })
                if !retried && src.discard(l) =>
            {
                retried = true;
            }
            other => return other,
        }
    }
}

/// The image's layers (and the injected files), in order, as they become ready.
pub struct Layers {
    image_layers: Vec<Layer>,
    what: String,
    limit: u64,
    rx: mpsc::Receiver<(usize, Result<Checked, SourceError>)>,
    ready: BTreeMap<usize, Result<Checked, SourceError>>,
    next: usize,
    charged: u64,
    /// Everything verified up front (local sources, `--fetch-first`).
    upfront: Option<std::vec::IntoIter<Item>>,
    injection: Option<Ready>,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    streaming: bool,
    /// The source downloads its layers (a registry), fetched first or not.
    remote: bool,
    compressed: u64,
    hint: u64,
    known_uncompressed: u64,
    /// Every layer was verified in full before the build: `known_uncompressed` is exact.
    exact: bool,
}

impl Layers {
    /// Starts fetching and checking. With `fetch_first`, waits until every layer is verified
    /// in full (and fails on the first bad one); otherwise the layers come out of the
    /// iterator as their checks finish, and a bad one ends the job when its turn comes.
    pub fn start(
        src: Arc<dyn Source>,
        image: &Image,
        injection: Option<Layer>,
        limit: u64,
        fetch_first: bool,
        progress: &Progress,
    ) -> Result<Self, SourceError> {
        let layers = image.layers.clone();
        let n = layers.len();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let cursor = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        // Registry downloads are verified in full as they arrive; what is read from a disk
        // (local sources, the cache) has its blob checked here and the rest as it ships,
        // unless `fetch_first` asks for everything in full.
        for _ in 0..PARALLEL.min(n.max(1)) {
            let (src, layers, tx, stop, cursor) =
                (src.clone(), layers.clone(), tx.clone(), stop.clone(), cursor.clone());
            let name = image.name.clone();
            let progress = progress.clone();
            workers.push(std::thread::spawn(move || loop {
                let i = cursor.fetch_add(1, Ordering::SeqCst);
                if i >= layers.len() || stop.load(Ordering::SeqCst) {
                    return;
                }
                let l = &layers[i];
                let label = format!("layer {} of {} ({})", i + 1, layers.len(), l.digest.short());
                let what = layer_what(&name, i, layers.len(), l);
                let r = prepare(&*src, l, &label, &what, limit, fetch_first);
                match &r {
                    Ok(Checked::Full(_)) => progress.line(format!("verified {label}")),
                    Ok(Checked::Blob { .. }) => progress.line(format!("checked {label}")),
                    Err(_) => {}
                }
                if tx.send((i, r)).is_err() {
                    return;
                }
            }));
        }
        let injection = match injection {
            Some(l) => {
                let mut unbounded = u64::MAX;
                let v = verify::verify(&l, "injected files", &mut unbounded, u64::MAX)?;
                Some(Ready { layer: l, checked: Checked::Full(v), what: "injected files".into() })
            }
            None => None,
        };
        let hint = content_hint(image, limit)?;
        let mut me = Self {
            compressed: layers.iter().map(|l| l.blob.len()).sum(),
            hint,
            image_layers: layers,
            what: image.name.clone(),
            limit,
            rx,
            ready: BTreeMap::new(),
            next: 0,
            charged: 0,
            upfront: None,
            injection,
            stop,
            workers,
            streaming: src.remote() && !fetch_first,
            remote: src.remote(),
            known_uncompressed: 0,
            exact: false,
        };
        if fetch_first {
            let mut all = Vec::with_capacity(n);
            for _ in 0..n {
                match me.next_image_layer() {
                    Some(Ok(x)) => all.push(Ok(x)),
                    Some(Err(e)) => return Err(e),
                    None => break,
                }
            }
            me.exact = all.iter().all(|x| matches!(x, Ok(Ready { checked: Checked::Full(_), .. })));
            me.known_uncompressed = all
                .iter()
                .map(|x: &Item| match x {
                    Ok(Ready { checked: Checked::Full(v), .. }) => v.uncompressed,
                    Ok(Ready { layer, .. }) => estimate(layer.blob.len(), limit),
                    Err(_) => 0,
                })
                .fold(0u64, u64::saturating_add)
                .min(limit);
            me.upfront = Some(all.into_iter());
        } else if !me.remote {
            // A local source: its blobs are checked by the threads while the sandbox starts
            // (each before its first byte ships); the scratch file is sized now from what
            // they declare, read from their first and last bytes.
            let mut declared = 0u64;
            for (i, l) in me.image_layers.iter().enumerate() {
                let d = verify::declared(l, &layer_what(&me.what, i, n, l))?;
                declared =
                    declared.saturating_add(d.unwrap_or_else(|| estimate(l.blob.len(), limit)));
            }
            me.known_uncompressed = declared.min(limit);
        }
        Ok(me)
    }

    /// Uncompressed bytes the scratch file must hold: exact when verified up front in full,
    /// what a local image's blobs declare, else an upper bound (see
    /// [`estimate`]).
    ///
    /// A registry image gets the streaming bound whether it streams, comes from the cache or
    /// was fetched first (then at least what was verified): the scratch size shapes where the
    /// kernel's allocator puts data, so one image pulled those three ways gives one image.
    pub fn scratch_basis(&self) -> u64 {
        let bound = estimate(self.compressed, self.limit);
        match (self.remote, self.streaming) {
            (true, true) => bound,
            (true, false) => bound.max(self.known_uncompressed),
            (false, _) => self.known_uncompressed,
        }
    }

    /// Whether [`Layers::scratch_basis`] is exact (every layer verified in full up front).
    pub fn exact(&self) -> bool {
        self.exact
    }

    /// The expected content size, for the journal. It changes the output bytes, so it must
    /// not depend on how the layers arrive: a registry image's is [`content_hint`] (known
    /// before any download, the same streamed, cached or fetched first); a local image's is
    /// what its blobs declare (a function of their bytes), which sizes the journal closer
    /// to the content.
    pub fn content_hint(&self) -> u64 {
        if self.remote {
            self.hint
        } else {
            self.known_uncompressed.min(self.limit)
        }
    }

    fn next_image_layer(&mut self) -> Option<Item> {
        if self.next >= self.image_layers.len() {
            return None;
        }
        let i = self.next;
        let r = loop {
            if let Some(r) = self.ready.remove(&i) {
                break r;
            }
            match self.rx.recv() {
                Ok((k, r)) => {
                    self.ready.insert(k, r);
                }
                Err(_) => {
                    break Err(SourceError::Invalid(format!(
                        "{}: layer {} was never verified (a fetch thread died)",
                        self.what,
                        i + 1
                    )))
                }
            }
        };
        self.next += 1;
        let l = self.image_layers[i].clone();
        let what = layer_what(&self.what, i, self.image_layers.len(), &l);
        let r = r.and_then(|c| {
            // A layer checked by its blob only is charged as it ships.
            if let Checked::Full(v) = &c {
                self.charged = self.charged.saturating_add(v.uncompressed);
                if self.charged > self.limit {
                    return Err(SourceError::Limit {
                        what: format!("{} layer {} ({})", self.what, i + 1, l.digest),
                        limit: self.limit,
                    });
                }
            }
            Ok(c)
        });
        if r.is_err() {
            self.stop.store(true, Ordering::SeqCst);
            self.next = self.image_layers.len();
        }
        Some(r.map(|checked| Ready { layer: l, checked, what }))
    }
}

impl Iterator for Layers {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let image = match self.upfront.as_mut() {
            Some(it) => it.next(),
            None => self.next_image_layer(),
        };
        match image {
            Some(Err(e)) => {
                self.injection = None;
                Some(Err(e))
            }
            Some(ok) => Some(ok),
            None => self.injection.take().map(Ok),
        }
    }
}

impl Drop for Layers {
    fn drop(&mut self) {
        // Threads finish the fetch in hand and stop. Wait for them, so a failed pull never
        // exits with a download half-written into the cache.
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The content size the worker sizes the journal from (`JobSpec::content_hint`): it changes
/// the output bytes, so it is a function of the image alone, the same whether the layers
/// stream from a registry, come from the cache or a local source, or were verified first:
/// the sum over the layers of the blob size the image declares, × 4 for a compressed layer,
/// × 1 for a plain tar, at most `limit` (`--max-uncompressed`). Compression is known from the
/// media type, or (docker-archive, flat tars: always local) sniffed from the blob's first
/// bytes. The injected files do not count.
pub fn content_hint(image: &Image, limit: u64) -> Result<u64, SourceError> {
    let n = image.layers.len();
    let mut hint = 0u64;
    for (i, l) in image.layers.iter().enumerate() {
        let factor = match verify::compression_of(l, &layer_what(&image.name, i, n, l))? {
            Compression::None => 1,
            Compression::Gzip | Compression::Zstd => 4,
        };
        hint = hint.saturating_add(l.blob.len().saturating_mul(factor));
    }
    Ok(hint.min(limit))
}

/// The uncompressed size a remote image's scratch file is made for, before any layer is
/// downloaded: 32 × the compressed bytes + 1 GiB, at most `--max-uncompressed`.
/// [`crate::pull::scratch_size`] then allows 9 × that (tiny files: a 512-byte header can take
/// a 4 KiB block and an inode), so the build has room for content up to ~32:1 compressed in
/// tiny files and ~290:1 in large ones. Sizing for the bound itself (64 GiB by default: a
/// 576 GiB sparse file) costs seconds of shrinking on every pull (measured on the Debian
/// minbase image: shrink 2.4 s at 576 GiB, 0.6 s at 36 GiB, 0.3 s at 9 GiB); an image beyond
/// the estimate fails with "no space" and `--fetch-first` sizes it exactly.
pub fn estimate(compressed: u64, limit: u64) -> u64 {
    compressed.saturating_mul(32).saturating_add(1 << 30).min(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::source::spec::{Compression, PlatformSpec};
    use crate::source::verify::Verified;
    use crate::source::{BlobLocation, CompressionHint};
    use std::io::Write;
    use std::sync::Mutex;

    /// A source whose blobs live in temp files; `corrupt_first` serves bad bytes for the
    /// first fetch of layer 1.
    struct Fake {
        dir: tempfile::TempDir,
        blobs: Vec<Vec<u8>>,
        fetches: Mutex<Vec<usize>>,
        corrupt_first: bool,
        /// Verifies in full as it "downloads", as the registry does for gzip and plain blobs.
        inline: bool,
        /// A registry (streams) or a local source (checked up front).
        remote: bool,
    }

    impl Fake {
        fn layer(&self, i: usize) -> Layer {
            Layer {
                digest: Digest::of(&self.blobs[i]),
                verify_digest: true,
                diff_id: Some(Digest::of(&self.blobs[i])),
                compression: CompressionHint::Known(Compression::None),
                blob: BlobLocation::File {
                    path: self.dir.path().join(i.to_string()),
                    offset: 0,
                    len: self.blobs[i].len() as u64,
                },
            }
        }
    }

    impl Source for Fake {
        fn resolve(&self, _: &PlatformSpec) -> crate::source::Result<Image> {
            Ok(Image {
                name: "fake".into(),
                digest: Digest::of(b"m"),
                layers: (0..self.blobs.len()).map(|i| self.layer(i)).collect(),
            })
        }
        fn fetch(&self, l: &Layer, _: &str, _: u64) -> crate::source::Result<Option<Verified>> {
            let i = self.blobs.iter().position(|b| Digest::of(b) == l.digest).unwrap();
            let mut f = self.fetches.lock().unwrap();
            let first = !f.contains(&i);
            f.push(i);
            let mut bytes = self.blobs[i].clone();
            if first && i == 1 && self.corrupt_first {
                bytes[0] ^= 1;
            }
            // A registry "downloads" the blob; a local source's is on disk already.
            if self.remote {
                std::fs::File::create(self.dir.path().join(i.to_string()))
                    .unwrap()
                    .write_all(&bytes)
                    .unwrap();
            }
            Ok(self.inline.then(|| Verified {
                compression: Compression::None,
                uncompressed: bytes.len() as u64,
                diff_id: Digest::of(&bytes),
            }))
        }
        fn discard(&self, _: &Layer) -> bool {
            true
        }
        fn remote(&self) -> bool {
            self.remote
        }
    }

    /// A registry (`remote`) or local source of five layers; see [`Fake`] for the rest.
    fn fake(corrupt_first: bool, inline: bool, remote: bool) -> Arc<Fake> {
        let blobs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let dir = tempfile::tempdir().unwrap();
        if !remote {
            // A local source's blobs are on disk from the start.
            for (i, b) in blobs.iter().enumerate() {
                std::fs::write(dir.path().join(i.to_string()), b).unwrap();
            }
        }
        Arc::new(Fake {
            dir,
            blobs,
            fetches: Mutex::new(Vec::new()),
            corrupt_first,
            inline,
            remote,
        })
    }

    #[test]
    fn layers_come_in_order_and_corrupt_blobs_are_fetched_again() {
        let f = fake(true, false, true);
        let image = f.resolve(&PlatformSpec::parse("linux/amd64").unwrap()).unwrap();
        let src: Arc<dyn Source> = f.clone();
        let got: Vec<Item> = Layers::start(src, &image, None, 1 << 20, false, &Progress::default())
            .unwrap()
            .collect();
        let digests: Vec<Digest> = got.into_iter().map(|x| x.unwrap().layer.digest).collect();
        let want: Vec<Digest> = image.layers.iter().map(|l| l.digest.clone()).collect();
        assert_eq!(digests, want);
        let fetches = f.fetches.lock().unwrap();
        assert_eq!(fetches.iter().filter(|&&i| i == 1).count(), 2, "{fetches:?}");
    }

    /// A local source's layers are checked while the job runs: starting does not wait for
    /// them, the scratch size comes from what they declare, and a blob that fails its check
    /// comes out in its turn as the error, after the good layers before it.
    #[test]
    fn a_local_blob_is_checked_in_its_turn() {
        let f = fake(false, false, false);
        let image = f.resolve(&PlatformSpec::parse("linux/amd64").unwrap()).unwrap();
        let mut bad = f.blobs[2].clone();
        bad[0] ^= 1;
        std::fs::write(f.dir.path().join("2"), &bad).unwrap();
        let src: Arc<dyn Source> = f.clone();
        let layers = Layers::start(src, &image, None, 1 << 20, false, &Progress::default())
            .expect("start does not wait for the checks");
        let total: u64 = f.blobs.iter().map(|b| b.len() as u64).sum();
        assert_eq!(layers.scratch_basis(), total);
        let got: Vec<Item> = layers.collect();
        assert_eq!(got.len(), 3, "two good layers, then the bad one; nothing after it");
        assert!(got[..2].iter().all(|x| x.is_ok()));
        match &got[2] {
            Err(SourceError::DigestMismatch { what, .. }) => assert!(what.contains("layer 3 of 5")),
            other => panic!("{other:?}"),
        }
        // Checked with --fetch-first, the same blob fails the start itself.
        let src: Arc<dyn Source> = f.clone();
        let e = Layers::start(src, &image, None, 1 << 20, true, &Progress::default());
        assert!(matches!(e, Err(SourceError::DigestMismatch { .. })));
    }

    /// A registry image's journal hint is the same streamed or fetched first; for these plain
    /// layers a local source's (what the blobs declare) is that size too. (A local compressed
    /// image's hint is its declared uncompressed size, not 4 x its blobs: not covered here.)
    #[test]
    fn the_content_hint_is_the_same_on_every_path() {
        let mut hints = Vec::new();
        let mut total = 0;
        for (remote, fetch_first) in [(true, false), (true, true), (false, false), (false, true)] {
            let f = fake(false, remote, remote);
            let image = f.resolve(&PlatformSpec::parse("linux/amd64").unwrap()).unwrap();
            total = image.layers.iter().map(|l| l.blob.len()).sum();
            let src: Arc<dyn Source> = f.clone();
            let layers =
                Layers::start(src, &image, None, 1 << 20, fetch_first, &Progress::default());
            hints.push(layers.expect("started").content_hint());
        }
        assert_eq!(
            hints, [total; 4],
            "streamed, streamed --fetch-first, local, local --fetch-first"
        );
    }

    /// Compressed layers count 4 × their blob, plain ones 1 ×, whether the media type says so
    /// or the first bytes do; the sum stops at the limit.
    #[test]
    fn the_content_hint_counts_compressed_blobs_four_times() {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[7u8; 10_000]).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::bulk::compress(&[7u8; 10_000], 3).unwrap();
        let plain = vec![0u8; 3072];
        let layer = |name: &str, bytes: &[u8], compression| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            Layer {
                digest: Digest::of(bytes),
                verify_digest: true,
                diff_id: None,
                compression,
                blob: BlobLocation::File { path, offset: 0, len: bytes.len() as u64 },
            }
        };
        let layers = vec![
            layer("gz-known", &gz, CompressionHint::Known(Compression::Gzip)),
            layer("gz-sniffed", &gz, CompressionHint::Sniff),
            layer("zst-sniffed", &zst, CompressionHint::Sniff),
            layer("plain-known", &plain, CompressionHint::Known(Compression::None)),
            layer("plain-sniffed", &plain, CompressionHint::Sniff),
        ];
        let image = Image { name: "img".into(), digest: Digest::of(b"m"), layers };
        let (g, z, p) = (gz.len() as u64, zst.len() as u64, plain.len() as u64);
        let want = 4 * g + 4 * g + 4 * z + p + p;
        assert_eq!(content_hint(&image, u64::MAX).unwrap(), want);
        assert_eq!(content_hint(&image, want - 1).unwrap(), want - 1);
        // A blob to sniff that is not there is an error naming the layer, not a guess.
        let mut gone = image.clone();
        gone.layers.push(Layer {
            blob: BlobLocation::File { path: dir.path().join("absent"), offset: 0, len: 1 },
            ..gone.layers[4].clone()
        });
        let e = content_hint(&gone, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("img layer 6 of 6"), "{e}");
    }

    #[test]
    fn remote_estimates() {
        assert_eq!(estimate(0, 64 << 30), 1 << 30);
        assert_eq!(estimate(100 << 20, 64 << 30), (3200 << 20) + (1 << 30));
        assert_eq!(estimate(10 << 30, 64 << 30), 64 << 30);
        assert_eq!(estimate(u64::MAX, 64 << 30), 64 << 30);
    }

    #[test]
    fn the_budget_is_charged_in_order() {
        let f = fake(false, true, true);
        let image = f.resolve(&PlatformSpec::parse("linux/amd64").unwrap()).unwrap();
        let src: Arc<dyn Source> = f.clone();
        let got: Vec<Item> =
            Layers::start(src.clone(), &image, None, 2500, false, &Progress::default())
                .unwrap()
                .collect();
        assert!(got[0].is_ok() && got[1].is_ok());
        assert!(matches!(got[2], Err(SourceError::Limit { .. })), "{:?}", got[2]);
        assert_eq!(got.len(), 3, "nothing after the error");
        // Verified up front, the same limit fails before anything is handed out.
        assert!(matches!(
            Layers::start(src, &image, None, 2500, true, &Progress::default()),
            Err(SourceError::Limit { .. })
        ));
    }

    /// A local source: blobs checked without decompressing, sized from what they declare,
    /// nothing charged until they ship (see `job::tests`).
    #[test]
    fn local_blobs_are_checked_by_their_blob_and_sized_from_what_they_declare() {
        let f = fake(false, false, false);
        let image = f.resolve(&PlatformSpec::parse("linux/amd64").unwrap()).unwrap();
        let src: Arc<dyn Source> = f.clone();
        let total: u64 = image.layers.iter().map(|l| l.blob.len()).sum();
        let layers = Layers::start(src.clone(), &image, None, 2500, false, &Progress::default())
            .expect("no layer is charged before it ships");
        assert!(!layers.exact());
        assert_eq!(layers.scratch_basis(), 2500, "what they declare ({total}), at most the limit");
        let got: Vec<Item> = layers.collect();
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|x| matches!(x, Ok(Ready { checked: Checked::Blob { .. }, .. }))));
        // --fetch-first: verified in full, exact, and over the limit before anything ships.
        let layers = Layers::start(src.clone(), &image, None, 1 << 20, true, &Progress::default());
        let layers = layers.expect("verified");
        assert!(layers.exact());
        assert_eq!(layers.scratch_basis(), total);
        assert!(matches!(
            Layers::start(src, &image, None, 2500, true, &Progress::default()),
            Err(SourceError::Limit { .. })
        ));
    }
}
