//! The ext4 lifecycle with the worker image's own e2fsprogs: create, check, shrink, measure;
//! and, for a reproducible build, the raw-image passes of `rootbox-ext4`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use rootbox_ext4::canon;
use rootbox_proto::Identity;

pub const BLOCK: u64 = 4096;
const MKE2FS: &str = "/sbin/mke2fs";
const E2FSCK: &str = "/sbin/e2fsck";
const RESIZE2FS: &str = "/sbin/resize2fs";

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("running {tool}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {output}")]
    Tool { tool: &'static str, status: String, output: String },
    #[error(
        "the content needs at least {need} bytes ({need_mib} MiB) but --size asks for {have} bytes"
    )]
    TooSmall { need: u64, need_mib: u64, have: u64 },
    #[error("the device holds {have} bytes but the filesystem needs {need}")]
    DeviceTooSmall { need: u64, have: u64 },
    #[error("reading the superblock of {0}")]
    Superblock(String, #[source] std::io::Error),
    /// The raw-image passes of a reproducible build (see [`rootbox_ext4::canon`]).
    #[error("{step} {dev}")]
    Image {
        step: &'static str,
        dev: String,
        #[source]
        source: rootbox_ext4::Ext4Error,
    },
    /// `resize2fs -P` printed no minimum size (`source`: a number it printed did not parse).
    #[error("unexpected output from resize2fs -P: {output}")]
    Estimate {
        output: String,
        #[source]
        source: Option<std::num::ParseIntError>,
    },
}

fn run(tool: &'static str, args: &[&str]) -> Result<String, Ext4Error> {
    let out = Command::new(tool)
        .args(args)
        .env("LANG", "C")
        .output()
        .map_err(|source| Ext4Error::Spawn { tool, source })?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Ext4Error::Tool {
            tool,
            status: out.status.to_string(),
            output: tail.join(" | "),
        });
    }
    Ok(text)
}

/// Journal size for content of about `hint` bytes: 1/8 of it, a power of two in 4..=64 MiB.
pub fn journal_mib(hint: u64) -> u64 {
    let target = (hint / 8) >> 20;
    let mut j = 4;
    while j * 2 <= target && j < 64 {
        j *= 2;
    }
    j
}

/// The size, in blocks, the filesystem keeps room to grow to online (1 TiB): its reserved GDT
/// blocks. mke2fs's default is 1024 × the initial size, and the initial size is the sparse
/// scratch size, up to 32 × the compressed image while layers still stream in; resize2fs
/// keeps reserved GDT blocks when it shrinks. Past 1 TiB the kernel's online resize still
/// grows the filesystem (meta_bg), and resize2fs grows it offline.
const GROWTH_MAX_BLOCKS: u64 = (1 << 40) / BLOCK;

/// Creates the filesystem on `dev`. 256-byte inodes (nanosecond and post-2038 times),
/// one inode per 4 KiB so images of many small files fit, no reserved blocks.
///
/// No `flex_bg`: with it, `resize2fs -P` counts a whole flex group's metadata against every
/// block group, so the shrink stops far above the content. Measured with Debian minbase
/// (238 MiB used) shrunk from a 3.9 GiB scratch filesystem: 396 MiB with flex_bg and a
/// 16 MiB journal, 406 MiB with a 32 MiB one (the pipelined pull's journal), 438 MiB with
/// 64 MiB; without flex_bg 238, 254 and 294 MiB, the used size each time, from any starting
/// size. The default reserved GDT blocks cost another 10 MiB (see [`GROWTH_MAX_BLOCKS`]).
///
/// The journal goes first, after group 0's inode table (`location=0`), not in the middle of
/// the scratch filesystem where mke2fs puts it, from where the shrink would have to move it:
/// measured on Debian minbase shrunk from 3 GiB, resize2fs took 0.30 s with the journal in the
/// middle, 0.19-0.22 s with it first (with the device's flushes off, see `tune.rs`).
///
/// With an `identity`, the UUID and directory hash seed are the host's (derived from the
/// build's inputs) instead of random ones.
pub fn mkfs(
    dev: &Path,
    label: Option<&str>,
    content_hint: u64,
    identity: Option<&Identity>,
) -> Result<(), Ext4Error> {
    let journal = format!("size={},location=0", journal_mib(content_hint));
    let mut extended = format!("lazy_itable_init=1,lazy_journal_init=1,resize={GROWTH_MAX_BLOCKS}");
    if let Some(id) = identity {
        extended.push_str(&format!(",hash_seed={}", id.hash_seed));
    }
    let dev = dev.to_string_lossy();
    #[rustfmt::skip]
    let mut args = vec![
        "-t", "ext4", "-F", "-q",
        "-b", "4096",
        "-I", "256",
        "-i", "4096",
        "-O", "^flex_bg",
        "-m", "0",
        "-J", &journal,
        "-E", &extended,
    ];
    if let Some(l) = label {
        args.extend(["-L", l]);
    }
    if let Some(id) = identity {
        args.extend(["-U", &id.uuid]);
    }
    args.push(&dev);
    run(MKE2FS, &args).map(drop)
}

