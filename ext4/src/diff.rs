//! Which ext4 structures two images differ in, named: superblock and group descriptor fields,
//! inode fields (with the inode's path), a file's placement or content by logical block, its
//! extent tree, directory blocks, bitmaps, the journal, free space. Reads both images without
//! mounting them; every difference in their bytes is attributed to one structure or reported
//! as unattributed.

use std::collections::{BTreeMap, HashMap};

use crate::layout::{self, Fs};
use crate::map::{self, FileMap};
use crate::{fields, le16, le32, Result};

/// One difference between the images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// What differs: `superblock`, `group 3 descriptor`, `inode 12`, `journal`, ...
    pub structure: String,
    /// The field, or what of the structure: `data`, `placement`, `extent tree`, `bytes`.
    pub field: String,
    /// The inode's path, when the structure is an inode or its blocks.
    pub path: Option<String>,
    /// The values or block ranges, A then B.
    pub detail: String,
}

fn d(
    structure: impl Into<String>,
    field: impl Into<String>,
    detail: impl Into<String>,
) -> Difference {
    Difference {
        structure: structure.into(),
        field: field.into(),
        path: None,
        detail: detail.into(),
    }
}

/// Everything `a` and `b` differ in; empty when their bytes are identical.
pub fn diff(a: &Fs, b: &Fs) -> Result<Vec<Difference>> {
    let mut out = Vec::new();
    if a.disk.len() != b.disk.len() {
        out.push(d("image", "size", format!("{} vs {} bytes", a.disk.len(), b.disk.len())));
    }
    for f in fields::differing(fields::SUPERBLOCK, &a.sb, &b.sb) {
        out.push(d("superblock", f, values(fields::SUPERBLOCK, f, &a.sb, &b.sb)));
    }
    if (a.block_size, a.inodes_per_group, a.inode_size, a.blocks_per_group)
        != (b.block_size, b.inodes_per_group, b.inode_size, b.blocks_per_group)
    {
        out.push(d(
            "image",
            "geometry",
            "block size or group shape differs: compared superblocks only",
        ));
        return Ok(out);
    }
    let groups = a.groups.len().min(b.groups.len());
    for g in 0..groups {
        let (x, y) = (a.descriptor(g), b.descriptor(g));
        for f in fields::differing(fields::GROUP_DESC, x, y) {
            out.push(d(format!("group {g} descriptor"), f, values(fields::GROUP_DESC, f, x, y)));
        }
    }
    let blocks = differing_blocks(a, b)?;
    if blocks.is_empty() {
        return Ok(out);
    }
    let paths = Paths::of(a, b);
    let mut owners = Owners::new(&blocks);
    metadata_owners(a, &mut owners);
    let (maps_a, maps_b) = (inode_maps(a)?, inode_maps(b)?);
    let jino = u64::from(le32(&a.sb, 0xE0));
    for maps in [&maps_a, &maps_b] {
        for (&ino, m) in maps {
            for &t in &m.tree {
                owners.claim(t, t + 1, || Owner::Tree(ino));
            }
            for r in &m.data {
                owners.claim(r.physical, r.physical + r.len, || Owner::Data(ino));
            }
        }
    }
    let mut data_inodes = BTreeMap::new();
    let mut tree_inodes = BTreeMap::<u64, u64>::new();
    let mut loose = Vec::new();
    for &n in &blocks {
        match owners.of(n) {
            Some(Owner::Superblock(g)) => {
                if g > 0 {
                    backup_superblock(a, b, g, &mut out)?;
                }
            }
            Some(Owner::Descriptors(g)) => {
                if g > 0 {
                    out.push(d(
                        format!("group {g}"),
                        "backup group descriptors",
                        format!("block {n}"),
                    ));
                }
            }
            Some(Owner::BlockBitmap(g)) => {
                out.push(d(format!("group {g}"), "block bitmap", format!("block {n}")))
            }
            Some(Owner::InodeBitmap(g)) => {
                out.push(d(format!("group {g}"), "inode bitmap", format!("block {n}")))
            }
            Some(Owner::InodeTable(g, first)) => inode_block(a, b, g, first, &paths, &mut out)?,
            Some(Owner::Tree(ino)) => *tree_inodes.entry(ino).or_default() += 1,
            Some(Owner::Data(ino)) => {
                data_inodes.insert(ino, ());
            }
            None => loose.push(n),
        }
    }
    for (ino, count) in tree_inodes {
        let mut x = d(format!("inode {ino}"), "extent tree", format!("{count} node blocks"));
        x.path = paths.get(ino);
        out.push(x);
    }
    let empty = FileMap::default();
    for ino in data_inodes.into_keys() {
        let (ma, mb) = (maps_a.get(&ino).unwrap_or(&empty), maps_b.get(&ino).unwrap_or(&empty));
        if ino == jino {
            journal(a, b, ma, mb, &mut out)?;
            continue;
        }
        file_data(a, b, ino, ma, mb, &paths, &mut out)?;
    }
    for (s, e) in ranges(&loose) {
        out.push(d("free space", "bytes", format!("blocks {s}-{e}")));
    }
    Ok(out)
}

