//! Seeds for the fuzz targets (`fuzz/`): frames of every control message and data frames, as
//! the real `Writer` sends them, for `frames`; and layers made with the tests crate's layer
//! builder from the cases of the hostile and rule tests (traversal, re-rooted names, symlink
//! ancestors, hardlinks out, whiteouts, opaque markers, type flips, duplicates, devices, sparse
//! files, xattrs, odd times and owners), alone and as multi-layer images, for `apply` and
//! `tar`. Ignored in ordinary runs; `make fuzz-seeds` runs it with ROOTBOX_FUZZ_SEEDS set. The
//! seeds are build output (under build/), never committed.

use std::path::{Path, PathBuf};

use rootbox_proto::{
    Control, Hello, JobResult, JobSpec, LayerSpec, Limits, Phase, RemoteError, Sanitised,
    SanitisedKind, SizePolicy, Writer, PROTOCOL_VERSION,
};
use rootbox_tests::layer::{cap_net_raw_ep, Entry as E, LayerBuilder};
use rootbox_tests::Mtime;

fn frames(messages: &[Control], data: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    for m in messages {
        w.send(m).unwrap_or_else(|e| panic!("encoding {m:?}: {e}"));
    }
    for d in data {
        w.send_data(d).unwrap_or_else(|e| panic!("encoding data: {e}"));
    }
    out
}

fn job() -> JobSpec {
    JobSpec {
        image: "docker.io/library/busybox:latest".into(),
        layers: vec![LayerSpec { digest: format!("sha256:{}", "ab".repeat(32)) }],
        size: SizePolicy::Auto { headroom_pct: 10 },
        limits: Limits::default(),
        label: Some("rootfs".into()),
        content_hint: 1 << 20,
        inject: true,
        identity: None,
    }
}

fn remote_error() -> RemoteError {
    RemoteError {
        operation: "applying layer 1 of 1".into(),
        layer: Some(format!("sha256:{}", "cd".repeat(32))),
        path: Some("/etc/\u{1b}[31mpasswd\nfake line".into()),
        causes: vec!["refusing a `..` component".into(), "\u{202e}evil".into()],
        internal: false,
    }
}

fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = Control::Hello(Hello { version: PROTOCOL_VERSION, features: vec!["loop".into()] });
    let layer = LayerBuilder::new().push(E::file("etc/hostname", b"rootbox\n")).finish();
    let result = JobResult {
        size_bytes: 1 << 26,
        used_bytes: 1 << 20,
        inodes: 42,
        entries: 40,
        warnings: vec!["could not pack allocations".into()],
        phase_ms: vec![(Phase::Mkfs, 10), (Phase::Apply, 20), (Phase::Shrink, 5)],
        os_release: [("ID".to_string(), "debian".to_string())].into_iter().collect(),
        sanitised: [(SanitisedKind::Xattr, 2), (SanitisedKind::Device, 1)].into_iter().collect(),
    };
    let sanitised = Sanitised {
        layer: 0,
        path: "/bin/tool".into(),
        kind: SanitisedKind::Xattr,
        what: "xattr \"trusted.x\"".into(),
        why: "trusted.* xattrs are not carried into images".into(),
    };
    let one = |c: Control| frames(&[c], &[]);
    vec![
        ("hello", one(hello.clone())),
        ("job", one(Control::Job(job()))),
        (
            "job-exact",
            one(Control::Job(JobSpec {
                size: SizePolicy::Exact { bytes: 1 << 30 },
                label: None,
                inject: false,
                ..job()
            })),
        ),
        ("layer-begin", one(Control::LayerBegin { index: 0 })),
        ("layer-end", one(Control::LayerEnd { index: 0, bytes: 1024 })),
        ("finish", one(Control::Finish)),
        ("abort", one(Control::Abort { reason: "interrupted".into() })),
        ("progress", one(Control::Progress { phase: Phase::Apply, layer: Some(0) })),
        ("progress-none", one(Control::Progress { phase: Phase::Fsck, layer: None })),
        ("warning", one(Control::Warning { message: "a\nb\u{7}".into() })),
        ("sanitised", one(Control::Sanitised(sanitised))),
        ("done", one(Control::Done(result))),
        ("error", one(Control::Error(remote_error()))),
        ("data", frames(&[], &[b"hello", b""])),
        (
            "host-session",
            frames(
                &[hello.clone(), Control::Job(job()), Control::LayerBegin { index: 0 }],
                &[&layer],
            )
            .into_iter()
            .chain(frames(
                &[Control::LayerEnd { index: 0, bytes: layer.len() as u64 }, Control::Finish],
                &[],
            ))
            .collect(),
        ),
        (
            "worker-session",
            frames(
                &[
                    hello,
                    Control::Progress { phase: Phase::Mkfs, layer: None },
                    Control::Progress { phase: Phase::Apply, layer: Some(0) },
                    Control::Warning { message: "slow".into() },
                    Control::Error(remote_error()),
                ],
                &[],
            ),
        ),
    ]
}

fn layer(entries: Vec<E>) -> Vec<u8> {
    LayerBuilder::new().extend(entries).finish()
}

/// The marker the `apply` target reads as "the layers after me are injected files".
fn inject_marker() -> Vec<u8> {
    vec![0; 1024]
}

