//! One 512-byte header block: its checksum, its format and its fields, read as Go's
//! `archive/tar` reads them (`reader.go`: `readHeader`, `parseNumeric`, `parseOctal`,
//! `getFormat`). Where Go and GNU tar read a block differently, the block is refused.

use crate::error::Why;

pub const BLOCK: usize = 512;

/// The header layouts Go tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Unix V7: no magic; no owner names, device numbers or prefix.
    V7,
    /// POSIX ustar (`"ustar\0"`), the base of PAX archives: a 155-byte name prefix.
    Ustar,
    /// Schily's star: ustar magic with a `"tar\0"` trailer; a 131-byte prefix.
    Star,
    /// GNU (`"ustar  \0"`): atime/ctime and the old sparse map where ustar has its prefix.
    Gnu,
}

/// A header's fields, numbers decoded, the ustar/star prefix already joined to the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    pub typeflag: u8,
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub size: i64,
    pub mtime: i64,
    pub dev_major: i64,
    pub dev_minor: i64,
    pub format: Format,
}

/// Bytes up to the first NUL (all of them when there is none).
pub fn c_string(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

/// Go's `parseOctal`: leading and trailing spaces and NULs are trimmed, the rest up to the
/// first NUL must be octal digits fitting 64 bits. An empty field is 0.
pub fn parse_octal(field: &[u8]) -> Option<i64> {
    let trimmed = trim(field, |c| c == b' ' || c == 0);
    let digits = c_string(trimmed);
    if trimmed.is_empty() {
        return Some(0);
    }
    if digits.is_empty() || !digits.iter().all(|c| (b'0'..=b'7').contains(c)) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
    }
    // Go's ParseUint gives a uint64 that is then cast to int64.
    Some(v as i64)
}

