//! PAX extended header records, `"<len> <key>=<value>\n"`, parsed by their length prefix so a
//! value may hold any byte, newlines included (Go's `parsePAX` / `parsePAXRecord`). Nothing
//! here splits on newlines: a value that embeds a well-framed record stays one value.

use std::collections::BTreeMap;

use crate::error::Why;

pub const PATH: &[u8] = b"path";
pub const LINKPATH: &[u8] = b"linkpath";
pub const SIZE: &[u8] = b"size";
pub const UID: &[u8] = b"uid";
pub const GID: &[u8] = b"gid";
pub const MTIME: &[u8] = b"mtime";
pub const ATIME: &[u8] = b"atime";
pub const CTIME: &[u8] = b"ctime";
pub const UNAME: &[u8] = b"uname";
pub const GNAME: &[u8] = b"gname";
pub const SCHILY_XATTR: &[u8] = b"SCHILY.xattr.";

pub const SPARSE_NUMBLOCKS: &[u8] = b"GNU.sparse.numblocks";
pub const SPARSE_OFFSET: &[u8] = b"GNU.sparse.offset";
pub const SPARSE_NUMBYTES: &[u8] = b"GNU.sparse.numbytes";
pub const SPARSE_MAP: &[u8] = b"GNU.sparse.map";
pub const SPARSE_NAME: &[u8] = b"GNU.sparse.name";
pub const SPARSE_MAJOR: &[u8] = b"GNU.sparse.major";
pub const SPARSE_MINOR: &[u8] = b"GNU.sparse.minor";
pub const SPARSE_SIZE: &[u8] = b"GNU.sparse.size";
pub const SPARSE_REALSIZE: &[u8] = b"GNU.sparse.realsize";

/// The records of one extended header; a key given twice keeps its last value (as Go's map
/// and GNU tar's in-order application both do).
pub type Records = BTreeMap<Vec<u8>, Vec<u8>>;

/// Parses an extended header's bytes into records.
pub fn parse(mut buf: &[u8]) -> Result<Records, Why> {
    let mut records = Records::new();
    // GNU sparse 0.0 writes repeated offset/numbytes records; Go folds them into a 0.1 map.
    let mut sparse_map: Vec<&[u8]> = Vec::new();
    let mut index = 0;
    while !buf.is_empty() {
        index += 1;
        let bad = |why| Why::PaxRecord { index, why };
        let space = buf.iter().position(|&c| c == b' ').ok_or(bad("no length field"))?;
        let digits = &buf[..space];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad("the length is not a decimal number"));
        }
        let len = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or(bad("the length does not fit"))?;
        if len < 5 || len > buf.len() {
            return Err(bad("the length runs past the header"));
        }
        if len <= space + 1 {
            return Err(bad("the length is shorter than its own field"));
        }
        let (record, rest) = buf.split_at(len);
        if record[len - 1] != b'\n' {
            return Err(bad("the record does not end with a newline where its length says"));
        }
        let body = &record[space + 1..len - 1];
        let eq = body.iter().position(|&c| c == b'=').ok_or(bad("no '=' after the key"))?;
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        if key.is_empty() {
            return Err(bad("an empty key"));
        }
        let nul_checked = [PATH, LINKPATH, UNAME, GNAME];
        if nul_checked.contains(&key) {
            if value.contains(&0) {
                return Err(Why::PaxValue { key: shown_key(key), why: "a NUL byte in the value" });
            }
        } else if key.contains(&0) {
            return Err(bad("a NUL byte in the key"));
        }
        if key == SPARSE_OFFSET || key == SPARSE_NUMBYTES {
            let want =
                if sparse_map.len().is_multiple_of(2) { SPARSE_OFFSET } else { SPARSE_NUMBYTES };
            if key != want || value.contains(&b',') {
                return Err(bad("GNU sparse 0.0 offset and numbytes records out of order"));
            }
            sparse_map.push(value);
        } else {
            records.insert(key.to_vec(), value.to_vec());
        }
        buf = rest;
    }
    if !sparse_map.is_empty() {
        records.insert(SPARSE_MAP.to_vec(), sparse_map.join(&b","[..]));
    }
    Ok(records)
}

pub fn shown_key(key: &[u8]) -> String {
    crate::shown(key)
}

/// Go's `strconv.ParseInt(v, 10, 64)` (an optional sign, then decimal digits).
pub fn parse_int(v: &[u8]) -> Option<i64> {
    let (neg, digits) = match v.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, v),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut x: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        x = x.checked_mul(10)?;
        x = if neg { x.checked_sub(d)? } else { x.checked_add(d)? };
    }
    Some(x)
}