fn values(table: fields::Table, f: &str, a: &[u8], b: &[u8]) -> String {
    format!("{} vs {}", fields::show(table, f, a), fields::show(table, f, b))
}

/// Blocks (of the shorter image's length) whose bytes differ, in order.
fn differing_blocks(a: &Fs, b: &Fs) -> Result<Vec<u64>> {
    let bs = a.block_size;
    let len = a.disk.len().min(b.disk.len()) / bs * bs;
    let chunk = 256 * bs;
    let mut out = Vec::new();
    let (mut x, mut y) = (vec![0u8; chunk as usize], vec![0u8; chunk as usize]);
    let mut at = 0;
    while at < len {
        let n = chunk.min(len - at) as usize;
        a.disk.read(at, &mut x[..n], &|| "the image".into())?;
        b.disk.read(at, &mut y[..n], &|| "the image".into())?;
        if x[..n] != y[..n] {
            for (i, (p, q)) in
                x[..n].chunks(bs as usize).zip(y[..n].chunks(bs as usize)).enumerate()
            {
                if p != q {
                    out.push(at / bs + i as u64);
                }
            }
        }
        at += n as u64;
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Superblock(u64),
    Descriptors(u64),
    BlockBitmap(u64),
    InodeBitmap(u64),
    /// An inode table block of group `.0` whose first inode is `.1`.
    InodeTable(u64, u64),
    Tree(u64),
    Data(u64),
}

/// Owners of the differing blocks only: claims for other blocks cost a binary search.
struct Owners<'a> {
    blocks: &'a [u64],
    of: HashMap<u64, Owner>,
}

impl<'a> Owners<'a> {
    fn new(blocks: &'a [u64]) -> Self {
        Self { blocks, of: HashMap::new() }
    }

    fn claim(&mut self, start: u64, end: u64, owner: impl Fn() -> Owner) {
        let from = self.blocks.partition_point(|&b| b < start);
        for &b in self.blocks[from..].iter().take_while(|&&b| b < end) {
            self.of.entry(b).or_insert_with(&owner);
        }
    }

    fn of(&self, n: u64) -> Option<Owner> {
        self.of.get(&n).copied()
    }
}

fn metadata_owners(fs: &Fs, owners: &mut Owners) {
    let gdt_blocks = (fs.groups.len() * fs.desc_size).div_ceil(fs.block_size as usize) as u64;
    let reserved = u64::from(le16(&fs.sb, 0xCE));
    let mut with_super = vec![0];
    with_super.extend(fs.backup_groups());
    for g in with_super {
        let s = fs.group_start(g);
        owners.claim(s, s + 1, || Owner::Superblock(g));
        owners.claim(s + 1, s + 1 + gdt_blocks + reserved, || Owner::Descriptors(g));
    }
    let per_block = fs.block_size / fs.inode_size;
    let table = fs.inodes_per_group.div_ceil(per_block);
    for (g, group) in fs.groups.iter().enumerate() {
        let g = g as u64;
        owners.claim(group.block_bitmap, group.block_bitmap + 1, || Owner::BlockBitmap(g));
        owners.claim(group.inode_bitmap, group.inode_bitmap + 1, || Owner::InodeBitmap(g));
        for k in 0..table {
            let first = g * fs.inodes_per_group + k * per_block + 1;
            let b = group.inode_table + k;
            owners.claim(b, b + 1, || Owner::InodeTable(g, first));
        }
    }
}

