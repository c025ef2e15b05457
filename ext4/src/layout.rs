//! Where things are: the superblock, group descriptors, bitmaps and inode tables, read from the
//! image and checked against each other and against its length before anything trusts them.

use crate::{corrupt, le16, le32, Disk, Ext4Error, Result};

pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_LEN: usize = 1024;
const MAGIC: u16 = 0xEF53;

pub const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub const COMPAT_SPARSE_SUPER2: u32 = 0x200;
pub const INCOMPAT_META_BG: u32 = 0x10;
pub const INCOMPAT_64BIT: u32 = 0x80;
pub const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub const RO_COMPAT_BIGALLOC: u32 = 0x200;
pub const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

pub const BG_INODE_UNINIT: u16 = 0x1;
pub const BG_BLOCK_UNINIT: u16 = 0x2;

/// Inode flags this crate reads.
pub const INODE_INDEX_FL: u32 = 0x1000;
pub const INODE_EXTENTS_FL: u32 = 0x80000;
pub const INODE_INLINE_DATA_FL: u32 = 0x1000_0000;

/// One block group's descriptor, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub flags: u16,
    pub itable_unused: u32,
}

/// An opened image: its geometry and group descriptors.
pub struct Fs {
    pub disk: Disk,
    pub sb: Vec<u8>,
    pub block_size: u64,
    pub blocks: u64,
    pub first_data_block: u64,
    pub blocks_per_group: u64,
    pub inodes_per_group: u64,
    pub inodes: u64,
    pub inode_size: u64,
    pub desc_size: usize,
    pub groups: Vec<Group>,
    /// The group descriptor table as on disk (`groups` decodes it): `desc_size` bytes each.
    pub gdt: Vec<u8>,
    /// The seed of every metadata checksum, when the image has `metadata_csum`.
    pub csum_seed: Option<u32>,
}

