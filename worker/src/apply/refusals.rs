//! The sentence each refusal of the applier prints, pinned: one test per refusal, named for
//! it. Each applies a real tar layer (on a plain temp dir, through the recorder) and asserts
//! the whole line the host prints after `building IMAGE: `: the worker's error as the session
//! reports a failed layer (operation, layer, the error's path and causes), shown by
//! [`RemoteError`]'s `Display`.

use rootbox_proto::{Limits, RemoteError};
use rootbox_tests::layer::{Entry as E, LayerBuilder};

use super::ops::recorder::Recorder;
use super::{Applier, ApplyError};

/// The layer's name in messages (the host's digest of it).
const LAYER: &str = "sha256:feed";

fn layer(entries: Vec<E>) -> Vec<u8> {
    LayerBuilder::new().extend(entries).finish()
}

/// As the session reports a failed layer: what it was doing, which layer, then the error.
fn shown(e: ApplyError, operation: String, layer: Option<&str>) -> String {
    RemoteError {
        operation,
        layer: layer.map(String::from),
        path: e.path(),
        causes: e.causes(),
        internal: false,
    }
    .to_string()
}

/// Applies `layers` within `limits`, then `inject` as the injected files: the line of the
/// first refusal.
fn refusal_within(limits: Limits, layers: &[Vec<u8>], inject: Option<Vec<u8>>) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Applier::new(dir.path(), limits, Recorder::default()).expect("applier");
    let total = layers.len();
    for (i, l) in layers.iter().enumerate() {
        if let Err(e) = a.apply_layer(i as u32, &l[..]) {
            return shown(e, format!("applying layer {} of {total}", i + 1), Some(LAYER));
        }
    }
    if let Some(l) = inject {
        a.begin_injection();
        if let Err(e) = a.apply_layer(total as u32, &l[..]) {
            return shown(e, "injecting files".into(), None);
        }
    }
    panic!("nothing was refused")
}

/// The refusal of one layer of `entries`, with the default limits.
fn refusal(entries: Vec<E>) -> String {
    refusal_within(Limits::default(), &[layer(entries)], None)
}

/// The refusal of injecting `inject` over one layer of `image`.
fn injection_refusal(image: Vec<E>, inject: Vec<E>) -> String {
    refusal_within(Limits::default(), &[layer(image)], Some(layer(inject)))
}

/// `bytes` with the header at `at` given type flag `flag` and its checksum made right again.
fn retyped(mut bytes: Vec<u8>, at: usize, flag: u8) -> Vec<u8> {
    let h = &mut bytes[at..at + 512];
    h[156] = flag;
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    bytes
}

