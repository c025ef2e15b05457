//! The canonicalising pass: after the last unmount and the shrink, sets what the kernel and
//! the clock chose to values fixed by the build's inputs, and recomputes every checksum that
//! depends on them. What it rewrites:
//!
//! - the reserved inodes (below `s_first_ino`: the journal, the resize inode): their access
//!   and modification times too, which resize2fs and mke2fs take from the clock;
//! - every inode in use: `i_generation` (which the kernel draws at random, and which seeds
//!   the inode's checksum and so those of its extent tree and directory blocks), change and
//!   creation times (the clock) → 0 and the epoch, its change counter (`i_version`, bumped
//!   as writeback happens to run) → 1;
//! - every inode slot not in use that still holds a deleted inode (its deletion time, old
//!   owner, size and block map) → zeros;
//! - the extent tree nodes and directory blocks (leaf tails and htree nodes) of every inode
//!   in use: their checksums, under the new seed;
//! - the journal: emptied (every log block zeroed, the sequence restarted at 1), since its
//!   old transactions hold clock times and pre-pass metadata;
//! - every superblock, the backups too: mount, write, check and creation times → the epoch,
//!   mount count, last mount point and lifetime write counter → 0.
//!
//! Free blocks are left as they are: the worker discards them (FITRIM) before the shrink,
//! so deleted data is gone, and what the shrink leaves behind where it moved blocks from
//! are copies of live data, the same in every build. Reading every free block to check
//! cost 30-150 ms on the Debian image here, more under the microVM's emulation.
//!
//! It writes only within the image and only at blocks the filesystem's own metadata names,
//! after checking them against its geometry; `e2fsck -fn` checks the result.

use crate::crc::crc32c;
use crate::layout::{self, Fs, COMPAT_HAS_JOURNAL, INODE_EXTENTS_FL, INODE_INDEX_FL};
use crate::map::{self, EXTENT_MAGIC};
use crate::{corrupt, le16, le32, put16, put32, Result};

/// What the pass sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Seconds since 1970: every clock-taken time becomes this.
    pub epoch: u64,
}

/// What the pass changed, counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub inodes: u64,
    pub inodes_cleared: u64,
    pub tree_blocks: u64,
    pub dir_blocks: u64,
    pub journal_blocks_zeroed: u64,
    pub superblocks: u64,
}

pub fn canonicalise(fs: &Fs, opts: Options) -> Result<Report> {
    canonicalise_marked(fs, opts, None)
}

/// How many of each group's inode slots have ever held an inode, as the group descriptors
/// say (the slots past their high-water mark were never written): read after the last
/// unmount and before the shrink, where they are still the kernel's. resize2fs recomputes
/// the marks from the bitmaps, so a group whose inodes were all deleted then reads as never
/// used, and its deleted inodes' slots would be missed.
pub fn inode_marks(fs: &Fs) -> Vec<u64> {
    fs.groups.iter().map(|g| used_slots(fs, g).unwrap_or(fs.inodes_per_group)).collect()
}

/// The slots of `group` its descriptor says were ever used; `None` where it cannot say
/// (no group descriptor checksums: the marks and flags are then not kept).
fn used_slots(fs: &Fs, group: &layout::Group) -> Option<u64> {
    if !fs.csum_or_gdt_csum() {
        return None;
    }
    if fs.inodes_uninit(group) {
        return Some(0);
    }
    Some(fs.inodes_per_group.saturating_sub(u64::from(group.itable_unused)))
}

/// [`canonicalise`], reading each group's inode table only as far as any inode was ever
/// held there: `before` is [`inode_marks`] from before the shrink (a group past its end is
/// read in full), joined with what the descriptors say now. Without `before`, every table
/// is read in full (a group marked as holding no inodes too).
pub fn canonicalise_marked(fs: &Fs, opts: Options, before: Option<&[u64]>) -> Result<Report> {
    let mut report = Report::default();
    inodes(fs, opts, before, &mut report)?;
    journal(fs, &mut report)?;
    superblocks(fs, opts, &mut report)?;
    fs.disk.sync()?;
    Ok(report)
}

