//! The named fields of the on-disk structures, for reporting which differ.

/// (name, byte offset, length) of a structure's fields, in on-disk order.
pub type Table = &'static [(&'static str, usize, usize)];

pub const SUPERBLOCK: Table = &[
    ("s_inodes_count", 0x0, 4),
    ("s_blocks_count_lo", 0x4, 4),
    ("s_r_blocks_count_lo", 0x8, 4),
    ("s_free_blocks_count_lo", 0xC, 4),
    ("s_free_inodes_count", 0x10, 4),
    ("s_first_data_block", 0x14, 4),
    ("s_log_block_size", 0x18, 4),
    ("s_log_cluster_size", 0x1C, 4),
    ("s_blocks_per_group", 0x20, 4),
    ("s_clusters_per_group", 0x24, 4),
    ("s_inodes_per_group", 0x28, 4),
    ("s_mtime", 0x2C, 4),
    ("s_wtime", 0x30, 4),
    ("s_mnt_count", 0x34, 2),
    ("s_max_mnt_count", 0x36, 2),
    ("s_magic", 0x38, 2),
    ("s_state", 0x3A, 2),
    ("s_errors", 0x3C, 2),
    ("s_minor_rev_level", 0x3E, 2),
    ("s_lastcheck", 0x40, 4),
    ("s_checkinterval", 0x44, 4),
    ("s_creator_os", 0x48, 4),
    ("s_rev_level", 0x4C, 4),
    ("s_def_resuid", 0x50, 2),
    ("s_def_resgid", 0x52, 2),
    ("s_first_ino", 0x54, 4),
    ("s_inode_size", 0x58, 2),
    ("s_block_group_nr", 0x5A, 2),
    ("s_feature_compat", 0x5C, 4),
    ("s_feature_incompat", 0x60, 4),
    ("s_feature_ro_compat", 0x64, 4),
    ("s_uuid", 0x68, 16),
    ("s_volume_name", 0x78, 16),
    ("s_last_mounted", 0x88, 64),
    ("s_algorithm_usage_bitmap", 0xC8, 4),
    ("s_prealloc_blocks", 0xCC, 1),
    ("s_prealloc_dir_blocks", 0xCD, 1),
    ("s_reserved_gdt_blocks", 0xCE, 2),
    ("s_journal_uuid", 0xD0, 16),
    ("s_journal_inum", 0xE0, 4),
    ("s_journal_dev", 0xE4, 4),
    ("s_last_orphan", 0xE8, 4),
    ("s_hash_seed", 0xEC, 16),
    ("s_def_hash_version", 0xFC, 1),
    ("s_jnl_backup_type", 0xFD, 1),
    ("s_desc_size", 0xFE, 2),
    ("s_default_mount_opts", 0x100, 4),
    ("s_first_meta_bg", 0x104, 4),
    ("s_mkfs_time", 0x108, 4),
    ("s_jnl_blocks", 0x10C, 68),
    ("s_blocks_count_hi", 0x150, 4),
    ("s_r_blocks_count_hi", 0x154, 4),
    ("s_free_blocks_count_hi", 0x158, 4),
    ("s_min_extra_isize", 0x15C, 2),
    ("s_want_extra_isize", 0x15E, 2),
    ("s_flags", 0x160, 4),
    ("s_raid_stride", 0x164, 2),
    ("s_mmp_update_interval", 0x166, 2),
    ("s_mmp_block", 0x168, 8),
    ("s_raid_stripe_width", 0x170, 4),
    ("s_log_groups_per_flex", 0x174, 1),
    ("s_checksum_type", 0x175, 1),
    ("s_encryption_level", 0x176, 1),
    ("s_reserved_pad", 0x177, 1),
    ("s_kbytes_written", 0x178, 8),
    ("s_snapshot", 0x180, 20),
    ("s_error_count", 0x194, 4),
    ("s_first_error", 0x198, 52),
    ("s_last_error", 0x1CC, 52),
    ("s_mount_opts", 0x200, 64),
    ("s_quota_inums", 0x240, 8),
    ("s_overhead_clusters", 0x248, 4),
    ("s_backup_bgs", 0x24C, 8),
    ("s_encrypt", 0x254, 20),
    ("s_lpf_ino", 0x268, 4),
    ("s_prj_quota_inum", 0x26C, 4),
    ("s_checksum_seed", 0x270, 4),
    ("s_wtime_hi", 0x274, 1),
    ("s_mtime_hi", 0x275, 1),
    ("s_mkfs_time_hi", 0x276, 1),
    ("s_lastcheck_hi", 0x277, 1),
    ("s_error_time_hi", 0x278, 4),
    ("s_encoding", 0x27C, 4),
    ("s_orphan_file_inum", 0x280, 4),
    ("s_reserved", 0x284, 0x3FC - 0x284),
    ("s_checksum", 0x3FC, 4),
];

