//! `rootbox-tar`: reads a tar stream the way Go's `archive/tar` reads it (what docker and
//! containerd apply), and refuses whatever Go and GNU tar would read differently.
//!
//! It owns tar framing only: header blocks (v7, ustar, star, GNU; octal and base-256
//! numbers; ustar prefixes), PAX extended headers parsed by their length prefix (so values may
//! hold newlines), PAX global headers (reported, never applied: Go does not apply them), GNU
//! long names and links, and every sparse format (old GNU, PAX 0.0, 0.1 and 1.0), exposing
//! the sparse map so a writer can seek over holes instead of reading zeros. It never touches a
//! filesystem and never interprets names; it never allocates more than a bounded extension
//! header (1 MiB, as Go) or a bounded sparse map, and it never guesses: a stream the two
//! references disagree on is an error naming the byte offset, the entry and why.

mod error;
mod header;
pub mod pax;
mod sparse;

use std::io::{self, Read, Seek, SeekFrom};

pub use error::{Error, Why};
pub use header::{Format, BLOCK};
pub use pax::{Records, Time};
pub use sparse::Segment;

/// Bounds on what one entry's metadata may make the reader hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest PAX extended header or GNU long name/link read into memory (Go: 1 MiB).
    pub max_meta: usize,
    /// Most data segments in one sparse map.
    pub max_sparse_segments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_meta: 1 << 20, max_sparse_segments: 1 << 20 }
    }
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `'0'`, `'\0'` (v7) and `'7'` (contiguous): data follows.
    Regular,
    /// `'1'`: a hard link to `link`.
    Link,
    /// `'2'`: a symbolic link to `link`.
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    /// Any other type flag (GNU dumpdir, volume labels...): data follows, meaning unknown.
    Other(u8),
}

impl Kind {
    fn of(typeflag: u8) -> Kind {
        match typeflag {
            b'0' | 0 | b'7' | b'S' => Kind::Regular,
            b'1' => Kind::Link,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            other => Kind::Other(other),
        }
    }

    /// Go's `isHeaderOnlyType`: no data follows, whatever the size field says.
    fn header_only(self) -> bool {
        matches!(
            self,
            Kind::Link | Kind::Symlink | Kind::Char | Kind::Block | Kind::Dir | Kind::Fifo
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Regular => "regular file",
            Kind::Link => "hard link",
            Kind::Symlink => "symlink",
            Kind::Char => "character device",
            Kind::Block => "block device",
            Kind::Dir => "directory",
            Kind::Fifo => "fifo",
            Kind::Other(_) => "unknown entry type",
        }
    }
}

/// One archive member with every extension header applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Byte offset of the entry's first header (its extension headers included).
    pub offset: u64,
    pub typeflag: u8,
    pub kind: Kind,
    pub name: Vec<u8>,
    /// Link target (hard or symbolic); empty otherwise.
    pub link: Vec<u8>,
    /// The mode field as stored (permission, set-id and sticky bits, and whatever else).
    pub mode: i64,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    /// The logical size: for a sparse file, holes included. 0 for header-only kinds.
    pub size: u64,
    /// Device numbers as stored; a reader of this crate decides what it can represent.
    pub dev_major: i64,
    pub dev_minor: i64,
    /// `SCHILY.xattr.NAME` records: name (without the prefix) and value bytes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Every PAX record of the entry's extended header.
    pub pax: Records,
    /// For a sparse file, the data segments; the entry's data is their bytes, packed.
    pub sparse: Option<Vec<Segment>>,
    pub format: Format,
}

impl Entry {
    /// Bytes of data that follow in the archive (for a sparse file: the packed segments).
    pub fn data_len(&self) -> u64 {
        match &self.sparse {
            Some(map) => sparse::data_len(map),
            None => self.size,
        }
    }
}

/// A PAX global header: records Go's archive/tar reports but never applies to later
/// entries (GNU tar and Python's tarfile apply them; docker and containerd ignore them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Global {
    pub offset: u64,
    pub records: Records,
}

