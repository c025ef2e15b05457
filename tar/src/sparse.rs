//! Sparse maps: which byte ranges of a sparse file hold data (everything else is a hole).
//! Old GNU (`'S'` entries, map in the header and extension blocks), and GNU's PAX formats 0.0,
//! 0.1 (map in PAX records) and 1.0 (map at the start of the entry's data), read as Go's
//! `readOldGNUSparseMap`, `readGNUSparseMap0x1` and `readGNUSparseMap1x0` read them, then
//! checked as Go's `validateSparseEntries` checks them.

use std::io::Read;

use crate::error::Why;
use crate::header::BLOCK;
use crate::pax::{self, Records};

/// One data segment of a sparse file: `len` bytes at `offset` of the logical file. The data
/// of all segments follows in the archive, packed, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
}

/// Which PAX sparse format an entry's records announce.
#[derive(Debug, PartialEq, Eq)]
pub enum PaxVersion {
    /// 0.0 or 0.1: the map is in `GNU.sparse.map`.
    InRecords,
    /// 1.0: the map is at the start of the data.
    InData,
}

/// Go's `readGNUSparsePAXHeaders`, version part. `None`: not a PAX sparse file. An unknown
/// version is refused (Go then reads the entry as a plain file holding the map, GNU tar
/// warns and extracts something else).
pub fn pax_version(records: &Records) -> Result<Option<PaxVersion>, Why> {
    let major = records.get(pax::SPARSE_MAJOR).map(Vec::as_slice);
    let minor = records.get(pax::SPARSE_MINOR).map(Vec::as_slice);
    Ok(match (major, minor) {
        (Some(b"0"), Some(b"0" | b"1")) => Some(PaxVersion::InRecords),
        (Some(b"1"), Some(b"0")) => Some(PaxVersion::InData),
        (None, None) => {
            if records.get(pax::SPARSE_MAP).is_some_and(|m| !m.is_empty()) {
                Some(PaxVersion::InRecords)
            } else if [
                pax::SPARSE_SIZE,
                pax::SPARSE_REALSIZE,
                pax::SPARSE_NAME,
                pax::SPARSE_NUMBLOCKS,
            ]
            .iter()
            .any(|k| records.contains_key(*k))
            {
                // Go reads this as a plain file (no map, no version), GNU tar and Python's
                // tarfile as a sparse one (e.g. 0.0 with no segments): refuse.
                return Err(Why::Sparse("GNU.sparse records without a map or version"));
            } else {
                None
            }
        }
        (major, minor) => {
            let part = |p: Option<&[u8]>| p.map_or("?".into(), crate::shown);
            return Err(Why::SparseVersion(format!("{}.{}", part(major), part(minor))));
        }
    })
}

fn segment(offset: i64, len: i64) -> Result<Segment, Why> {
    if offset < 0 || len < 0 {
        return Err(Why::Sparse("a negative offset or length"));
    }
    Ok(Segment { offset: offset as u64, len: len as u64 })
}

/// The map of 0.0/0.1: `GNU.sparse.numblocks` pairs in `GNU.sparse.map`.
pub fn from_records(records: &Records, max: usize) -> Result<Vec<Segment>, Why> {
    let count = records
        .get(pax::SPARSE_NUMBLOCKS)
        .and_then(|v| pax::parse_int(v))
        .ok_or(Why::Sparse("GNU.sparse.numblocks is missing or not a number"))?;
    if count < 0 {
        return Err(Why::Sparse("a negative GNU.sparse.numblocks"));
    }
    if count as u64 > max as u64 {
        return Err(Why::SparseTooMany(max));
    }
    let map = records.get(pax::SPARSE_MAP).map(Vec::as_slice).unwrap_or_default();
    let numbers: Vec<&[u8]> =
        if map.is_empty() { Vec::new() } else { map.split(|&c| c == b',').collect() };
    if numbers.len() as u64 != 2 * count as u64 {
        return Err(Why::Sparse("GNU.sparse.map does not hold numblocks pairs"));
    }
    numbers
        .chunks_exact(2)
        .map(|pair| {
            let offset = pax::parse_int(pair[0]).ok_or(Why::Sparse("an offset is not a number"))?;
            let len = pax::parse_int(pair[1]).ok_or(Why::Sparse("a length is not a number"))?;
            segment(offset, len)
        })
        .collect()
}

/// The map of 1.0, read from the start of the entry's data: decimal numbers each ended by a
/// newline (the count, then offset/length pairs), padded to whole blocks. Streams number by
/// number; returns the map and how many data bytes it took.
pub fn from_data(
    r: &mut impl Read,
    available: u64,
    max: usize,
) -> Result<(Vec<Segment>, u64), Why> {
    let mut numbers = Numbers { r, available, used: 0, block: [0; BLOCK], at: BLOCK };
    let count = numbers.next()?;
    if count < 0 {
        return Err(Why::Sparse("a negative segment count"));
    }
    if count as u64 > max as u64 {
        return Err(Why::SparseTooMany(max));
    }
    let mut segments = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let offset = numbers.next()?;
        let len = numbers.next()?;
        segments.push(segment(offset, len)?);
    }
    Ok((segments, numbers.used))
}

struct Numbers<'a, R> {
    r: &'a mut R,
    available: u64,
    used: u64,
    block: [u8; BLOCK],
    at: usize,
}

