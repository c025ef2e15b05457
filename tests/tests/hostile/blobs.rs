//! Broken blobs: a truncated compressed stream, a tar cut short inside valid compression, a
//! blob or diff_id digest that does not match, a missing blob, a media type rootbox does not
//! read. Each is refused, and where the error can name the layer, it does.

use rootbox_tests::layer::Entry as E;
use rootbox_tests::oci::{Compression, DockerLayout, Fault, Image, LayerSpec, Written};
use rootbox_tests::require_root;
use rootbox_tests::run::{error_lines, Outcome};
use rootbox_tests::scene::Scene;

use super::refused;
use crate::util::{layer, write_oci};

/// The first 12 hex digits of a digest: how an error can name a layer.
fn short(digest: &str) -> String {
    digest.trim_start_matches("sha256:")[..12].to_string()
}

/// The error line names the layer: its blob digest or diff_id (at least 12 hex digits).
fn assert_names_layer(o: &Outcome, w: &Written, i: usize) {
    let line = error_lines(o)[0].to_string();
    assert!(
        line.contains(&short(&w.layer_digests[i])) || line.contains(&short(&w.diff_ids[i])),
        "error line does not name layer {i} ({} / {}):\n{}",
        w.layer_digests[i],
        w.diff_ids[i],
        o.describe()
    );
}

fn payload() -> Vec<u8> {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    layer(vec![E::dir("etc"), E::file("etc/big", &big), E::file("etc/after", b"after\n")])
}

#[test]
fn truncated_compressed_blob_is_refused() {
    let env = require_root!();
    for compression in [Compression::Gzip, Compression::Zstd] {
        eprintln!("variant: {compression:?}");
        let scene = Scene::new(&env);
        let base = LayerSpec::new(layer(vec![E::dir("etc")]), Compression::Gzip);
        let cut = LayerSpec::new(payload(), compression).fault(Fault::TruncatedBlob);
        let (source, w) = write_oci(&scene, vec![base, cut]);
        // Which side notices the early end (host decoder: 3, worker: 4) is not fixed by the
        // contract; that it is refused, cleanly, is.
        let o = refused(&env, &scene, &source, &[], &[3, 4], &[]);
        assert_names_layer(&o, &w, 1);
    }
}

#[test]
fn truncated_tar_inside_valid_compression_is_refused() {
    let env = require_root!();
    let full = payload();
    // Cut inside etc/big's data: the headers of etc/ and etc/big, then 50,000 of its bytes.
    let cut = full[..1024 + 50_000].to_vec();
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        eprintln!("variant: {compression:?}");
        let scene = Scene::new(&env);
        let (source, _) = write_oci(&scene, vec![LayerSpec::new(cut.clone(), compression)]);
        refused(&env, &scene, &source, &[], &[4], &[]);
    }
}

#[test]
fn blob_digest_mismatch_is_refused() {
    let env = require_root!();
    for compression in [Compression::Gzip, Compression::None] {
        eprintln!("variant: {compression:?}");
        let scene = Scene::new(&env);
        let good = LayerSpec::new(layer(vec![E::dir("etc")]), Compression::Gzip);
        let bad = LayerSpec::new(payload(), compression).fault(Fault::BlobDigest);
        let (source, w) = write_oci(&scene, vec![good, bad]);
        let o = refused(&env, &scene, &source, &[], &[3], &[]);
        assert_names_layer(&o, &w, 1);
    }
}

#[test]
fn diff_id_mismatch_is_refused() {
    let env = require_root!();
    for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
        eprintln!("variant: {compression:?}");
        let scene = Scene::new(&env);
        let bad = LayerSpec::new(payload(), compression).fault(Fault::DiffId);
        let (source, w) = write_oci(&scene, vec![bad]);
        let o = refused(&env, &scene, &source, &[], &[3], &[]);
        assert_names_layer(&o, &w, 0);
    }
    let scene = Scene::new(&env);
    let archive = scene.input.join("docker.tar");
    let img = Image::new(vec![LayerSpec::new(payload(), Compression::None).fault(Fault::DiffId)]);
    img.write_docker_archive(&archive, DockerLayout::Legacy).expect("write");
    refused(&env, &scene, &format!("docker-archive:{}", archive.display()), &[], &[3], &[]);
}

#[test]
fn missing_blob_is_refused() {
    let env = require_root!();
    let scene = Scene::new(&env);
    let good = LayerSpec::new(layer(vec![E::dir("etc")]), Compression::Gzip);
    let gone = LayerSpec::new(payload(), Compression::Gzip).fault(Fault::MissingBlob);
    let (source, w) = write_oci(&scene, vec![good, gone]);
    let o = refused(&env, &scene, &source, &[], &[3], &[]);
    assert_names_layer(&o, &w, 1);

    for layout in [DockerLayout::Legacy, DockerLayout::Blobs] {
        eprintln!("variant: docker {layout:?}");
        let scene = Scene::new(&env);
        let archive = scene.input.join("docker.tar");
        let img =
            Image::new(
                vec![LayerSpec::new(payload(), Compression::None).fault(Fault::MissingBlob)],
            );
        img.write_docker_archive(&archive, layout).expect("write");
        refused(&env, &scene, &format!("docker-archive:{}", archive.display()), &[], &[3], &[]);
    }
}

#[test]
fn unsupported_media_type_is_refused() {
    let env = require_root!();
    for media_type in [
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        "application/octet-stream",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ] {
        eprintln!("variant: media type {media_type}");
        let scene = Scene::new(&env);
        let spec = LayerSpec::new(payload(), Compression::Gzip).media_type(media_type);
        let (source, _) = write_oci(&scene, vec![spec]);
        refused(&env, &scene, &source, &[], &[3], &[media_type]);
    }
}
