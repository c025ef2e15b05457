//! A small, independent tar reader: ustar and GNU headers, PAX extended headers (path,
//! linkpath, size, uid, gid, mtime, `SCHILY.xattr.*`), GNU long names, PAX 1.0 sparse files;
//! PAX global headers are skipped, as docker and containerd skip them. It is written here
//! rather than shared with rootbox so the model does not share a parser with it.
//! Every entry also carries the byte range of its raw bytes (extension headers included) so an
//! archive can be re-cut into layers without re-encoding anything.

use std::ops::Range;

use anyhow::{bail, ensure, Context, Result};

use crate::tree::Mtime;

const BLOCK: usize = 512;

/// The entry types the model understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryType {
    File,
    Hardlink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

/// A sparse file's data segment: its offset in the file, and where its bytes are.
pub type SparseSegment = (u64, Range<usize>);

/// One archive member with every extension header already applied.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: Mtime,
    pub dev: (u32, u32),
    /// `SCHILY.xattr.NAME` records, in archive order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// The member's data (for a sparse file: the packed segments after the map).
    pub data: Range<usize>,
    /// A PAX 1.0 sparse file: its size and its segments.
    pub sparse: Option<(u64, Vec<SparseSegment>)>,
    /// Every byte of the member: its extension headers, header and padded data.
    pub raw: Range<usize>,
}

fn field_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Parses a numeric header field: octal (NUL/space padded) or GNU base-256.
fn number(field: &[u8]) -> Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        ensure!(field[0] & 0x40 == 0, "negative base-256 number");
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v.checked_mul(256).context("base-256 number overflows")? + u64::from(b);
        }
        return Ok(v);
    }
    let text = field_str(field);
    let text: Vec<u8> = text.iter().copied().filter(|b| *b != b' ').collect();
    if text.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&text).context("numeric field is not ASCII")?;
    u64::from_str_radix(s, 8).with_context(|| format!("bad octal field {s:?}"))
}

fn checksum_ok(block: &[u8]) -> Result<bool> {
    let stored = number(&block[148..156])?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) })
        .sum();
    Ok(sum == stored)
}

