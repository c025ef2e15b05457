//! Writes tar archives block by block, so every header kind (and every malformed one) the
//! reader must handle can be produced exactly: ustar, GNU and v7 headers, PAX extended and
//! global headers, GNU long names, and all four sparse encodings.
#![allow(dead_code)]

pub const BLOCK: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    V7,
    Ustar,
    Gnu,
}

/// One header block under construction.
#[derive(Clone)]
pub struct Header(pub [u8; BLOCK]);

impl Header {
    pub fn new(style: Style, typeflag: u8, name: &[u8]) -> Header {
        let mut h = Header([0; BLOCK]);
        h.bytes(0, 100, name);
        h.octal(100, 8, 0o644);
        h.octal(108, 8, 0);
        h.octal(116, 8, 0);
        h.octal(124, 12, 0);
        h.octal(136, 12, 1_600_000_000);
        h.0[156] = typeflag;
        match style {
            Style::V7 => {}
            Style::Ustar => {
                h.bytes(257, 6, b"ustar\0");
                h.bytes(263, 2, b"00");
            }
            Style::Gnu => {
                h.bytes(257, 6, b"ustar ");
                h.bytes(263, 2, b" \0");
            }
        }
        h
    }

    /// Copies `v` into the field at `at` (at most `len` bytes), zero-filling the rest.
    pub fn bytes(&mut self, at: usize, len: usize, v: &[u8]) -> &mut Self {
        let n = v.len().min(len);
        self.0[at..at + len].fill(0);
        self.0[at..at + n].copy_from_slice(&v[..n]);
        self
    }

    /// An octal field: `len - 1` digits and a NUL, or base-256 when it does not fit.
    pub fn octal(&mut self, at: usize, len: usize, v: u64) -> &mut Self {
        let digits = format!("{v:0width$o}", width = len - 1);
        if digits.len() < len {
            self.bytes(at, len, digits.as_bytes())
        } else {
            self.base256(at, len, v as i64)
        }
    }

    pub fn base256(&mut self, at: usize, len: usize, v: i64) -> &mut Self {
        let be = v.to_be_bytes();
        let fill = if v < 0 { 0xff } else { 0 };
        self.0[at..at + len].fill(fill);
        self.0[at + len - 8..at + len].copy_from_slice(&be);
        self.0[at] = if v < 0 { 0xff } else { 0x80 };
        self
    }

    pub fn link(&mut self, target: &[u8]) -> &mut Self {
        self.bytes(157, 100, target)
    }

    pub fn size(&mut self, n: u64) -> &mut Self {
        self.octal(124, 12, n)
    }

    pub fn mode(&mut self, m: u64) -> &mut Self {
        self.octal(100, 8, m)
    }

    pub fn ids(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.octal(108, 8, uid);
        self.octal(116, 8, gid)
    }

    pub fn mtime(&mut self, t: i64) -> &mut Self {
        if t < 0 {
            self.base256(136, 12, t)
        } else {
            self.octal(136, 12, t as u64)
        }
    }

    pub fn dev(&mut self, major: u64, minor: u64) -> &mut Self {
        self.octal(329, 8, major);
        self.octal(337, 8, minor)
    }

    pub fn prefix(&mut self, p: &[u8]) -> &mut Self {
        self.bytes(345, 155, p)
    }

    /// Fills in the checksum (unsigned sum, six octal digits, NUL, space).
    pub fn seal(&self) -> [u8; BLOCK] {
        let mut b = self.0;
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }
}

/// `"<len> <key>=<value>\n"`, the length counting itself.
pub fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut out = format!("{len} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

pub fn records(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    pairs.iter().flat_map(|(k, v)| record(k, v)).collect()
}

/// An archive being written.
#[derive(Default, Clone)]
pub struct Tar(pub Vec<u8>);

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    pub fn block(&mut self, b: [u8; BLOCK]) -> &mut Self {
        self.0.extend_from_slice(&b);
        self
    }

    pub fn header(&mut self, h: &Header) -> &mut Self {
        self.block(h.seal())
    }

    /// Data padded to whole blocks.
    pub fn data(&mut self, d: &[u8]) -> &mut Self {
        self.0.extend_from_slice(d);
        let pad = (BLOCK - d.len() % BLOCK) % BLOCK;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// A meta member (`x`, `g`, `L`, `K`) holding `body`.
    pub fn meta(&mut self, typeflag: u8, body: &[u8]) -> &mut Self {
        let name: &[u8] = match typeflag {
            b'L' | b'K' => b"././@LongLink",
            _ => b"PaxHeaders/x",
        };
        let style = if matches!(typeflag, b'L' | b'K') { Style::Gnu } else { Style::Ustar };
        let mut h = Header::new(style, typeflag, name);
        h.size(body.len() as u64);
        self.header(&h).data(body)
    }

    pub fn pax(&mut self, pairs: &[(&[u8], &[u8])]) -> &mut Self {
        self.meta(b'x', &records(pairs))
    }

    pub fn global(&mut self, pairs: &[(&[u8], &[u8])]) -> &mut Self {
        self.meta(b'g', &records(pairs))
    }

    pub fn long_name(&mut self, name: &[u8]) -> &mut Self {
        let mut body = name.to_vec();
        body.push(0);
        self.meta(b'L', &body)
    }

    pub fn long_link(&mut self, name: &[u8]) -> &mut Self {
        let mut body = name.to_vec();
        body.push(0);
        self.meta(b'K', &body)
    }

    /// A ustar regular file.
    pub fn file(&mut self, name: &[u8], content: &[u8]) -> &mut Self {
        let mut h = Header::new(Style::Ustar, b'0', name);
        h.size(content.len() as u64);
        self.header(&h).data(content)
    }

    pub fn end(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.0);
        out.extend_from_slice(&[0u8; 2 * BLOCK]);
        out
    }
}

