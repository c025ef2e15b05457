//! The description of a root filesystem both sides of a comparison produce: the model's
//! expectation and the snapshot of a mounted ext4. `diff` lists every field that differs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// What kind of inode a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

/// A modification time with nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mtime {
    pub sec: i64,
    pub nsec: u32,
}

impl Mtime {
    pub const fn new(sec: i64, nsec: u32) -> Self {
        Mtime { sec, nsec }
    }

    /// Parses a PAX time value: `SECONDS[.FRACTION]`, possibly negative.
    pub fn parse_pax(s: &str) -> Option<Mtime> {
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, f),
            None => (s, ""),
        };
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let sec: i64 = int.parse().ok()?;
        let mut digits: String = frac.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        let nsec: u32 = digits.parse().ok()?;
        if int.starts_with('-') && nsec > 0 {
            // -1.25 means 1.25 s before the epoch: sec -2, nsec 750_000_000.
            return Some(Mtime { sec: sec - 1, nsec: 1_000_000_000 - nsec });
        }
        Some(Mtime { sec, nsec })
    }

    /// The PAX spelling of this time.
    pub fn to_pax(self) -> String {
        if self.nsec == 0 {
            format!("{}", self.sec)
        } else {
            format!("{}.{:09}", self.sec, self.nsec)
        }
    }
}

impl fmt::Display for Mtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.sec, self.nsec)
    }
}

/// Everything compared about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Content length of regular files; 0 for everything else.
    pub size: u64,
    /// Hex sha256 of a regular file's content.
    pub sha256: Option<String>,
    /// A symlink's target, byte for byte.
    pub target: Option<Vec<u8>>,
    /// (major, minor) of character and block devices.
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// `None` in an expectation means "not checked" (a directory the image never described).
    pub mtime: Option<Mtime>,
}

impl Node {
    fn bare(kind: Kind, mode: u32) -> Node {
        Node {
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            sha256: None,
            target: None,
            rdev: None,
            xattrs: BTreeMap::new(),
            mtime: None,
        }
    }

    pub fn dir(mode: u32) -> Node {
        Node::bare(Kind::Dir, mode)
    }

    pub fn file(content: &[u8], mode: u32) -> Node {
        Node {
            size: content.len() as u64,
            sha256: Some(crate::digest::sha256_hex(content)),
            ..Node::bare(Kind::File, mode)
        }
    }

    pub fn symlink(target: &str) -> Node {
        Node { target: Some(target.as_bytes().to_vec()), ..Node::bare(Kind::Symlink, 0o777) }
    }

    pub fn char_dev(major: u32, minor: u32, mode: u32) -> Node {
        Node { rdev: Some((major, minor)), ..Node::bare(Kind::Char, mode) }
    }

    pub fn block_dev(major: u32, minor: u32, mode: u32) -> Node {
        Node { rdev: Some((major, minor)), ..Node::bare(Kind::Block, mode) }
    }

    pub fn fifo(mode: u32) -> Node {
        Node::bare(Kind::Fifo, mode)
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Node {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn at(mut self, mtime: Mtime) -> Node {
        self.mtime = Some(mtime);
        self
    }

    pub fn xattr(mut self, name: &str, value: &[u8]) -> Node {
        self.xattrs.insert(name.to_string(), value.to_vec());
        self
    }
}

/// A whole tree: every path below the root (the root itself is not described) and the groups
/// of regular-file paths that share one inode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: BTreeMap<PathBuf, Node>,
    pub links: BTreeSet<BTreeSet<PathBuf>>,
}

impl Tree {
    pub fn insert(&mut self, path: &str, node: Node) -> &mut Self {
        self.nodes.insert(PathBuf::from(path), node);
        self
    }

    pub fn link_group(&mut self, paths: &[&str]) -> &mut Self {
        self.links.insert(paths.iter().map(PathBuf::from).collect());
        self
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(Path::new(path))
    }