fn trim(b: &[u8], strip: impl Fn(u8) -> bool) -> &[u8] {
    let start = b.iter().position(|&c| !strip(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| !strip(c)).map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

/// Go's `parseNumeric`: base-256 (two's complement, first bit set) or octal.
pub fn parse_numeric(field: &[u8]) -> Option<i64> {
    let Some(&first) = field.first() else { return Some(0) };
    if first & 0x80 == 0 {
        return parse_octal(field);
    }
    let inv: u8 = if first & 0x40 != 0 { 0xff } else { 0 };
    let mut x: u64 = 0;
    for (i, &c) in field.iter().enumerate() {
        let mut c = c ^ inv;
        if i == 0 {
            c &= 0x7f;
        }
        if x >> 56 > 0 {
            return None;
        }
        x = x << 8 | u64::from(c);
    }
    if x >> 63 > 0 {
        return None;
    }
    Some(if inv == 0xff { !(x as i64) } else { x as i64 })
}

/// Whether GNU tar (`from_header`) and Python's `tarfile` (`nti`) read `field` as Go does.
/// Go trims any spaces and NULs; GNU skips one leading NUL then spaces and stops at a space
/// or NUL after the digits, and refuses an all-blank field; Python cuts at the first NUL and
/// accepts whatever `int(s, 8)` does; GNU and Python take base-256 only from a first byte of
/// 0x80 or 0xff. Accepted here: all NULs; `0x80`/`0xff` base-256; or spaces, octal digits,
/// then either a NUL (anything after it) or spaces and NULs to the end.
pub fn readers_agree(field: &[u8]) -> bool {
    match field.first() {
        None => return true,
        Some(0x80 | 0xff) => return true,
        Some(c) if c & 0x80 != 0 => return false,
        _ => {}
    }
    if field.iter().all(|&c| c == 0) {
        return true;
    }
    let digits_at = field.iter().position(|&c| c != b' ').unwrap_or(field.len());
    let rest = &field[digits_at..];
    let n = rest.iter().take_while(|c| (b'0'..=b'7').contains(c)).count();
    if n == 0 {
        return false;
    }
    match rest.get(n) {
        None | Some(0) => true,
        Some(b' ') => rest[n..].iter().all(|&c| c == b' ' || c == 0),
        Some(_) => false,
    }
}

/// A numeric field every reader reads the same way, as Go reads it.
pub fn agreed_numeric(field: &[u8]) -> Option<i64> {
    if readers_agree(field) {
        parse_numeric(field)
    } else {
        None
    }
}

/// The unsigned and signed sums of the block with the checksum field read as spaces.
fn checksums(b: &[u8; BLOCK]) -> (i64, i64) {
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    (unsigned, signed)
}

/// Go's `getFormat`: `None` when the checksum does not match either sum.
pub fn format(b: &[u8; BLOCK]) -> Option<Format> {
    if !readers_agree(&b[148..156]) || b[148] & 0x80 != 0 {
        return None;
    }
    let stored = parse_octal(&b[148..156])?;
    let (unsigned, signed) = checksums(b);
    if stored != unsigned && stored != signed {
        return None;
    }
    let magic = &b[257..263];
    let version = &b[263..265];
    let trailer = &b[508..512];
    Some(if magic == b"ustar\0" && trailer == b"tar\0" {
        Format::Star
    } else if magic == b"ustar\0" {
        Format::Ustar
    } else if magic == b"ustar " && version == b" \0" {
        Format::Gnu
    } else {
        Format::V7
    })
}

pub fn is_zero(b: &[u8; BLOCK]) -> bool {
    b.iter().all(|&c| c == 0)
}

/// Reads a checked header block's fields.
pub fn fields(b: &[u8; BLOCK]) -> Result<Fields, Why> {
    let format = format(b).ok_or_else(|| {
        let (unsigned, signed) = checksums(b);
        Why::Checksum {
            stored: String::from_utf8_lossy(c_string(trim(&b[148..156], |c| c == b' ')))
                .into_owned(),
            unsigned,
            signed,
        }
    })?;
    let num = |range: std::ops::Range<usize>, field: &'static str| {
        agreed_numeric(&b[range]).ok_or(Why::Field(field))
    };
    let mut f = Fields {
        typeflag: b[156],
        name: c_string(&b[0..100]).to_vec(),
        link: c_string(&b[157..257]).to_vec(),
        size: num(124..136, "size")?,
        mode: num(100..108, "mode")?,
        uid: num(108..116, "uid")?,
        gid: num(116..124, "gid")?,
        mtime: num(136..148, "mtime")?,
        dev_major: 0,
        dev_minor: 0,
        format,
    };
    // Python's tarfile reads bytes 345.. of any header as a ustar prefix, up to a NUL; Go and
    // GNU tar only read a prefix from ustar (and star) headers.
    let python_prefix = c_string(&b[345..500]);
    if format == Format::V7 {
        if !python_prefix.is_empty() {
            return Err(Why::PrefixArea("a v7"));
        }
        if matches!(f.typeflag, b'3' | b'4') {
            // Go reads no device numbers from v7 headers, Python's tarfile reads them anyway.
            return Err(Why::V7Device);
        }
        // Python parses the device fields of every header (and gives up on garbage there).
        num(329..337, "devmajor")?;
        num(337..345, "devminor")?;
        return Ok(f);
    }
    f.dev_major = num(329..337, "devmajor")?;
    f.dev_minor = num(337..345, "devminor")?;
    let prefix: &[u8] = match format {
        Format::Ustar => c_string(&b[345..500]),
        Format::Star => {
            num(476..488, "atime")?;
            num(488..500, "ctime")?;
            if b[475] != 0 {
                return Err(Why::PrefixArea("a star"));
            }
            c_string(&b[345..476])
        }
        Format::Gnu => {
            // Go falls back to reading a prefix here when these do not parse (a workaround
            // for archives written by Go before 1.8); GNU tar never does: refuse.
            for (range, field) in [(345..357, "atime"), (357..369, "ctime")] {
                if b[range.start] != 0 && agreed_numeric(&b[range]).is_none() {
                    return Err(Why::GnuTimes(field));
                }
            }
            if !python_prefix.is_empty() {
                return Err(Why::PrefixArea("a GNU"));
            }
            &[]
        }
        Format::V7 => &[],
    };
    if !prefix.is_empty() {
        if f.name.is_empty() {
            // `prefix/`: Go and GNU tar judge a trailing slash on the joined name, Python's
            // tarfile on the name field alone (an AREGTYPE becomes a directory or not).
            return Err(Why::PrefixSlash);
        }
        let mut name = prefix.to_vec();
        name.push(b'/');
        name.extend_from_slice(&f.name);
        f.name = name;
    }
    Ok(f)
}

/// One old-GNU sparse map entry (offset, length), as stored in 12-byte numeric fields.
pub fn gnu_sparse_entry(b: &[u8]) -> Result<Option<(i64, i64)>, Why> {
    // GNU, BSD and Go tar all stop at an entry whose offset field starts with NUL.
    if b[0] == 0 {
        return Ok(None);
    }
    let offset = agreed_numeric(&b[0..12]).ok_or(Why::Field("sparse offset"))?;
    let length = agreed_numeric(&b[12..24]).ok_or(Why::Field("sparse length"))?;
    Ok(Some((offset, length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_as_go_reads_it() {
        let cases: &[(&[u8], Option<i64>)] = &[
            (b"0000644\0", Some(0o644)),
            (b"     644 ", Some(0o644)),
            (b"\0\0\0\x00644\0", Some(0o644)),
            (b"        ", Some(0)),
            (b"\0\0\0\0\0\0\0\0", Some(0)),
            (b"12\x0034", Some(0o12)),
            (b"12 3", None),
            (b"9", None),
            (b"-1", None),
            (b"+1", None),
            (b"77777777777777777777777", None),
            (b"1777777777777777777777", Some(-1)),
        ];
        for (field, want) in cases {
            assert_eq!(parse_octal(field), *want, "{:?}", String::from_utf8_lossy(field));
        }
    }

    #[test]
    fn only_what_every_reader_reads_alike() {
        let agree: &[&[u8]] = &[
            b"0000644\0",
            b"   644 \0",
            b"644  \0\0",
            b"644\0xyz",
            b"\0\0\0\0\0\0\0\0",
            b"\x80\0\0\0\0\0\0\x01",
            b"\xff\xff\xff\xff\xff\xff\xff\xfe",
        ];
        let disagree: &[&[u8]] = &[
            b"\0\x000644\0",
            b"        ",
            b"644 xyz",
            b"644 \0x",
            b"0o644\0\0",
            b"+644\0\0\0",
            b"\x81\0\0\0\0\0\0\x01",
            b"64_4\0\0\0",
        ];
        for f in agree {
            assert!(readers_agree(f), "{:?}", String::from_utf8_lossy(f));
        }
        for f in disagree {
            assert!(!readers_agree(f), "{:?}", String::from_utf8_lossy(f));
        }
    }

    #[test]
    fn base256_both_signs() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 1;
        assert_eq!(parse_numeric(&f), Some(1));
        f[8..12].copy_from_slice(&0x1_0000_0000u64.to_be_bytes()[4..]);
        f[7] = 1;
        assert_eq!(parse_numeric(&f), Some(1 << 32));
        let minus_one = [0xffu8; 12];
        assert_eq!(parse_numeric(&minus_one), Some(-1));
        let mut minus_two = [0xffu8; 8];
        minus_two[7] = 0xfe;
        assert_eq!(parse_numeric(&minus_two), Some(-2));
        // 2^63 does not fit an int64.
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4] = 0x80;
        assert_eq!(parse_numeric(&big), None);
    }

    fn block() -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..5].copy_from_slice(b"hello");
        b[100..108].copy_from_slice(b"0000644\0");
        b[108..116].copy_from_slice(b"0001750\0");
        b[116..124].copy_from_slice(b"0001750\0");
        b[124..136].copy_from_slice(b"00000000012\0");
        b[136..148].copy_from_slice(b"14413577601\0");
        b[156] = b'0';
        b
    }

    fn seal(b: &mut [u8; BLOCK]) {
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
        b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }

    #[test]
    fn formats_and_prefixes() {
        let mut b = block();
        seal(&mut b);
        let f = fields(&b).expect("v7");
        assert_eq!((f.format, f.size, f.uid, f.mode), (Format::V7, 10, 1000, 0o644));
        assert_eq!(f.name, b"hello");

        let mut b = block();
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[345..348].copy_from_slice(b"pre");
        b[329..337].copy_from_slice(b"0000010\0");
        seal(&mut b);
        let f = fields(&b).expect("ustar");
        assert_eq!((f.format, f.dev_major), (Format::Ustar, 8));
        assert_eq!(f.name, b"pre/hello");

        let mut b = block();
        b[257..263].copy_from_slice(b"ustar ");
        b[263..265].copy_from_slice(b" \0");
        b[345..348].copy_from_slice(b"pre");
        seal(&mut b);
        assert_eq!(fields(&b), Err(Why::GnuTimes("atime")), "GNU has no prefix field");
        b[345..348].copy_from_slice(b"012");
        seal(&mut b);
        assert_eq!(fields(&b), Err(Why::PrefixArea("a GNU")), "an atime Python reads as a prefix");
        b[345..348].copy_from_slice(b"\0\0\0");
        seal(&mut b);
        let f = fields(&b).expect("gnu");
        assert_eq!((f.format, f.name.as_slice()), (Format::Gnu, &b"hello"[..]));
    }

    #[test]
    fn checksum_signed_or_unsigned() {
        let mut b = block();
        b[10] = 0xff;
        seal(&mut b);
        assert!(fields(&b).is_ok(), "unsigned sum");
        let (_, signed) = checksums(&b);
        b[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        assert!(fields(&b).is_ok(), "signed sum");
        b[148..156].copy_from_slice(b"0000001\0");
        assert!(matches!(fields(&b), Err(Why::Checksum { .. })));
    }
}
