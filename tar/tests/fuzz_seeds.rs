//! Seeds for the fuzz targets that read tar (`fuzz/`: `tar`, and `apply`): one small archive
//! per header kind and per case the reader tests build by hand, written block by block with
//! this crate's test support, so the fuzzer starts from every path the reader has. Ignored in
//! ordinary runs; `make fuzz-seeds` runs it with ROOTBOX_FUZZ_SEEDS set. The seeds are build
//! output (under build/), never committed.

mod support;

use std::path::PathBuf;

use support::{Header, Style, Tar};

/// `cap_dac_override,cap_fowner+ep`, whose first byte is a newline.
const CAP: &[u8] = &[
    0x0a, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

fn segs(spec: &[(u64, usize)]) -> Vec<(u64, Vec<u8>)> {
    spec.iter().enumerate().map(|(i, (o, n))| (*o, vec![b'a' + (i % 26) as u8; *n])).collect()
}

fn archives() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, build: &dyn Fn(&mut Tar)| {
        let mut t = Tar::new();
        build(&mut t);
        out.push((name, t.end()));
    };
    add("empty", &|_| {});
    add("ustar-file", &|t| {
        t.file(b"etc/hostname", b"rootbox\n");
    });
    add("pax-newlines", &|t| {
        t.pax(&[(b"SCHILY.xattr.security.capability", CAP), (b"path", b"usr/bin/a\nb")])
            .file(b"placeholder", b"bin");
        t.pax(&[(b"linkpath", b"target\nwith newline")])
            .header(Header::new(Style::Ustar, b'2', b"link").link(b"ignored"));
    });
    add("pax-embedded-record", &|t| {
        t.pax(&[(b"SCHILY.xattr.user.note", b"x\n21 linkpath=/etc/shadow\n")])
            .header(Header::new(Style::Ustar, b'2', b"l").link(b"safe"));
    });
    add("pax-times-ids", &|t| {
        t.pax(&[
            (b"mtime", b"-1.25"),
            (b"atime", b"1700000000.5"),
            (b"uid", b"4294967295"),
            (b"gid", b"70000"),
            (b"size", b"3"),
            (b"uname", b""),
            (b"SCHILY.xattr.user.empty", b""),
            (b"LIBARCHIVE.xattr.user.x", b"dg=="),
        ])
        .file(b"f", b"abc");
    });
    add("global", &|t| {
        t.global(&[(b"uid", b"77"), (b"path", b"elsewhere"), (b"comment", b"c")]).file(b"f", b"x");
    });
    add("gnu-long-names", &|t| {
        t.long_name(&[b'n'; 300]).long_link(&[b't'; 200]);
        t.header(Header::new(Style::Gnu, b'1', b"short").link(b"short"));
        t.long_name(b"dir/with/a/long/name/").header(&Header::new(Style::Gnu, b'5', b"d"));
    });
    add("base256-prefix-v7", &|t| {
        let mut big = Header::new(Style::Gnu, b'0', b"big");
        big.base256(108, 8, 1 << 31).base256(136, 12, -86400).size(3);
        t.header(&big).data(b"abc");
        let mut pre = Header::new(Style::Ustar, b'0', b"name");
        pre.prefix(b"a/very/long/prefix");
        t.header(&pre);
        t.header(&Header::new(Style::V7, 0, b"v7dir/"));
        t.header(&Header::new(Style::V7, 0, b"v7file"));
    });
    add("devices-fifo", &|t| {
        t.header(Header::new(Style::Ustar, b'3', b"dev/null").dev(1, 3).mode(0o666));
        t.header(Header::new(Style::Ustar, b'4', b"dev/sda").dev(8, 0).mode(0o660));
        t.header(Header::new(Style::Ustar, b'3', b"dev/odd").dev(4097, 1 << 20));
        t.header(&Header::new(Style::Ustar, b'6', b"run/fifo"));
    });
    add("links-dirs-modes", &|t| {
        t.header(Header::new(Style::Ustar, b'5', b"d/").mode(0o1777).ids(5, 6));
        t.file(b"d/f", b"data");
        t.header(Header::new(Style::Ustar, b'1', b"d/hard").link(b"d/f"));
        t.header(Header::new(Style::Ustar, b'2', b"d/sym").link(b"../../etc/passwd"));
        t.header(Header::new(Style::Ustar, b'0', b"suid").mode(0o104755).size(0));
        t.header(Header::new(Style::Ustar, b'1', b"up").link(b"../outside"));
    });
    add("whiteouts", &|t| {
        t.file(b"a/.wh.b", b"");
        t.file(b"a/.wh..wh..opq", b"");
        t.file(b"a/.wh..wh.plnk", b"");
        t.file(b".wh.top", b"");
    });
    let many: Vec<(u64, usize)> = (0..30).map(|i| (i * 10_000, 10 + i as usize)).collect();
    let few = [(0u64, 10usize), (1 << 20, 5), ((1 << 21) - 3, 3)];
    add("sparse-old-gnu", &|t| support::old_gnu_sparse(t, b"old", 400_000, &segs(&many)));
    add("sparse-old-gnu-short", &|t| support::old_gnu_sparse(t, b"old", 4096, &segs(&few[..1])));
    add("sparse-pax-00", &|t| support::pax_sparse_0x(t, b"v00", 1 << 21, &segs(&few), true));
    add("sparse-pax-01", &|t| support::pax_sparse_0x(t, b"v01", 1 << 21, &segs(&few), false));
    add("sparse-pax-10", &|t| support::pax_sparse_10(t, b"v10", 1 << 21, &segs(&few)));
    add("sparse-holes", &|t| {
        let size = 5u64 << 40;
        support::pax_sparse_10(t, b"var/log/lastlog", size, &segs(&[(size - 292, 292)]));
    });
    add("symlink-with-data", &|t| {
        t.header(Header::new(Style::Ustar, b'2', b"s").link(b"t").size(5)).data(b"hello");
    });
    add("conflicting-names", &|t| {
        t.long_name(b"one").pax(&[(b"path", b"two")]).file(b"x", b"");
    });
    add("solaris", &|t| {
        t.meta(b'X', &support::records(&[(b"path", b"elsewhere")])).file(b"x", b"");
    });
    add("sparse-bad-version", &|t| {
        t.pax(&[(b"GNU.sparse.major", b"2"), (b"GNU.sparse.minor", b"0")]).file(b"x", b"");
    });
    out
}

#[test]
#[ignore = "writes fuzz seeds; run by `make fuzz-seeds`"]
fn write_fuzz_seeds() {
    let dir = match std::env::var_os("ROOTBOX_FUZZ_SEEDS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/fuzz/seeds"),
    }
    .join("tar");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let all = archives();
    for (name, bytes) in &all {
        let p = dir.join(format!("{name}.tar"));
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }
    println!("{} tar seeds in {}", all.len(), dir.display());
}
