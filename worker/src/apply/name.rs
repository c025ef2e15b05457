//! Entry names: how a tar path becomes a path inside the image, and what it means.
//!
//! Pure rules, no I/O: leading `/` and `.` components are dropped (absolute names are
//! re-rooted), `..` is refused, and whiteout names are recognised and validated.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Prefix marking a whiteout entry.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The opaque-directory marker's file name.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of whiteout meta files (aufs); only the opaque marker is meaningful.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("refusing a `..` component")]
    DotDot,
    #[error("refusing a name of {len} bytes (limit {max})")]
    TooLong { len: usize, max: usize },
    #[error("refusing a whiteout with no name")]
    EmptyWhiteout,
    #[error("refusing a whiteout of `.` or `..`")]
    DotWhiteout,
}

/// A normalised path inside the image: relative, no `.`/`..`/empty components.
/// The empty path is the image root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImagePath(PathBuf);

impl ImagePath {
    /// The image root.
    pub fn root() -> ImagePath {
        ImagePath(PathBuf::new())
    }

    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    #[cfg(test)]
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// The parent directory and final name; `None` for the root.
    pub fn split(&self) -> Option<(ImagePath, &OsStr)> {
        let name = self.0.file_name()?;
        let parent = self.0.parent().map(Path::to_path_buf).unwrap_or_default();
        Some((ImagePath(parent), name))
    }

    /// Its names, outermost first (none for the root).
    pub fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0.iter()
    }

    /// Appends one name (no copy of the path, unlike [`ImagePath::join`]).
    pub fn push(&mut self, name: &OsStr) {
        self.0.push(name);
    }

    pub fn join(&self, name: &OsStr) -> ImagePath {
        ImagePath(self.0.join(name))
    }

    /// For `openat2`: the root is `.`.
    pub fn for_open(&self) -> &Path {
        if self.is_root() {
            Path::new(".")
        } else {
            &self.0
        }
    }

    pub fn starts_with(&self, other: &ImagePath) -> bool {
        self.0.starts_with(&other.0)
    }
}

impl std::fmt::Display for ImagePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{}", self.0.display())
    }
}

/// Normalises a raw tar name: drops leading `/`, empty and `.` components, refuses `..`.
pub fn normalize(raw: &[u8], max_len: usize) -> Result<ImagePath, NameError> {
    if raw.len() > max_len {
        return Err(NameError::TooLong { len: raw.len(), max: max_len });
    }
    let mut out = PathBuf::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(NameError::DotDot),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(ImagePath(out))
}

/// What an entry asks for, judged by its name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    /// An ordinary entry at this path.
    Entry(ImagePath),
    /// `DIR/.wh.NAME`: remove lower-layer `DIR/NAME`.
    Whiteout(ImagePath),
    /// `DIR/.wh..wh..opq`: hide lower-layer content of `DIR`.
    Opaque(ImagePath),
    /// `DIR/.wh..wh.OTHER`: aufs metadata with no meaning here; skipped.
    IgnoredMeta(ImagePath),
}

/// Classifies a normalised path by its final component.
pub fn classify(path: ImagePath) -> Result<Meaning, NameError> {
    let Some((dir, name)) = path.split() else {
        return Ok(Meaning::Entry(path));
    };
    let name = name.as_bytes();
    if name == OPAQUE_MARKER {
        return Ok(Meaning::Opaque(dir));
    }
    if name.starts_with(WHITEOUT_META_PREFIX) {
        return Ok(Meaning::IgnoredMeta(path));
    }
    if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        return match target {
            b"" => Err(NameError::EmptyWhiteout),
            b"." | b".." => Err(NameError::DotWhiteout),
            t => Ok(Meaning::Whiteout(dir.join(OsStr::from_bytes(t)))),
        };
    }
    Ok(Meaning::Entry(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Result<ImagePath, NameError> {
        normalize(s.as_bytes(), 4096)
    }

    fn p(s: &str) -> ImagePath {
        ImagePath(PathBuf::from(s))
    }

    #[test]
    fn normalisation_table() {
        let cases: &[(&str, Result<&str, NameError>)] = &[
            ("etc/passwd", Ok("etc/passwd")),
            ("./etc/passwd", Ok("etc/passwd")),
            ("/etc/passwd", Ok("etc/passwd")),
            ("//etc//./passwd/", Ok("etc/passwd")),
            ("./", Ok("")),
            (".", Ok("")),
            ("/", Ok("")),
            ("", Ok("")),
            ("../etc", Err(NameError::DotDot)),
            ("a/../../etc", Err(NameError::DotDot)),
            ("a/..", Err(NameError::DotDot)),
            ("/..", Err(NameError::DotDot)),
            ("a/...", Ok("a/...")),
            ("a/..b", Ok("a/..b")),
        ];
        for (raw, want) in cases {
            let got = n(raw).map(|p| p.as_path().to_path_buf());
            let want = want.clone().map(PathBuf::from);
            assert_eq!(got, want, "normalize({raw:?})");
        }
    }

    #[test]
    fn long_names_refused() {
        let long = "a/".repeat(3000);
        assert!(matches!(n(&long), Err(NameError::TooLong { .. })));
    }

    #[test]
    fn whiteout_table() {
        let cases: &[(&str, Result<Meaning, NameError>)] = &[
            ("etc/.wh.passwd", Ok(Meaning::Whiteout(p("etc/passwd")))),
            (".wh.etc", Ok(Meaning::Whiteout(p("etc")))),
            ("usr/.wh..wh..opq", Ok(Meaning::Opaque(p("usr")))),
            (".wh..wh..opq", Ok(Meaning::Opaque(p("")))),
            ("a/.wh..wh.plnk", Ok(Meaning::IgnoredMeta(p("a/.wh..wh.plnk")))),
            ("a/.wh.", Err(NameError::EmptyWhiteout)),
            ("a/.wh..", Err(NameError::DotWhiteout)),
            ("a/.wh...", Err(NameError::DotWhiteout)),
            ("a/b.wh.c", Ok(Meaning::Entry(p("a/b.wh.c")))),
            ("a/.whx", Ok(Meaning::Entry(p("a/.whx")))),
            ("", Ok(Meaning::Entry(p("")))),
        ];
        for (raw, want) in cases {
            let got = classify(n(raw).unwrap());
            assert_eq!(&got, want, "classify({raw:?})");
        }
    }
}
