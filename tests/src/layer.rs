//! Hand-crafted layer tars. Names and link targets are written into the header bytes as given
//! (or as a PAX `path`/`linkpath` record when longer than the header field, or when asked), so
//! hostile names such as `../x`, `/abs` or `.wh..` can be produced; the `tar` crate's path
//! setters would refuse them. Metadata the header cannot carry exactly (nanosecond or negative
//! mtimes, large ids, xattrs) goes into a PAX extended header.

use std::io::{self, Write};

use crate::tree::Mtime;

const BLOCK: usize = 512;

/// The mtime of every entry that does not set one.
pub const DEFAULT_MTIME: Mtime = Mtime::new(1_600_000_000, 0);

/// What an entry is.
#[derive(Clone, Debug)]
pub enum Body {
    Dir,
    File(Vec<u8>),
    /// A regular file of this many zero bytes, streamed rather than held in memory.
    Zeros(u64),
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    /// A sparse file of `size` bytes holding data only at these (offset, bytes) segments,
    /// written as GNU tar's PAX 1.0 sparse format (`tar --sparse --format=posix`).
    Sparse {
        size: u64,
        segments: Vec<(u64, Vec<u8>)>,
    },
}

/// One tar member to write.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: Vec<u8>,
    pub body: Body,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: Mtime,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Put the name in a PAX `path` record even when it fits the header.
    pub pax_path: bool,
    /// Further PAX records, written after the ones this module derives.
    pub extra_pax: Vec<(String, Vec<u8>)>,
}

fn join_whiteout(path: &str, prefix: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{prefix}{name}"),
        None => format!("{prefix}{path}"),
    }
}

impl Entry {
    fn new(name: &[u8], body: Body, mode: u32) -> Entry {
        Entry {
            name: name.to_vec(),
            body,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
            pax_path: false,
            extra_pax: Vec::new(),
        }
    }

    pub fn dir(name: &str) -> Entry {
        let mut n = name.as_bytes().to_vec();
        if !n.ends_with(b"/") {
            n.push(b'/');
        }
        Entry::new(&n, Body::Dir, 0o755)
    }

    pub fn file(name: &str, content: &[u8]) -> Entry {
        Entry::new(name.as_bytes(), Body::File(content.to_vec()), 0o644)
    }

    /// A regular file with any name bytes at all.
    pub fn raw(name: &[u8], content: &[u8]) -> Entry {
        Entry::new(name, Body::File(content.to_vec()), 0o644)
    }

    pub fn zeros(name: &str, size: u64) -> Entry {
        Entry::new(name.as_bytes(), Body::Zeros(size), 0o644)
    }

    pub fn symlink(name: &str, target: &str) -> Entry {
        Entry::new(name.as_bytes(), Body::Symlink(target.as_bytes().to_vec()), 0o777)
    }

    pub fn hardlink(name: &str, target: &str) -> Entry {
        Entry::new(name.as_bytes(), Body::Hardlink(target.as_bytes().to_vec()), 0o644)
    }

    pub fn char_dev(name: &str, major: u32, minor: u32) -> Entry {
        Entry::new(name.as_bytes(), Body::Char(major, minor), 0o666)
    }

    pub fn block_dev(name: &str, major: u32, minor: u32) -> Entry {
        Entry::new(name.as_bytes(), Body::Block(major, minor), 0o660)
    }

    pub fn fifo(name: &str) -> Entry {
        Entry::new(name.as_bytes(), Body::Fifo, 0o644)
    }

    pub fn sparse(name: &str, size: u64, segments: Vec<(u64, Vec<u8>)>) -> Entry {
        Entry::new(name.as_bytes(), Body::Sparse { size, segments }, 0o644)
    }

    /// `.wh.NAME` beside `path`: removes `path` from lower layers.
    pub fn whiteout(path: &str) -> Entry {
        Entry::file(&join_whiteout(path, ".wh."), b"")
    }

    /// `DIR/.wh..wh..opq`: hides everything lower layers put in `dir`.
    pub fn opaque(dir: &str) -> Entry {
        let dir = dir.trim_end_matches('/');
        if dir.is_empty() {
            return Entry::file(".wh..wh..opq", b"");
        }
        Entry::file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: Mtime) -> Entry {
        self.mtime = mtime;
        self
    }

    pub fn xattr(mut self, name: &str, value: &[u8]) -> Entry {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }

    /// Replaces the name with arbitrary bytes.
    pub fn raw_name(mut self, name: &[u8]) -> Entry {
        self.name = name.to_vec();
        self
    }

    pub fn pax_path(mut self) -> Entry {
        self.pax_path = true;
        self
    }

    pub fn pax(mut self, key: &str, value: &[u8]) -> Entry {
        self.extra_pax.push((key.to_string(), value.to_vec()));
        self
    }