impl Fs {
    pub fn open(disk: Disk) -> Result<Self> {
        if disk.len() < SUPERBLOCK_OFFSET + SUPERBLOCK_LEN as u64 {
            return Err(Ext4Error::NotExt4(format!(
                "{}: {} bytes, too small to hold a superblock",
                disk.name(),
                disk.len()
            )));
        }
        let mut sb = vec![0u8; SUPERBLOCK_LEN];
        disk.read(SUPERBLOCK_OFFSET, &mut sb, &|| "the superblock".into())?;
        if le16(&sb, 0x38) != MAGIC {
            return Err(Ext4Error::NotExt4(format!("{}: no ext2/3/4 magic", disk.name())));
        }
        let log = le32(&sb, 0x18);
        if log > 6 {
            return Err(corrupt("the superblock", format!("block size 1024 << {log}")));
        }
        let block_size = 1024u64 << log;
        let incompat = le32(&sb, 0x60);
        let ro = le32(&sb, 0x64);
        if incompat & INCOMPAT_META_BG != 0 {
            return Err(Ext4Error::Unsupported("meta_bg group descriptors".into()));
        }
        if ro & RO_COMPAT_BIGALLOC != 0 {
            return Err(Ext4Error::Unsupported("bigalloc clusters".into()));
        }
        let wide = incompat & INCOMPAT_64BIT != 0;
        let mut blocks = u64::from(le32(&sb, 0x4));
        if wide {
            blocks |= u64::from(le32(&sb, 0x150)) << 32;
        }
        let first_data_block = u64::from(le32(&sb, 0x14));
        let blocks_per_group = u64::from(le32(&sb, 0x20));
        let inodes_per_group = u64::from(le32(&sb, 0x28));
        let inodes = u64::from(le32(&sb, 0x0));
        let rev = le32(&sb, 0x4C);
        let inode_size = if rev == 0 { 128 } else { u64::from(le16(&sb, 0x58)) };
        let desc_size = if wide { usize::from(le16(&sb, 0xFE)) } else { 32 };
        let bad = |why: String| Err(corrupt("the superblock", why));
        if blocks_per_group == 0 || blocks_per_group > block_size * 8 {
            return bad(format!("{blocks_per_group} blocks per group"));
        }
        if inodes_per_group == 0 || inodes_per_group > block_size * 8 {
            return bad(format!("{inodes_per_group} inodes per group"));
        }
        if !(128..=block_size).contains(&inode_size) || !inode_size.is_power_of_two() {
            return bad(format!("inode size {inode_size}"));
        }
        if !(32..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return bad(format!("group descriptor size {desc_size}"));
        }
        if blocks.checked_mul(block_size).is_none_or(|b| b > disk.len()) {
            return Err(corrupt(
                "the superblock",
                format!(
                    "{blocks} blocks of {block_size} bytes, but the image holds {} bytes",
                    disk.len()
                ),
            ));
        }
        let ngroups = (blocks.saturating_sub(first_data_block)).div_ceil(blocks_per_group);
        if ngroups.saturating_mul(inodes_per_group) != inodes {
            return bad(format!("{inodes} inodes in {ngroups} groups of {inodes_per_group}"));
        }
        let csum_seed = if ro & RO_COMPAT_METADATA_CSUM != 0 {
            Some(if incompat & INCOMPAT_CSUM_SEED != 0 {
                le32(&sb, 0x270)
            } else {
                crate::crc::crc32c(!0, &sb[0x68..0x78])
            })
        } else {
            None
        };
        let gdt_at = (first_data_block + 1) * block_size;
        let mut gdt = vec![0u8; ngroups as usize * desc_size];
        disk.read(gdt_at, &mut gdt, &|| "the group descriptors".into())?;
        let mut groups = Vec::with_capacity(ngroups as usize);
        for (g, d) in gdt.chunks_exact(desc_size).enumerate() {
            let hi = |o: usize| if wide { u64::from(le32(d, o)) << 32 } else { 0 };
            let group = Group {
                block_bitmap: u64::from(le32(d, 0x0)) | hi(0x20),
                inode_bitmap: u64::from(le32(d, 0x4)) | hi(0x24),
                inode_table: u64::from(le32(d, 0x8)) | hi(0x28),
                flags: le16(d, 0x12),
                itable_unused: u32::from(le16(d, 0x1C))
                    | if wide { u32::from(le16(d, 0x32)) << 16 } else { 0 },
            };
            let table_blocks = (inodes_per_group * inode_size).div_ceil(block_size);
            for (what, at, len) in [
                ("block bitmap", group.block_bitmap, 1),
                ("inode bitmap", group.inode_bitmap, 1),
                ("inode table", group.inode_table, table_blocks),
            ] {
                if at.checked_add(len).is_none_or(|end| end > blocks) || at == 0 {
                    return Err(corrupt(
                        format!("group {g}'s descriptor"),
                        format!("its {what} at block {at} lies outside the filesystem"),
                    ));
                }
            }
            groups.push(group);
        }
        Ok(Self {
            disk,
            sb,
            block_size,
            blocks,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inodes,
            inode_size,
            desc_size,
            groups,
            gdt,
            csum_seed,
        })
    }

    /// Group `g`'s descriptor as on disk.
    pub fn descriptor(&self, g: usize) -> &[u8] {
        &self.gdt[g * self.desc_size..(g + 1) * self.desc_size]
    }

    pub fn compat(&self) -> u32 {
        le32(&self.sb, 0x5C)
    }

    pub fn incompat(&self) -> u32 {
        le32(&self.sb, 0x60)
    }

    pub fn ro_compat(&self) -> u32 {
        le32(&self.sb, 0x64)
    }

    /// Reads block `n` whole.
    pub fn block(&self, n: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        self.blocks(n, 1, what)
    }

    /// Blocks `first`..`first + count`, read at once.
    pub fn blocks(&self, first: u64, count: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        let mut b = vec![0u8; (count * self.block_size) as usize];
        self.blocks_into(first, &mut b, what)?;
        Ok(b)
    }

    /// Fills `buf` (a whole number of blocks) from block `first` on, read at once.
    pub fn blocks_into(&self, first: u64, buf: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        let count = buf.len() as u64 / self.block_size;
        self.check_blocks(first, count, what)?;
        self.disk.read(first * self.block_size, buf, what)
    }

    fn check_blocks(&self, first: u64, count: u64, what: &dyn Fn() -> String) -> Result<()> {
        match first.checked_add(count) {
            Some(end) if end <= self.blocks => Ok(()),
            _ => Err(corrupt(
                what(),
                format!("blocks {first}+{count} pass the last ({})", self.blocks),
            )),
        }
    }

    pub fn write_block(&self, n: u64, data: &[u8], what: &dyn Fn() -> String) -> Result<()> {
        self.write_blocks(n, data, what)
    }