/// `e2fsck -fn`: must find nothing to fix.
pub fn check(dev: &Path) -> Result<(), Ext4Error> {
    run(E2FSCK, &["-f", "-n", &dev.to_string_lossy()]).map(drop)
}

/// What `resize2fs -P` answers about the filesystem's minimum size, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minimum {
    /// Its answer: the blocks the content needs, plus a safety margin for the extent trees
    /// that moving blocks may grow, of 1/500 of what the shrink removes. The shrink is only
    /// guaranteed to finish down to here.
    pub safe: u64,
    /// What it answers once shrunk to `safe` (the same need, a margin of 1/500 of the few
    /// blocks `safe` adds to it): the size `--size auto` is computed from.
    pub least: u64,
}

/// The minimum size, from one `resize2fs -P`. Before, the shrink went to its answer and
/// asked again, because the answer over-estimates in proportion to the filesystem's current
/// size (Debian minbase on a 3 GiB scratch filesystem: 66,581 blocks, then 65,139 once
/// shrunk); with `-d 32` resize2fs prints its need and margin, from which the second answer
/// is known without the first shrink.
pub fn minimum(dev: &Path) -> Result<Minimum, Ext4Error> {
    let out = run(RESIZE2FS, &["-d", "32", "-P", &dev.to_string_lossy()])?;
    parse_minimum(&out).map_err(|source| Ext4Error::Estimate { output: out, source })
}

fn parse_minimum(out: &str) -> Result<Minimum, Option<std::num::ParseIntError>> {
    let field = |name: &str| {
        out.lines().find_map(|l| l.split_once(name).map(|(_, n)| n.trim().parse::<u64>()))
    };
    let safe = field("minimum size of the filesystem:").ok_or(None)?.map_err(Some)?;
    let least = match (field("Estimated blocks needed:"), field("Extents safety margin:")) {
        (Some(Ok(need)), Some(Ok(margin))) if need + margin == safe => need + margin.div_ceil(500),
        // No debug lines (or a margin capped otherwise): the safe answer only.
        _ => safe,
    };
    Ok(Minimum { safe: safe * BLOCK, least: least * BLOCK })
}

/// The resizes that take the filesystem to `size`: one, unless `size` is below what resize2fs
/// guarantees to reach from here ([`Minimum::safe`]), then first to that.
pub fn shrink_steps(min: Minimum, size: u64) -> Vec<u64> {
    if size < min.safe {
        vec![min.safe, size]
    } else {
        vec![size]
    }
}

/// The size `policy` asks for, given the minimum and what the device holds.
pub fn target_size(
    min: u64,
    device: u64,
    policy: rootbox_proto::SizePolicy,
) -> Result<u64, Ext4Error> {
    use rootbox_proto::SizePolicy;
    const MIB: u64 = 1 << 20;
    let want = match policy {
        SizePolicy::Auto { headroom_pct } => {
            let with = min + min * u64::from(headroom_pct) / 100;
            with.div_ceil(MIB) * MIB
        }
        SizePolicy::Exact { bytes } => {
            if bytes < min {
                return Err(Ext4Error::TooSmall {
                    need: min,
                    need_mib: min.div_ceil(MIB),
                    have: bytes,
                });
            }
            bytes
        }
    };
    if want > device {
        return match policy {
            SizePolicy::Auto { .. } => Ok(device / BLOCK * BLOCK),
            SizePolicy::Exact { .. } => Err(Ext4Error::DeviceTooSmall { need: want, have: device }),
        };
    }
    Ok(want)
}

/// Resizes to exactly `bytes` (a multiple of the block size).
pub fn resize(dev: &Path, bytes: u64) -> Result<(), Ext4Error> {
    let blocks = (bytes / BLOCK).to_string();
    run(RESIZE2FS, &["-f", &dev.to_string_lossy(), &blocks]).map(drop)
}

/// Sizes read from the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

pub fn usage(dev: &Path) -> Result<Usage, Ext4Error> {
    let err = |e| Ext4Error::Superblock(dev.display().to_string(), e);
    let f = File::open(dev).map_err(err)?;
    let mut sb = [0u8; 1024];
    f.read_exact_at(&mut sb, 1024).map_err(err)?;
    Ok(parse_superblock(&sb))
}