/// What [`Archive::next_member`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Member {
    Entry(Entry),
    Global(Global),
}

/// A streaming reader over one tar archive.
pub struct Archive<R> {
    r: R,
    limits: Limits,
    /// Bytes consumed from `r`.
    pos: u64,
    /// Data bytes of the current entry not yet read.
    left: u64,
    /// Padding after the current entry's data.
    pad: u64,
    state: State,
    /// Skips data by seeking (see [`Archive::seekable`]).
    seek: Option<fn(&mut R, u64) -> io::Result<()>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Done,
    Failed,
}

/// Meta headers seen for the entry being assembled.
#[derive(Default)]
struct Pending {
    offset: Option<u64>,
    pax: Option<Records>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pax.is_none() && self.long_name.is_none() && self.long_link.is_none()
    }

    fn what(&self) -> &'static str {
        if self.pax.is_some() {
            "PAX extended"
        } else {
            "GNU long name"
        }
    }
}

impl<R: Read> Archive<R> {
    pub fn new(r: R) -> Self {
        Self::with_limits(r, Limits::default())
    }

    pub fn with_limits(r: R, limits: Limits) -> Self {
        Archive { r, limits, pos: 0, left: 0, pad: 0, state: State::Reading, seek: None }
    }

    /// Bytes of the stream consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn into_inner(self) -> R {
        self.r
    }

    /// The next member; `Ok(None)` at the end of the archive. Unread data of the previous
    /// entry is skipped. After an error every call fails again.
    pub fn next_member(&mut self) -> Result<Option<Member>, Error> {
        match self.state {
            State::Done => return Ok(None),
            State::Failed => return Err(self.refuse(None, Why::AlreadyRefused)),
            State::Reading => {}
        }
        let r = self.advance();
        match &r {
            Ok(None) => self.state = State::Done,
            Err(_) => self.state = State::Failed,
            Ok(Some(_)) => {}
        }
        r
    }

    fn refuse(&self, name: Option<&[u8]>, why: Why) -> Error {
        Error::Refused { at: self.pos, name: name.map(<[u8]>::to_vec), why }
    }

    fn advance(&mut self) -> Result<Option<Member>, Error> {
        // The rest of the previous entry: its data must be there, its padding may be cut
        // short by the end of the stream (as Go reads it).
        let left = self.left;
        if self.skip(left)? < left {
            return Err(self.refuse(None, Why::Truncated("an entry's data")));
        }
        self.left = 0;
        let pad = std::mem::take(&mut self.pad);
        if self.skip(pad)? < pad {
            return Ok(None);
        }

        let mut pending = Pending::default();
        loop {
            let at = self.pos;
            let mut block = [0u8; BLOCK];
            match self.read_block(&mut block)? {
                0 if pending.is_empty() => return Ok(None),
                0 => return Err(self.refuse(None, Why::Dangling(pending.what()))),
                BLOCK => {}
                _ => return Err(self.refuse(None, Why::Truncated("a header block"))),
            }
            if header::is_zero(&block) {
                return self.end_of_archive(&pending);
            }
            let f = header::fields(&block).map_err(|why| Error::Refused { at, name: None, why })?;
            let refuse = |why| Error::Refused { at, name: Some(f.name.clone()), why };
            if f.size < 0 {
                return Err(refuse(Why::NegativeSize(f.size)));
            }
            let kind = Kind::of(f.typeflag);
            if f.typeflag == b'X' {
                return Err(refuse(Why::SolarisHeader));
            }
            match f.typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    pending.offset.get_or_insert(at);
                    let what = match f.typeflag {
                        b'x' => "PAX extended header",
                        b'g' => "PAX global header",
                        b'L' => "GNU long name",
                        _ => "GNU long link name",
                    };
                    let body = self.read_meta(&f, what).map_err(|e| match e {
                        Error::Refused { why, .. } => refuse(why),
                        other => other,
                    })?;
                    match f.typeflag {
                        b'x' => {
                            if pending.pax.is_some() {
                                return Err(refuse(Why::Duplicate("PAX extended")));
                            }
                            pending.pax = Some(pax::parse(&body).map_err(refuse)?);
                        }
                        b'g' => {
                            if !pending.is_empty() {
                                return Err(refuse(Why::GlobalAfterMeta));
                            }
                            let records = pax::parse(&body).map_err(refuse)?;
                            return Ok(Some(Member::Global(Global { offset: at, records })));
                        }
                        flag => {
                            // GNU tar and Go write the NUL inside the size; without it Python's
                            // tarfile reads on into the padding, the others stop at the size.
                            if !body.contains(&0) {
                                return Err(refuse(Why::LongNameUnterminated));
                            }
                            let name = header::c_string(&body).to_vec();
                            let (slot, what) = if flag == b'L' {
                                (&mut pending.long_name, "name")
                            } else {
                                (&mut pending.long_link, "link name")
                            };
                            if slot.is_some() {
                                return Err(refuse(Why::Duplicate("GNU long name")));
                            }
                            if name.is_empty() {
                                return Err(refuse(Why::EmptyLongName(what)));
                            }
                            *slot = Some(name);
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let offset = pending.offset.unwrap_or(at);
            return self
                .entry(f, kind, &block, pending, offset, at)
                .map(|e| Some(Member::Entry(e)));
        }
    }

    /// A zero block: a second one (or the end of the stream) ends the archive.
    fn end_of_archive(&mut self, pending: &Pending) -> Result<Option<Member>, Error> {
        if !pending.is_empty() {
            return Err(self.refuse(None, Why::Dangling(pending.what())));
        }
        let mut block = [0u8; BLOCK];
        match self.read_block(&mut block)? {
            0 => Ok(None),
            BLOCK if header::is_zero(&block) => Ok(None),
            BLOCK => Err(self.refuse(None, Why::LoneZeroBlock)),
            _ => Err(self.refuse(None, Why::Truncated("the end-of-archive blocks"))),
        }
    }

    /// Assembles a real entry from its header and the meta headers before it.
    fn entry(
        &mut self,
        f: header::Fields,
        kind: Kind,
        block: &[u8; BLOCK],
        pending: Pending,
        offset: u64,
        at: u64,
    ) -> Result<Entry, Error> {
        let records = pending.pax.unwrap_or_default();
        let mut name = f.name.clone();
        let mut link = f.link.clone();
        let mut size = f.size;
        let (mut uid, mut gid, mut mtime) = (f.uid, f.gid, Time { sec: f.mtime, nsec: 0 });
        let mut xattrs = Vec::new();
        let shown_name = |n: &[u8]| Some(n.to_vec());
        let refuse = |name: &[u8], why| Error::Refused { at, name: shown_name(name), why };
        // Go's mergePAX; an empty value is refused where the readers disagree on it.
        for (key, value) in &records {
            let bad = |why| Why::PaxValue { key: pax::shown_key(key), why };
            if value.is_empty() {
                if [pax::PATH, pax::LINKPATH, pax::UID, pax::GID, pax::SIZE, pax::MTIME]
                    .contains(&key.as_slice())
                {
                    return Err(refuse(
                        &name,
                        bad("an empty value (Go keeps the header's value, GNU tar and \
                             Python's tarfile clear it)"),
                    ));
                }
                continue;
            }
            let int = |v: &[u8]| pax::parse_int(v).ok_or_else(|| bad("not a decimal number"));
            match key.as_slice() {
                pax::PATH => name = value.clone(),
                pax::LINKPATH => link = value.clone(),
                pax::UID => uid = int(value).map_err(|w| refuse(&name, w))?,
                pax::GID => gid = int(value).map_err(|w| refuse(&name, w))?,
                pax::SIZE => size = int(value).map_err(|w| refuse(&name, w))?,
                pax::MTIME => {
                    mtime = pax::parse_time(value)
                        .ok_or_else(|| refuse(&name, bad("not a PAX time")))?;
                }
                pax::ATIME | pax::CTIME => {
                    pax::parse_time(value).ok_or_else(|| refuse(&name, bad("not a PAX time")))?;
                }
                k => {
                    if let Some(x) = k.strip_prefix(pax::SCHILY_XATTR) {
                        xattrs.push((x.to_vec(), value.clone()));
                    }
                }
            }
        }
        // An empty xattr value is still an xattr (GNU tar and moby set it; Go's own Xattrs
        // map skips it, its PAXRecords keep it).
        for (key, value) in &records {
            if let (Some(x), true) = (key.strip_prefix(pax::SCHILY_XATTR), value.is_empty()) {
                xattrs.push((x.to_vec(), Vec::new()));
            }
        }
        xattrs.sort();
        // GNU long names: Go lets them override PAX path/linkpath, GNU tar the reverse.
        for (long, pax_key, field, what) in [
            (&pending.long_name, pax::PATH, &mut name, "a GNU long name and a PAX path"),
            (&pending.long_link, pax::LINKPATH, &mut link, "a GNU long link and a PAX linkpath"),
        ] {
            if let Some(long) = long {
                if records.get(pax_key).is_some_and(|v| !v.is_empty() && v != long) {
                    return Err(refuse(long, Why::Conflict(what)));
                }
                *field = long.clone();
            }
        }
        let mut kind = kind;
        if name.ends_with(b"/") {
            let from_header = name == f.name;
            match f.typeflag {
                // Python's tarfile decides on the header's own name field, before long names
                // and PAX paths; Go and GNU tar on the final name.
                0 if !from_header => return Err(refuse(&name, Why::LongNameSlash)),
                0 => kind = Kind::Dir,
                b'0' | b'7' => return Err(refuse(&name, Why::TrailingSlash)),
                _ => {}
            }
        }
        if size < 0 {
            return Err(refuse(&name, Why::NegativeSize(size)));
        }
        let uid = u32::try_from(uid)
            .map_err(|_| refuse(&name, Why::Range { field: "uid", value: uid }))?;
        let gid = u32::try_from(gid)
            .map_err(|_| refuse(&name, Why::Range { field: "gid", value: gid }))?;
        if f.mode < 0 {
            return Err(refuse(&name, Why::Range { field: "mode", value: f.mode }));
        }
        if kind.header_only() {
            // GNU tar reads data after symlink, device and fifo headers whose size is set
            // (it ignores the size of hard links and directories); Go never does.
            if size != 0 && !matches!(kind, Kind::Link | Kind::Dir) {
                return Err(refuse(&name, Why::HeaderOnlyData { kind: kind.name(), size }));
            }
            size = 0;
        }
        // The data that follows: the (PAX-overridden) size, before sparse maps change it.
        self.left = size as u64;
        self.pad = pad_of(size as u64);

        let mut sparse = None;
        if f.typeflag == b'S' {
            if f.format != Format::Gnu {
                return Err(refuse(&name, Why::OldSparseNotGnu));
            }
            let real = header::agreed_numeric(&block[483..495])
                .ok_or_else(|| refuse(&name, Why::Field("realsize")))?;
            let map = self.old_gnu_map(block).map_err(|why| refuse(&name, why))?;
            size = real;
            sparse = Some(map);
        } else if let Some(version) = sparse::pax_version(&records).map_err(|w| refuse(&name, w))? {
            if kind.header_only() {
                return Err(refuse(&name, Why::Sparse("a sparse map on a header-only entry")));
            }
            let sparse_name = records.get(pax::SPARSE_NAME).filter(|v| !v.is_empty());
            if let Some(n) = sparse_name {
                if pending.long_name.as_ref().is_some_and(|l| l != n)
                    || records.get(pax::PATH).is_some_and(|p| !p.is_empty() && p != n)
                {
                    return Err(refuse(n, Why::Conflict("GNU.sparse.name and the entry's path")));
                }
                name = n.clone();
            }
            let sizes = [pax::SPARSE_SIZE, pax::SPARSE_REALSIZE]
                .map(|k| records.get(k).filter(|v| !v.is_empty()));
            if let [Some(a), Some(b)] = sizes {
                if a != b {
                    return Err(refuse(
                        &name,
                        Why::Conflict("GNU.sparse.size and GNU.sparse.realsize"),
                    ));
                }
            }
            if let Some(v) = sizes[0].or(sizes[1]) {
                size = pax::parse_int(v).ok_or_else(|| {
                    refuse(
                        &name,
                        Why::PaxValue { key: "GNU.sparse.size".into(), why: "not a number" },
                    )
                })?;
            }
            let max = self.limits.max_sparse_segments;
            let map = match version {
                sparse::PaxVersion::InRecords => {
                    sparse::from_records(&records, max).map_err(|w| refuse(&name, w))?
                }
                sparse::PaxVersion::InData => {
                    let available = self.left;
                    let mut data =
                        DataReader { r: &mut self.r, left: &mut self.left, pos: &mut self.pos };
                    let (map, _used) = sparse::from_data(&mut data, available, max)
                        .map_err(|w| Error::Refused { at, name: Some(name.clone()), why: w })?;
                    map
                }
            };
            sparse = Some(map);
        }
        if size < 0 {
            return Err(refuse(&name, Why::NegativeSize(size)));
        }
        if let Some(map) = &sparse {
            sparse::validate(map, size as u64).map_err(|w| refuse(&name, w))?;
            let map_len = sparse::data_len(map);
            if map_len != self.left {
                return Err(refuse(&name, Why::SparseData { map: map_len, data: self.left }));
            }
        }
        Ok(Entry {
            offset,
            typeflag: f.typeflag,
            kind,
            name,
            link,
            mode: f.mode,
            uid,
            gid,
            mtime,
            size: size as u64,
            dev_major: f.dev_major,
            dev_minor: f.dev_minor,
            xattrs,
            pax: records,
            sparse,
            format: f.format,
        })
    }

    /// The old GNU map: four entries in the header, then 21 per extension block.
    fn old_gnu_map(&mut self, block: &[u8; BLOCK]) -> Result<Vec<Segment>, Why> {
        let max = self.limits.max_sparse_segments;
        let mut map = Vec::new();
        let add = |entries: &[u8], map: &mut Vec<Segment>, extension: bool| -> Result<(), Why> {
            for (i, e) in entries.chunks_exact(24).enumerate() {
                let Some((offset, len)) = header::gnu_sparse_entry(e)? else {
                    // Go and GNU tar stop here; Python's tarfile reads on (and fails, or
                    // takes more segments) unless the rest is empty.
                    if entries[i * 24..].iter().any(|&b| b != 0) {
                        return Err(Why::Sparse("bytes after the end of an old-GNU map"));
                    }
                    break;
                };
                if offset < 0 || len < 0 {
                    return Err(Why::Sparse("a negative offset or length"));
                }
                if extension && offset == 0 && len > 0 {
                    // Go and GNU tar keep it, Python's tarfile skips extension entries at 0.
                    return Err(Why::Sparse("data at offset 0 in an extension block"));
                }
                if map.len() == max {
                    return Err(Why::SparseTooMany(max));
                }
                map.push(Segment { offset: offset as u64, len: len as u64 });
            }
            Ok(())
        };
        add(&block[386..482], &mut map, false)?;
        let mut extended = block[482] != 0;
        while extended {
            let mut ext = [0u8; BLOCK];
            if self.read_block(&mut ext).map_err(|_| Why::Truncated("a sparse map"))? != BLOCK {
                return Err(Why::Truncated("a sparse extension block"));
            }
            add(&ext[..504], &mut map, true)?;
            extended = ext[504] != 0;
        }
        Ok(map)
    }

    /// Reads a meta header's data (bounded) and its padding.
    fn read_meta(&mut self, f: &header::Fields, what: &'static str) -> Result<Vec<u8>, Error> {
        if f.size as u64 > self.limits.max_meta as u64 {
            return Err(self.refuse(
                None,
                Why::MetaTooLarge { what, size: f.size, max: self.limits.max_meta },
            ));
        }
        let mut body = vec![0u8; f.size as usize];
        let n = self.read_full(&mut body)?;
        if n < body.len() {
            return Err(self.refuse(None, Why::Truncated(what)));
        }
        // Python's tarfile parses records over the whole padded block, Go only the size:
        // the padding must hold nothing to read.
        let mut pad = vec![0u8; pad_of(f.size as u64) as usize];
        if self.read_full(&mut pad)? < pad.len() {
            return Err(self.refuse(None, Why::Truncated(what)));
        }
        if pad.iter().any(|&b| b != 0) {
            return Err(self.refuse(None, Why::MetaPadding(what)));
        }
        Ok(body)
    }

    /// Reads the current entry's data (the packed segments of a sparse file).
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        DataReader { r: &mut self.r, left: &mut self.left, pos: &mut self.pos }.read(buf)
    }

    /// The current entry's data as a reader.
    pub fn data(&mut self) -> impl Read + '_ {
        DataReader { r: &mut self.r, left: &mut self.left, pos: &mut self.pos }
    }

    /// Data bytes of the current entry not yet read.
    pub fn data_left(&self) -> u64 {
        self.left
    }

    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<usize, Error> {
        self.read_full(block)
    }

    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Io(e)),
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    /// Discards up to `n` bytes; returns how many there were (when seeking: `n`; a stream
    /// cut short then shows as a truncated header or as a member past the end of the file).
    fn skip(&mut self, n: u64) -> Result<u64, Error> {
        if let Some(seek) = self.seek {
            seek(&mut self.r, n).map_err(Error::Io)?;
            self.pos += n;
            return Ok(n);
        }
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink()).map_err(Error::Io)?;
        self.pos += copied;
        Ok(copied)
    }
}

