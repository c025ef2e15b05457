//! The sentence each refusal of the host prints, pinned: one test per refusal, named for it.
//! Each builds its error the way the CLI does (a source on disk resolved and verified by the
//! real code, the CLI's own parsers, the job's error under `pull`'s contexts) and asserts the
//! whole line after `rootbox: error: `, as [`crate::exit::message`] prints it. (Flags clap
//! refuses are printed by clap: their first line is pinned.) The registry's refusals are
//! pinned beside the registry code, which they need to reach.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use clap::Parser as _;
use serde_json::json;

use crate::digest::Digest;
use crate::job::JobError;
use crate::pipeline::Layers;
use crate::progress::Progress;
use crate::source::spec::PlatformSpec;
use crate::source::{registry, Image, Source};

/// What the CLI prints after `rootbox: error: `.
fn line(e: impl Into<anyhow::Error>) -> String {
    crate::exit::message(&e.into())
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// An OCI layout of one image of one layer; the fields that default to the truth say where
/// the layout lies.
struct Oci {
    layer: Vec<u8>,
    media_type: &'static str,
    /// The layer descriptor's digest (default: the blob's own, under which it is stored).
    digest: Option<Digest>,
    /// The layer descriptor's size (default: the blob's length).
    size: Option<u64>,
    /// The manifest descriptor's size in index.json (default: the manifest's length).
    manifest_size: Option<u64>,
    /// The config's diff_ids (default: the layer's digest, right for an uncompressed tar).
    diff_ids: Option<Vec<Digest>>,
    arch: &'static str,
}

impl Oci {
    fn new(layer: &[u8]) -> Oci {
        Oci {
            layer: layer.to_vec(),
            media_type: TAR,
            digest: None,
            size: None,
            manifest_size: None,
            diff_ids: None,
            arch: "amd64",
        }
    }

    fn layer_digest(&self) -> Digest {
        self.digest.clone().unwrap_or_else(|| Digest::of(&self.layer))
    }

    /// Writes the layout into a temp dir: the dir, and the source's name (`oci:DIR`).
    fn write(&self) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = dir.path().join("blobs/sha256");
        fs::create_dir_all(&blobs).expect("blobs dir");
        let put = |bytes: &[u8], d: &Digest| fs::write(blobs.join(d.hex()), bytes).expect("blob");
        put(&self.layer, &self.layer_digest());
        let diff_ids = self.diff_ids.clone().unwrap_or_else(|| vec![Digest::of(&self.layer)]);
        let config = serde_json::to_vec(&json!({
            "architecture": self.arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("config");
        put(&config, &Digest::of(&config));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": Digest::of(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": self.media_type,
                "digest": self.layer_digest(),
                "size": self.size.unwrap_or(self.layer.len() as u64),
            }],
        }))
        .expect("manifest");
        put(&manifest, &Digest::of(&manifest));
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": Digest::of(&manifest),
                "size": self.manifest_size.unwrap_or(manifest.len() as u64),
            }],
        });
        fs::write(dir.path().join("index.json"), index.to_string()).expect("index.json");
        fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        let name = format!("oci:{}", dir.path().display());
        (dir, name)
    }
}

/// A layout whose one layer, of `media_type`, holds `bytes`: the dir, its name, the layer's
/// digest.
fn typed(media_type: &'static str, bytes: &[u8]) -> (tempfile::TempDir, String, Digest) {
    let (dir, what) = Oci { media_type, ..Oci::new(bytes) }.write();
    (dir, what, Digest::of(bytes))
}

/// `pull`'s resolution of `what`, for linux/amd64.
fn resolve(what: &str) -> anyhow::Result<(Arc<dyn Source>, Image)> {
    let platform = PlatformSpec::parse("linux/amd64").expect("platform");
    crate::pull::resolve(what, &registry::Options::default(), &platform, &Progress::default())
}

/// The refusal of resolving `what`.
fn resolve_refusal(what: &str) -> String {
    match resolve(what) {
        Ok(_) => panic!("{what} resolved"),
        Err(e) => crate::exit::message(&e),
    }
}

