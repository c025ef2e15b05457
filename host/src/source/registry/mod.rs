//! `docker://REGISTRY/REPO[:TAG|@sha256:…]` and bare references (`debian:bookworm` →
//! `docker.io/library/debian:bookworm`, oci-client's `Reference`), pulled into the blob cache
//! with bounded requests (`bounded`, `token`).
//!
//! `resolve` fetches the manifest (or index, then the manifest for `--platform`) and the config,
//! and returns layers located at their cache paths; `fetch` downloads one layer into the cache
//! when it is not there yet, so the pull can ship layer i while later ones download. Every
//! document and blob is checked against its digest and size before it is renamed into the
//! cache; registry replies are hostile. The HTTP client is async: this source owns a small
//! tokio runtime and the rest of rootbox stays synchronous.

pub mod auth;
mod bounded;
mod inline;
mod retry;
mod token;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use sha2::{Digest as _, Sha256};

use super::spec::{self, Descriptor, Index, Manifest, PlatformSpec};
use super::{BlobLocation, CompressionHint, Image, Layer, Result, Source, SourceError};
use crate::cache::{self, Cache, Entry};
use crate::digest::Digest;
use crate::progress::Progress;
use crate::source::verify::Verified;
use auth::{Creds, Origin};
use inline::Inline;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCEPT: &[&str] = &[OCI_MANIFEST, spec::OCI_INDEX, DOCKER_MANIFEST, spec::DOCKER_LIST];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach registries: from `--plain-http` and `--creds`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub plain_http: bool,
    pub creds: Option<Creds>,
}

/// The HTTP side, credentials and cache, made on first use.
struct Session {
    rt: tokio::runtime::Runtime,
    /// Every request of the pull, bounded (see `bounded`).
    http: bounded::Http,
    auth: RegistryAuth,
    origin: Origin,
    cache: Cache,
}

/// What `resolve` decided, for recording the image once all its layers are in the cache.
struct Pending {
    entry: Entry,
    blobs: Vec<Digest>,
    layers: BTreeSet<Digest>,
    fetched: BTreeSet<Digest>,
    recorded: bool,
}

pub struct Registry {
    name: String,
    reference: Reference,
    opts: Options,
    progress: Progress,
    session: OnceLock<Session>,
    pending: Mutex<Option<Pending>>,
    /// Device and inode of each layer blob as handed out, so a corrupt one is discarded only
    /// if no other process has replaced it since.
    seen: Mutex<HashMap<Digest, (u64, u64)>>,
}

impl Registry {
    /// Parses a reference with docker's defaults (oci-client's `Reference`).
    pub fn parse(reference: &str, name: &str, opts: &Options, progress: &Progress) -> Result<Self> {
        let r: Reference =
            reference.parse().map_err(|e: oci_client::ParseError| SourceError::Failed {
                what: format!("{name}: not an image reference"),
                source: e.into(),
            })?;
        if let Some(d) = r.digest() {
            Digest::parse(d)
                .map_err(|e| SourceError::Failed { what: name.to_string(), source: e.into() })?;
        }
        Ok(Self {
            name: name.to_string(),
            reference: r,
            opts: opts.clone(),
            progress: progress.clone(),
            session: OnceLock::new(),
            pending: Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
        })
    }

    fn registry(&self) -> &str {
        self.reference.registry()
    }

    fn repository(&self) -> &str {
        self.reference.repository()
    }

    fn session(&self) -> Result<&Session> {
        if let Some(s) = self.session.get() {
            return Ok(s);
        }
        let s = self.open_session()?;
        Ok(self.session.get_or_init(|| s))
    }