    /// Stops checking directory mtimes (for trees where directories change without being
    /// described again by the layer that changes them).
    pub fn forget_dir_mtimes(&mut self) {
        for node in self.nodes.values_mut() {
            if node.kind == Kind::Dir {
                node.mtime = None;
            }
        }
    }
}

fn show(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => format!("0x{}", hex::encode(bytes)),
    }
}

fn kind_name(node: &Node) -> String {
    format!("{:?}", node.kind).to_lowercase()
}

fn diff_node(path: &Path, want: &Node, got: &Node, out: &mut Vec<String>) {
    let p = path.display();
    if want.kind != got.kind {
        out.push(format!("{p}: kind: expected {}, got {}", kind_name(want), kind_name(got)));
        return;
    }
    if want.mode != got.mode {
        out.push(format!("{p}: mode: expected {:#o}, got {:#o}", want.mode, got.mode));
    }
    if (want.uid, want.gid) != (got.uid, got.gid) {
        out.push(format!(
            "{p}: owner: expected {}:{}, got {}:{}",
            want.uid, want.gid, got.uid, got.gid
        ));
    }
    if want.kind == Kind::File {
        if want.size != got.size {
            out.push(format!("{p}: size: expected {}, got {}", want.size, got.size));
        }
        if want.sha256 != got.sha256 {
            out.push(format!(
                "{p}: content sha256: expected {}, got {}",
                want.sha256.as_deref().unwrap_or("-"),
                got.sha256.as_deref().unwrap_or("-")
            ));
        }
    }
    if want.target != got.target {
        let t = |t: &Option<Vec<u8>>| t.as_deref().map(show).unwrap_or_else(|| "-".into());
        out.push(format!(
            "{p}: symlink target: expected {}, got {}",
            t(&want.target),
            t(&got.target)
        ));
    }
    if want.rdev != got.rdev {
        out.push(format!("{p}: rdev: expected {:?}, got {:?}", want.rdev, got.rdev));
    }
    for (name, value) in &want.xattrs {
        match got.xattrs.get(name) {
            None => out.push(format!("{p}: xattr {name}: missing (expected {})", show(value))),
            Some(v) if v != value => {
                out.push(format!("{p}: xattr {name}: expected {}, got {}", show(value), show(v)))
            }
            Some(_) => {}
        }
    }
    for (name, value) in &got.xattrs {
        if !want.xattrs.contains_key(name) {
            out.push(format!("{p}: xattr {name}: unexpected (value {})", show(value)));
        }
    }
    if let Some(m) = want.mtime {
        match got.mtime {
            Some(g) if g == m => {}
            Some(g) => out.push(format!("{p}: mtime: expected {m}, got {g}")),
            None => out.push(format!("{p}: mtime: expected {m}, got none")),
        }
    }
}

fn show_group(group: &BTreeSet<PathBuf>) -> String {
    let names: Vec<String> = group.iter().map(|p| p.display().to_string()).collect();
    format!("{{{}}}", names.join(", "))
}

/// Every difference between `expected` and `actual`, one readable line each; empty when they
/// agree. `lost+found` (made by mke2fs) is ignored unless `expected` describes it.
pub fn diff(expected: &Tree, actual: &Tree) -> Vec<String> {
    let lost = Path::new("lost+found");
    let ignored = |p: &Path| !expected.nodes.contains_key(lost) && p.starts_with(lost);
    let mut out = Vec::new();
    for (path, want) in &expected.nodes {
        match actual.nodes.get(path) {
            None => out.push(format!("{}: missing (expected {})", path.display(), kind_name(want))),
            Some(got) => diff_node(path, want, got, &mut out),
        }
    }
    for (path, got) in &actual.nodes {
        if !expected.nodes.contains_key(path) && !ignored(path) {
            out.push(format!("{}: unexpected {}", path.display(), kind_name(got)));
        }
    }
    for group in expected.links.difference(&actual.links) {
        let near: Vec<String> =
            actual.links.iter().filter(|g| !g.is_disjoint(group)).map(show_group).collect();
        out.push(format!(
            "hardlink group {} missing (actual groups touching it: {})",
            show_group(group),
            if near.is_empty() { "none".to_string() } else { near.join(" ") }
        ));
    }
    for group in actual.links.difference(&expected.links) {
        if group.iter().all(|p| ignored(p)) {
            continue;
        }
        out.push(format!("hardlink group {} unexpected", show_group(group)));
    }
    out
}