/// The refusal of verifying `what`'s layers within `limit` uncompressed bytes, in full before
/// the build (`--fetch-first`; by default the blob is checked up front and the rest as it
/// ships, where the same error arrives as the job's `layer N` cause: see `job::tests`).
fn verify_refusal(what: &str, limit: u64) -> String {
    let (src, image) = resolve(what).expect("resolves");
    match Layers::start(src, &image, None, limit, true, &Progress::default()) {
        Ok(_) => panic!("{what} verified"),
        Err(e) => line(e),
    }
}

/// A docker archive holding `members`, in a temp dir: the dir and `docker-archive:FILE`.
fn docker_archive(members: &[(&str, &[u8])]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("image.tar");
    let mut b = tar::Builder::new(fs::File::create(&path).expect("archive"));
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("member");
    }
    b.finish().expect("archive end");
    let name = format!("docker-archive:{}", path.display());
    (dir, name)
}

#[test]
fn an_unknown_source_syntax() {
    assert_eq!(
        resolve_refusal("dir:/srv/image"),
        "unknown source \"dir:/srv/image\": use oci:DIR[:TAG], docker-archive:FILE, \
         rootfs-tar:FILE|-, docker://REFERENCE or a bare reference (debian:bookworm)"
    );
}

#[test]
fn a_registry_reference_that_does_not_parse() {
    assert_eq!(
        resolve_refusal("docker://127.0.0.1:5000/Team/app"),
        "docker://127.0.0.1:5000/Team/app: not an image reference: invalid reference format"
    );
}

#[test]
fn a_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rootfs.tar");
    let what = format!("rootfs-tar:{}", path.display());
    assert_eq!(
        resolve_refusal(&what),
        format!("resolving {what}: rootfs tar not found at {}", path.display())
    );
}

#[test]
fn a_document_that_is_not_json() {
    let (dir, what) = Oci::new(b"layer").write();
    fs::write(dir.path().join("index.json"), "{").expect("index.json");
    assert_eq!(
        resolve_refusal(&what),
        format!(
            "resolving {what}: {what} index.json is not valid JSON of the expected shape: \
             EOF while parsing an object at line 1 column 1"
        )
    );
}

#[test]
fn a_document_too_large() {
    let (_dir, what) = Oci { manifest_size: Some(9 << 20), ..Oci::new(b"layer") }.write();
    assert_eq!(
        resolve_refusal(&what),
        format!("resolving {what}: {what} manifest is larger than 8388608 bytes")
    );
}

#[test]
fn a_layer_digest_mismatch() {
    let oci = Oci { digest: Some(Digest::of(b"another layer")), ..Oci::new(b"layer") };
    let (_dir, what) = oci.write();
    let (claimed, actual) = (Digest::of(b"another layer"), Digest::of(b"layer"));
    assert_eq!(
        verify_refusal(&what, u64::MAX),
        format!(
            "{what} layer 1 of 1 ({claimed}): digest mismatch: expected {claimed}, content is \
             {actual}"
        )
    );
}

#[test]
fn a_diff_id_mismatch() {
    let oci = Oci { diff_ids: Some(vec![Digest::of(b"other content")]), ..Oci::new(b"layer") };
    let (_dir, what) = oci.write();
    let (layer, expected) = (Digest::of(b"layer"), Digest::of(b"other content"));
    assert_eq!(
        verify_refusal(&what, u64::MAX),
        format!(
            "{what} layer 1 of 1 ({layer}): uncompressed content {layer} does not match diff_id \
             {expected} in the image config"
        )
    );
}

#[test]
fn a_layer_size_mismatch() {
    let (_dir, what) = Oci { size: Some(6), ..Oci::new(b"layer") }.write();
    let layer = Digest::of(b"layer");
    assert_eq!(
        resolve_refusal(&what),
        format!(
            "resolving {what}: {what} layer 1 ({layer}): size mismatch: descriptor says 6 \
             bytes, blob has 5"
        )
    );
}