/// Parses PAX records (`LEN KEY=VALUE\n`); values may hold any bytes.
pub fn pax_records(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let space = data.iter().position(|&b| b == b' ').context("PAX record without length")?;
        let len: usize =
            std::str::from_utf8(&data[..space])?.parse().context("PAX record length")?;
        ensure!(len > space + 2 && len <= data.len(), "PAX record length {len} out of range");
        let record = &data[space + 1..len];
        ensure!(record.last() == Some(&b'\n'), "PAX record not ended by a newline");
        let record = &record[..record.len() - 1];
        let eq = record.iter().position(|&b| b == b'=').context("PAX record without '='")?;
        let key = String::from_utf8(record[..eq].to_vec()).context("PAX key is not UTF-8")?;
        out.push((key, record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

impl RawEntry {
    /// A regular file's content, holes of a sparse file filled in.
    pub fn content(&self, tar: &[u8]) -> Vec<u8> {
        match &self.sparse {
            None => tar[self.data.clone()].to_vec(),
            Some((size, segments)) => {
                let mut out = vec![0u8; *size as usize];
                for (off, r) in segments {
                    out[*off as usize..*off as usize + r.len()].copy_from_slice(&tar[r.clone()]);
                }
                out
            }
        }
    }
}

/// The map at the start of a PAX 1.0 sparse file's data: segments with where their bytes are.
fn sparse_map(tar: &[u8], data: Range<usize>) -> Result<Vec<SparseSegment>> {
    let body = &tar[data.clone()];
    let mut lines = body.split(|&b| b == b'\n');
    let mut next = |what: &str| -> Result<u64> {
        let l = lines.next().with_context(|| format!("sparse map ends before {what}"))?;
        std::str::from_utf8(l)?.parse::<u64>().with_context(|| format!("sparse map {what}"))
    };
    let count = next("the count")?;
    let mut pairs = Vec::new();
    let mut used = 0usize;
    for _ in 0..count {
        let off = next("an offset")?;
        let len = next("a length")?;
        pairs.push((off, len));
    }
    // The map's text: count + pairs, each ended by a newline, padded to whole blocks.
    let text: usize = std::iter::once(count)
        .chain(pairs.iter().flat_map(|&(o, l)| [o, l]))
        .map(|n| n.to_string().len() + 1)
        .sum();
    let mut at = data.start + padded(text);
    let mut out = Vec::new();
    for (off, len) in pairs {
        let len = len as usize;
        ensure!(at + len <= data.end, "sparse data runs past the entry");
        out.push((off, at..at + len));
        at += len;
        used += len;
    }
    ensure!(at == data.end, "sparse map describes {used} bytes, the entry holds more");
    Ok(out)
}

fn padded(len: usize) -> usize {
    len.div_ceil(BLOCK) * BLOCK
}

/// Reads every member of a tar archive held in memory. Fails on a truncated archive, a bad
/// checksum, or a member type the model does not handle.
pub fn entries(bytes: &[u8]) -> Result<Vec<RawEntry>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut start = 0usize;
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    loop {
        if pos == bytes.len() {
            ensure!(
                pax.is_empty() && long_name.is_none(),
                "archive ends after an extension header"
            );
            break;
        }
        ensure!(pos + BLOCK <= bytes.len(), "archive truncated inside a header at byte {pos}");
        let block = &bytes[pos..pos + BLOCK];
        if block.iter().all(|&b| b == 0) {
            break;
        }
        ensure!(checksum_ok(block)?, "bad header checksum at byte {pos}");
        let typeflag = block[156];
        let mut size = number(&block[124..136])? as usize;
        if let Some((_, v)) = pax.iter().rev().find(|(k, _)| k == "size") {
            size = std::str::from_utf8(v)?.parse().context("PAX size")?;
        }
        let data = pos + BLOCK..pos + BLOCK + size;
        ensure!(data.end <= bytes.len(), "archive truncated inside member data at byte {pos}");
        let next = pos + BLOCK + padded(size);
        ensure!(next <= bytes.len(), "archive truncated inside member padding at byte {pos}");
        let body = &bytes[data.clone()];
        match typeflag {
            b'x' => {
                pax.extend(pax_records(body).with_context(|| format!("PAX header at byte {pos}"))?);
                pos = next;
                continue;
            }
            b'g' => {
                // Parsed (it must be well formed) but not applied: docker does not.
                pax_records(body)?;
                pos = next;
                start = next;
                continue;
            }
            b'L' => {
                long_name = Some(field_str(body).to_vec());
                pos = next;
                continue;
            }
            b'K' => {
                long_link = Some(field_str(body).to_vec());
                pos = next;
                continue;
            }
            _ => {}
        }
        let kind = match typeflag {
            b'0' | 0 | b'7' => EntryType::File,
            b'1' => EntryType::Hardlink,
            b'2' => EntryType::Symlink,
            b'3' => EntryType::Char,
            b'4' => EntryType::Block,
            b'5' => EntryType::Dir,
            b'6' => EntryType::Fifo,
            other => bail!("unsupported tar member type {:?} at byte {pos}", other as char),
        };
        let ustar = &block[257..263] == b"ustar\0";
        let mut path = field_str(&block[0..100]).to_vec();
        if ustar && block[345] != 0 {
            let mut full = field_str(&block[345..500]).to_vec();
            full.push(b'/');
            full.extend_from_slice(&path);
            path = full;
        }
        if let Some(name) = long_name.take() {
            path = name;
        }
        let mut link = field_str(&block[157..257]).to_vec();
        if let Some(name) = long_link.take() {
            link = name;
        }
        let mut entry = RawEntry {
            path,
            link,
            kind,
            mode: (number(&block[100..108])? & 0o7777) as u32,
            uid: number(&block[108..116])?,
            gid: number(&block[116..124])?,
            mtime: Mtime::new(number(&block[136..148])? as i64, 0),
            dev: (number(&block[329..337])? as u32, number(&block[337..345])? as u32),
            xattrs: Vec::new(),
            data,
            sparse: None,
            raw: start..next,
        };
        let records: Vec<(String, Vec<u8>)> = std::mem::take(&mut pax);
        let record = |k: &str| records.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v);
        if record("GNU.sparse.major").map(Vec::as_slice) == Some(b"1")
            && record("GNU.sparse.minor").map(Vec::as_slice) == Some(b"0")
        {
            let name = record("GNU.sparse.name").context("sparse file without GNU.sparse.name")?;
            let size = record("GNU.sparse.realsize").context("sparse file without realsize")?;
            let size: u64 = std::str::from_utf8(size)?.parse().context("GNU.sparse.realsize")?;
            entry.path = name.clone();
            entry.sparse = Some((size, sparse_map(bytes, entry.data.clone())?));
        }
        for (key, value) in records {
            let text = || String::from_utf8_lossy(&value).into_owned();
            match key.as_str() {
                "path" => entry.path = value.clone(),
                "linkpath" => entry.link = value.clone(),
                "uid" => entry.uid = text().parse().context("PAX uid")?,
                "gid" => entry.gid = text().parse().context("PAX gid")?,
                "mtime" => {
                    entry.mtime = Mtime::parse_pax(&text()).context("PAX mtime")?;
                }
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        entry.xattrs.retain(|(n, _)| n != name);
                        entry.xattrs.push((name.to_string(), value.clone()));
                    }
                }
            }
        }
        out.push(entry);
        pos = next;
        start = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Entry, LayerBuilder};

    #[test]
    fn reads_what_the_layer_builder_writes() {
        let long = "d/".repeat(80) + "f";
        let tar = LayerBuilder::new()
            .push(Entry::dir("d").mode(0o1777).owner(1000, 1000))
            .push(Entry::file("d/f", b"hello").mode(0o4755).mtime(Mtime::new(4102444800, 5)))
            .push(Entry::file(&long, b"x").xattr("user.a", b"\x00\x01"))
            .push(Entry::hardlink("d/h", "d/f"))
            .push(Entry::symlink("d/s", "/abs/target"))
            .push(Entry::char_dev("d/c", 1, 3))
            .push(Entry::block_dev("d/b", 259, 70000))
            .push(Entry::fifo("d/p"))
            .push(Entry::raw(b"../evil", b"bad"))
            .finish();
        let e = entries(&tar).expect("parse");
        assert_eq!(e.len(), 9);
        assert_eq!(
            (e[0].kind, e[0].mode, e[0].uid, e[0].gid),
            (EntryType::Dir, 0o1777, 1000, 1000)
        );
        assert_eq!(e[1].path, b"d/f");
        assert_eq!(&tar[e[1].data.clone()], b"hello");
        assert_eq!((e[1].mode, e[1].mtime), (0o4755, Mtime::new(4102444800, 5)));
        assert_eq!(e[2].path, long.as_bytes());
        assert_eq!(e[2].xattrs, vec![("user.a".to_string(), vec![0, 1])]);
        assert_eq!((e[3].kind, e[3].link.as_slice()), (EntryType::Hardlink, &b"d/f"[..]));
        assert_eq!(e[4].link, b"/abs/target");
        assert_eq!((e[5].kind, e[5].dev), (EntryType::Char, (1, 3)));
        assert_eq!((e[6].kind, e[6].dev), (EntryType::Block, (259, 70000)));
        assert_eq!(e[7].kind, EntryType::Fifo);
        assert_eq!(e[8].path, b"../evil");
        // Raw ranges tile the archive up to the end-of-archive blocks.
        assert_eq!(e[0].raw.start, 0);
        for w in e.windows(2) {
            assert_eq!(w[0].raw.end, w[1].raw.start);
        }
    }

    #[test]
    fn truncated_archives_are_errors() {
        let tar = LayerBuilder::new().push(Entry::file("f", &[7u8; 3000])).finish();
        for cut in [100, 512, 1500, 3000] {
            assert!(entries(&tar[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn pax_records_hold_binary_values() {
        let r = pax_records(b"20 SCHILY.xattr.a=\n\n14 path=a/b/c\n").expect("parse");
        assert_eq!(r[0], ("SCHILY.xattr.a".to_string(), b"\n".to_vec()));
        assert_eq!(r[1], ("path".to_string(), b"a/b/c".to_vec()));
    }
}