/// Panics with every difference, one a line, when the trees differ.
pub fn assert_same(what: &str, expected: &Tree, actual: &Tree) {
    let d = diff(expected, actual);
    assert!(d.is_empty(), "{what}: {} difference(s):\n  {}", d.len(), d.join("\n  "));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut t = Tree::default();
        t.insert("etc", Node::dir(0o755).at(Mtime::new(10, 5)))
            .insert("etc/a", Node::file(b"x", 0o644))
            .insert("etc/b", Node::file(b"x", 0o644))
            .insert("l", Node::symlink("etc/a"))
            .insert("null", Node::char_dev(1, 3, 0o666).xattr("user.k", b"v"))
            .link_group(&["etc/a", "etc/b"]);
        t
    }

    #[test]
    fn identical_trees_have_no_difference() {
        assert!(diff(&sample(), &sample()).is_empty());
    }

    #[test]
    fn every_field_difference_is_listed() {
        let want = sample();
        let mut got = sample();
        got.nodes.get_mut(Path::new("etc")).expect("etc").mtime = Some(Mtime::new(10, 6));
        got.insert("etc/a", Node::file(b"y", 0o4755).owner(1, 2));
        got.insert("l", Node::symlink("/etc/a"));
        got.insert("null", Node::char_dev(1, 5, 0o666).xattr("trusted.z", b"\x00"));
        got.insert("extra", Node::fifo(0o600));
        got.nodes.remove(Path::new("etc/b"));
        got.links.clear();
        let d = diff(&want, &got);
        let all = d.join("\n");
        for needle in [
            "etc: mtime: expected 10.000000005, got 10.000000006",
            "etc/a: mode: expected 0o644, got 0o4755",
            "etc/a: owner: expected 0:0, got 1:2",
            "etc/a: content sha256",
            "etc/b: missing",
            "l: symlink target: expected \"etc/a\", got \"/etc/a\"",
            "null: rdev: expected Some((1, 3)), got Some((1, 5))",
            "null: xattr user.k: missing",
            "null: xattr trusted.z: unexpected (value 0x00)",
            "extra: unexpected fifo",
            "hardlink group {etc/a, etc/b} missing",
        ] {
            assert!(all.contains(needle), "{needle:?} not in:\n{all}");
        }
    }

    #[test]
    fn lost_and_found_is_ignored_unless_expected() {
        let want = sample();
        let mut got = sample();
        got.insert("lost+found", Node::dir(0o700));
        assert!(diff(&want, &got).is_empty());
        let mut want2 = sample();
        want2.insert("lost+found", Node::dir(0o755));
        assert_eq!(diff(&want2, &got), vec!["lost+found: mode: expected 0o755, got 0o700"]);
    }

    #[test]
    fn unchecked_mtime_is_skipped() {
        let mut want = sample();
        want.forget_dir_mtimes();
        let mut got = sample();
        got.nodes.get_mut(Path::new("etc")).expect("etc").mtime = Some(Mtime::new(99, 0));
        assert!(diff(&want, &got).is_empty());
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(
            Mtime::parse_pax("1700000000.123456789"),
            Some(Mtime::new(1700000000, 123456789))
        );
        assert_eq!(Mtime::parse_pax("4102444800.5"), Some(Mtime::new(4102444800, 500_000_000)));
        assert_eq!(Mtime::parse_pax("12"), Some(Mtime::new(12, 0)));
        assert_eq!(Mtime::parse_pax("-1.25"), Some(Mtime::new(-2, 750_000_000)));
        assert_eq!(Mtime::parse_pax("1.1234567891"), Some(Mtime::new(1, 123456789)));
        assert_eq!(Mtime::parse_pax("x"), None);
        assert_eq!(Mtime::new(4102444800, 500_000_000).to_pax(), "4102444800.500000000");
    }
}