/// A point in time: seconds (any sign, past 2038) and nanoseconds in `0..1e9`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// Go's `parsePAXTime`: `[-]SECONDS[.FRACTION]`, the fraction truncated to nanoseconds.
pub fn parse_time(v: &[u8]) -> Option<Time> {
    let (ss, sn) = match v.iter().position(|&c| c == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &[][..]),
    };
    let secs = parse_int(ss)?;
    if sn.is_empty() {
        return Some(Time { sec: secs, nsec: 0 });
    }
    if !sn.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nsec: u32 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + sn.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    if ss.first() == Some(&b'-') && nsec > 0 {
        // -1.25 is 1.25 s before the epoch: -2 s + 0.75 s.
        return Some(Time { sec: secs.checked_sub(1)?, nsec: 1_000_000_000 - nsec });
    }
    Some(Time { sec: secs, nsec })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, value: &[u8]) -> Vec<u8> {
        let rest = 1 + key.len() + 1 + value.len() + 1;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        let mut out = format!("{len} {key}=").into_bytes();
        out.extend_from_slice(value);
        out.push(b'\n');
        out
    }

    #[test]
    fn values_hold_newlines_and_embedded_records() {
        // A capability whose first byte is 10 (`cap_dac_override,cap_fowner+ep`).
        let cap =
            b"\x0a\x00\x00\x02\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        let evil = b"x\n30 linkpath=/etc/shadow-ish\ny";
        let mut buf = rec("SCHILY.xattr.security.capability", cap);
        buf.extend(rec("path", b"a\nb"));
        buf.extend(rec("comment", evil));
        let r = parse(&buf).expect("parse");
        assert_eq!(r[&b"SCHILY.xattr.security.capability"[..]], cap);
        assert_eq!(r[PATH], b"a\nb");
        assert_eq!(r[&b"comment"[..]], evil);
        assert!(!r.contains_key(LINKPATH), "an embedded record is part of the value");
    }

    #[test]
    fn malformed_records_are_refused() {
        let bad: &[&[u8]] = &[
            b"4 a=\n",
            b"10 path=a\n\n",
            b"x path=a\n",
            b"+9 path=a\n",
            b"9 path=ab",
            b"8 path\n\n",
            b"7 =abc\n",
            b"12 path=a\0b\n",
            b"12 k\0y=abc\n",
            b"11 path=ab\n\0\0\0",
            b"99999999999999999999999 path=a\n",
            b"2 ",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "{:?} accepted", String::from_utf8_lossy(b));
        }
        assert!(parse(b"").expect("empty").is_empty());
    }

    #[test]
    fn last_value_wins_and_sparse_00_is_folded() {
        let mut buf = rec("uid", b"1");
        buf.extend(rec("uid", b"2"));
        buf.extend(rec("GNU.sparse.offset", b"0"));
        buf.extend(rec("GNU.sparse.numbytes", b"5"));
        buf.extend(rec("GNU.sparse.offset", b"100"));
        buf.extend(rec("GNU.sparse.numbytes", b"7"));
        let r = parse(&buf).expect("parse");
        assert_eq!(r[UID], b"2");
        assert_eq!(r[SPARSE_MAP], b"0,5,100,7");
        let mut out_of_order = rec("GNU.sparse.numbytes", b"5");
        out_of_order.extend(rec("GNU.sparse.offset", b"0"));
        assert!(parse(&out_of_order).is_err());
    }

    #[test]
    fn times_as_go_parses_them() {
        let cases: &[(&str, Option<(i64, u32)>)] = &[
            ("1700000000", Some((1700000000, 0))),
            ("1700000000.123456789", Some((1700000000, 123456789))),
            ("1700000000.5", Some((1700000000, 500000000))),
            ("1700000000.1234567891234", Some((1700000000, 123456789))),
            ("1.", Some((1, 0))),
            ("+3", Some((3, 0))),
            ("-1.25", Some((-2, 750000000))),
            ("-0.5", Some((-1, 500000000))),
            ("-5", Some((-5, 0))),
            ("", None),
            (".5", None),
            ("abc", None),
            ("1.2.3", None),
            ("1e9", None),
            ("1.-5", None),
        ];
        for (s, want) in cases {
            let got = parse_time(s.as_bytes()).map(|t| (t.sec, t.nsec));
            assert_eq!(got, *want, "parse_time({s:?})");
        }
    }
}