fn layer_seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let cap = cap_net_raw_ep();
    vec![
        ("traversal", vec![layer(vec![E::raw(b"../../canary", b"x"), E::raw(b"a/../../b", b"")])]),
        (
            "absolute",
            vec![layer(vec![E::raw(b"/etc/abs-file", b"abs\n"), E::raw(b"//abs-top", b"top\n")])],
        ),
        (
            "symlink-ancestors",
            vec![
                layer(vec![
                    E::dir("etc"),
                    E::symlink("evil", "/"),
                    E::symlink("up", "../../.."),
                    E::symlink("etcl", "/etc"),
                ]),
                layer(vec![
                    E::file("evil/etc/x", b"x\n"),
                    E::file("up/etc/y", b"y\n"),
                    E::file("etcl/z", b"z\n"),
                    E::dir("evil/etc/sub"),
                    E::file("up/etc/sub/deep", b"deep\n"),
                ]),
            ],
        ),
        (
            "hardlinks",
            vec![layer(vec![
                E::dir("etc"),
                E::file("etc/passwd", b"image\n"),
                E::hardlink("ok", "etc/passwd"),
                E::hardlink("abs", "/etc/passwd"),
                E::hardlink("out", "../../etc/passwd"),
            ])],
        ),
        (
            "whiteouts-opaque",
            vec![
                layer(vec![
                    E::dir("d").mode(0o700).owner(5, 5).xattr("user.lower", b"1"),
                    E::file("d/old", b""),
                    E::dir("d/sub").mode(0o711),
                    E::file("d/sub/x", b""),
                    E::dir("o"),
                    E::file("o/a", b"a"),
                ]),
                layer(vec![
                    E::file("d/new", b""),
                    E::file("d/sub/y", b""),
                    E::whiteout("d"),
                    E::file("o/b", b"b"),
                    E::opaque("o"),
                    E::file("x/.wh..wh.plnk", b""),
                    E::opaque(""),
                ]),
            ],
        ),
        (
            "type-flips",
            vec![
                layer(vec![
                    E::file("a", b"file a\n"),
                    E::dir("b"),
                    E::file("b/x", b"in b\n"),
                    E::symlink("c", "a"),
                ]),
                layer(vec![
                    E::dir("a"),
                    E::file("a/in", b"in a\n"),
                    E::file("b", b"file b\n"),
                    E::dir("c"),
                ]),
                layer(vec![
                    E::symlink("a", "b"),
                    E::file("e", b"e\n"),
                    E::dir("e"),
                    E::symlink("e", "a"),
                    E::dir("f"),
                    E::file("f/g", b"g\n"),
                    E::file("f", b"f\n"),
                ]),
            ],
        ),
        (
            "duplicates",
            vec![layer(vec![
                E::file("f", b"1\n"),
                E::file("f", b"2\n").mode(0o600).owner(1, 1),
                E::dir("d").mode(0o700),
                E::dir("d").mode(0o750).owner(2, 2),
                E::symlink("s", "x"),
                E::symlink("s", "y"),
                E::char_dev("n", 1, 3),
                E::char_dev("n", 1, 5),
            ])],
        ),
        (
            "devices",
            vec![layer(vec![
                E::dir("dev"),
                E::char_dev("dev/null", 1, 3),
                E::block_dev("dev/nvme", 259, 65536),
                E::char_dev("dev/big", 4097, 1 << 20),
                E::fifo("dev/fifo").mode(0o620),
                E::symlink("hostdev", "/dev"),
                E::char_dev("hostdev/x", 1, 3),
            ])],
        ),
        (
            "sparse",
            vec![layer(vec![
                E::sparse("var/log/lastlog", 5 << 40, vec![((5 << 40) - 292, vec![7; 292])]),
                E::sparse("s", 1 << 20, vec![(0, b"head".to_vec()), (1 << 19, b"mid".to_vec())]),
            ])],
        ),
        (
            "xattrs-meta",
            vec![layer(vec![
                E::file("bin/tool", b"#!/bin/sh\n")
                    .mode(0o4755)
                    .xattr("security.capability", &cap)
                    .xattr("user.foo", b"bar")
                    .xattr("trusted.overlay.opaque", b"y"),
                E::symlink("l", "bin/tool").xattr("user.nope", b"1"),
                E::file("future", b"").mtime(Mtime::new(1 << 40, 5)),
                E::file("past", b"").mtime(Mtime::new(-(1 << 40), 0)),
                E::file("ids", b"").owner(u64::from(u32::MAX), 70000),
                E::file(&format!("{}f", "n/".repeat(80)), b"long"),
                E::file("extra", b"").pax("LIBARCHIVE.xattr.user.x", b"dg=="),
            ])],
        ),
        (
            "os-release",
            vec![layer(vec![
                E::dir("etc"),
                E::file("etc/os-release", b"ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME='x'\n"),
                E::symlink("usr/lib/os-release", "../../etc/os-release"),
            ])],
        ),
        (
            "inject",
            vec![
                layer(vec![E::dir("etc"), E::symlink("opt", "/etc"), E::file("etc/f", b"f")]),
                inject_marker(),
                layer(vec![
                    E::dir("etc"),
                    E::file("etc/agent", b"agent"),
                    E::file("opt/through", b""),
                ]),
            ],
        ),
        ("handmade", rootbox_tests::fixture::handmade::layers()),
    ]
}

fn write_all(dir: &Path, seeds: &[(&str, Vec<u8>)], ext: &str) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    for (name, bytes) in seeds {
        let p = dir.join(format!("{name}.{ext}"));
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }
    println!("{} seeds in {}", seeds.len(), dir.display());
}

#[test]
#[ignore = "writes fuzz seeds; run by `make fuzz-seeds`"]
fn write_fuzz_seeds() {
    let dir = match std::env::var_os("ROOTBOX_FUZZ_SEEDS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/fuzz/seeds"),
    };
    write_all(&dir.join("frames"), &frame_seeds(), "bin");
    // An image's layers, one after the other: how the `apply` target reads its input.
    let layers: Vec<(&str, Vec<u8>)> =
        layer_seeds().into_iter().map(|(name, layers)| (name, layers.concat())).collect();
    write_all(&dir.join("layers"), &layers, "tar");
}