fn inode_maps(fs: &Fs) -> Result<BTreeMap<u64, FileMap>> {
    let mut maps = BTreeMap::new();
    for ino in fs.used_inodes()? {
        let raw = fs.inode(ino)?;
        // An inode the other image's metadata does not explain is reported by its fields;
        // a map that does not read is left out, not fatal.
        if let Ok(m) = map::file_map(fs, ino, &raw) {
            maps.insert(ino, m);
        }
    }
    Ok(maps)
}

fn backup_superblock(a: &Fs, b: &Fs, g: u64, out: &mut Vec<Difference>) -> Result<()> {
    let at = a.group_start(g) * a.block_size;
    let mut x = vec![0u8; layout::SUPERBLOCK_LEN];
    let mut y = vec![0u8; layout::SUPERBLOCK_LEN];
    a.disk.read(at, &mut x, &|| format!("group {g}'s superblock"))?;
    b.disk.read(at, &mut y, &|| format!("group {g}'s superblock"))?;
    for f in fields::differing(fields::SUPERBLOCK, &x, &y) {
        out.push(d(
            format!("backup superblock in group {g}"),
            f,
            values(fields::SUPERBLOCK, f, &x, &y),
        ));
    }
    Ok(())
}

fn inode_block(
    a: &Fs,
    b: &Fs,
    g: u64,
    first: u64,
    paths: &Paths,
    out: &mut Vec<Difference>,
) -> Result<()> {
    let per_block = a.block_size / a.inode_size;
    let last = ((g + 1) * a.inodes_per_group).min(first + per_block - 1);
    for ino in first..=last {
        let (x, y) = (a.inode(ino)?, b.inode(ino)?);
        if x == y {
            continue;
        }
        let names = fields::differing(fields::INODE, &x, &y);
        let detail = names
            .iter()
            .filter(|&&f| f != "i_block" && f != "rest")
            .map(|f| format!("{f} {}", values(fields::INODE, f, &x, &y)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut diff = d(format!("inode {ino}"), names.join(" "), detail);
        diff.path = paths.get(ino);
        out.push(diff);
    }
    Ok(())
}

fn journal(a: &Fs, b: &Fs, ma: &FileMap, mb: &FileMap, out: &mut Vec<Difference>) -> Result<()> {
    let logical = |m: &FileMap| -> Vec<u64> {
        let mut v: Vec<(u64, u64)> = m
            .data
            .iter()
            .flat_map(|r| (0..r.len).map(move |k| (r.logical + k, r.physical + k)))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, p)| p).collect()
    };
    let (pa, pb) = (logical(ma), logical(mb));
    if pa != pb {
        out.push(d("journal", "placement", "its blocks lie elsewhere"));
        return Ok(());
    }
    let mut log = 0;
    for (i, &p) in pa.iter().enumerate() {
        let (x, y) = (a.block(p, &|| "the journal".into())?, b.block(p, &|| "the journal".into())?);
        if x == y {
            continue;
        }
        if i == 0 {
            out.push(d("journal", "superblock", jsb_fields(&x, &y)));
        } else {
            log += 1;
        }
    }
    if log > 0 {
        out.push(d("journal", "log blocks", format!("{log} blocks hold different transactions")));
    }
    Ok(())
}

/// The journal superblock's fields that differ (big-endian, jbd2's layout).
fn jsb_fields(x: &[u8], y: &[u8]) -> String {
    const F: &[(&str, usize)] = &[
        ("s_sequence", 0x18),
        ("s_start", 0x1C),
        ("s_errno", 0x20),
        ("s_head", 0x58),
        ("s_checksum", 0xFC),
    ];
    let be = |b: &[u8], o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let mut v: Vec<String> = F
        .iter()
        .filter(|(_, o)| be(x, *o) != be(y, *o))
        .map(|(n, o)| format!("{n} {} vs {}", be(x, *o), be(y, *o)))
        .collect();
    if v.is_empty() {
        v.push("other fields".into());
    }
    v.join(", ")
}