impl<R: Read + Seek> Archive<R> {
    /// A reader that seeks over the data it is not asked for (listing a large archive
    /// without reading its members). Positions are relative to where `r` stands.
    pub fn seekable(r: R) -> Self {
        fn seek<R: Seek>(r: &mut R, n: u64) -> io::Result<()> {
            let n = i64::try_from(n).map_err(|_| io::Error::other("a seek past 2^63 bytes"))?;
            r.seek(SeekFrom::Current(n)).map(drop)
        }
        Archive { seek: Some(seek::<R>), ..Self::new(r) }
    }
}

/// Reads at most `left` bytes of the current entry; a stream that ends early is an error.
struct DataReader<'a, R> {
    r: &'a mut R,
    left: &'a mut u64,
    pos: &'a mut u64,
}

impl<R: Read> Read for DataReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if *self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(*self.left).unwrap_or(usize::MAX));
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the tar stream ends {} bytes before the entry's data does", self.left),
            ));
        }
        *self.left -= n as u64;
        *self.pos += n as u64;
        Ok(n)
    }
}

fn pad_of(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// An untrusted name as it may be printed: invalid UTF-8 replaced, control characters
/// escaped, and names over 200 bytes shortened to their first and last bytes with the full
/// length.
pub fn shown(name: &[u8]) -> String {
    const KEEP: usize = 96;
    let escape = |b: &[u8]| -> String {
        String::from_utf8_lossy(b).chars().flat_map(char::escape_debug).collect::<String>()
    };
    if name.len() <= 2 * KEEP + 8 {
        return format!("\"{}\"", escape(name));
    }
    format!(
        "\"{}…{}\" ({} bytes)",
        escape(&name[..KEEP]),
        escape(&name[name.len() - KEEP..]),
        name.len()
    )
}