    /// Writes `data` (a whole number of blocks) from block `first` on, at once.
    pub fn write_blocks(&self, first: u64, data: &[u8], what: &dyn Fn() -> String) -> Result<()> {
        self.check_blocks(first, (data.len() as u64).div_ceil(self.block_size), what)?;
        self.disk.write(first * self.block_size, data, what)
    }

    /// The byte offset of inode `ino` (1-based) in the image.
    pub fn inode_offset(&self, ino: u64) -> Result<u64> {
        if ino == 0 || ino > self.inodes {
            return Err(corrupt(format!("inode {ino}"), "no such inode number"));
        }
        let g = (ino - 1) / self.inodes_per_group;
        let i = (ino - 1) % self.inodes_per_group;
        Ok(self.groups[g as usize].inode_table * self.block_size + i * self.inode_size)
    }

    pub fn inode(&self, ino: u64) -> Result<Vec<u8>> {
        let mut b = vec![0u8; self.inode_size as usize];
        self.disk.read(self.inode_offset(ino)?, &mut b, &|| format!("inode {ino}"))?;
        Ok(b)
    }

    /// The inode numbers the bitmaps mark in use, in order.
    pub fn used_inodes(&self) -> Result<Vec<u64>> {
        let mut used = Vec::new();
        for (g, group) in self.groups.iter().enumerate() {
            if self.inodes_uninit(group) {
                continue;
            }
            let bitmap = self.block(group.inode_bitmap, &|| format!("group {g}'s inode bitmap"))?;
            for i in 0..self.inodes_per_group {
                if bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                    used.push(g as u64 * self.inodes_per_group + i + 1);
                }
            }
        }
        Ok(used)
    }

    /// Whether `group` is marked as holding no inode in use (its inode bitmap then need not
    /// be initialised on disk).
    pub fn inodes_uninit(&self, group: &Group) -> bool {
        group.flags & BG_INODE_UNINIT != 0 && self.csum_or_gdt_csum()
    }

    /// Whether group descriptors carry checksums and the uninit flags mean anything.
    pub fn csum_or_gdt_csum(&self) -> bool {
        self.ro_compat() & (RO_COMPAT_METADATA_CSUM | 0x10) != 0
    }

    /// Whether `block` is marked in use in its group's bitmap (a group whose bitmap was never
    /// initialised has only its own metadata in use, which this reports as free).
    pub fn block_bitmap(&self, g: usize) -> Result<Option<Vec<u8>>> {
        let group = &self.groups[g];
        if group.flags & BG_BLOCK_UNINIT != 0 && self.csum_or_gdt_csum() {
            return Ok(None);
        }
        self.block(group.block_bitmap, &|| format!("group {g}'s block bitmap")).map(Some)
    }

    /// Groups holding a backup superblock (and group descriptor copy), besides group 0.
    pub fn backup_groups(&self) -> Vec<u64> {
        let n = self.groups.len() as u64;
        if self.compat() & COMPAT_SPARSE_SUPER2 != 0 {
            let mut v: Vec<u64> = [le32(&self.sb, 0x24C), le32(&self.sb, 0x250)]
                .iter()
                .map(|&g| u64::from(g))
                .collect();
            v.retain(|&g| g != 0 && g < n);
            v.dedup();
            return v;
        }
        if self.ro_compat() & RO_COMPAT_SPARSE_SUPER == 0 {
            return (1..n).collect();
        }
        let mut v = vec![];
        if n > 1 {
            v.push(1);
        }
        for base in [3u64, 5, 7] {
            let mut p = base;
            while p < n {
                v.push(p);
                p = p.saturating_mul(base);
            }
        }
        v.sort_unstable();
        v
    }

    /// The first block of group `g`.
    pub fn group_start(&self, g: u64) -> u64 {
        self.first_data_block + g * self.blocks_per_group
    }
}

/// The inode's mode's file type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
    Other,
}

pub fn kind(inode: &[u8]) -> Kind {
    match le16(inode, 0) & 0xF000 {
        0x8000 => Kind::Regular,
        0x4000 => Kind::Directory,
        0xA000 => Kind::Symlink,
        _ => Kind::Other,
    }
}

pub fn inode_flags(inode: &[u8]) -> u32 {
    le32(inode, 0x20)
}

/// The inode's size in bytes.
pub fn inode_size_bytes(inode: &[u8]) -> u64 {
    u64::from(le32(inode, 0x4)) | u64::from(le32(inode, 0x6C)) << 32
}
