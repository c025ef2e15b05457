//! `rootfs-tar:FILE` / `rootfs-tar:-`: a flat filesystem tar (`docker export`), one layer.
//! Standard input is spooled to an unlinked temp file so it can be verified, then shipped.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::spec::PlatformSpec;
use super::{BlobLocation, CompressionHint, Image, Layer, Result, Source, SourceError};
use crate::digest::Digest;

pub struct RootfsTar {
    path: Option<PathBuf>,
    name: String,
}

impl RootfsTar {
    pub fn new(rest: &str, name: &str) -> Self {
        let path = if rest == "-" { None } else { Some(PathBuf::from(rest)) };
        Self { path, name: name.to_string() }
    }
}

fn hash_copy(mut r: impl Read, mut w: impl Write) -> io::Result<(Digest, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
    Ok((Digest::from_sha256(h), n))
}

impl Source for RootfsTar {
    fn resolve(&self, _platform: &PlatformSpec) -> Result<Image> {
        let (digest, blob) = match &self.path {
            Some(path) => {
                let f = super::local::open_regular(path).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => {
                        SourceError::Missing { what: "rootfs tar".into(), path: path.clone() }
                    }
                    _ => SourceError::Io { what: self.name.clone(), path: path.clone(), source: e },
                })?;
                let f = Arc::new(f);
                let whole = super::local::At::new(f.clone(), 0, u64::MAX);
                let (digest, len) =
                    hash_copy(io::BufReader::with_capacity(1 << 20, whole), io::sink()).map_err(
                        |source| SourceError::Io {
                            what: self.name.clone(),
                            path: path.clone(),
                            source,
                        },
                    )?;
                (digest, BlobLocation::Opened { file: f, path: path.clone(), offset: 0, len })
            }
            None => {
                let stdin = PathBuf::from("<stdin>");
                let io_err = |source| SourceError::Io {
                    what: "spooling standard input".into(),
                    path: stdin.clone(),
                    source,
                };
                let spool = tempfile::tempfile().map_err(io_err)?;
                let (digest, len) =
                    hash_copy(io::stdin().lock(), io::BufWriter::new(&spool)).map_err(io_err)?;
                (digest, BlobLocation::Spooled { file: Arc::new(spool), len })
            }
        };
        let layer = Layer {
            digest: digest.clone(),
            verify_digest: false,
            diff_id: None,
            compression: CompressionHint::Sniff,
            blob,
        };
        Ok(Image { name: self.name.clone(), digest, layers: vec![layer] })
    }
}