#[test]
fn an_unsupported_media_type() {
    let bzip2 = "application/vnd.oci.image.layer.v1.tar+bzip2";
    let (_dir, what, layer) = typed(bzip2, b"layer");
    assert_eq!(
        resolve_refusal(&what),
        format!(
            "resolving {what}: {what} layer 1 ({layer}): unsupported media type \"{bzip2}\" \
             (rootbox applies tar, tar+gzip and tar+zstd layers)"
        )
    );
}

#[test]
fn a_layer_that_does_not_decompress() {
    let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    let (_dir, what, layer) = typed(gzip, b"a plain tar, not gzip");
    assert_eq!(
        verify_refusal(&what, u64::MAX),
        format!("{what} layer 1 of 1 ({layer}): decompressing failed: invalid gzip header")
    );
}

#[test]
fn the_uncompressed_limit() {
    let (_dir, what) = Oci::new(b"layer").write();
    let layer = Digest::of(b"layer");
    assert_eq!(
        verify_refusal(&what, 4),
        format!(
            "uncompressed layers exceed the 4-byte limit (--max-uncompressed) at {what} layer 1 \
             of 1 ({layer})"
        )
    );
}

#[test]
fn an_image_for_another_platform() {
    let (_dir, what) = Oci { arch: "arm64", ..Oci::new(b"layer") }.write();
    assert_eq!(
        resolve_refusal(&what),
        format!(
            "resolving {what}: {what} is for linux/arm64, not linux/amd64 (choose with \
             --platform)"
        )
    );
}

#[test]
fn diff_ids_that_do_not_pair_with_the_layers() {
    let two = vec![Digest::of(b"layer"), Digest::of(b"layer")];
    let (_dir, what) = Oci { diff_ids: Some(two), ..Oci::new(b"layer") }.write();
    assert_eq!(
        resolve_refusal(&what),
        format!(
            "resolving {what}: {what}: the manifest lists 1 layers but the config has 2 diff_ids"
        )
    );
}

#[test]
fn a_tag_the_layout_does_not_have() {
    let (_dir, what) = Oci::new(b"layer").write();
    let tagged = format!("{what}:v2");
    assert_eq!(
        resolve_refusal(&tagged),
        format!("resolving {tagged}: {tagged}: no manifest tagged \"v2\" (tags: none)")
    );
}

#[test]
fn a_docker_archive_that_is_not_a_tar() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("image.tar");
    fs::write(&path, [b'x'; 1536]).expect("archive");
    let what = format!("docker-archive:{}", path.display());
    assert_eq!(
        resolve_refusal(&what),
        format!(
            "resolving {what}: {what}: listing members: tar header at byte 0: bad header \
             checksum (stored \"xxxxxxxx\", computed 166500 or 166500)"
        )
    );
}

#[test]
fn a_docker_archive_of_no_image() {
    let (_dir, what) = docker_archive(&[("manifest.json", b"[]")]);
    assert_eq!(
        resolve_refusal(&what),
        format!("resolving {what}: {what} manifest.json lists no image")
    );
}

#[test]
fn a_docker_archive_without_its_manifest() {
    let (dir, what) = docker_archive(&[("repositories", b"{}")]);
    let path = dir.path().join("image.tar");
    assert_eq!(
        resolve_refusal(&what),
        format!(
            "resolving {what}: {what}: member \"manifest.json\" not found at {}",
            path.display()
        )
    );
}

#[test]
fn an_unsafe_cache_directory() {
    let d = tempfile::tempdir().expect("tempdir");
    let real = d.path().join("real");
    crate::cache::Cache::open(real.clone()).expect("a cache");
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let Err(e) = crate::cache::Cache::open(link.clone()) else { panic!("a symlinked cache") };
    // As a registry pull meets it.
    assert_eq!(
        line(crate::source::SourceError::Cache(e)),
        format!(
            "the blob cache: refusing the cache directory {}: it is a symlink; remove it or \
             point $XDG_CACHE_HOME elsewhere",
            link.display()
        )
    );
}

#[test]
fn no_worker_image() {
    let Err(e) = crate::worker_image::locate(Some(Path::new("/nonexistent/wi"))) else {
        panic!("found a worker image")
    };
    assert_eq!(
        line(crate::sandbox::Unavailable::new(e)),
        "no worker image found (looked in: /nonexistent/wi (--worker-image)); build it with \
         `make image` or pass --worker-image DIR"
    );
}