/// Sets every time of every inode in use to `epoch`: run on a filesystem mke2fs just made,
/// whose few inodes (root, lost+found, the journal, the resize inode) carry mke2fs's clock,
/// which the layers may never set again. Returns the inodes stamped.
pub fn stamp(fs: &Fs, epoch: u64) -> Result<u64> {
    let (t, epoch_bits) = split_time(epoch);
    let mut n = 0;
    for ino in fs.used_inodes()? {
        let mut raw = fs.inode(ino)?;
        for o in [0x08, 0x0C, 0x10] {
            put32(&mut raw, o, t);
        }
        let extra = if raw.len() > 128 { usize::from(le16(&raw, 0x80)) } else { 0 };
        for (o, need) in [(0x84, 8), (0x88, 12), (0x8C, 16), (0x94, 24)] {
            if extra >= need {
                put32(&mut raw, o, epoch_bits);
            }
        }
        if extra >= 24 {
            put32(&mut raw, 0x90, t);
        }
        if let Some(seed) = fs.csum_seed {
            set_inode_csum(seed, ino, &mut raw);
        }
        let at = fs.inode_offset(ino)?;
        fs.disk.write(at, &raw, &|| format!("inode {ino}"))?;
        n += 1;
    }
    fs.disk.sync()?;
    Ok(n)
}

/// An ext4 time as its 32-bit field and the epoch bits of its `_extra` field (nanoseconds 0).
fn split_time(t: u64) -> (u32, u32) {
    // ext4 stores times up to 2446-05-10 (2^34 - 2^31 - 1 seconds).
    let t = t.min((1u64 << 34) - (1 << 31) - 1) as i64;
    let lo = t as u32;
    let epoch_bits = ((t - i64::from(lo as i32)) >> 32) as u32 & 3;
    (lo, epoch_bits)
}

/// The seed of an inode's own checksums: the filesystem's, then its number and generation.
pub fn inode_seed(fs_seed: u32, ino: u64, generation: u32) -> u32 {
    crc32c(crc32c(fs_seed, &(ino as u32).to_le_bytes()), &generation.to_le_bytes())
}

/// Recomputes an inode's checksum in place (`raw` is the whole on-disk inode).
pub fn set_inode_csum(fs_seed: u32, ino: u64, raw: &mut [u8]) {
    let seed = inode_seed(fs_seed, ino, le32(raw, 0x64));
    let hi = raw.len() > 128 && le16(raw, 0x80) >= 4;
    put16(raw, 0x7C, 0);
    if hi {
        put16(raw, 0x82, 0);
    }
    let c = crc32c(seed, raw);
    put16(raw, 0x7C, c as u16);
    if hi {
        put16(raw, 0x82, (c >> 16) as u16);
    }
}

