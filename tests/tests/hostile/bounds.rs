//! The limits a hostile image runs into: a decompression bomb (gzip and zstd) against
//! `--max-uncompressed`, too many entries against `--max-entries`, a path too long to take.

use std::io::Write;

use rootbox_tests::layer::{self, Entry as E};
use rootbox_tests::oci::{Compression, LayerSpec};
use rootbox_tests::require_root;
use rootbox_tests::scene::Scene;

use super::refused;
use crate::util::{layer, oci_of, write_oci};

/// A layer blob that inflates to `size` bytes of tar (one file of zeros), and its diff_id.
fn bomb(size: u64, compression: Compression) -> (Vec<u8>, String) {
    struct Tee<W: Write> {
        inner: W,
        hash: sha2::Sha256,
    }
    impl<W: Write> Write for Tee<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            use sha2::Digest;
            let n = self.inner.write(buf)?;
            self.hash.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    fn fill<W: Write>(w: &mut W, size: u64) {
        E::zeros("zeros", size).write_to(w).expect("write bomb");
        layer::write_end(w).expect("write end");
    }
    use sha2::Digest;
    match compression {
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let mut tee = Tee { inner: gz, hash: sha2::Sha256::new() };
            fill(&mut tee, size);
            let diff_id = format!("sha256:{}", hex::encode(tee.hash.finalize()));
            (tee.inner.finish().expect("gzip"), diff_id)
        }
        Compression::Zstd => {
            let z = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd");
            let mut tee = Tee { inner: z, hash: sha2::Sha256::new() };
            fill(&mut tee, size);
            let diff_id = format!("sha256:{}", hex::encode(tee.hash.finalize()));
            (tee.inner.finish().expect("zstd"), diff_id)
        }
        Compression::None => panic!("a bomb needs compression"),
    }
}

#[test]
fn decompression_bomb_hits_the_limit() {
    let env = require_root!();
    for compression in [Compression::Gzip, Compression::Zstd] {
        eprintln!("variant: {compression:?}");
        let scene = Scene::new(&env);
        let (blob, diff_id) = bomb(256 << 20, compression);
        assert!(blob.len() < 4 << 20, "bomb blob is {} bytes", blob.len());
        let spec = LayerSpec::precompressed(blob, compression.media_type(), diff_id);
        let (source, _) = write_oci(&scene, vec![spec]);
        refused(&env, &scene, &source, &["--max-uncompressed", "64MiB"], &[3], &["limit"]);
    }
}

#[test]
fn entry_limit_is_enforced() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let mut entries = vec![E::dir("many")];
    entries.extend((0..50).map(|i| E::file(&format!("many/f{i}"), b"x")));
    let source = oci_of(&scene, vec![layer(entries)]);
    refused(&env, &scene, &source, &["--max-entries", "10"], &[4], &[]);
}

#[test]
fn over_long_path_is_refused() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let long = "abcdefghi/".repeat(500) + "f";
    assert!(long.len() > 5000);
    let entry = E::file(&long, b"long\n");
    assert!(entry.name.len() > 100, "goes through a PAX path record");
    let source = oci_of(&scene, vec![layer(vec![E::dir("etc"), entry])]);
    refused(&env, &scene, &source, &[], &[4], &[]);
}