#[test]
fn an_inject_tree_that_is_a_file() {
    let d = tempfile::tempdir().expect("tempdir");
    let f = d.path().join("file");
    fs::write(&f, "x").expect("file");
    let Err(e) = crate::inject::layer(false, Some(&f)) else { panic!("injected a file") };
    assert_eq!(line(e), format!("packing --inject {0}: {0} is not a directory", f.display()));
}

// The job's failures, under `pull`'s `building WHAT`.

const WHAT: &str = "oci:/srv/image";

fn job_line(e: JobError, stopped: Option<&str>) -> String {
    line(crate::pull::job_failed(e, WHAT, stopped.map(String::from), None, None))
}

#[test]
fn the_job_timeout() {
    assert_eq!(
        job_line(JobError::Timeout(std::time::Duration::from_secs(60)), None),
        "building oci:/srv/image: the job did not finish within 60 s (--job-timeout); the \
         sandbox was stopped"
    );
}

#[test]
fn the_output_filling_up() {
    assert_eq!(
        job_line(JobError::OutputFull, None),
        "building oci:/srv/image: the filesystem holding the output filled up during the \
         build; the sandbox was stopped"
    );
}

#[test]
fn a_full_disk_under_the_output() {
    let full = crate::output::NoSpace {
        dir: "/out".into(),
        mount: "/".into(),
        free: 4096,
        total: 1 << 30,
        written: 1 << 29,
        needed: 1 << 31,
    };
    let e = JobError::Lost { cause: "no answer".into(), console: vec![] };
    assert_eq!(
        line(crate::pull::job_failed(e, WHAT, None, Some(full), None)),
        "building oci:/srv/image: the filesystem holding /out is full (4096 bytes free of \
         1073741824, mounted at /): the build had written 536870912 bytes and needs about \
         2147483648 in all; free space there or write the image elsewhere: the worker stopped \
         unexpectedly: no answer"
    );
}

#[test]
fn a_worker_that_went_away() {
    let e = JobError::Lost {
        cause: Box::new(rootbox_proto::ProtoError::Closed),
        console: vec!["Kernel panic".into(), "end of trace".into()],
    };
    assert_eq!(
        job_line(e, Some("qemu exited (signal: 9 (SIGKILL))")),
        "building oci:/srv/image: qemu exited (signal: 9 (SIGKILL)): the worker stopped \
         unexpectedly: peer closed the connection; its last output:\n  Kernel panic\n  end of \
         trace"
    );
}

#[test]
fn an_impossible_result() {
    let e =
        JobError::Untrusted { what: "reported 8192 bytes used of a 4096-byte filesystem".into() };
    assert_eq!(
        job_line(e, None),
        "building oci:/srv/image: the worker reported 8192 bytes used of a 4096-byte \
         filesystem; its result is not used"
    );
}

#[test]
fn a_refusal_of_the_worker() {
    let e = JobError::Remote(rootbox_proto::RemoteError {
        operation: "applying layer 1 of 2".into(),
        layer: Some(Digest::of(b"layer").to_string()),
        path: Some("etc/\u{1b}[2J".into()),
        causes: vec!["refusing a `..` component".into()],
        internal: false,
    });
    assert_eq!(
        job_line(e, None),
        format!(
            "building oci:/srv/image: applying layer 1 of 2 (layer {}, path \"etc/\\u{{1b}}[2J\"): \
             refusing a `..` component",
            Digest::of(b"layer")
        )
    );
}

// Flags: values `cli` and `pull` refuse.