fn inodes(fs: &Fs, opts: Options, before: Option<&[u64]>, report: &mut Report) -> Result<()> {
    let (ctime, ctime_epoch) = split_time(opts.epoch);
    let isz = fs.inode_size as usize;
    let first_ino = u64::from(le32(&fs.sb, 0x54)).max(11);
    // One buffer for every group's table (8 MiB each with 4 KiB blocks): a fresh one per
    // group was faulted in page by page.
    let mut table = vec![0u8; fs.inodes_per_group as usize * isz];
    let bs = fs.block_size as usize;
    let per_block = bs / isz;
    for (g, group) in fs.groups.iter().enumerate() {
        // A group marked as holding no inodes in use (its bitmap is then not read) is still
        // read for deleted ones: resize2fs marks a group so once every inode in it is free,
        // and a later layer that deletes all the files of a group leaves their slots there
        // (deletion times and generations from the clock; seen with 40,000 files, then a
        // whiteout of the last 10,000: 7,245 inodes differed between two builds).
        let bitmap = if fs.inodes_uninit(group) {
            None
        } else {
            Some(fs.block(group.inode_bitmap, &|| format!("group {g}'s inode bitmap"))?)
        };
        // As far as an inode was ever held here, before the shrink or after it (resize2fs
        // moves inodes in from the groups it removes), in whole table blocks.
        let slots = match before {
            Some(marks) => {
                let then = marks.get(g).copied().unwrap_or(fs.inodes_per_group);
                let now = used_slots(fs, group).unwrap_or(fs.inodes_per_group);
                then.max(now).min(fs.inodes_per_group) as usize
            }
            None => fs.inodes_per_group as usize,
        };
        let table = &mut table[..slots.div_ceil(per_block) * bs];
        if table.is_empty() {
            continue;
        }
        let at = group.inode_table * fs.block_size;
        fs.disk.read(at, table, &|| format!("group {g}'s inode table"))?;
        // Only the table blocks that changed are written: most of a table is never-used
        // slots, holes in a sparse image, and stays so.
        let mut dirty = vec![false; table.len() / bs];
        for (i, raw) in table.chunks_exact_mut(isz).enumerate() {
            let ino = g as u64 * fs.inodes_per_group + i as u64 + 1;
            if bitmap.as_ref().is_none_or(|b| b[i / 8] & (1 << (i % 8)) == 0) {
                if !is_zero(raw) {
                    raw.fill(0);
                    report.inodes_cleared += 1;
                    dirty[i / per_block] = true;
                }
                continue;
            }
            let before = raw.to_vec();
            put32(raw, 0x64, 0);
            put32(raw, 0x0C, ctime);
            // The change counter (for NFS), bumped by writeback's timing: as if changed once.
            put32(raw, 0x24, 1);
            let extra = if isz > 128 { usize::from(le16(raw, 0x80)) } else { 0 };
            if extra >= 8 {
                put32(raw, 0x84, ctime_epoch);
            }
            if extra >= 24 {
                put32(raw, 0x90, ctime);
                put32(raw, 0x94, ctime_epoch);
            }
            if extra >= 28 {
                put32(raw, 0x98, 0);
            }
            // The reserved inodes (the journal, the resize inode...) hold no image content:
            // their access and modification times are e2fsprogs' and the kernel's clock.
            if ino < first_ino {
                put32(raw, 0x08, ctime);
                put32(raw, 0x10, ctime);
                for (o, need) in [(0x88, 12), (0x8C, 16)] {
                    if extra >= need {
                        put32(raw, o, ctime_epoch);
                    }
                }
            }
            if let Some(seed) = fs.csum_seed {
                set_inode_csum(seed, ino, raw);
                let own = inode_seed(seed, ino, 0);
                // Their checksums change only with the seed, so only if the generation did.
                if le32(&before, 0x64) != 0 {
                    owned_blocks(fs, ino, raw, own, report)?;
                }
            }
            if before != *raw {
                report.inodes += 1;
                dirty[i / per_block] = true;
            }
        }
        for (k, block) in table.chunks_exact(bs).enumerate() {
            if dirty[k] {
                let offset = at + (k * bs) as u64;
                fs.disk.write(offset, block, &|| format!("group {g}'s inode table"))?;
            }
        }
    }
    Ok(())
}