pub const GROUP_DESC: Table = &[
    ("bg_block_bitmap_lo", 0x0, 4),
    ("bg_inode_bitmap_lo", 0x4, 4),
    ("bg_inode_table_lo", 0x8, 4),
    ("bg_free_blocks_count_lo", 0xC, 2),
    ("bg_free_inodes_count_lo", 0xE, 2),
    ("bg_used_dirs_count_lo", 0x10, 2),
    ("bg_flags", 0x12, 2),
    ("bg_exclude_bitmap_lo", 0x14, 4),
    ("bg_block_bitmap_csum_lo", 0x18, 2),
    ("bg_inode_bitmap_csum_lo", 0x1A, 2),
    ("bg_itable_unused_lo", 0x1C, 2),
    ("bg_checksum", 0x1E, 2),
    ("bg_block_bitmap_hi", 0x20, 4),
    ("bg_inode_bitmap_hi", 0x24, 4),
    ("bg_inode_table_hi", 0x28, 4),
    ("bg_free_blocks_count_hi", 0x2C, 2),
    ("bg_free_inodes_count_hi", 0x2E, 2),
    ("bg_used_dirs_count_hi", 0x30, 2),
    ("bg_itable_unused_hi", 0x32, 2),
    ("bg_exclude_bitmap_hi", 0x34, 4),
    ("bg_block_bitmap_csum_hi", 0x38, 2),
    ("bg_inode_bitmap_csum_hi", 0x3A, 2),
    ("bg_reserved", 0x3C, 4),
];

pub const INODE: Table = &[
    ("i_mode", 0x0, 2),
    ("i_uid", 0x2, 2),
    ("i_size_lo", 0x4, 4),
    ("i_atime", 0x8, 4),
    ("i_ctime", 0xC, 4),
    ("i_mtime", 0x10, 4),
    ("i_dtime", 0x14, 4),
    ("i_gid", 0x18, 2),
    ("i_links_count", 0x1A, 2),
    ("i_blocks_lo", 0x1C, 4),
    ("i_flags", 0x20, 4),
    ("i_version", 0x24, 4),
    ("i_block", 0x28, 60),
    ("i_generation", 0x64, 4),
    ("i_file_acl_lo", 0x68, 4),
    ("i_size_high", 0x6C, 4),
    ("i_obso_faddr", 0x70, 4),
    ("i_blocks_high", 0x74, 2),
    ("i_file_acl_high", 0x76, 2),
    ("i_uid_high", 0x78, 2),
    ("i_gid_high", 0x7A, 2),
    ("i_checksum_lo", 0x7C, 2),
    ("i_reserved", 0x7E, 2),
    ("i_extra_isize", 0x80, 2),
    ("i_checksum_hi", 0x82, 2),
    ("i_ctime_extra", 0x84, 4),
    ("i_mtime_extra", 0x88, 4),
    ("i_atime_extra", 0x8C, 4),
    ("i_crtime", 0x90, 4),
    ("i_crtime_extra", 0x94, 4),
    ("i_version_hi", 0x98, 4),
    ("i_projid", 0x9C, 4),
];

/// The names of the fields of `table` in which `a` and `b` differ; bytes past the table
/// (an inode's in-inode xattrs) are named `rest`.
pub fn differing(table: Table, a: &[u8], b: &[u8]) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut end = 0;
    for &(name, o, len) in table {
        if o + len <= a.len().min(b.len()) && a[o..o + len] != b[o..o + len] {
            out.push(name);
        }
        end = end.max(o + len);
    }
    if a.get(end..) != b.get(end..) {
        out.push("rest");
    }
    out
}

/// A field's bytes as a reader would quote them: a little-endian number up to 8 bytes,
/// else hex.
pub fn show(table: Table, name: &str, raw: &[u8]) -> String {
    let Some(&(_, o, len)) = table.iter().find(|f| f.0 == name) else { return String::new() };
    let Some(bytes) = raw.get(o..o + len) else { return String::new() };
    if len <= 8 {
        let mut v = [0u8; 8];
        v[..len].copy_from_slice(bytes);
        u64::from_le_bytes(v).to_string()
    } else {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