/// A sparse file's logical content from its segments and packed data.
pub fn expand(size: u64, segments: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0u8; size as usize];
    for (off, data) in segments {
        out[*off as usize..*off as usize + data.len()].copy_from_slice(data);
    }
    out
}

/// Old GNU sparse entry (`'S'`): up to 4 segments in the header, 21 per extension block.
pub fn old_gnu_sparse(t: &mut Tar, name: &[u8], size: u64, segments: &[(u64, Vec<u8>)]) {
    let packed: Vec<u8> = segments.iter().flat_map(|(_, d)| d.clone()).collect();
    if name.len() > 100 {
        t.long_name(name);
    }
    let mut h = Header::new(Style::Gnu, b'S', name);
    h.size(packed.len() as u64);
    h.octal(483, 12, size);
    let mut chunks = segments.chunks(4);
    let first = chunks.next().unwrap_or(&[]);
    for (i, (off, d)) in first.iter().enumerate() {
        h.octal(386 + i * 24, 12, *off);
        h.octal(386 + i * 24 + 12, 12, d.len() as u64);
    }
    let rest: Vec<&(u64, Vec<u8>)> = segments.iter().skip(4).collect();
    h.0[482] = u8::from(!rest.is_empty());
    t.header(&h);
    let blocks: Vec<&[&(u64, Vec<u8>)]> = rest.chunks(21).collect();
    for (bi, chunk) in blocks.iter().enumerate() {
        let mut b = [0u8; BLOCK];
        let mut e = Header(b);
        for (i, (off, d)) in chunk.iter().enumerate() {
            e.octal(i * 24, 12, *off);
            e.octal(i * 24 + 12, 12, d.len() as u64);
        }
        b = e.0;
        b[504] = u8::from(bi + 1 < blocks.len());
        t.block(b);
    }
    t.data(&packed);
}

/// GNU PAX sparse 1.0: the map at the start of the data, real name in GNU.sparse.name.
pub fn pax_sparse_10(t: &mut Tar, name: &[u8], size: u64, segments: &[(u64, Vec<u8>)]) {
    let mut map = format!("{}\n", segments.len());
    for (off, d) in segments {
        map.push_str(&format!("{off}\n{}\n", d.len()));
    }
    let mut data = map.into_bytes();
    data.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
    for (_, d) in segments {
        data.extend_from_slice(d);
    }
    let real = size.to_string();
    t.pax(&[
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", name),
        (b"GNU.sparse.realsize", real.as_bytes()),
    ]);
    let mut h = Header::new(Style::Ustar, b'0', b"GNUSparseFile.0/sparse");
    h.size(data.len() as u64);
    t.header(&h).data(&data);
}

/// GNU PAX sparse 0.1 (`GNU.sparse.map`) or 0.0 (repeated offset/numbytes records).
pub fn pax_sparse_0x(t: &mut Tar, name: &[u8], size: u64, segments: &[(u64, Vec<u8>)], v00: bool) {
    let packed: Vec<u8> = segments.iter().flat_map(|(_, d)| d.clone()).collect();
    let real = size.to_string();
    let count = segments.len().to_string();
    let mut recs = records(&[
        (b"GNU.sparse.size", real.as_bytes()),
        (b"GNU.sparse.numblocks", count.as_bytes()),
        (b"GNU.sparse.name", name),
    ]);
    if v00 {
        for (off, d) in segments {
            recs.extend(record(b"GNU.sparse.offset", off.to_string().as_bytes()));
            recs.extend(record(b"GNU.sparse.numbytes", d.len().to_string().as_bytes()));
        }
    } else {
        let map: Vec<String> =
            segments.iter().flat_map(|(o, d)| [o.to_string(), d.len().to_string()]).collect();
        recs.extend(record(b"GNU.sparse.map", map.join(",").as_bytes()));
    }
    t.meta(b'x', &recs);
    let mut h = Header::new(Style::Ustar, b'0', b"GNUSparseFile.0/sparse");
    h.size(packed.len() as u64);
    t.header(&h).data(&packed);
}
