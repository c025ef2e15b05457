//! Which blocks an inode owns: its data (logical → physical) and the blocks that map them
//! (extent tree nodes, indirect blocks). Walks are bounded by the tree's depth and by the
//! filesystem's size, so a corrupt image cannot loop.

use crate::layout::{self, Fs, INODE_EXTENTS_FL, INODE_INLINE_DATA_FL};
use crate::{corrupt, le16, le32, Result};

pub const EXTENT_MAGIC: u16 = 0xF30A;
const MAX_DEPTH: u16 = 5;

/// A run of data blocks: `len` blocks from logical block `logical` at physical `physical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
}

/// An inode's blocks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileMap {
    pub data: Vec<Run>,
    /// Extent tree nodes below the inode, or indirect blocks.
    pub tree: Vec<u64>,
    /// Data blocks counted so far (the walk's bound).
    blocks: u64,
}

/// Whether the inode's `i_block` holds block pointers at all (not a fast symlink's target,
/// not inline data, not a device number).
fn has_blocks(inode: &[u8]) -> bool {
    let flags = layout::inode_flags(inode);
    if flags & INODE_INLINE_DATA_FL != 0 {
        return false;
    }
    match layout::kind(inode) {
        layout::Kind::Regular | layout::Kind::Directory => true,
        // A fast symlink keeps its target in i_block and owns no block.
        layout::Kind::Symlink => flags & INODE_EXTENTS_FL != 0 || le32(inode, 0x1C) != 0,
        layout::Kind::Other => false,
    }
}

pub fn file_map(fs: &Fs, ino: u64, inode: &[u8]) -> Result<FileMap> {
    let mut map = FileMap::default();
    if !has_blocks(inode) {
        return Ok(map);
    }
    if layout::inode_flags(inode) & INODE_EXTENTS_FL != 0 {
        let root = &inode[0x28..0x28 + 60];
        extent_node(fs, ino, root, None, &mut map)?;
    } else {
        indirect(fs, ino, inode, &mut map)?;
    }
    Ok(map)
}

fn extent_node(
    fs: &Fs,
    ino: u64,
    node: &[u8],
    want_depth: Option<u16>,
    map: &mut FileMap,
) -> Result<()> {
    let what = || format!("inode {ino}'s extent tree");
    if node.len() < 12 || le16(node, 0) != EXTENT_MAGIC {
        return Err(corrupt(what(), "a node without the extent magic"));
    }
    let entries = usize::from(le16(node, 2));
    let max = usize::from(le16(node, 4));
    let depth = le16(node, 6);
    if entries > max || 12 + 12 * max > node.len() {
        return Err(corrupt(what(), format!("{entries} of {max} entries in {} bytes", node.len())));
    }
    if depth > MAX_DEPTH || want_depth.is_some_and(|d| d != depth) {
        return Err(corrupt(what(), format!("a node of depth {depth}")));
    }
    for e in node[12..12 + 12 * entries].chunks_exact(12) {
        if depth == 0 {
            let raw_len = le16(e, 4);
            let len = u64::from(if raw_len > 32768 { raw_len - 32768 } else { raw_len });
            let physical = u64::from(le16(e, 6)) << 32 | u64::from(le32(e, 8));
            if physical.checked_add(len).is_none_or(|end| end > fs.blocks) {
                return Err(corrupt(what(), format!("an extent at block {physical}+{len}")));
            }
            owned(fs, ino, map, len)?;
            map.data.push(Run { logical: u64::from(le32(e, 0)), physical, len });
        } else {
            let child = u64::from(le16(e, 8)) << 32 | u64::from(le32(e, 4));
            if map.tree.len() as u64 >= fs.blocks {
                return Err(corrupt(what(), "more tree nodes than the filesystem has blocks"));
            }
            map.tree.push(child);
            owned(fs, ino, map, 1)?;
            let block = fs.block(child, &what)?;
            extent_node(fs, ino, &block, Some(depth - 1), map)?;
        }
    }
    Ok(())
}

/// The classic map: 12 direct pointers, then single, double and triple indirect blocks.
fn indirect(fs: &Fs, ino: u64, inode: &[u8], map: &mut FileMap) -> Result<()> {
    let per = fs.block_size / 4;
    let mut logical = 0u64;
    for i in 0..12 {
        let p = u64::from(le32(inode, 0x28 + 4 * i));
        push_block(fs, ino, map, logical, p)?;
        logical += 1;
    }
    for (i, level) in [(12usize, 1u32), (13, 2), (14, 3)] {
        let p = u64::from(le32(inode, 0x28 + 4 * i));
        let span = per.pow(level);
        if p != 0 {
            indirect_block(fs, ino, map, p, level, logical)?;
        }
        logical += span;
    }
    Ok(())
}

fn indirect_block(
    fs: &Fs,
    ino: u64,
    map: &mut FileMap,
    block: u64,
    level: u32,
    logical: u64,
) -> Result<()> {
    let what = || format!("inode {ino}'s indirect block {block}");
    if block >= fs.blocks {
        return Err(corrupt(what(), "past the filesystem's end"));
    }
    map.tree.push(block);
    owned(fs, ino, map, 1)?;
    let data = fs.block(block, &what)?;
    let per = fs.block_size / 4;
    let span = per.pow(level - 1);
    for (i, c) in data.chunks_exact(4).enumerate() {
        let p = u64::from(le32(c, 0));
        if p == 0 {
            continue;
        }
        let at = logical + i as u64 * span;
        if level == 1 {
            push_block(fs, ino, map, at, p)?;
        } else {
            indirect_block(fs, ino, map, p, level - 1, at)?;
        }
    }
    Ok(())
}

/// Counts `len` more blocks against the inode: a map that names more blocks than the
/// filesystem has (the same block over and over, through shared tree nodes or indirect
/// blocks) is corrupt, and the walk stops before it costs more than the filesystem's size.
fn owned(fs: &Fs, ino: u64, map: &mut FileMap, len: u64) -> Result<()> {
    map.blocks = map.blocks.saturating_add(len);
    if map.blocks > fs.blocks {
        return Err(corrupt(
            format!("inode {ino}'s block map"),
            "it names more blocks than the filesystem has",
        ));
    }
    Ok(())
}

fn push_block(fs: &Fs, ino: u64, map: &mut FileMap, logical: u64, p: u64) -> Result<()> {
    if p == 0 {
        return Ok(());
    }
    if p >= fs.blocks {
        return Err(corrupt(format!("inode {ino}'s block map"), format!("block {p}")));
    }
    owned(fs, ino, map, 1)?;
    match map.data.last_mut() {
        Some(r) if r.logical + r.len == logical && r.physical + r.len == p => r.len += 1,
        _ => map.data.push(Run { logical, physical: p, len: 1 }),
    }
    Ok(())
}
