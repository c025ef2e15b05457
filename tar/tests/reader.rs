//! The reader against hand-made archives: one test per header kind the issue names, and one
//! per case where Go's archive/tar and GNU tar would read the bytes differently (refused).

mod support;

use std::io::Read;

use rootbox_tar::{Archive, Entry, Error, Kind, Member, Segment, Why};
use support::{Header, Style, Tar};

/// Every member with its (packed) data.
fn read_all(bytes: &[u8]) -> Result<Vec<(Member, Vec<u8>)>, Error> {
    let mut a = Archive::new(bytes);
    let mut out = Vec::new();
    while let Some(m) = a.next_member()? {
        let mut data = Vec::new();
        a.data().read_to_end(&mut data).map_err(Error::Io)?;
        out.push((m, data));
    }
    Ok(out)
}

fn entries(bytes: &[u8]) -> Vec<(Entry, Vec<u8>)> {
    read_all(bytes)
        .expect("archive reads")
        .into_iter()
        .filter_map(|(m, d)| match m {
            Member::Entry(e) => Some((e, d)),
            Member::Global(_) => None,
        })
        .collect()
}

fn refusal(bytes: &[u8]) -> Why {
    match read_all(bytes) {
        Err(Error::Refused { why, .. }) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// `cap_dac_override,cap_fowner+ep`: its first byte is 10, a newline.
const CAP: &[u8] = &[
    0x01, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

#[test]
fn pax_values_with_newlines_are_read_by_length() {
    let cap10 = [&[0x0a][..], &CAP[1..]].concat();
    let mut t = Tar::new();
    t.pax(&[(b"SCHILY.xattr.security.capability", &cap10), (b"path", b"usr/bin/a\nb")])
        .file(b"placeholder", b"bin");
    t.pax(&[(b"linkpath", b"target\nwith newline")])
        .header(Header::new(Style::Ustar, b'2', b"link").link(b"ignored"));
    let e = entries(&t.end());
    assert_eq!(e[0].0.name, b"usr/bin/a\nb");
    assert_eq!(e[0].0.xattrs, vec![(b"security.capability".to_vec(), cap10)]);
    assert_eq!(e[0].1, b"bin");
    assert_eq!(
        (e[1].0.kind, e[1].0.link.as_slice()),
        (Kind::Symlink, &b"target\nwith newline"[..])
    );
}

#[test]
fn an_embedded_record_is_part_of_its_value() {
    // A naive reader splitting on newlines sees `linkpath=/etc/shadow` (nydus PR #2022).
    let value = b"x\n21 linkpath=/etc/shadow\n";
    let mut t = Tar::new();
    t.pax(&[(b"SCHILY.xattr.user.note", value)])
        .header(Header::new(Style::Ustar, b'2', b"l").link(b"safe"));
    let e = entries(&t.end());
    assert_eq!(e[0].0.link, b"safe");
    assert_eq!(e[0].0.xattrs, vec![(b"user.note".to_vec(), value.to_vec())]);
}

#[test]
fn global_headers_are_reported_never_applied() {
    let mut t = Tar::new();
    t.global(&[(b"uid", b"77"), (b"path", b"elsewhere"), (b"comment", b"c")]).file(b"f", b"x");
    let all = read_all(&t.end()).expect("reads");
    assert_eq!(all.len(), 2);
    let Member::Global(g) = &all[0].0 else { panic!("first member is the global header") };
    assert_eq!(g.records[&b"uid"[..]], b"77");
    let Member::Entry(e) = &all[1].0 else { panic!("then the entry") };
    assert_eq!((e.name.as_slice(), e.uid), (&b"f"[..], 0));
}

#[test]
fn gnu_long_names_base256_ustar_prefix_and_v7() {
    let long = vec![b'n'; 300];
    let target = vec![b't'; 200];
    let mut t = Tar::new();
    t.long_name(&long).long_link(&target);
    t.header(Header::new(Style::Gnu, b'1', b"short").link(b"short"));
    let mut big = Header::new(Style::Gnu, b'0', b"big");
    big.base256(108, 8, 1 << 31).base256(136, 12, -86400).size(3);
    t.header(&big).data(b"abc");
    let mut pre = Header::new(Style::Ustar, b'0', b"name");
    pre.prefix(b"a/very/long/prefix");
    t.header(&pre);
    t.header(&Header::new(Style::V7, 0, b"v7dir/"));
    t.header(&Header::new(Style::V7, 0, b"v7file"));
    let e = entries(&t.end());
    assert_eq!((e[0].0.kind, &e[0].0.name, &e[0].0.link), (Kind::Link, &long, &target));
    assert_eq!((e[1].0.uid, e[1].0.mtime.sec, e[1].1.as_slice()), (1 << 31, -86400, &b"abc"[..]));
    assert_eq!(e[2].0.name, b"a/very/long/prefix/name");
    assert_eq!((e[3].0.kind, e[4].0.kind), (Kind::Dir, Kind::Regular));
}

fn segs(spec: &[(u64, usize)]) -> Vec<(u64, Vec<u8>)> {
    spec.iter().enumerate().map(|(i, (o, n))| (*o, vec![b'a' + (i % 26) as u8; *n])).collect()
}

fn check_sparse(e: &(Entry, Vec<u8>), name: &[u8], size: u64, want: &[(u64, Vec<u8>)]) {
    assert_eq!((e.0.kind, e.0.name.as_slice(), e.0.size), (Kind::Regular, name, size));
    let map: Vec<Segment> =
        want.iter().map(|(o, d)| Segment { offset: *o, len: d.len() as u64 }).collect();
    assert_eq!(e.0.sparse.as_deref(), Some(map.as_slice()));
    let packed: Vec<u8> = want.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(e.1, packed, "the data is the packed segments");
}

#[test]
fn every_sparse_encoding() {
    let many: Vec<(u64, usize)> = (0..30).map(|i| (i * 10_000, 100 + i as usize)).collect();
    let few = [(0u64, 10usize), (1 << 20, 5), ((1 << 21) - 3, 3)];
    let mut t = Tar::new();
    support::old_gnu_sparse(&mut t, b"old", 400_000, &segs(&many));
    support::pax_sparse_0x(&mut t, b"v00", 1 << 21, &segs(&few), true);
    support::pax_sparse_0x(&mut t, b"v01", 1 << 21, &segs(&few), false);
    support::pax_sparse_10(&mut t, b"v10", 1 << 21, &segs(&few));
    t.file(b"after", b"still in step");
    let e = entries(&t.end());
    check_sparse(&e[0], b"old", 400_000, &segs(&many));
    check_sparse(&e[1], b"v00", 1 << 21, &segs(&few));
    check_sparse(&e[2], b"v01", 1 << 21, &segs(&few));
    check_sparse(&e[3], b"v10", 1 << 21, &segs(&few));
    assert_eq!((e[4].0.name.as_slice(), e[4].1.as_slice()), (&b"after"[..], &b"still in step"[..]));
}

#[test]
fn holes_cost_nothing() {
    // A lastlog of a high uid: terabytes of holes and a few bytes of data.
    let size = 5u64 << 40;
    let mut t = Tar::new();
    support::pax_sparse_10(&mut t, b"var/log/lastlog", size, &segs(&[(size - 292, 292)]));
    let start = std::time::Instant::now();
    let e = entries(&t.end());
    assert_eq!((e[0].0.size, e[0].0.data_len()), (size, 292));
    assert!(start.elapsed().as_secs() < 5, "reading must not touch the holes");
}

#[test]
fn device_numbers_pass_through_as_stored() {
    let mut t = Tar::new();
    t.header(Header::new(Style::Ustar, b'3', b"dev/odd").dev(4097, 1 << 20));
    let e = entries(&t.end());
    assert_eq!((e[0].0.kind, e[0].0.dev_major, e[0].0.dev_minor), (Kind::Char, 4097, 1 << 20));
}

#[test]
fn empty_pax_values() {
    let mut t = Tar::new();
    t.pax(&[(b"uname", b""), (b"SCHILY.xattr.user.empty", b"")]);
    t.header(Header::new(Style::Ustar, b'0', b"kept").ids(5, 6));
    let e = entries(&t.end());
    assert_eq!((e[0].0.name.as_slice(), e[0].0.uid, e[0].0.gid), (&b"kept"[..], 5, 6));
    assert_eq!(e[0].0.xattrs, vec![(b"user.empty".to_vec(), vec![])], "an empty xattr stays");
    for key in [&b"path"[..], b"linkpath", b"uid", b"gid", b"size", b"mtime"] {
        let mut t = Tar::new();
        t.pax(&[(key, b"")]).file(b"f", b"");
        assert!(
            matches!(refusal(&t.end()), Why::PaxValue { .. }),
            "empty {}",
            String::from_utf8_lossy(key)
        );
    }
}

#[test]
fn pax_times_and_ids() {
    let mut t = Tar::new();
    t.pax(&[(b"mtime", b"-1.25"), (b"uid", b"4294967295"), (b"gid", b"70000")]);
    t.file(b"f", b"");
    let e = entries(&t.end());
    assert_eq!((e[0].0.mtime.sec, e[0].0.mtime.nsec), (-2, 750_000_000));
    assert_eq!((e[0].0.uid, e[0].0.gid), (u32::MAX, 70000));
}

#[test]
fn where_the_readers_disagree_the_archive_is_refused() {
    let with = |build: &dyn Fn(&mut Tar)| {
        let mut t = Tar::new();
        build(&mut t);
        refusal(&t.end())
    };
    let mut sym = Header::new(Style::Ustar, b'2', b"s");
    sym.link(b"t").size(5);
    assert!(matches!(
        with(&|t| {
            t.header(&sym).data(b"hello");
        }),
        Why::HeaderOnlyData { kind: "symlink", size: 5 }
    ));
    assert_eq!(
        with(&|t| {
            t.file(b"dir/", b"");
        }),
        Why::TrailingSlash
    );
    assert_eq!(
        with(&|t| {
            t.long_name(b"one").pax(&[(b"path", b"two")]).file(b"x", b"");
        }),
        Why::Conflict("a GNU long name and a PAX path")
    );
    assert_eq!(
        with(&|t| {
            t.pax(&[(b"uid", b"1")]).pax(&[(b"gid", b"2")]).file(b"x", b"");
        }),
        Why::Duplicate("PAX extended")
    );
    assert_eq!(
        with(&|t| {
            t.pax(&[(b"uid", b"1")]).global(&[(b"comment", b"x")]).file(b"x", b"");
        }),
        Why::GlobalAfterMeta
    );
    assert_eq!(
        with(&|t| {
            t.meta(b'L', b"\0");
        }),
        Why::EmptyLongName("name")
    );
    assert_eq!(
        with(&|t| {
            t.pax(&[(b"GNU.sparse.major", b"2"), (b"GNU.sparse.minor", b"0")]).file(b"x", b"");
        }),
        Why::SparseVersion("\"2\".\"0\"".into())
    );
    assert_eq!(
        with(&|t| {
            t.header(&Header::new(Style::Ustar, b'S', b"s"));
        }),
        Why::OldSparseNotGnu
    );
    assert_eq!(
        with(&|t| {
            t.meta(b'X', &support::records(&[(b"path", b"elsewhere")])).file(b"x", b"");
        }),
        Why::SolarisHeader
    );
    assert_eq!(
        with(&|t| {
            t.meta(b'L', b"no terminator").file(b"x", b"");
        }),
        Why::LongNameUnterminated
    );
    assert_eq!(
        with(&|t| {
            t.pax(&[(b"path", b"dir/")]).header(&Header::new(Style::Ustar, 0, b"dir"));
        }),
        Why::LongNameSlash
    );
    let mut padded = Tar::new();
    padded.pax(&[(b"uid", b"1")]);
    let at = 512 + support::record(b"uid", b"1").len();
    padded.0[at] = b'9';
    padded.file(b"x", b"");
    assert_eq!(refusal(&padded.end()), Why::MetaPadding("PAX extended header"));
    let mut no_name = Header::new(Style::Ustar, 0, b"");
    no_name.prefix(b"a/dir");
    assert_eq!(
        with(&|t| {
            t.header(&no_name);
        }),
        Why::PrefixSlash
    );
    let mut lead_nul = Header::new(Style::Ustar, b'0', b"x");
    lead_nul.bytes(108, 8, b"\0\x000017\0\0");
    assert_eq!(
        with(&|t| {
            t.header(&lead_nul);
        }),
        Why::Field("uid")
    );
}

#[test]
fn structure_errors() {
    let mut t = Tar::new();
    t.file(b"a", b"x");
    let mut bytes = t.0.clone();
    bytes.extend_from_slice(&[0u8; 512]);
    bytes.extend_from_slice(&t.0);
    assert_eq!(refusal(&bytes), Why::LoneZeroBlock);

    let mut t = Tar::new();
    t.pax(&[(b"path", b"p")]);
    assert_eq!(refusal(&t.0.clone()), Why::Dangling("PAX extended"));
    assert_eq!(refusal(&t.end()), Why::Dangling("PAX extended"));

    let mut t = Tar::new();
    t.file(b"a", &[7u8; 3000]);
    let full = t.end();
    for cut in [100, 700, 2000] {
        let r = read_all(&full[..cut]);
        assert!(r.is_err(), "cut at {cut} accepted: {r:?}");
    }
    // The end-of-archive blocks may be missing, and so may the last entry's padding.
    assert_eq!(entries(&full[..512 + 3000]).len(), 1);
    assert_eq!(entries(&full[..512 + 3072]).len(), 1);

    let mut bad = Tar::new();
    let mut h = Header::new(Style::Ustar, b'0', b"x").seal();
    h[0] ^= 1;
    bad.block(h);
    assert!(matches!(refusal(&bad.end()), Why::Checksum { .. }));
}

#[test]
fn meta_headers_are_bounded() {
    let mut t = Tar::new();
    let mut h = Header::new(Style::Ustar, b'x', b"big");
    h.size(2 << 20);
    t.header(&h);
    assert!(matches!(refusal(&t.end()), Why::MetaTooLarge { .. }));
}

#[test]
fn sparse_maps_must_match_their_data() {
    let mut t = Tar::new();
    support::pax_sparse_0x(&mut t, b"s", 100, &segs(&[(0, 10)]), false);
    let mut bytes = t.end();
    // Claim one more byte of data in the entry's header than the map describes (the entry's
    // header follows the 'x' header and its one block of records).
    let at = 512 * 2;
    let mut hdr = Header([0; 512]);
    hdr.0.copy_from_slice(&bytes[at..at + 512]);
    hdr.size(11);
    bytes[at..at + 512].copy_from_slice(&hdr.seal());
    assert_eq!(refusal(&bytes), Why::SparseData { map: 10, data: 11 });

    let mut t = Tar::new();
    support::pax_sparse_0x(&mut t, b"s", 5, &segs(&[(0, 10)]), false);
    assert!(matches!(refusal(&t.end()), Why::Sparse(_)));
}

#[test]
fn a_seekable_archive_lists_members_where_their_data_is() {
    let mut t = Tar::new();
    t.file(b"a", &[1u8; 5000]).pax(&[(b"path", b"long/name")]).file(b"b", b"xyz");
    let bytes = t.end();
    let mut a = Archive::seekable(std::io::Cursor::new(&bytes));
    let mut seen = Vec::new();
    while let Some(Member::Entry(e)) = a.next_member().expect("lists") {
        let at = a.position() as usize;
        seen.push((e.name.clone(), bytes[at..at + e.size as usize].to_vec()));
    }
    assert_eq!(
        seen,
        vec![(b"a".to_vec(), vec![1u8; 5000]), (b"long/name".to_vec(), b"xyz".to_vec())]
    );
}
