//! An in-memory reference of the overlay semantics rootbox implements: apply layer tars in
//! order to a tree of inodes, then describe the result as a [`Tree`].
//!
//! Rules (OCI image spec, as the rootbox contract states them):
//! - names lose leading `/` and `./`; any `..` component in a name or hardlink target is refused;
//! - per layer, whiteouts and opaque markers act on the lower layers only, so they are applied
//!   before the layer's other entries (a whiteout never removes a same-layer entry, an opaque
//!   marker hides lower content of its directory wherever it appears in the layer);
//! - `.wh..wh.*` other than the opaque marker is ignored with a warning; `.wh.` naming nothing,
//!   `.` or `..` is refused;
//! - a later entry replaces an earlier one of another type; a directory over a directory keeps
//!   the content and takes the new metadata; within a layer the last entry wins;
//! - intermediate symlinks resolve inside the image root, as under chroot; the final component
//!   is never followed;
//! - `trusted.*` xattrs are dropped with a warning; symlinks always have mode 0777.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};

use crate::archive::{self, EntryType, RawEntry};
use crate::layer::{self, Body, Entry};
use crate::tree::{Kind, Mtime, Node, Tree};

type Name = Vec<u8>;
type Id = usize;

#[derive(Clone, Debug)]
struct Inode {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    /// File content or symlink target.
    content: Vec<u8>,
    rdev: Option<(u32, u32)>,
    xattrs: BTreeMap<String, Vec<u8>>,
    mtime: Option<Mtime>,
}

/// The image root being built.
#[derive(Clone, Debug, Default)]
pub struct Model {
    paths: BTreeMap<Vec<Name>, Id>,
    inodes: Vec<Inode>,
    pub warnings: Vec<String>,
}

