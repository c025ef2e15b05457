//! Entry metadata as the image will hold it: mode, owner, time and xattrs from the tar entry,
//! with what ext4 cannot hold clamped or dropped, and every such change reported.

use rootbox_proto::{Limits, SanitisedKind};
pub use rootbox_tar::Time;

use super::name::ImagePath;
use super::report::Report;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    /// Name and value; `trusted.*` already dropped.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("refusing xattr {name}: value of {len} bytes exceeds {max}")]
    XattrValue { name: String, len: usize, max: u32 },
    #[error("refusing xattrs totalling {len} bytes (limit {max})")]
    XattrTotal { len: usize, max: u32 },
}

/// ext4 with 256-byte inodes stores seconds from -2^31 (1901-12-13) to 2^34 - 1 - 2^31
/// (2446-05-10); the kernel clamps anything outside, and drops the nanoseconds at either end.
pub const TIME_MIN: i64 = i32::MIN as i64;
pub const TIME_MAX: i64 = (1 << 34) - 1 + i32::MIN as i64;

/// The time ext4 will store for `t`.
pub fn stored_time(t: Time) -> Time {
    let sec = t.sec.clamp(TIME_MIN, TIME_MAX);
    let nsec = if sec == TIME_MIN || sec == TIME_MAX { 0 } else { t.nsec };
    Time { sec, nsec }
}

/// PAX records whose meaning rootbox applies (or that carry nothing an image keeps: atime
/// and ctime, which GNU tar writes for every entry, owner names, comments, charsets, and
/// star's inode bookkeeping). Anything else is reported as not applied.
fn pax_understood(key: &[u8]) -> bool {
    const KEYS: &[&[u8]] = &[
        b"path",
        b"linkpath",
        b"size",
        b"uid",
        b"gid",
        b"mtime",
        b"atime",
        b"ctime",
        b"uname",
        b"gname",
        b"comment",
        b"charset",
        b"hdrcharset",
        b"SCHILY.dev",
        b"SCHILY.ino",
        b"SCHILY.nlink",
        b"SCHILY.filetype",
    ];
    KEYS.contains(&key) || key.starts_with(b"SCHILY.xattr.") || key.starts_with(b"GNU.sparse.")
}

fn time_text(t: Time) -> String {
    if t.nsec == 0 {
        t.sec.to_string()
    } else {
        format!("{}.{:09}", t.sec, t.nsec)
    }
}

/// The metadata `entry` asks for, checked against `limits`; changes are put in `report`.
pub fn of_entry(
    entry: &rootbox_tar::Entry,
    limits: &Limits,
    path: &ImagePath,
    report: &mut Report,
) -> Result<Meta, MetaError> {
    for key in entry.pax.keys().filter(|k| !pax_understood(k)) {
        report.sanitised(
            Some(path),
            SanitisedKind::PaxRecord,
            format!("PAX record {}", rootbox_tar::shown(key)),
            "rootbox applies path, linkpath, size, uid, gid, mtime, SCHILY.xattr.* and \
             GNU.sparse.* records",
        );
    }
    let mtime = stored_time(entry.mtime);
    if mtime != entry.mtime {
        report.sanitised(
            Some(path),
            SanitisedKind::Time,
            format!("mtime {} stored as {}", time_text(entry.mtime), time_text(mtime)),
            "ext4 stores times from 1901-12-13 to 2446-05-10 (whole seconds at either end)",
        );
    }
    let mut xattrs = Vec::with_capacity(entry.xattrs.len());
    let mut total = 0usize;
    for (name, value) in &entry.xattrs {
        if value.len() > limits.max_xattr_value as usize {
            return Err(MetaError::XattrValue {
                name: rootbox_tar::shown(name),
                len: value.len(),
                max: limits.max_xattr_value,
            });
        }
        total += name.len() + value.len();
        if total > limits.max_xattr_total as usize {
            return Err(MetaError::XattrTotal { len: total, max: limits.max_xattr_total });
        }
        if name.starts_with(b"trusted.") {
            report.sanitised(
                Some(path),
                SanitisedKind::Xattr,
                format!("xattr {}", rootbox_tar::shown(name)),
                "trusted.* xattrs are not carried into images",
            );
            continue;
        }
        xattrs.push((name.clone(), value.clone()));
    }
    Ok(Meta { mode: (entry.mode & 0o7777) as u32, uid: entry.uid, gid: entry.gid, mtime, xattrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> rootbox_tar::Entry {
        rootbox_tar::Entry {
            offset: 0,
            typeflag: b'0',
            kind: rootbox_tar::Kind::Regular,
            name: b"f".to_vec(),
            link: Vec::new(),
            mode: 0o104755,
            uid: 1,
            gid: 2,
            mtime: Time { sec: 1_700_000_000, nsec: 5 },
            size: 0,
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
            pax: Default::default(),
            sparse: None,
            format: rootbox_tar::Format::Ustar,
        }
    }

    fn path() -> ImagePath {
        super::super::name::normalize(b"f", 64).expect("path")
    }

    #[test]
    fn times_outside_ext4_are_clamped_and_reported() {
        let cases = [
            ((1_700_000_000, 5), (1_700_000_000, 5)),
            ((TIME_MAX + 1, 7), (TIME_MAX, 0)),
            ((TIME_MAX, 7), (TIME_MAX, 0)),
            ((TIME_MIN - 10, 0), (TIME_MIN, 0)),
            ((TIME_MIN + 1, 9), (TIME_MIN + 1, 9)),
        ];
        for ((s, n), (ws, wn)) in cases {
            let mut e = entry();
            e.mtime = Time { sec: s, nsec: n };
            let mut r = Report::default();
            let m = of_entry(&e, &Limits::default(), &path(), &mut r).expect("meta");
            assert_eq!((m.mtime.sec, m.mtime.nsec), (ws, wn), "{s}.{n}");
            assert_eq!(r.total(), u64::from((s, n) != (ws, wn)), "{s}.{n}");
        }
    }

    #[test]
    fn trusted_dropped_unknown_pax_reported_bounds_enforced() {
        let mut e = entry();
        e.xattrs = vec![
            (b"security.capability".to_vec(), vec![1, 0, 0, 2]),
            (b"trusted.overlay.opaque".to_vec(), b"y".to_vec()),
        ];
        e.pax.insert(b"LIBARCHIVE.xattr.user.x".to_vec(), b"dg==".to_vec());
        e.pax.insert(b"atime".to_vec(), b"1".to_vec());
        let mut r = Report::default();
        let m = of_entry(&e, &Limits::default(), &path(), &mut r).expect("meta");
        assert_eq!(m.mode, 0o4755);
        assert_eq!(m.xattrs, vec![(b"security.capability".to_vec(), vec![1, 0, 0, 2])]);
        let kinds: Vec<_> = r.records.iter().map(|s| (s.kind, s.what.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (SanitisedKind::PaxRecord, "PAX record \"LIBARCHIVE.xattr.user.x\""),
                (SanitisedKind::Xattr, "xattr \"trusted.overlay.opaque\""),
            ]
        );
        let limits = Limits { max_xattr_value: 3, ..Limits::default() };
        let err = of_entry(&e, &limits, &path(), &mut Report::default());
        assert!(matches!(err, Err(MetaError::XattrValue { len: 4, .. })), "{err:?}");
        let limits = Limits { max_xattr_total: 20, ..Limits::default() };
        let err = of_entry(&e, &limits, &path(), &mut Report::default());
        assert!(matches!(err, Err(MetaError::XattrTotal { .. })), "{err:?}");
    }
}
