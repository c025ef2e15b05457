//! Entry metadata read from the tar header and its PAX records: owner, mode, time, xattrs.

use rootbox_proto::Limits;

/// A point in time with nanoseconds; seconds may be negative or past 2038.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("refusing an unreadable header field ({0})")]
    Header(&'static str),
    #[error("refusing a malformed PAX mtime {0:?}")]
    Mtime(String),
    #[error("refusing xattr {name}: value of {len} bytes exceeds {max}")]
    XattrValue { name: String, len: usize, max: u32 },
    #[error("refusing xattrs totalling {len} bytes (limit {max})")]
    XattrTotal { len: usize, max: u32 },
    #[error("refusing an xattr name that is not UTF-8 or is empty")]
    XattrName,
}

/// Parses a PAX time: `[-]SECONDS[.FRACTION]`, fraction truncated to nanoseconds.
pub fn parse_pax_time(s: &str) -> Result<Time, MetaError> {
    let bad = || MetaError::Mtime(s.to_string());
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let sec: i64 = int.parse().map_err(|_| bad())?;
    let mut nsec: u32 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Ok(Time { sec, nsec });
    }
    // -1.25 is 1.25 s before the epoch: sec -2, nsec 0.75e9.
    if nsec == 0 {
        Ok(Time { sec: -sec, nsec: 0 })
    } else {
        Ok(Time { sec: -sec - 1, nsec: 1_000_000_000 - nsec })
    }
}

/// What the PAX records of one entry contribute.
#[derive(Debug, Default)]
pub struct Pax {
    pub mtime: Option<Time>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Records understood but not applied (for warnings), e.g. LIBARCHIVE.xattr.*.
    pub ignored: Vec<String>,
}

const SCHILY_XATTR: &str = "SCHILY.xattr.";

/// Collects the PAX records rootbox applies, enforcing the xattr bounds.
pub fn parse_pax<'a, I>(records: I, limits: &Limits) -> Result<Pax, MetaError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut pax = Pax::default();
    let mut total = 0usize;
    for (key, value) in records {
        if key == b"mtime" {
            let s = std::str::from_utf8(value).map_err(|_| MetaError::Header("mtime"))?;
            pax.mtime = Some(parse_pax_time(s)?);
        } else if let Some(name) = key.strip_prefix(SCHILY_XATTR.as_bytes()) {
            let name = std::str::from_utf8(name).map_err(|_| MetaError::XattrName)?;
            if name.is_empty() {
                return Err(MetaError::XattrName);
            }
            if value.len() > limits.max_xattr_value as usize {
                return Err(MetaError::XattrValue {
                    name: name.to_string(),
                    len: value.len(),
                    max: limits.max_xattr_value,
                });
            }
            total += name.len() + value.len();
            if total > limits.max_xattr_total as usize {
                return Err(MetaError::XattrTotal { len: total, max: limits.max_xattr_total });
            }
            pax.xattrs.push((name.to_string(), value.to_vec()));
        } else if key.starts_with(b"LIBARCHIVE.xattr.") {
            pax.ignored.push(String::from_utf8_lossy(key).into_owned());
        }
    }
    Ok(pax)
}

/// Builds the entry's metadata from its header and PAX records.
pub fn read_meta(header: &tar::Header, pax: Pax) -> Result<Meta, MetaError> {
    let mode = header.mode().map_err(|_| MetaError::Header("mode"))? & 0o7777;
    let uid = header.uid().map_err(|_| MetaError::Header("uid"))?;
    let gid = header.gid().map_err(|_| MetaError::Header("gid"))?;
    let uid = u32::try_from(uid).map_err(|_| MetaError::Header("uid"))?;
    let gid = u32::try_from(gid).map_err(|_| MetaError::Header("gid"))?;
    let mtime = match pax.mtime {
        Some(t) => t,
        None => {
            let m = header.mtime().map_err(|_| MetaError::Header("mtime"))?;
            Time { sec: i64::try_from(m).map_err(|_| MetaError::Header("mtime"))?, nsec: 0 }
        }
    };
    Ok(Meta { mode, uid, gid, mtime, xattrs: pax.xattrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_time_table() {
        let cases: &[(&str, Option<(i64, u32)>)] = &[
            ("1700000000", Some((1700000000, 0))),
            ("1700000000.123456789", Some((1700000000, 123456789))),
            ("1700000000.5", Some((1700000000, 500000000))),
            ("1700000000.1234567891234", Some((1700000000, 123456789))),
            ("4102444800.000000001", Some((4102444800, 1))),
            ("-1.25", Some((-2, 750000000))),
            ("-5", Some((-5, 0))),
            ("", None),
            ("abc", None),
            ("1.2.3", None),
            ("1e9", None),
        ];
        for (s, want) in cases {
            let got = parse_pax_time(s).ok().map(|t| (t.sec, t.nsec));
            assert_eq!(got, *want, "parse_pax_time({s:?})");
        }
    }

    #[test]
    fn xattr_bounds() {
        let limits = Limits { max_xattr_value: 4, max_xattr_total: 20, ..Limits::default() };
        let ok = parse_pax(
            [
                (&b"SCHILY.xattr.user.a"[..], &b"1234"[..]),
                (&b"SCHILY.xattr.security.capability"[..], &b"\x01\x00"[..]),
            ],
            &limits,
        );
        assert!(ok.is_err(), "total of 6+4 + 19+2 bytes must exceed 20");
        let big = parse_pax([(&b"SCHILY.xattr.user.a"[..], &b"12345"[..])], &limits);
        assert!(matches!(big, Err(MetaError::XattrValue { .. })));
        let fine = parse_pax([(&b"SCHILY.xattr.user.a"[..], &b"12"[..])], &limits).unwrap();
        assert_eq!(fine.xattrs, vec![("user.a".to_string(), b"12".to_vec())]);
        let empty = parse_pax([(&b"SCHILY.xattr."[..], &b"1"[..])], &limits);
        assert_eq!(empty.err(), Some(MetaError::XattrName));
    }
}