    fn size(&self) -> u64 {
        match &self.body {
            Body::File(c) => c.len() as u64,
            Body::Zeros(n) => *n,
            Body::Sparse { segments, .. } => sparse_data(segments).len() as u64,
            _ => 0,
        }
    }

    /// The name in the ustar header: for a sparse file GNU tar's stand-in (the real name is
    /// in `GNU.sparse.name`), cut to the 100 bytes of the field as GNU tar cuts it.
    fn header_name(&self) -> Vec<u8> {
        match &self.body {
            Body::Sparse { .. } => {
                let (dir, base) = match self.name.iter().rposition(|&b| b == b'/') {
                    Some(i) => (&self.name[..i + 1], &self.name[i + 1..]),
                    None => (&b""[..], &self.name[..]),
                };
                let mut n = [dir, b"GNUSparseFile.0/", base].concat();
                n.truncate(100);
                n
            }
            _ => self.name.clone(),
        }
    }

    fn pax_records(&self) -> Vec<(String, Vec<u8>)> {
        let mut records = Vec::new();
        if let Body::Sparse { size, .. } = &self.body {
            records.push(("GNU.sparse.major".to_string(), b"1".to_vec()));
            records.push(("GNU.sparse.minor".to_string(), b"0".to_vec()));
            records.push(("GNU.sparse.name".to_string(), self.name.clone()));
            records.push(("GNU.sparse.realsize".to_string(), size.to_string().into_bytes()));
        } else if self.pax_path || self.name.len() > 100 {
            records.push(("path".to_string(), self.name.clone()));
        }
        if let Body::Symlink(t) | Body::Hardlink(t) = &self.body {
            if t.len() > 100 {
                records.push(("linkpath".to_string(), t.clone()));
            }
        }
        if self.mtime.nsec != 0 || self.mtime.sec < 0 {
            records.push(("mtime".to_string(), self.mtime.to_pax().into_bytes()));
        }
        if self.uid > 0o7777777 {
            records.push(("uid".to_string(), self.uid.to_string().into_bytes()));
        }
        if self.gid > 0o7777777 {
            records.push(("gid".to_string(), self.gid.to_string().into_bytes()));
        }
        if self.size() > 0o77777777777 {
            records.push(("size".to_string(), self.size().to_string().into_bytes()));
        }
        for (name, value) in &self.xattrs {
            records.push((format!("SCHILY.xattr.{name}"), value.clone()));
        }
        records.extend(self.extra_pax.iter().cloned());
        records
    }