    fn open_session(&self) -> Result<Session> {
        let cache_err = |e: cache::CacheError| SourceError::Cache(e);
        let cache = Cache::open_default().map_err(cache_err)?;
        cache.hold().map_err(cache_err)?;
        let (auth, origin) =
            auth::find(self.registry(), self.repository(), self.opts.creds.as_ref())?;
        let registry = self.reference.resolve_registry().to_string();
        if self.opts.plain_http && !is_loopback(&registry) {
            eprintln!(
                "rootbox: warning: --plain-http: talking to {registry} unencrypted (meant for a registry on loopback)"
            );
        }
        let http = bounded::Http::new(self.opts.plain_http, CONNECT_TIMEOUT, READ_TIMEOUT)
            .map_err(|e| self.failure("setting up the HTTP client", 1, e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rootbox-net")
            .enable_all()
            .build()
            .map_err(|e| SourceError::Failed {
                what: "starting the network runtime".into(),
                source: e.into(),
            })?;
        Ok(Session { rt, http, auth, origin, cache })
    }

    fn failure(&self, what: &str, attempts: u32, e: impl Into<super::BoxError>) -> SourceError {
        SourceError::Registry {
            registry: self.registry().to_string(),
            repository: self.repository().to_string(),
            what: what.to_string(),
            attempts,
            source: e.into(),
        }
    }

    /// Maps an oci-client failure to the one error the user sees.
    fn oci_error(&self, what: &str, e: OciDistributionError, attempts: u32) -> SourceError {
        if retry::denied(&e) {
            let origin = self.session.get().map(|s| s.origin.clone()).unwrap_or(Origin::Anonymous);
            return SourceError::Denied {
                registry: self.registry().to_string(),
                repository: self.repository().to_string(),
                origin: origin.to_string(),
            };
        }
        self.failure(what, attempts, e)
    }

    /// Runs `op` with retries on transient failures.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let mut n = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if retry::transient(&e) && n < retry::ATTEMPTS => {
                    n += 1;
                    tokio::time::sleep(retry::backoff(n)).await;
                }
                Err(e) => return Err(self.oci_error(what, e, n)),
            }
        }
    }

    /// A manifest or index by tag or digest: from the cache when addressed by a digest it
    /// holds, else from the registry (then cached). Returns the bytes and their digest.
    fn manifest_bytes(
        &self,
        r: &Reference,
        expect: Option<&Descriptor>,
    ) -> Result<(Vec<u8>, Digest)> {
        let s = self.session()?;
        let want =
            match (expect, r.digest()) {
                (Some(d), _) => Some(d.digest.clone()),
                (None, Some(d)) => Some(Digest::parse(d).map_err(|e| SourceError::Failed {
                    what: self.name.clone(),
                    source: e.into(),
                })?),
                (None, None) => None,
            };
        let what = match &want {
            Some(d) => format!("manifest {d}"),
            None => format!("manifest {}", r.tag().unwrap_or("latest")),
        };
        if let Some(d) = &want {
            if let Ok(bytes) = std::fs::read(s.cache.blob_path(d)) {
                if Digest::of(&bytes) == *d && expect.is_none_or(|e| e.size == bytes.len() as u64) {
                    return Ok((bytes, d.clone()));
                }
                s.cache.discard(d, None).map_err(SourceError::Cache)?;
            }
        }
        let get = || s.http.manifest(&s.auth, r, ACCEPT, spec::JSON_MAX);
        let (bytes, claimed) = match s.rt.block_on(self.with_retries(&what, get))? {
            bounded::Reply::Body(b, claimed) => (b, claimed),
            bounded::Reply::TooLarge => {
                return Err(SourceError::TooLarge {
                    what: format!("{} {what}", self.name),
                    max: spec::JSON_MAX,
                })
            }
        };
        let actual = Digest::of(&bytes);
        // The registry's own Docker-Content-Digest must match too (when it is a sha256).
        let want = want.or_else(|| claimed.and_then(|c| Digest::parse(&c).ok()));
        if let Some(d) = &want {
            if actual != *d {
                return Err(SourceError::DigestMismatch {
                    what: format!("{} {what}", self.name),
                    expected: d.clone(),
                    actual,
                });
            }
        }
        if let Some(e) = expect {
            if e.size != bytes.len() as u64 {
                return Err(SourceError::SizeMismatch {
                    what: format!("{} {what}", self.name),
                    expected: e.size,
                    actual: bytes.len() as u64,
                });
            }
        }
        s.cache.put(&actual, &bytes).map_err(SourceError::Cache)?;
        Ok((bytes, actual))
    }

    /// Follows indexes down to the manifest for `platform`. Returns the manifest's descriptor,
    /// the manifest, and the digest of the index it was chosen from.
    fn manifest(&self, platform: &PlatformSpec) -> Result<(Descriptor, Manifest, Option<Digest>)> {
        let (mut bytes, mut digest) = self.manifest_bytes(&self.reference, None)?;
        let mut media_type = String::new();
        let mut from_index = None;
        for _ in 0..4 {
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|source| {
                SourceError::Json { what: format!("{} manifest", self.name), source }
            })?;
            let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or_default().to_string();
            let is_index = mt == spec::OCI_INDEX
                || mt == spec::DOCKER_LIST
                || (mt.is_empty() && v.get("manifests").is_some());
            if !is_index {
                if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
                    return Err(SourceError::MediaType {
                        what: format!("{} manifest", self.name),
                        media_type: "schema 1 (deprecated Docker manifest)".into(),
                    });
                }
                let m: Manifest = serde_json::from_value(v).map_err(|source| {
                    SourceError::Json { what: format!("{} manifest", self.name), source }
                })?;
                let media_type = if mt.is_empty() { media_type } else { mt };
                let desc = Descriptor {
                    media_type: if media_type.is_empty() {
                        OCI_MANIFEST.into()
                    } else {
                        media_type
                    },
                    digest,
                    size: bytes.len() as u64,
                    annotations: Default::default(),
                    platform: None,
                };
                return Ok((desc, m, from_index));
            }
            let idx: Index = serde_json::from_value(v).map_err(|source| SourceError::Json {
                what: format!("{} image index", self.name),
                source,
            })?;
            let chosen = super::select_platform(&self.name, &idx, platform)?;
            from_index.get_or_insert(digest.clone());
            media_type = chosen.media_type.clone();
            let child = self.reference.clone_with_digest(chosen.digest.to_string());
            (bytes, digest) = self.manifest_bytes(&child, Some(&chosen))?;
        }
        Err(SourceError::Invalid(format!("{}: image indexes nested too deeply", self.name)))
    }

    /// Makes blob `d` of `size` bytes present in the cache (downloading it under its blob
    /// lock when missing). `label` names it in progress and errors.
    fn ensure_blob(
        &self,
        d: &Digest,
        size: u64,
        label: &str,
        inline: Option<(CompressionHint, u64)>,
    ) -> Result<Option<Verified>> {
        let s = self.session()?;
        if s.cache.has(d, size) {
            return Ok(None);
        }
        let _lock = s.cache.blob_lock(d).map_err(SourceError::Cache)?;
        if s.cache.has(d, size) {
            return Ok(None);
        }
        let show = inline.is_some();
        let bar = if show { Some(self.progress.download(label.to_string(), size)) } else { None };
        let r = s.rt.block_on(self.download(s, d, size, label, bar.as_ref(), inline));
        match (&r, bar) {
            (Ok(_), Some(b)) => b.done(),
            (Err(_), Some(b)) => b.failed(),
            _ => {}
        }
        r
    }

    /// Streams blob `d` into a temp file in the cache, hashing as it goes; resumes with a
    /// range request after a transient failure; renames into place only when complete and
    /// matching its digest.
    async fn download(
        &self,
        s: &Session,
        d: &Digest,
        size: u64,
        label: &str,
        bar: Option<&crate::progress::Download>,
        inline: Option<(CompressionHint, u64)>,
    ) -> Result<Option<Verified>> {
        let what = format!("{} {label}", self.name);
        let mut temp = s.cache.temp(d).map_err(SourceError::Cache)?;
        let mut hasher = Sha256::new();
        let mut check = inline.map(|(c, cap)| Inline::new(c, cap));
        let mut written = 0u64;
        let mut attempt = 1;
        let io = |e: std::io::Error| SourceError::Io {
            what: what.clone(),
            path: temp_path_hint(d),
            source: e,
        };
        let digest = d.to_string();
        loop {
            let step: std::result::Result<bool, OciDistributionError> = async {
                let reply = s.http.blob(&s.auth, &self.reference, &digest, written);
                let res = match reply.await? {
                    bounded::Blob::Partial(res) => res,
                    bounded::Blob::Full(res) => {
                        if written > 0 {
                            // No range support: start over.
                            written = 0;
                            hasher = Sha256::new();
                            check = inline.map(|(c, cap)| Inline::new(c, cap));
                            temp.as_file_mut().set_len(0)?;
                            std::io::Seek::rewind(temp.as_file_mut())?;
                            if let Some(b) = bar {
                                b.set(0, "restarting");
                            }
                        }
                        res
                    }
                };
                let mut stream = res.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    if written + chunk.len() as u64 > size {
                        return Ok(false);
                    }
                    temp.write_all(&chunk)?;
                    hasher.update(&chunk);
                    if let Some(c) = check.as_mut() {
                        c.feed(&chunk);
                    }
                    written += chunk.len() as u64;
                    if let Some(b) = bar {
                        b.inc(chunk.len() as u64);
                    }
                }
                if written < size {
                    // The body ended early without an error: a dropped connection.
                    return Err(OciDistributionError::IoError(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                Ok(true)
            }
            .await;
            match step {
                Ok(true) => break,
                Ok(false) => {
                    return Err(SourceError::SizeMismatch {
                        what,
                        expected: size,
                        actual: written.max(size + 1),
                    })
                }
                Err(e) if retry::transient(&e) && attempt < retry::ATTEMPTS => {
                    attempt += 1;
                    if let Some(b) = bar {
                        b.set(written, &format!("retrying ({attempt}/{})", retry::ATTEMPTS));
                    }
                    tokio::time::sleep(retry::backoff(attempt)).await;
                }
                Err(e) => return Err(self.oci_error(&format!("downloading {label}"), e, attempt)),
            }
        }
        temp.flush().map_err(io)?;
        let actual = Digest::from_sha256(hasher);
        if actual != *d {
            return Err(SourceError::DigestMismatch { what, expected: d.clone(), actual });
        }
        s.cache.commit(temp, d).map_err(SourceError::Cache)?;
        Ok(check.and_then(Inline::finish))
    }

    fn read_config(&self, desc: &Descriptor) -> Result<spec::Config> {
        let what = format!("{} config", self.name);
        if desc.size > spec::JSON_MAX {
            return Err(SourceError::TooLarge { what, max: spec::JSON_MAX });
        }
        let s = self.session()?;
        for round in 0..2 {
            self.ensure_blob(
                &desc.digest,
                desc.size,
                &format!("config {}", desc.digest.short()),
                None,
            )?;
            let path = s.cache.blob_path(&desc.digest);
            let bytes = std::fs::read(&path).map_err(|source| SourceError::Io {
                what: what.clone(),
                path: path.clone(),
                source,
            })?;
            if Digest::of(&bytes) != desc.digest && round == 0 {
                s.cache.discard(&desc.digest, None).map_err(SourceError::Cache)?;
                continue;
            }
            super::check_blob(&what, desc, &bytes)?;
            return serde_json::from_slice(&bytes)
                .map_err(|source| SourceError::Json { what, source });
        }
        unreachable!("the second round returns")
    }

    /// Records the image in the cache's index.json once every layer has been fetched.
    fn note_fetched(&self, d: &Digest) -> Result<()> {
        let Ok(mut p) = self.pending.lock() else { return Ok(()) };
        let Some(p) = p.as_mut() else { return Ok(()) };
        p.fetched.insert(d.clone());
        if p.recorded || !p.layers.is_subset(&p.fetched) {
            return Ok(());
        }
        p.recorded = true;
        let mut entry = p.entry.clone();
        entry.last_used = cache::now_secs();
        self.session()?.cache.record(entry, &p.blobs).map_err(SourceError::Cache)
    }
}

fn temp_path_hint(d: &Digest) -> std::path::PathBuf {
    Cache::default_dir().map(|r| r.join(".rootbox/ingest").join(d.hex())).unwrap_or_default()
}

fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            registry
        }
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Source for Registry {
    fn resolve(&self, platform: &PlatformSpec) -> Result<Image> {
        self.progress.line(format!("resolving {}", self.reference.whole()));
        let (desc, manifest, from_index) = self.manifest(platform)?;
        let config = self.read_config(&manifest.config)?;
        let cache = &self.session()?.cache;
        let layers = super::manifest_layers(&self.name, platform, &manifest, &config, |d, _| {
            Ok(BlobLocation::File { path: cache.blob_path(&d.digest), offset: 0, len: d.size })
        })?;
        let mut blobs = vec![desc.digest.clone(), manifest.config.digest.clone()];
        blobs.extend(from_index.iter().cloned());
        let entry = Entry {
            reference: self.reference.whole(),
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
            platform: (
                config.os.clone().unwrap_or_else(|| platform.os.clone()),
                config.architecture.clone().unwrap_or_else(|| platform.arch.clone()),
                platform.variant.clone(),
            ),
            index: from_index,
            last_used: cache::now_secs(),
        };
        if let Ok(mut p) = self.pending.lock() {
            *p = Some(Pending {
                entry,
                blobs,
                layers: layers.iter().map(|l| l.digest.clone()).collect(),
                fetched: BTreeSet::new(),
                recorded: false,
            });
        }
        Ok(Image { name: self.name.clone(), digest: desc.digest, layers })
    }

    fn fetch(&self, layer: &Layer, label: &str, limit: u64) -> Result<Option<Verified>> {
        let s = self.session()?;
        let len = layer.blob.len();
        let mut checked = None;
        if s.cache.has(&layer.digest, len) {
            self.progress.line(format!("{label}: in the cache"));
        } else {
            let inline = Some((layer.compression, limit));
            checked = self.ensure_blob(&layer.digest, len, label, inline)?;
            // Only a complete match stands in for the verification pass.
            checked = checked.filter(|v| layer.diff_id.as_ref() == Some(&v.diff_id));
        }
        if let (Some(id), Ok(mut seen)) = (s.cache.identity(&layer.digest), self.seen.lock()) {
            seen.insert(layer.digest.clone(), id);
        }
        self.note_fetched(&layer.digest)?;
        Ok(checked)
    }

    fn discard(&self, layer: &Layer) -> bool {
        let Ok(s) = self.session() else { return false };
        let seen = self.seen.lock().ok().and_then(|m| m.get(&layer.digest).copied());
        self.progress.line(format!("discarding a corrupt cached blob {}", layer.digest));
        s.cache.discard(&layer.digest, seen).is_ok()
    }

    fn remote(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Registry> {
        Registry::parse(s, s, &Options::default(), &Progress::default())
    }

    #[test]
    fn references_use_docker_defaults() {
        let r = parse("debian:bookworm").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/debian");
        assert_eq!(r.reference.whole(), "docker.io/library/debian:bookworm");
        let r = parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/app");
        let d = format!("127.0.0.1:5000/app@sha256:{}", "a".repeat(64));
        assert_eq!(parse(&d).unwrap().reference.digest().map(str::len), Some(71));
        assert!(parse("no spaces allowed").is_err());
        assert!(parse("repo/UPPER").is_err());
        assert!(parse(&format!("app@sha512:{}", "a".repeat(128))).is_err());
    }

    // The registry's refusals, pinned as the CLI prints them (see `crate::refusals`).

    #[test]
    fn a_registry_that_refuses_access() {
        let r = parse("127.0.0.1:5000/private/app:v1").unwrap();
        let denied = OciDistributionError::UnauthorizedError { url: "http://x/v2/".into() };
        let e = r.oci_error("manifest v1", denied, 1);
        assert_eq!(
            crate::exit::message(&e.into()),
            "registry 127.0.0.1:5000 refused access to repository private/app anonymously (no \
             --creds, no auth file entry); give credentials with --creds USER:PASS or an auth \
             file ($REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json, ~/.docker/config.json)"
        );
    }

    #[test]
    fn a_registry_that_keeps_failing() {
        let r = parse("127.0.0.1:5000/team/app:v1").unwrap();
        let failing = OciDistributionError::ServerError {
            code: 503,
            url: "http://127.0.0.1:5000/v2/team/app/blobs/sha256:ab".into(),
            message: "try later".into(),
        };
        let e = r.oci_error("downloading layer 1 of 2 (sha256:ab)", failing, retry::ATTEMPTS);
        assert_eq!(
            crate::exit::message(&e.into()),
            "registry 127.0.0.1:5000, repository team/app: downloading layer 1 of 2 (sha256:ab) \
             (gave up after 5 attempts): Server error: url \
             http://127.0.0.1:5000/v2/team/app/blobs/sha256:ab, code: 503, message: try later"
        );
    }

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1:5000", "localhost:80", "localhost", "[::1]:5000", "127.1.2.3"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1:5000", "192.0.2.1:5000", "docker.io"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