fn parse_superblock(sb: &[u8; 1024]) -> Usage {
    let u32_at = |o: usize| u64::from(u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]));
    let inodes = u32_at(0x0);
    let blocks = u32_at(0x4) | (u32_at(0x150) << 32);
    let free_blocks = u32_at(0xC) | (u32_at(0x158) << 32);
    let free_inodes = u32_at(0x10);
    let block_size = 1024u64 << u32_at(0x18);
    Usage {
        size_bytes: blocks * block_size,
        used_bytes: (blocks - free_blocks.min(blocks)) * block_size,
        inodes_used: inodes - free_inodes.min(inodes),
    }
}

/// Opens the device for the raw-image passes.
fn open_image(dev: &Path, step: &'static str) -> Result<rootbox_ext4::Fs, Ext4Error> {
    let err = |source| Ext4Error::Image { step, dev: dev.display().to_string(), source };
    let io = |source| {
        err(rootbox_ext4::Ext4Error::Read { what: "the device".into(), offset: 0, source })
    };
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(dev).map_err(io)?;
    let len = {
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::End(0)).map_err(io)?
    };
    rootbox_ext4::Fs::open(rootbox_ext4::Disk::new(f, len, dev.display().to_string())).map_err(err)
}

/// Sets the times mke2fs took from the clock to `epoch` (see [`rootbox_ext4::canon::stamp`]).
pub fn stamp(dev: &Path, epoch: u64) -> Result<(), Ext4Error> {
    const STEP: &str = "fixing the new filesystem's times on";
    let fs = open_image(dev, STEP)?;
    rootbox_ext4::canon::stamp(&fs, epoch).map(drop).map_err(|source| Ext4Error::Image {
        step: STEP,
        dev: dev.display().to_string(),
        source,
    })
}

/// How far each group's inode table was ever used, read after the unmount and before the
/// shrink for [`canonicalise`] (see [`rootbox_ext4::canon::inode_marks`]).
pub fn inode_marks(dev: &Path) -> Result<Vec<u64>, Ext4Error> {
    Ok(canon::inode_marks(&open_image(dev, "reading the inode tables' marks on")?))
}

/// The canonicalising pass (see [`rootbox_ext4::canon`]); `marks` from [`inode_marks`].
pub fn canonicalise(dev: &Path, epoch: u64, marks: &[u64]) -> Result<canon::Report, Ext4Error> {
    const STEP: &str = "canonicalising";
    let fs = open_image(dev, STEP)?;
    let opts = canon::Options { epoch };
    canon::canonicalise_marked(&fs, opts, Some(marks)).map_err(|source| Ext4Error::Image {
        step: STEP,
        dev: dev.display().to_string(),
        source,
    })
}

/// The e2fsprogs steps of the session's build, behind a trait so the recorder can stand in.
pub trait Tools {
    fn mkfs(
        &self,
        dev: &Path,
        label: Option<&str>,
        content_hint: u64,
        identity: Option<&Identity>,
    ) -> Result<(), Ext4Error>;
    /// Right after [`Tools::mkfs`]: mke2fs's own inodes' times → the epoch.
    fn stamp(&self, dev: &Path, epoch: u64) -> Result<(), Ext4Error>;
    /// After the last unmount, before the shrink: how far each inode table was used.
    fn inode_marks(&self, dev: &Path) -> Result<Vec<u64>, Ext4Error>;
    /// After the shrink: what the kernel randomised → fixed values.
    fn canonicalise(
        &self,
        dev: &Path,
        epoch: u64,
        marks: &[u64],
    ) -> Result<canon::Report, Ext4Error>;
    fn minimum(&self, dev: &Path) -> Result<Minimum, Ext4Error>;
    fn resize(&self, dev: &Path, bytes: u64) -> Result<(), Ext4Error>;
    fn check(&self, dev: &Path) -> Result<(), Ext4Error>;
    fn usage(&self, dev: &Path) -> Result<Usage, Ext4Error>;
}

/// The worker image's own e2fsprogs.
pub struct E2fsprogs;