    fn header(&self) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let (ty, link) = match &self.body {
            Body::Dir => (tar::EntryType::Directory, None),
            Body::File(_) | Body::Zeros(_) | Body::Sparse { .. } => (tar::EntryType::Regular, None),
            Body::Symlink(t) => (tar::EntryType::Symlink, Some(t)),
            Body::Hardlink(t) => (tar::EntryType::Link, Some(t)),
            Body::Char(..) => (tar::EntryType::Char, None),
            Body::Block(..) => (tar::EntryType::Block, None),
            Body::Fifo => (tar::EntryType::Fifo, None),
        };
        h.set_entry_type(ty);
        h.set_mode(self.mode);
        h.set_uid(if self.uid > 0o7777777 { 0 } else { self.uid });
        h.set_gid(if self.gid > 0o7777777 { 0 } else { self.gid });
        h.set_mtime(self.mtime.sec.max(0) as u64);
        h.set_size(if self.size() > 0o77777777777 { 0 } else { self.size() });
        if let Body::Char(major, minor) | Body::Block(major, minor) = self.body {
            // Infallible for a ustar header.
            let _ = h.set_device_major(major);
            let _ = h.set_device_minor(minor);
        }
        let old = h.as_old_mut();
        let name = self.header_name();
        let n = name.len().min(100);
        old.name[..n].copy_from_slice(&name[..n]);
        if let Some(t) = link {
            let n = t.len().min(100);
            old.linkname[..n].copy_from_slice(&t[..n]);
        }
        h.set_cksum();
        h
    }

    /// Writes this member (PAX header first when needed) to `w`.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let records = self.pax_records();
        if !records.is_empty() {
            let body = encode_pax(&records);
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_mode(0o644);
            h.set_size(body.len() as u64);
            h.set_mtime(self.mtime.sec.max(0) as u64);
            let name = b"PaxHeaders/entry";
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            w.write_all(h.as_bytes())?;
            write_padded(w, &body)?;
        }
        w.write_all(self.header().as_bytes())?;
        match &self.body {
            Body::File(c) => write_padded(w, c)?,
            Body::Sparse { segments, .. } => write_padded(w, &sparse_data(segments))?,
            Body::Zeros(n) => {
                let chunk = vec![0u8; 1 << 20];
                let mut left = n.div_ceil(BLOCK as u64) * BLOCK as u64;
                while left > 0 {
                    let step = left.min(chunk.len() as u64) as usize;
                    w.write_all(&chunk[..step])?;
                    left -= step as u64;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A PAX 1.0 sparse file's data: the map (count, then offset/length pairs, one decimal per
/// line) padded to whole blocks, then the segments' bytes, packed.
fn sparse_data(segments: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut map = format!("{}\n", segments.len());
    for (off, d) in segments {
        map.push_str(&format!("{off}\n{}\n", d.len()));
    }
    let mut out = map.into_bytes();
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    for (_, d) in segments {
        out.extend_from_slice(d);
    }
    out
}

fn write_padded<W: Write>(w: &mut W, data: &[u8]) -> io::Result<()> {
    w.write_all(data)?;
    let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
    w.write_all(&[0u8; BLOCK][..pad])
}

/// Encodes PAX records as `LEN KEY=VALUE\n`, where LEN counts its own digits.
pub fn encode_pax(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = 1 + key.len() + 1 + value.len() + 1;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// Writes the two zero blocks that end an archive.
pub fn write_end<W: Write>(w: &mut W) -> io::Result<()> {
    w.write_all(&[0u8; 2 * BLOCK])
}

/// Builds one layer tar in memory.
#[derive(Default)]
pub struct LayerBuilder {
    out: Vec<u8>,
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder::default()
    }

    pub fn push(&mut self, entry: Entry) -> &mut Self {
        // Writing into a Vec cannot fail.
        let _ = entry.write_to(&mut self.out);
        self
    }

    pub fn extend(&mut self, entries: impl IntoIterator<Item = Entry>) -> &mut Self {
        for e in entries {
            self.push(e);
        }
        self
    }

    /// A PAX global header holding `records` (docker and containerd ignore it).
    pub fn global(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let records: Vec<(String, Vec<u8>)> =
            records.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
        let body = encode_pax(&records);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XGlobalHeader);
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        let name = b"pax_global_header";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        // Writing into a Vec cannot fail.
        let _ = write_padded(&mut self.out, &body);
        self
    }

    /// Appends already-encoded member bytes (for re-cutting an existing archive).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// The archive, ended by two zero blocks.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.out);
        out.extend_from_slice(&[0u8; 2 * BLOCK]);
        out
    }
}

/// `security.capability` holding a version-2 `vfs_cap_data` for `cap_net_raw+ep`.
pub fn cap_net_raw_ep() -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;
    const CAP_NET_RAW: u32 = 13;
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&(VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE).to_le_bytes());
    v.extend_from_slice(&(1u32 << CAP_NET_RAW).to_le_bytes()); // permitted[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[0]
    v.extend_from_slice(&0u32.to_le_bytes()); // permitted[1]
    v.extend_from_slice(&0u32.to_le_bytes()); // inheritable[1]
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_lengths_count_themselves() {
        for n in [0usize, 1, 5, 89, 90, 95, 96, 990, 995, 5000] {
            let rec = encode_pax(&[("path".to_string(), vec![b'a'; n])]);
            let space = rec.iter().position(|&b| b == b' ').expect("space");
            let len: usize =
                std::str::from_utf8(&rec[..space]).expect("ascii").parse().expect("num");
            assert_eq!(len, rec.len(), "value length {n}");
        }
    }

    #[test]
    fn hostile_names_are_written_verbatim() {
        let tar = LayerBuilder::new()
            .push(Entry::raw(b"../../canary", b"x"))
            .push(Entry::raw(b"/abs", b"x"))
            .push(Entry::hardlink("l", "../../etc/passwd"))
            .finish();
        assert_eq!(&tar[..12], b"../../canary");
        assert_eq!(&tar[1024..1028], b"/abs");
        assert_eq!(&tar[2048 + 157..2048 + 157 + 16], b"../../etc/passwd");
        // The tar crate agrees with the checksums we wrote.
        let mut a = tar::Archive::new(&tar[..]);
        let names: Vec<Vec<u8>> = a
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").path_bytes().into_owned())
            .collect();
        assert_eq!(names, vec![b"../../canary".to_vec(), b"/abs".to_vec(), b"l".to_vec()]);
    }

    #[test]
    fn whiteout_names() {
        assert_eq!(Entry::whiteout("a/b/c").name, b"a/b/.wh.c");
        assert_eq!(Entry::whiteout("top").name, b".wh.top");
        assert_eq!(Entry::opaque("a/b/").name, b"a/b/.wh..wh..opq");
        assert_eq!(Entry::dir("a").name, b"a/");
    }

    #[test]
    fn capability_is_twenty_bytes() {
        let c = cap_net_raw_ep();
        assert_eq!(c, [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
