//! Why a tar stream is refused: where (byte offset, entry name when known) and why.

use std::fmt;

/// A refusal, or an I/O failure of the underlying reader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the tar stream")]
    Io(#[source] std::io::Error),
    /// The stream cannot be read the way Go's archive/tar and GNU tar both read it.
    #[error("tar header at byte {at}{}: {why}", named(.name))]
    Refused { at: u64, name: Option<Vec<u8>>, why: Why },
}

impl Error {
    /// The entry name the refusal is about, when the header got that far.
    pub fn name(&self) -> Option<&[u8]> {
        match self {
            Error::Refused { name, .. } => name.as_deref(),
            Error::Io(_) => None,
        }
    }
}

fn named(name: &Option<Vec<u8>>) -> String {
    match name {
        Some(n) => format!(" ({})", crate::shown(n)),
        None => String::new(),
    }
}

/// What is wrong with a header, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    Checksum {
        stored: String,
        unsigned: i64,
        signed: i64,
    },
    /// A numeric field that is neither octal nor base-256 (or overflows).
    Field(&'static str),
    GnuTimes(&'static str),
    PrefixArea(&'static str),
    V7Device,
    SolarisHeader,
    PrefixSlash,
    LongNameUnterminated,
    LongNameSlash,
    MetaPadding(&'static str),
    Truncated(&'static str),
    LoneZeroBlock,
    NegativeSize(i64),
    MetaTooLarge {
        what: &'static str,
        size: i64,
        max: usize,
    },
    PaxRecord {
        index: usize,
        why: &'static str,
    },
    PaxValue {
        key: String,
        why: &'static str,
    },
    Duplicate(&'static str),
    Dangling(&'static str),
    GlobalAfterMeta,
    Conflict(&'static str),
    EmptyLongName(&'static str),
    HeaderOnlyData {
        kind: &'static str,
        size: i64,
    },
    TrailingSlash,
    Range {
        field: &'static str,
        value: i64,
    },
    OldSparseNotGnu,
    SparseVersion(String),
    Sparse(&'static str),
    SparseTooMany(usize),
    SparseData {
        map: u64,
        data: u64,
    },
    /// A call after the archive was refused.
    AlreadyRefused,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Checksum { stored, unsigned, signed } => write!(
                f,
                "bad header checksum (stored {stored:?}, computed {unsigned:o} or {signed:o})"
            ),
            Why::Field(field) => write!(f, "the {field} field is neither octal nor base-256"),
            Why::GnuTimes(field) => write!(
                f,
                "a GNU header whose {field} field does not parse (Go's archive/tar then reads \
                 it as a name prefix, GNU tar does not)"
            ),
            Why::PrefixArea(which) => write!(
                f,
                "{which} header with bytes where ustar keeps its name prefix (Python's tarfile \
                 reads them as one, Go and GNU tar do not)"
            ),
            Why::V7Device => f.write_str(
                "a device in a v7 header, which has no device number fields (Go reads none, \
                 Python's tarfile reads the bytes where ustar keeps them)",
            ),
            Why::SolarisHeader => f.write_str(
                "a Solaris extended header ('X'): GNU tar and Python's tarfile apply it to the \
                 next entry like a PAX header, Go's archive/tar reads it as an entry",
            ),
            Why::PrefixSlash => f.write_str(
                "a ustar prefix with an empty name field (readers disagree on whether it \
                 names a directory)",
            ),
            Why::LongNameUnterminated => f.write_str(
                "a GNU long name without its NUL inside the declared size (Python's tarfile \
                 reads on into the padding, Go and GNU tar stop at the size)",
            ),
            Why::MetaPadding(what) => write!(
                f,
                "bytes in the padding after a {what} (Python's tarfile reads them as more \
                 records, Go and GNU tar stop at the size)"
            ),
            Why::LongNameSlash => f.write_str(
                "a v7 file header whose long name or PAX path ends in '/' (Go and GNU tar make \
                 it a directory, Python's tarfile a file)",
            ),
            Why::Truncated(what) => write!(f, "the stream ends inside {what}"),
            Why::LoneZeroBlock => f.write_str(
                "a zero block followed by more data (Go's archive/tar refuses it, GNU tar stops \
                 reading there)",
            ),
            Why::NegativeSize(n) => write!(f, "a negative size ({n})"),
            Why::MetaTooLarge { what, size, max } => {
                write!(f, "a {what} of {size} bytes (at most {max} are read, as Go does)")
            }
            Why::PaxRecord { index, why } => write!(f, "PAX record {index}: {why}"),
            Why::PaxValue { key, why } => write!(f, "PAX record {key:?}: {why}"),
            Why::Duplicate(what) => {
                write!(f, "two {what} headers for one entry (Go's archive/tar keeps only the last)")
            }
            Why::Dangling(what) => {
                write!(f, "the archive ends after a {what} header, with no entry for it")
            }
            Why::GlobalAfterMeta => f.write_str(
                "a PAX global header between an extended header and its entry (Go's \
                 archive/tar drops the extended header there, GNU tar keeps it)",
            ),
            Why::Conflict(what) => {
                write!(f, "{what} disagree (Go's archive/tar and GNU tar apply different ones)")
            }
            Why::EmptyLongName(what) => write!(
                f,
                "an empty GNU long {what} (Go's archive/tar ignores it, GNU tar applies it)"
            ),
            Why::HeaderOnlyData { kind, size } => write!(
                f,
                "a {kind} header that declares {size} bytes of data (GNU tar reads them as data, \
                 Go's archive/tar does not)"
            ),
            Why::TrailingSlash => f.write_str(
                "a regular-file header whose name ends in '/' (GNU tar makes it a directory, \
                 Go's archive/tar a file)",
            ),
            Why::Range { field, value } => write!(f, "{field} {value} is out of range"),
            Why::OldSparseNotGnu => {
                f.write_str("an old-GNU sparse entry ('S') in a header that is not GNU format")
            }
            Why::SparseVersion(v) => write!(f, "an unknown GNU sparse format version {v}"),
            Why::Sparse(why) => write!(f, "sparse map: {why}"),
            Why::SparseTooMany(max) => write!(f, "sparse map: more than {max} data segments"),
            Why::AlreadyRefused => f.write_str("the archive was already refused"),
            Why::SparseData { map, data } => write!(
                f,
                "sparse map: the map describes {map} bytes of data but the entry holds {data}"
            ),
        }
    }
}