/// Re-signs the extent tree nodes and directory blocks of inode `ino` with its new seed.
fn owned_blocks(fs: &Fs, ino: u64, raw: &[u8], seed: u32, report: &mut Report) -> Result<()> {
    let map = map::file_map(fs, ino, raw)?;
    if layout::inode_flags(raw) & INODE_EXTENTS_FL != 0 {
        for &b in &map.tree {
            let what = || format!("inode {ino}'s extent block {b}");
            let mut block = fs.block(b, &what)?;
            if le16(&block, 0) != EXTENT_MAGIC {
                return Err(corrupt(what(), "no extent magic"));
            }
            let tail = 12 + 12 * usize::from(le16(&block, 4));
            if tail + 4 > block.len() {
                return Err(corrupt(what(), "its entries overrun the block"));
            }
            let c = crc32c(seed, &block[..tail]);
            if le32(&block, tail) != c {
                put32(&mut block, tail, c);
                fs.write_block(b, &block, &what)?;
                report.tree_blocks += 1;
            }
        }
    }
    if layout::kind(raw) != layout::Kind::Directory {
        return Ok(());
    }
    let indexed = layout::inode_flags(raw) & INODE_INDEX_FL != 0;
    let bs = fs.block_size as usize;
    // A directory's blocks are read a run of consecutive ones at a time, and what changed is
    // written back a span of consecutive blocks at a time (one 4 KiB block per read and
    // write cost ~8 ms of Debian's 800 directory blocks, in system calls).
    for run in &map.data {
        let mut done = 0;
        while done < run.len {
            let n = (run.len - done).min(DIR_RUN);
            let first = run.physical + done;
            let what = || format!("directory inode {ino}'s blocks {first}+{n}");
            let mut blocks = fs.blocks(first, n, &what)?;
            let mut changed = Vec::with_capacity(n as usize);
            for (k, block) in blocks.chunks_exact_mut(bs).enumerate() {
                let root = indexed && run.logical + done + k as u64 == 0;
                changed.push(sign_dir_block(block, seed, root));
            }
            for (from, to) in spans(&changed) {
                let what =
                    || format!("directory inode {ino}'s blocks {}+{}", first + from, to - from);
                fs.write_blocks(
                    first + from,
                    &blocks[from as usize * bs..to as usize * bs],
                    &what,
                )?;
                report.dir_blocks += to - from;
            }
            done += n;
        }
    }
    Ok(())
}

/// Directory blocks read at once (1 MiB of 4 KiB blocks).
const DIR_RUN: u64 = 256;