/// Splits an entry name into components: leading `/` and `.` components dropped, `..` refused.
pub fn components(name: &[u8]) -> Result<Vec<Name>> {
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => bail!("refusing {:?}: '..' component", String::from_utf8_lossy(name)),
            _ => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn show(path: &[Name]) -> String {
    let parts: Vec<String> = path.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    parts.join("/")
}

enum Whiteout {
    Remove(Name),
    Opaque,
    Ignored,
}

fn whiteout_of(name: &[u8]) -> Result<Option<Whiteout>> {
    let Some(rest) = name.strip_prefix(b".wh.") else { return Ok(None) };
    if rest == b".wh..opq" {
        return Ok(Some(Whiteout::Opaque));
    }
    if rest.starts_with(b".wh.") {
        return Ok(Some(Whiteout::Ignored));
    }
    match rest {
        b"" | b"." | b".." => {
            bail!("refusing whiteout {:?}: names nothing", String::from_utf8_lossy(name))
        }
        _ => Ok(Some(Whiteout::Remove(rest.to_vec()))),
    }
}

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    /// Applies each layer tar in order and returns the model.
    pub fn from_layers<T: AsRef<[u8]>>(layers: &[T]) -> Result<Model> {
        let mut m = Model::new();
        for (i, l) in layers.iter().enumerate() {
            m.apply(l.as_ref()).with_context(|| format!("layer {}", i + 1))?;
        }
        Ok(m)
    }

    fn node(&self, path: &[Name]) -> Option<&Inode> {
        self.paths.get(path).map(|&id| &self.inodes[id])
    }

    fn remove_tree(&mut self, path: &[Name]) {
        let doomed: Vec<Vec<Name>> = self
            .paths
            .range(path.to_vec()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.paths.remove(&p);
        }
    }

    fn remove_children(&mut self, dir: &[Name]) {
        let doomed: Vec<Vec<Name>> = self
            .paths
            .range(dir.to_vec()..)
            .take_while(|(p, _)| p.starts_with(dir))
            .filter(|(p, _)| p.len() > dir.len())
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.paths.remove(&p);
        }
    }

    fn add(&mut self, path: Vec<Name>, inode: Inode) {
        self.inodes.push(inode);
        self.paths.insert(path, self.inodes.len() - 1);
    }

    /// Resolves `comps` as a directory inside the root, following every symlink met (absolute
    /// targets restart at the image root, `..` stops at it). Missing directories are created
    /// when `create` is set, with unchecked metadata; otherwise `None` is returned.
    fn resolve_dir(&mut self, comps: &[Name], create: bool) -> Result<Option<Vec<Name>>> {
        let mut cur: Vec<Name> = Vec::new();
        let mut queue: VecDeque<Name> = comps.iter().cloned().collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            match self.node(&cur).map(|n| (n.kind, n.content.clone())) {
                None if create => self.add(
                    cur.clone(),
                    Inode {
                        kind: Kind::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        content: Vec::new(),
                        rdev: None,
                        xattrs: BTreeMap::new(),
                        mtime: None,
                    },
                ),
                None => return Ok(None),
                Some((Kind::Dir, _)) => {}
                Some((Kind::Symlink, target)) => {
                    hops += 1;
                    ensure!(hops <= 40, "too many symlinks resolving {}", show(comps));
                    cur.pop();
                    if target.starts_with(b"/") {
                        cur.clear();
                    }
                    for t in target.split(|&b| b == b'/').rev() {
                        queue.push_front(t.to_vec());
                    }
                }
                Some(_) => bail!("{} is not a directory (resolving {})", show(&cur), show(comps)),
            }
        }
        Ok(Some(cur))
    }

    /// Where an entry named `comps` lands: its parent resolved, its last component kept.
    fn place(&mut self, comps: &[Name], create: bool) -> Result<Option<Vec<Name>>> {
        let (last, parent) = comps.split_last().context("empty path")?;
        Ok(self.resolve_dir(parent, create)?.map(|mut p| {
            p.push(last.clone());
            p
        }))
    }

    /// Applies one layer tar.
    pub fn apply(&mut self, tar: &[u8]) -> Result<()> {
        let entries = archive::entries(tar)?;
        let mut regular = Vec::new();
        // Pass 1: whiteouts and opaque markers, against lower layers only.
        for e in &entries {
            let comps = components(&e.path)?;
            if e.kind == EntryType::Hardlink {
                components(&e.link)?;
            }
            let Some((last, parent)) = comps.split_last() else {
                continue; // the root itself: its metadata is not modelled
            };
            match whiteout_of(last)? {
                None => regular.push((comps, e)),
                Some(Whiteout::Ignored) => {
                    self.warnings.push(format!("ignoring {}", show(&comps)));
                }
                Some(Whiteout::Opaque) => {
                    if let Some(dir) = self.resolve_dir(parent, false)? {
                        self.remove_children(&dir);
                    }
                }
                Some(Whiteout::Remove(name)) => {
                    if let Some(mut dir) = self.resolve_dir(parent, false)? {
                        dir.push(name);
                        self.remove_tree(&dir);
                    }
                }
            }
        }
        // Pass 2: everything else, in archive order.
        for (comps, e) in regular {
            self.apply_entry(&comps, e, tar).with_context(|| format!("entry {}", show(&comps)))?;
        }
        Ok(())
    }

    fn apply_entry(&mut self, comps: &[Name], e: &RawEntry, tar: &[u8]) -> Result<()> {
        let path = self.place(comps, true)?.context("unreachable: parents are created")?;
        if e.kind == EntryType::Hardlink {
            let target = components(&e.link)?;
            let resolved = self
                .place(&target, false)?
                .filter(|t| self.paths.contains_key(t))
                .with_context(|| format!("hardlink target {} does not exist", show(&target)))?;
            let id = self.paths[&resolved];
            ensure!(self.inodes[id].kind != Kind::Dir, "hardlink to directory {}", show(&target));
            if resolved != path {
                self.remove_tree(&path);
                self.paths.insert(path, id);
            }
            return Ok(());
        }
        let mut xattrs = BTreeMap::new();
        for (name, value) in &e.xattrs {
            if name.starts_with("trusted.") {
                self.warnings.push(format!("dropping xattr {name} of {}", show(comps)));
            } else {
                xattrs.insert(name.clone(), value.clone());
            }
        }
        let (kind, content, rdev) = match e.kind {
            EntryType::File => (Kind::File, e.content(tar), None),
            EntryType::Dir => (Kind::Dir, Vec::new(), None),
            EntryType::Symlink => (Kind::Symlink, e.link.clone(), None),
            EntryType::Char => (Kind::Char, Vec::new(), Some(e.dev)),
            EntryType::Block => (Kind::Block, Vec::new(), Some(e.dev)),
            EntryType::Fifo => (Kind::Fifo, Vec::new(), None),
            EntryType::Hardlink => bail!("unreachable: hardlinks handled above"),
        };
        let inode = Inode {
            kind,
            mode: if kind == Kind::Symlink { 0o777 } else { e.mode },
            uid: u32::try_from(e.uid).context("uid")?,
            gid: u32::try_from(e.gid).context("gid")?,
            content,
            rdev,
            xattrs,
            mtime: Some(e.mtime),
        };
        match self.paths.get(&path) {
            Some(&id) if kind == Kind::Dir && self.inodes[id].kind == Kind::Dir => {
                // A directory over a directory keeps its content: metadata only.
                self.inodes[id] = inode;
            }
            _ => {
                self.remove_tree(&path);
                self.add(path, inode);
            }
        }
        Ok(())
    }

    /// The resulting tree.
    pub fn tree(&self) -> Tree {
        let mut tree = Tree::default();
        let mut by_inode: BTreeMap<Id, BTreeSet<PathBuf>> = BTreeMap::new();
        for (comps, &id) in &self.paths {
            let path = path_of(comps);
            let i = &self.inodes[id];
            let mut node = match i.kind {
                Kind::File => Node::file(&i.content, i.mode),
                Kind::Dir => Node::dir(i.mode),
                Kind::Symlink => Node { target: Some(i.content.clone()), ..Node::symlink("") },
                Kind::Char | Kind::Block | Kind::Fifo | Kind::Socket => {
                    Node { kind: i.kind, rdev: i.rdev, ..Node::fifo(i.mode) }
                }
            };
            node.uid = i.uid;
            node.gid = i.gid;
            node.xattrs = i.xattrs.clone();
            node.mtime = i.mtime;
            if i.kind == Kind::File {
                by_inode.entry(id).or_default().insert(path.clone());
            }
            tree.nodes.insert(path, node);
        }
        tree.links = by_inode.into_values().filter(|g| g.len() > 1).collect();
        tree
    }

    /// The flattened image as one tar (hardlinks as links to the first path of their group,
    /// parents before children), suitable for `rootfs-tar:`.
    pub fn to_tar(&self) -> Vec<u8> {
        let mut b = layer::LayerBuilder::new();
        let mut first: BTreeMap<Id, String> = BTreeMap::new();
        for (comps, &id) in &self.paths {
            let name = show(comps);
            let i = &self.inodes[id];
            if i.kind == Kind::File {
                if let Some(t) = first.get(&id) {
                    b.push(Entry::hardlink(&name, t));
                    continue;
                }
                first.insert(id, name.clone());
            }
            let body = match i.kind {
                Kind::File => Body::File(i.content.clone()),
                Kind::Dir => Body::Dir,
                Kind::Symlink => Body::Symlink(i.content.clone()),
                Kind::Char => Body::Char(i.rdev.unwrap_or((0, 0)).0, i.rdev.unwrap_or((0, 0)).1),
                Kind::Block => Body::Block(i.rdev.unwrap_or((0, 0)).0, i.rdev.unwrap_or((0, 0)).1),
                Kind::Fifo | Kind::Socket => Body::Fifo,
            };
            let mut e =
                Entry::raw(name.as_bytes(), b"").mode(i.mode).owner(i.uid.into(), i.gid.into());
            e.body = body;
            if i.kind == Kind::Dir {
                e.name.push(b'/');
            }
            if let Some(m) = i.mtime {
                e = e.mtime(m);
            }
            for (k, v) in &i.xattrs {
                e = e.xattr(k, v);
            }
            b.push(e);
        }
        b.finish()
    }
}