#[test]
fn a_dot_dot_component() {
    assert_eq!(
        refusal(vec![E::raw(b"a/../../etc/passwd", b"")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"a/../../etc/passwd\"): refusing a `..` \
         component"
    );
}

#[test]
fn a_name_too_long() {
    let limits = Limits { max_path_len: 16, ..Limits::default() };
    let name = "usr/share/doc/readme";
    assert_eq!(
        refusal_within(limits, &[layer(vec![E::file(name, b"")])], None),
        "applying layer 1 of 1 (layer sha256:feed, path \"usr/share/doc/readme\"): refusing a \
         name of 20 bytes (limit 16)"
    );
}

#[test]
fn a_whiteout_with_no_name() {
    assert_eq!(
        refusal(vec![E::raw(b"etc/.wh.", b"")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"etc/.wh.\"): refusing a whiteout with \
         no name"
    );
}

#[test]
fn a_whiteout_of_dot() {
    assert_eq!(
        refusal(vec![E::raw(b"etc/.wh..", b"")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"etc/.wh..\"): refusing a whiteout of \
         `.` or `..`"
    );
}

#[test]
fn an_xattr_value_too_large() {
    let limits = Limits { max_xattr_value: 8, ..Limits::default() };
    let l = layer(vec![E::file("f", b"").xattr("user.note", b"sixteen bytes!!!")]);
    assert_eq!(
        refusal_within(limits, &[l], None),
        "applying layer 1 of 1 (layer sha256:feed, path \"/f\"): refusing xattr \"user.note\": \
         value of 16 bytes exceeds 8"
    );
}

#[test]
fn xattrs_too_large_together() {
    let limits = Limits { max_xattr_total: 32, ..Limits::default() };
    let l = layer(vec![E::file("f", b"")
        .xattr("user.a", b"sixteen bytes!!!")
        .xattr("user.b", b"sixteen bytes!!!")]);
    assert_eq!(
        refusal_within(limits, &[l], None),
        "applying layer 1 of 1 (layer sha256:feed, path \"/f\"): refusing xattrs totalling 44 \
         bytes (limit 32)"
    );
}

#[test]
fn a_non_directory_at_the_root() {
    assert_eq!(
        refusal(vec![E::raw(b".", b"")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"/\"): refusing a non-directory at the \
         image root"
    );
}

#[test]
fn a_parent_that_is_not_a_directory() {
    assert_eq!(
        refusal(vec![E::file("etc", b""), E::file("etc/passwd", b"")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"/etc/passwd\"): refusing an entry \
         whose parent is not a directory"
    );
}

#[test]
fn a_file_larger_than_ext4_holds() {
    assert_eq!(
        refusal(vec![E::sparse("huge", 1 << 62, vec![(0, b"x".to_vec())])]),
        "applying layer 1 of 1 (layer sha256:feed, path \"/huge\"): refusing a file of \
         4611686018427387904 bytes: ext4 with 4 KiB blocks holds at most 17592186040320"
    );
}

#[test]
fn an_empty_symlink_target() {
    assert_eq!(
        refusal(vec![E::symlink("s", "")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"/s\"): refusing a symlink target of 0 \
         bytes"
    );
}

#[test]
fn an_unsupported_entry_type() {
    let l = retyped(layer(vec![E::file("label", b"")]), 0, b'V');
    assert_eq!(
        refusal_within(Limits::default(), &[l], None),
        "applying layer 1 of 1 (layer sha256:feed, path \"/label\"): refusing unsupported tar \
         entry type \"V\""
    );
}

#[test]
fn a_hardlink_without_a_target() {
    assert_eq!(
        refusal(vec![E::hardlink("h", "")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"/h\"): refusing a hardlink without a \
         target"
    );
}

#[test]
fn a_hardlink_target_out_of_the_image() {
    assert_eq!(
        refusal(vec![E::hardlink("h", "../etc/passwd")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"/h\"): hardlink target \
         \"../etc/passwd\": refusing a `..` component"
    );
}

#[test]
fn a_hardlink_to_a_missing_target() {
    assert_eq!(
        refusal(vec![E::hardlink("h", "etc/shadow")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"/h\"): refusing a hardlink to \
         \"etc/shadow\", which does not exist in the image"
    );
}

#[test]
fn a_hardlink_to_the_root() {
    assert_eq!(
        refusal(vec![E::hardlink("h", "/")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"/h\"): refusing a hardlink to the \
         image root"
    );
}

#[test]
fn a_hardlink_to_a_directory() {
    assert_eq!(
        refusal(vec![E::dir("etc"), E::hardlink("h", "etc")]),
        "applying layer 1 of 1 (layer sha256:feed, path \"/h\"): refusing a hardlink to \
         directory \"etc\""
    );
}

#[test]
fn more_entries_than_the_limit() {
    let limits = Limits { max_entries: 1, ..Limits::default() };
    let l = layer(vec![E::file("a", b""), E::file("b", b"")]);
    assert_eq!(
        refusal_within(limits, &[l], None),
        "applying layer 1 of 1 (layer sha256:feed): the image has more than 1 entries \
         (--max-entries)"
    );
}

#[test]
fn a_tar_header_every_reader_does_not_read_alike() {
    let mut l = layer(vec![E::file("f", b"")]);
    l[148] = b'9';
    assert_eq!(
        refusal_within(Limits::default(), &[l], None),
        "applying layer 1 of 1 (layer sha256:feed): reading the layer's tar stream: tar header \
         at byte 0: bad header checksum (stored \"9006134\", computed 6134 or 6134)"
    );
}

#[test]
fn a_stream_that_ends_inside_a_file() {
    let mut l = layer(vec![E::file("f", &[7u8; 2000])]);
    l.truncate(512 + 1000);
    assert_eq!(
        refusal_within(Limits::default(), &[l], None),
        "applying layer 1 of 1 (layer sha256:feed): reading the layer's tar stream: the tar \
         stream ends 1000 bytes before the entry's data does"
    );
}

#[test]
fn a_whiteout_among_injected_files() {
    assert_eq!(
        injection_refusal(vec![E::file("etc/motd", b"")], vec![E::whiteout("etc/motd")]),
        "injecting files (path \"etc/.wh.motd\"): refusing a whiteout among injected files"
    );
}

#[test]
fn injecting_through_a_symlink() {
    assert_eq!(
        injection_refusal(vec![E::symlink("opt", "/tmp")], vec![E::file("opt/agent", b"")]),
        "injecting files (path \"/opt/agent\"): refusing to inject through a symlink the image \
         has on this path"
    );
}

#[test]
fn injecting_a_file_over_a_directory() {
    assert_eq!(
        injection_refusal(vec![E::dir("opt")], vec![E::file("opt", b"")]),
        "injecting files (path \"/opt\"): refusing to inject a file where the image has a \
         directory"
    );
}

#[test]
fn injecting_a_directory_over_a_file() {
    assert_eq!(
        injection_refusal(vec![E::file("opt", b"")], vec![E::dir("opt")]),
        "injecting files (path \"/opt\"): refusing to inject a directory where the image has a \
         non-directory"
    );
}