/// The spans `from..to` of consecutive `true`s in `flags`.
fn spans(flags: &[bool]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &f) in flags.iter().chain([&false]).enumerate() {
        match (f, start) {
            (true, None) => start = Some(i as u64),
            (false, Some(s)) => {
                out.push((s, i as u64));
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// Whether every byte of `b` is zero, compared a block at a time (`memcmp`, vectorised:
/// a byte-at-a-time scan of the inode tables' free slots and the journal was a fifth of
/// the pass on Debian).
fn is_zero(b: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    b.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// Recomputes a directory block's checksum: a leaf's tail, or an htree node's (the root when
/// `root`). Returns whether the block changed. A block with neither (no room was left for
/// one) is left alone, as the kernel leaves it.
pub fn sign_dir_block(block: &mut [u8], seed: u32, root: bool) -> bool {
    let bs = block.len();
    let t = bs - 12;
    // A leaf's entries end exactly where its tail starts (e2fsprogs walks them the same way);
    // an htree node's span the whole block, and a root can keep a stale tail's bytes in its
    // own tail's reserved field, so the bytes alone do not tell.
    let mut at = 0;
    while at < t {
        let rec = usize::from(le16(block, at + 4));
        if rec < 8 || rec % 4 != 0 {
            return false;
        }
        at += rec;
    }
    if at == t
        && le32(block, t) == 0
        && le16(block, t + 4) == 12
        && block[t + 6] == 0
        && block[t + 7] == 0xDE
    {
        let c = crc32c(seed, &block[..t]);
        let old = le32(block, t + 8);
        put32(block, t + 8, c);
        return old != c;
    }
    let count_at = if root && le16(block, 4) == 12 && usize::from(le16(block, 16)) == bs - 12 {
        0x18 + usize::from(block[0x1D])
    } else if le32(block, 0) == 0 && usize::from(le16(block, 4)) == bs && block[6] == 0 {
        8
    } else {
        return false;
    };
    if count_at + 4 > bs {
        return false;
    }
    let limit = usize::from(le16(block, count_at));
    let count = usize::from(le16(block, count_at + 2));
    let tail = count_at + limit * 8;
    if count > limit || tail + 8 > bs {
        return false;
    }
    // Over the entries in use, then the tail with its checksum field as zeros.
    let c = crc32c(seed, &block[..count_at + count * 8]);
    let c = crc32c(crc32c(c, &block[tail..tail + 4]), &[0; 4]);
    let old = le32(block, tail + 4);
    put32(block, tail + 4, c);
    old != c
}

const JBD2_MAGIC: u32 = 0xC03B_3998;
const JBD2_CSUM_V2_V3: u32 = 0x8 | 0x10;

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn put_be32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

/// The journal inode's superblock block and its log, or `None` without an internal journal.
pub fn journal_blocks(fs: &Fs) -> Result<Option<(u64, Vec<u64>)>> {
    let jino = u64::from(le32(&fs.sb, 0xE0));
    if fs.compat() & COMPAT_HAS_JOURNAL == 0 || jino == 0 {
        return Ok(None);
    }
    let raw = fs.inode(jino)?;
    let map = map::file_map(fs, jino, &raw)?;
    let mut jsb = None;
    let mut log = Vec::new();
    for r in &map.data {
        for k in 0..r.len {
            if r.logical + k == 0 {
                jsb = Some(r.physical + k);
            } else {
                log.push(r.physical + k);
            }
        }
    }
    let jsb = jsb.ok_or_else(|| corrupt("the journal", "no block 0 (its superblock)"))?;
    Ok(Some((jsb, log)))
}

/// Journal blocks read at once (1 MiB of 4 KiB blocks).
const JOURNAL_RUN: usize = 256;

fn journal(fs: &Fs, report: &mut Report) -> Result<()> {
    let Some((jsb_at, log)) = journal_blocks(fs)? else { return Ok(()) };
    let what = || "the journal superblock".to_string();
    let mut jsb = fs.block(jsb_at, &what)?;
    if be32(&jsb, 0) != JBD2_MAGIC || !matches!(be32(&jsb, 4), 3 | 4) {
        return Err(corrupt(what(), "no jbd2 superblock magic"));
    }
    if be32(&jsb, 0x1C) != 0 {
        return Err(corrupt(
            what(),
            "the journal holds transactions to replay (not unmounted cleanly)",
        ));
    }
    let maxlen = u64::from(be32(&jsb, 0x10));
    let n = log.len().min(maxlen.saturating_sub(1) as usize);
    let bs = fs.block_size as usize;
    let zeros = vec![0u8; JOURNAL_RUN * bs];
    let mut run = vec![0u8; JOURNAL_RUN * bs];
    // Read in runs of physically consecutive blocks (a journal is mostly one extent): one
    // read per block cost ~60 ms on a 16 MiB journal through the loop device. What holds
    // anything is zeroed a span of consecutive blocks at a time.
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && j - i < JOURNAL_RUN && log[j] == log[j - 1].wrapping_add(1) {
            j += 1;
        }
        let run = &mut run[..(j - i) * bs];
        fs.blocks_into(log[i], run, &|| format!("journal blocks {}-{j}", i + 1))?;
        let used: Vec<bool> = run.chunks_exact(bs).map(|b| !is_zero(b)).collect();
        for (from, to) in spans(&used) {
            let what = || format!("journal blocks {}-{}", i as u64 + from + 1, i as u64 + to);
            let len = (to - from) as usize * bs;
            fs.write_blocks(log[i] + from, &zeros[..len], &what)?;
            report.journal_blocks_zeroed += to - from;
        }
        i = j;
    }
    put_be32(&mut jsb, 0x18, 1); // s_sequence
    put_be32(&mut jsb, 0x20, 0); // s_errno
    put_be32(&mut jsb, 0x58, 0); // s_head
    if be32(&jsb, 0x28) & JBD2_CSUM_V2_V3 != 0 {
        put_be32(&mut jsb, 0xFC, 0);
        let c = crc32c(!0, &jsb[..1024]);
        put_be32(&mut jsb, 0xFC, c);
    }
    fs.write_block(jsb_at, &jsb, &what)
}

/// Sets one superblock's clock-taken fields and counters, and its checksum.
pub fn canonical_superblock(sb: &mut [u8], epoch: u64, csum: bool) {
    let (lo, _) = split_time(epoch);
    let hi = (epoch >> 32).min(255) as u8;
    for o in [0x2C, 0x30, 0x40, 0x108] {
        put32(sb, o, lo);
    }
    sb[0x274..0x278].fill(hi);
    put16(sb, 0x34, 0); // s_mnt_count
    sb[0x88..0xC8].fill(0); // s_last_mounted
    sb[0x178..0x180].fill(0); // s_kbytes_written
    if csum {
        let c = crc32c(!0, &sb[..0x3FC]);
        put32(sb, 0x3FC, c);
    }
}

fn superblocks(fs: &Fs, opts: Options, report: &mut Report) -> Result<()> {
    let csum = fs.csum_seed.is_some();
    let mut at = vec![layout::SUPERBLOCK_OFFSET];
    for g in fs.backup_groups() {
        // With 1 KiB blocks a group's superblock starts its first block; otherwise too.
        at.push(fs.group_start(g) * fs.block_size);
    }
    for offset in at {
        let what = || format!("the superblock at byte {offset}");
        let mut sb = vec![0u8; layout::SUPERBLOCK_LEN];
        fs.disk.read(offset, &mut sb, &what)?;
        if le16(&sb, 0x38) != 0xEF53 {
            return Err(corrupt(what(), "no ext4 magic where a backup belongs"));
        }
        canonical_superblock(&mut sb, opts.epoch, csum);
        fs.disk.write(offset, &sb, &what)?;
        report.superblocks += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_of_consecutive_flags() {
        assert_eq!(spans(&[]), []);
        assert_eq!(spans(&[false, false]), []);
        assert_eq!(spans(&[true]), [(0, 1)]);
        assert_eq!(
            spans(&[true, true, false, true, false, false, true, true]),
            [(0, 2), (3, 4), (6, 8)]
        );
    }

    #[test]
    fn zero_means_every_byte() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 9000]));
        for at in [0, 255, 4095, 4096, 8999] {
            let mut b = vec![0u8; 9000];
            b[at] = 1;
            assert!(!is_zero(&b), "a byte at {at}");
        }
    }

    #[test]
    fn times_split_into_32_bits_and_epoch_bits() {
        assert_eq!(split_time(0), (0, 0));
        assert_eq!(split_time(1_700_000_000), (1_700_000_000, 0));
        // 2038-01-19T03:14:08Z, one past i32::MAX: the first time needing an epoch bit.
        assert_eq!(split_time(1 << 31), (1 << 31, 1));
        assert_eq!(split_time(1 << 32), (0, 1));
    }

    #[test]
    fn a_leaf_tail_is_signed_over_the_block_before_it() {
        let mut b = vec![0u8; 4096];
        b[4..6].copy_from_slice(&4084u16.to_le_bytes());
        b[4084 + 4..4084 + 6].copy_from_slice(&12u16.to_le_bytes());
        b[4084 + 7] = 0xDE;
        assert!(sign_dir_block(&mut b, 42, false));
        assert_eq!(le32(&b, 4092), crc32c(42, &b[..4084]));
        assert!(!sign_dir_block(&mut b, 42, false), "signing twice changes nothing");
    }

    #[test]
    fn an_htree_root_is_signed_as_one_even_with_a_stale_leaf_tail_in_it() {
        // "." and "..", the root info, count/limit, one entry; the dx tail's reserved word
        // holds the bytes of the leaf tail the block had before it was indexed.
        let mut b = vec![0u8; 4096];
        b[4..6].copy_from_slice(&12u16.to_le_bytes());
        b[16..18].copy_from_slice(&4084u16.to_le_bytes());
        b[0x1D] = 8;
        b[0x20..0x22].copy_from_slice(&507u16.to_le_bytes());
        b[0x22..0x24].copy_from_slice(&1u16.to_le_bytes());
        b[4088..4092].copy_from_slice(&[0x0c, 0, 0, 0xde]);
        assert!(sign_dir_block(&mut b, 42, true));
        let want = crc32c(crc32c(crc32c(42, &b[..0x28]), &b[4088..4092]), &[0; 4]);
        assert_eq!(le32(&b, 4092), want);
    }
}