fn file_data(
    a: &Fs,
    b: &Fs,
    ino: u64,
    ma: &FileMap,
    mb: &FileMap,
    paths: &Paths,
    out: &mut Vec<Difference>,
) -> Result<()> {
    let path = paths.get(ino);
    let at = |m: &FileMap, l: u64| {
        m.data
            .iter()
            .find(|r| l >= r.logical && l < r.logical + r.len)
            .map(|r| r.physical + l - r.logical)
    };
    if ma.data != mb.data {
        let mut x = d(format!("inode {ino}"), "placement", describe_runs(ma, mb));
        x.path = path.clone();
        out.push(x);
    }
    let mut differ = Vec::new();
    for r in &ma.data {
        for l in r.logical..r.logical + r.len {
            let pa = r.physical + l - r.logical;
            let same = match at(mb, l) {
                Some(pb) => {
                    a.block(pa, &|| format!("inode {ino}"))?
                        == b.block(pb, &|| format!("inode {ino}"))?
                }
                None => false,
            };
            if !same {
                differ.push(l);
            }
        }
    }
    if !differ.is_empty() {
        let ranges: Vec<String> = ranges(&differ)
            .iter()
            .map(|(s, e)| if s == e { s.to_string() } else { format!("{s}-{e}") })
            .collect();
        let raw = a.inode(ino)?;
        let what =
            if layout::kind(&raw) == layout::Kind::Directory { "directory blocks" } else { "data" };
        let mut x =
            d(format!("inode {ino}"), what, format!("logical blocks {}", ranges.join(", ")));
        x.path = path;
        out.push(x);
    }
    Ok(())
}

fn describe_runs(ma: &FileMap, mb: &FileMap) -> String {
    let show = |m: &FileMap| {
        let v: Vec<String> = m
            .data
            .iter()
            .take(4)
            .map(|r| format!("{}+{}@{}", r.logical, r.len, r.physical))
            .collect();
        let more = if m.data.len() > 4 {
            format!(" and {} more", m.data.len() - 4)
        } else {
            String::new()
        };
        format!("{}{more}", v.join(" "))
    };
    format!("{} vs {}", show(ma), show(mb))
}

fn ranges(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &n in sorted {
        match out.last_mut() {
            Some((_, e)) if *e + 1 == n => *e = n,
            _ => out.push((n, n)),
        }
    }
    out
}

/// Inode numbers to paths, from a walk of each image's directories (A first).
struct Paths(HashMap<u64, String>);

impl Paths {
    fn of(a: &Fs, b: &Fs) -> Self {
        let mut m = HashMap::new();
        for fs in [b, a] {
            for (ino, p) in walk(fs) {
                m.insert(ino, p);
            }
        }
        Self(m)
    }

    fn get(&self, ino: u64) -> Option<String> {
        self.0.get(&ino).cloned()
    }
}

/// Every reachable inode's first path. A directory that does not read is skipped: the walk
/// serves messages only.
fn walk(fs: &Fs) -> Vec<(u64, String)> {
    let mut out = vec![(2, "/".to_string())];
    let mut queue = vec![(2u64, String::new())];
    let mut seen = std::collections::HashSet::from([2u64]);
    while let Some((dir, prefix)) = queue.pop() {
        let Ok(raw) = fs.inode(dir) else { continue };
        let Ok(m) = map::file_map(fs, dir, &raw) else { continue };
        for r in &m.data {
            for k in 0..r.len {
                let Ok(block) = fs.block(r.physical + k, &|| "a directory".into()) else {
                    continue;
                };
                for (ino, name, is_dir) in entries(&block) {
                    if name == "." || name == ".." || !seen.insert(ino) {
                        continue;
                    }
                    let path = format!("{prefix}/{name}");
                    if is_dir {
                        queue.push((ino, path.clone()));
                    }
                    out.push((ino, path));
                }
            }
        }
    }
    out
}

/// A directory block's live entries: inode, name, whether a directory.
fn entries(block: &[u8]) -> Vec<(u64, String, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= block.len() {
        let ino = le32(block, at);
        let rec = usize::from(le16(block, at + 4));
        let name_len = usize::from(block[at + 6]);
        if rec < 8 || at + rec > block.len() {
            break;
        }
        if ino != 0 && 8 + name_len <= rec {
            let name = String::from_utf8_lossy(&block[at + 8..at + 8 + name_len]).into_owned();
            out.push((u64::from(ino), name, block[at + 7] == 2));
        }
        at += rec;
    }
    out
}