fn path_of(comps: &[Name]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut p = PathBuf::new();
    for c in comps {
        p.push(std::ffi::OsStr::from_bytes(c));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Entry as E, LayerBuilder};
    use crate::tree::diff;

    fn layer(entries: Vec<E>) -> Vec<u8> {
        LayerBuilder::new().extend(entries).finish()
    }

    fn tree_of(layers: &[Vec<u8>]) -> Tree {
        Model::from_layers(layers).expect("model").tree()
    }

    #[test]
    fn names_are_normalised_and_dotdot_refused() {
        assert_eq!(components(b"/./a//b/").expect("ok"), vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(components(b"a/../b").is_err());
        assert!(components(b"../x").is_err());
    }

    #[test]
    fn whiteouts_only_hit_lower_layers() {
        let l1 = layer(vec![E::dir("d"), E::file("d/a", b"1"), E::file("d/b", b"2")]);
        let l2 = layer(vec![E::file("d/c", b"3"), E::whiteout("d/c"), E::whiteout("d/a")]);
        let t = tree_of(&[l1, l2]);
        let names: Vec<_> = t.nodes.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["d", "d/b", "d/c"]);
    }

    #[test]
    fn opaque_marker_anywhere_in_the_layer_hides_lower_content() {
        let l1 = layer(vec![
            E::dir("o"),
            E::file("o/old", b""),
            E::dir("o/sub"),
            E::file("o/sub/x", b""),
        ]);
        let l2 = layer(vec![
            E::dir("o"),
            E::file("o/new1", b""),
            E::opaque("o"),
            E::file("o/new2", b""),
        ]);
        let t = tree_of(&[l1, l2]);
        let names: Vec<_> = t.nodes.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["o", "o/new1", "o/new2"]);
    }

    #[test]
    fn bad_whiteouts_refused_and_metadata_whiteouts_ignored() {
        for bad in [&b".wh."[..], b"d/.wh..", b".wh..."] {
            let l = layer(vec![E::raw(bad, b"")]);
            let err = Model::from_layers(&[l]).expect_err("refused");
            assert!(format!("{err:#}").contains("refusing"), "{err:#}");
        }
        let m = Model::from_layers(&[layer(vec![E::file(".wh..wh.plnk", b"")])]).expect("ok");
        assert!(m.tree().nodes.is_empty());
        assert_eq!(m.warnings.len(), 1);
    }

    #[test]
    fn type_flips_and_duplicates() {
        let l1 =
            layer(vec![E::file("x", b"f"), E::dir("y"), E::file("y/in", b""), E::file("z", b"1")]);
        let l2 = layer(vec![E::dir("x"), E::symlink("y", "x"), E::file("z", b"2").mode(0o600)]);
        let l3 = layer(vec![E::file("z", b"3"), E::file("z", b"4").mode(0o640)]);
        let t = tree_of(&[l1, l2, l3]);
        assert_eq!(t.get("x").map(|n| n.kind), Some(Kind::Dir));
        assert_eq!(t.get("y").map(|n| n.kind), Some(Kind::Symlink));
        assert!(t.get("y/in").is_none());
        assert_eq!(t.get("z"), Some(&Node::file(b"4", 0o640).at(layer::DEFAULT_MTIME)));
    }

    #[test]
    fn dir_over_dir_keeps_content_and_takes_metadata() {
        let l1 = layer(vec![E::dir("d").mode(0o700), E::file("d/f", b"")]);
        let l2 = layer(vec![E::dir("d").mode(0o1777).owner(5, 6)]);
        let t = tree_of(&[l1, l2]);
        assert_eq!(t.get("d"), Some(&Node::dir(0o1777).owner(5, 6).at(layer::DEFAULT_MTIME)));
        assert!(t.get("d/f").is_some());
    }

    #[test]
    fn symlinked_parents_resolve_inside_the_root() {
        let l1 = layer(vec![E::dir("etc"), E::symlink("evil", "/"), E::symlink("up", "../../..")]);
        let l2 = layer(vec![
            E::file("evil/etc/x", b"x"),
            E::file("up/etc/y", b"y"),
            E::file("/etc/z", b"z"),
        ]);
        let t = tree_of(&[l1, l2]);
        for p in ["etc/x", "etc/y", "etc/z"] {
            assert_eq!(t.get(p).map(|n| n.kind), Some(Kind::File), "{p}");
        }
        assert_eq!(t.get("evil").map(|n| n.kind), Some(Kind::Symlink));
    }

    #[test]
    fn hardlinks_share_inodes_and_resolve_in_root() {
        let l1 = layer(vec![
            E::dir("etc"),
            E::file("etc/passwd", b"pw").mode(0o600),
            E::symlink("evil", "/"),
        ]);
        let l2 = layer(vec![E::hardlink("a", "/etc/passwd"), E::hardlink("b", "evil/etc/passwd")]);
        let t = tree_of(&[l1, l2]);
        assert_eq!(t.get("a"), t.get("etc/passwd"));
        let mut want = Tree::default();
        want.link_group(&["a", "b", "etc/passwd"]);
        assert_eq!(t.links, want.links);
        let missing = layer(vec![E::hardlink("a", "nope")]);
        assert!(Model::from_layers(&[missing]).is_err());
        let out = layer(vec![E::hardlink("a", "../../etc/passwd")]);
        assert!(
            format!("{:#}", Model::from_layers(&[out]).expect_err("refused")).contains("refusing")
        );
    }

    #[test]
    fn trusted_xattrs_dropped_with_warning() {
        let l = layer(vec![E::file("f", b"").xattr("trusted.x", b"1").xattr("user.y", b"2")]);
        let m = Model::from_layers(&[l]).expect("ok");
        let t = m.tree();
        assert_eq!(
            t.get("f").map(|n| n.xattrs.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["user.y".into()])
        );
        assert!(m.warnings.iter().any(|w| w.contains("trusted.x")));
    }

    #[test]
    fn flattened_tar_reproduces_the_tree() {
        let l1 = layer(vec![
            E::dir("d").mode(0o2775).owner(1000, 1000).mtime(Mtime::new(1700000000, 1)),
            E::file("d/f", b"data").xattr("user.k", b"v"),
            E::hardlink("d/g", "d/f"),
            E::char_dev("d/null", 1, 3),
            E::symlink("d/s", "f"),
        ]);
        let m = Model::from_layers(&[l1]).expect("model");
        let flat = Model::from_layers(&[m.to_tar()]).expect("flat");
        assert_eq!(diff(&m.tree(), &flat.tree()), Vec::<String>::new());
    }
}