/// The first line clap prints for `rootbox pull oci:/x -o out ARGS`.
fn flag_refusal(args: &[&str]) -> String {
    let all = ["rootbox", "pull", "oci:/x", "-o", "out"].iter().chain(args);
    let Err(e) = crate::cli::Cli::try_parse_from(all) else { panic!("{args:?} accepted") };
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[test]
fn a_size_in_an_unknown_unit() {
    assert_eq!(
        flag_refusal(&["--size", "1.5G"]),
        "error: invalid value '1.5G' for '--size <SIZE>': size \"1.5G\" has an unknown unit \
         \".5g\" (use K, M, G, T or KiB, MiB, GiB, TiB)"
    );
}

#[test]
fn a_size_not_in_whole_blocks() {
    assert_eq!(
        flag_refusal(&["--size", "1000000"]),
        "error: invalid value '1000000' for '--size <SIZE>': --size 1000000 must be a positive \
         multiple of 4 KiB"
    );
}

#[test]
fn a_size_below_the_minimum() {
    assert_eq!(
        flag_refusal(&["--size", "4M"]),
        "error: invalid value '4M' for '--size <SIZE>': --size 4M is below the 8 MiB minimum \
         for an ext4 image"
    );
}

#[test]
fn a_timeout_that_is_not_a_number() {
    assert_eq!(
        flag_refusal(&["--job-timeout", "1h"]),
        "error: invalid value '1h' for '--job-timeout <SECONDS>': invalid digit found in string"
    );
}

#[test]
fn credentials_without_a_password() {
    assert_eq!(
        flag_refusal(&["--creds", "alice"]),
        "error: invalid value 'alice' for '--creds <USER:PASS>': --creds must be USER:PASS"
    );
}

#[test]
fn a_prune_age_in_an_unknown_unit() {
    let prune = ["rootbox", "cache", "prune", "--older-than", "3y"];
    let Err(e) = crate::cli::Cli::try_parse_from(prune) else { panic!("accepted") };
    assert_eq!(
        e.to_string().lines().next().unwrap_or_default(),
        "error: invalid value '3y' for '--older-than <OLDER_THAN>': duration \"3y\" has an \
         unknown unit \"y\" (use s, m, h, d or w)"
    );
}

/// What `pull` says of the VM flags clap took.
fn vm_flags_refusal(memory: u64, boot_secs: u64) -> String {
    let Err(e) = crate::sandbox::vm::Options::from_flags(memory, boot_secs, 0) else {
        panic!("accepted")
    };
    line(anyhow::Error::msg(e))
}

#[test]
fn a_boot_timeout_of_zero() {
    assert_eq!(vm_flags_refusal(256 << 20, 0), "--boot-timeout must be at least 1 second");
}

#[test]
fn vm_memory_out_of_range() {
    assert_eq!(vm_flags_refusal(64 << 20, 30), "--vm-memory 67108864 bytes: give 128MiB to 64GiB");
}

#[test]
fn a_diff_id_mismatch_found_while_shipping() {
    let e = JobError::Source {
        index: 1,
        source: crate::source::SourceError::DiffIdMismatch {
            what: "oci:/srv/image layer 1 of 1 (sha256:aa)".into(),
            expected: Digest::of(b"config"),
            actual: Digest::of(b"content"),
        },
    };
    assert_eq!(
        job_line(e, None),
        "building oci:/srv/image: layer 1: oci:/srv/image layer 1 of 1 (sha256:aa): \
         uncompressed content sha256:ed7002b439e9ac845f22357d822bac1444730fbdb6016d3ec9432297b9ec9f73 \
         does not match diff_id \
         sha256:b79606fb3afea5bd1609ed40b622142f1c98125abcfe89a76a661b0e8e343910 in the image config"
    );
}

#[test]
fn a_scratch_filesystem_sized_from_declared_sizes_filling_up() {
    let e = JobError::Remote(rootbox_proto::RemoteError {
        operation: "applying layer 1 of 1".into(),
        layer: None,
        path: Some("usr/big".into()),
        causes: vec!["writing file content: No space left on device (os error 28)".into()],
        internal: false,
    });
    let scratch =
        Some("the 2 GiB scratch filesystem was sized from what the layers declare".into());
    assert_eq!(
        line(crate::pull::job_failed(e, WHAT, None, None, scratch)),
        "building oci:/srv/image: the 2 GiB scratch filesystem was sized from what the layers \
         declare: applying layer 1 of 1 (path \"usr/big\"): writing file content: No space left \
         on device (os error 28)"
    );
}