impl Tools for E2fsprogs {
    fn mkfs(
        &self,
        dev: &Path,
        label: Option<&str>,
        content_hint: u64,
        identity: Option<&Identity>,
    ) -> Result<(), Ext4Error> {
        mkfs(dev, label, content_hint, identity)
    }
    fn stamp(&self, dev: &Path, epoch: u64) -> Result<(), Ext4Error> {
        stamp(dev, epoch)
    }
    fn inode_marks(&self, dev: &Path) -> Result<Vec<u64>, Ext4Error> {
        inode_marks(dev)
    }
    fn canonicalise(
        &self,
        dev: &Path,
        epoch: u64,
        marks: &[u64],
    ) -> Result<canon::Report, Ext4Error> {
        canonicalise(dev, epoch, marks)
    }
    fn minimum(&self, dev: &Path) -> Result<Minimum, Ext4Error> {
        minimum(dev)
    }
    fn resize(&self, dev: &Path, bytes: u64) -> Result<(), Ext4Error> {
        resize(dev, bytes)
    }
    fn check(&self, dev: &Path) -> Result<(), Ext4Error> {
        check(dev)
    }
    fn usage(&self, dev: &Path) -> Result<Usage, Ext4Error> {
        usage(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rootbox_proto::SizePolicy;

    /// What Debian's resize2fs 1.47.0 prints with `-d 32 -P` for Debian minbase on a 3 GiB
    /// scratch filesystem.
    const DEBUG_MIN: &str = "resize2fs 1.47.0 (5-Feb-2023)
fs has 6776 inodes, 1 groups required.
fs requires 60781 data blocks.
With 1 group(s), we have 30589 blocks available.
Added 1 extra group(s), blks_needed 60781, data_blocks 61178, last_start 30589
Last group's overhead is 2179
Need 30192 data blocks in last group
Final size of last group is 32371
Estimated blocks needed: 65139
Extents safety margin: 1442
Estimated minimum size of the filesystem: 66581
";

    #[test]
    fn the_minimum_is_known_from_one_answer() {
        let min = parse_minimum(DEBUG_MIN).unwrap_or_else(|e| panic!("{e:?}"));
        // 65,139 + ceil(1,442 / 500): what resize2fs -P answered once shrunk to 66,581.
        assert_eq!(min, Minimum { safe: 66581 * BLOCK, least: 65142 * BLOCK });
        let plain = "Estimated minimum size of the filesystem: 66581\n";
        let min = parse_minimum(plain).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(min, Minimum { safe: 66581 * BLOCK, least: 66581 * BLOCK });
        // Lines that do not add up are not believed.
        let odd = DEBUG_MIN.replace("margin: 1442", "margin: 17");
        let min = parse_minimum(&odd).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(min.least, min.safe);
        assert!(matches!(parse_minimum("resize2fs 1.47.0\n"), Err(None)));
        let bad = DEBUG_MIN.replace(": 66581", ": 6x");
        assert!(matches!(parse_minimum(&bad), Err(Some(_))));
    }

    #[test]
    fn a_shrink_below_the_safe_minimum_goes_there_first() {
        let min = Minimum { safe: 100 * BLOCK, least: 90 * BLOCK };
        assert_eq!(shrink_steps(min, 120 * BLOCK), vec![120 * BLOCK]);
        assert_eq!(shrink_steps(min, 100 * BLOCK), vec![100 * BLOCK]);
        assert_eq!(shrink_steps(min, 92 * BLOCK), vec![100 * BLOCK, 92 * BLOCK]);
    }

    #[test]
    fn journal_sizes() {
        assert_eq!(journal_mib(0), 4);
        assert_eq!(journal_mib(170 << 20), 16);
        assert_eq!(journal_mib(10 << 30), 64);
    }

    #[test]
    fn size_policy() {
        const M: u64 = 1 << 20;
        assert_eq!(
            target_size(100 * M, 1 << 40, SizePolicy::Auto { headroom_pct: 20 }).unwrap(),
            120 * M
        );
        assert_eq!(
            target_size(100 * M + 1, 1 << 40, SizePolicy::Auto { headroom_pct: 0 }).unwrap(),
            101 * M
        );
        assert_eq!(
            target_size(100 * M, 110 * M, SizePolicy::Auto { headroom_pct: 20 }).unwrap(),
            110 * M
        );
        assert_eq!(
            target_size(100 * M, 1 << 40, SizePolicy::Exact { bytes: 200 * M }).unwrap(),
            200 * M
        );
        let e = target_size(100 * M, 1 << 40, SizePolicy::Exact { bytes: 50 * M }).unwrap_err();
        assert!(e.to_string().contains("needs at least 104857600 bytes (100 MiB)"), "{e}");
    }

    #[test]
    fn superblock_fields() {
        let mut sb = [0u8; 1024];
        sb[0..4].copy_from_slice(&1000u32.to_le_bytes());
        sb[4..8].copy_from_slice(&5000u32.to_le_bytes());
        sb[0xC..0x10].copy_from_slice(&1000u32.to_le_bytes());
        sb[0x10..0x14].copy_from_slice(&900u32.to_le_bytes());
        sb[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes());
        let u = parse_superblock(&sb);
        assert_eq!(u, Usage { size_bytes: 5000 * 4096, used_bytes: 4000 * 4096, inodes_used: 100 });
    }
}