impl<R: Read> Numbers<'_, R> {
    fn byte(&mut self) -> Result<u8, Why> {
        if self.at == BLOCK {
            if self.available < self.used + BLOCK as u64 {
                return Err(Why::Sparse("the map runs past the entry's data"));
            }
            read_block(self.r, &mut self.block)?;
            self.used += BLOCK as u64;
            self.at = 0;
        }
        self.at += 1;
        Ok(self.block[self.at - 1])
    }

    /// One `DIGITS\n` token, as Go's `strconv.ParseInt(token, 10, 64)` reads it.
    fn next(&mut self) -> Result<i64, Why> {
        let mut token = Vec::with_capacity(20);
        loop {
            match self.byte()? {
                b'\n' => break,
                c if token.len() < 24 => token.push(c),
                _ => return Err(Why::Sparse("a number longer than 24 bytes")),
            }
        }
        pax::parse_int(&token).ok_or(Why::Sparse("a map entry is not a decimal number"))
    }
}

fn read_block(r: &mut impl Read, block: &mut [u8; BLOCK]) -> Result<(), Why> {
    r.read_exact(block).map_err(|_| Why::Truncated("a sparse map"))
}

/// Go's `validateSparseEntries`: in order, not overlapping, inside the logical size.
pub fn validate(segments: &[Segment], size: u64) -> Result<(), Why> {
    let mut end = 0u64;
    for s in segments {
        let seg_end =
            s.offset.checked_add(s.len).ok_or(Why::Sparse("a segment overflows 64 bits"))?;
        if seg_end > size {
            return Err(Why::Sparse("a segment ends past the file's size"));
        }
        if s.offset < end {
            return Err(Why::Sparse("segments overlap or are out of order"));
        }
        end = seg_end;
    }
    Ok(())
}

/// Bytes of data the map describes.
pub fn data_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(pairs: &[(&[u8], &[u8])]) -> Records {
        pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn versions() {
        let v = |p: &[(&[u8], &[u8])]| pax_version(&recs(p));
        assert_eq!(v(&[]), Ok(None));
        assert!(v(&[(pax::SPARSE_SIZE, b"10")]).is_err(), "Go: a plain file; GNU, Python: sparse");
        assert_eq!(v(&[(pax::SPARSE_MAP, b"0,1")]), Ok(Some(PaxVersion::InRecords)));
        assert_eq!(
            v(&[(pax::SPARSE_MAJOR, b"1"), (pax::SPARSE_MINOR, b"0")]),
            Ok(Some(PaxVersion::InData))
        );
        assert_eq!(
            v(&[(pax::SPARSE_MAJOR, b"0"), (pax::SPARSE_MINOR, b"1")]),
            Ok(Some(PaxVersion::InRecords))
        );
        assert!(v(&[(pax::SPARSE_MAJOR, b"2"), (pax::SPARSE_MINOR, b"0")]).is_err());
        assert!(v(&[(pax::SPARSE_MAJOR, b"1")]).is_err());
    }

    #[test]
    fn map_in_records() {
        let r = recs(&[(pax::SPARSE_NUMBLOCKS, b"2"), (pax::SPARSE_MAP, b"0,5,4096,3")]);
        assert_eq!(
            from_records(&r, 10).expect("map"),
            vec![Segment { offset: 0, len: 5 }, Segment { offset: 4096, len: 3 }]
        );
        assert_eq!(from_records(&r, 1), Err(Why::SparseTooMany(1)));
        let short = recs(&[(pax::SPARSE_NUMBLOCKS, b"3"), (pax::SPARSE_MAP, b"0,5,4096,3")]);
        assert!(from_records(&short, 10).is_err());
        let empty = recs(&[(pax::SPARSE_NUMBLOCKS, b"0"), (pax::SPARSE_MAP, b"")]);
        assert_eq!(from_records(&empty, 10), Ok(vec![]));
    }

    #[test]
    fn map_in_data() {
        let mut data = b"2\n0\n5\n1099511627776\n3\n".to_vec();
        data.resize(BLOCK, 0);
        data.extend_from_slice(b"hello");
        let mut r = &data[..];
        let (map, used) = from_data(&mut r, data.len() as u64, 10).expect("map");
        assert_eq!(used, BLOCK as u64);
        assert_eq!(map[1], Segment { offset: 1 << 40, len: 3 });
        assert_eq!(r, b"hello", "only whole map blocks are taken");
        assert!(from_data(&mut &data[..], 100, 10).is_err(), "map longer than the data");
        let mut huge = b"99999999\n".to_vec();
        huge.resize(BLOCK, 0);
        assert_eq!(from_data(&mut &huge[..], BLOCK as u64, 1000), Err(Why::SparseTooMany(1000)));
    }

    #[test]
    fn validation() {
        let s = |o, l| Segment { offset: o, len: l };
        assert!(validate(&[s(0, 5), s(10, 5)], 15).is_ok());
        assert!(validate(&[s(0, 5), s(10, 5)], 14).is_err(), "past the size");
        assert!(validate(&[s(10, 5), s(0, 5)], 15).is_err(), "out of order");
        assert!(validate(&[s(0, 6), s(5, 5)], 15).is_err(), "overlap");
        assert!(validate(&[s(u64::MAX, 2)], u64::MAX).is_err(), "overflow");
        assert!(validate(&[s(5, 0), s(5, 0)], 5).is_ok(), "empty segments may touch");
    }
}
