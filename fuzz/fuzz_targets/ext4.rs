//! `rootbox-ext4` on corrupt images: the reader under `rootbox diff` (images a user hands the
//! host) and the canonicalising pass (images a sandboxed build wrote). A real image is made
//! once with mke2fs (1 KiB blocks, four groups of 1 MiB, metadata_csum, a journal, an htree directory,
//! a fragmented file), and each input is a list of byte patches aimed at its metadata: the
//! superblock, the descriptors, every used inode, the tree and directory blocks. Beyond "no
//! panic, no hang, no unbounded allocation" it checks that the pass never changes the
//! image's length and that comparing an image with itself finds nothing.
#![no_main]

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rootbox_ext4::{canon, diff, map, Disk, Fs};

struct Base {
    bytes: Vec<u8>,
    /// (offset, length) of the metadata worth patching.
    targets: Vec<(u64, u64)>,
    /// A scratch file each input is written to.
    scratch: File,
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(matches!(out.status.code(), Some(0 | 1)), "{cmd:?}: {out:?}");
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("many")).expect("mkdir");
        for i in 0..80 {
            fs::write(src.join(format!("many/entry-with-a-long-name-{i:03}")), [b'x'; 3])
                .expect("write");
        }
        let sparse = File::create(src.join("sparse")).expect("create");
        for i in 0..10u64 {
            sparse.write_all_at(&[i as u8 + 1; 1024], i * 8192).expect("write");
        }
        std::os::unix::fs::symlink("sparse", src.join("link")).expect("symlink");
        let img = dir.path().join("base.img");
        let tool = |name: &str| {
            ["/sbin", "/usr/sbin", "/usr/bin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("the ext4 target needs {name} (e2fsprogs)"))
        };
        run(Command::new(tool("mke2fs"))
            .args(["-q", "-F", "-t", "ext4", "-b", "1024", "-g", "1024", "-N", "256"])
            .args(["-I", "256", "-O", "metadata_csum,^flex_bg", "-J", "size=1", "-d"])
            .arg(&src)
            .arg(&img)
            .arg("4M")
            .env("E2FSPROGS_FAKE_TIME", "1700000000"));
        run(Command::new(tool("e2fsck")).arg("-fyD").arg(&img));
        let bytes = fs::read(&img).expect("read");
        let fs_base = Fs::open(Disk::open(&img).expect("open")).expect("the base image reads");
        let mut targets = vec![(1024, 0x180), (2048, 64 * 4)];
        for ino in fs_base.used_inodes().expect("bitmaps") {
            targets.push((fs_base.inode_offset(ino).expect("inode"), 0xA0));
            let raw = fs_base.inode(ino).expect("inode");
            if let Ok(m) = map::file_map(&fs_base, ino, &raw) {
                targets.extend(m.tree.iter().map(|&b| (b * 1024, 48)));
                targets.extend(m.data.iter().take(2).map(|r| (r.physical * 1024, 64)));
            }
        }
        let scratch_path = dir.path().join("input.img");
        let scratch = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(scratch_path)
            .expect("scratch");
        Base { bytes, targets, scratch, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let b = base();
    let mut img = b.bytes.clone();
    // Each 4 bytes: which target (2), where in it (1), the new byte (1).
    for p in data.chunks_exact(4) {
        let (start, len) =
            b.targets[usize::from(u16::from_le_bytes([p[0], p[1]])) % b.targets.len()];
        let at = (start + u64::from(p[2]) % len) as usize;
        if let Some(x) = img.get_mut(at) {
            *x = p[3];
        }
    }
    b.scratch.set_len(0).expect("truncate");
    b.scratch.write_all_at(&img, 0).expect("write");
    let len = img.len() as u64;
    let open = || {
        let f = b.scratch.try_clone().expect("dup");
        Fs::open(Disk::new(f, len, "input"))
    };
    let Ok(fs_in) = open() else { return };
    let clean = Fs::open(Disk::new(b.scratch.try_clone().expect("dup"), len, "input"));
    if let Ok(same) = clean {
        if let Ok(d) = diff::diff(&fs_in, &same) {
            assert!(d.is_empty(), "an image differs from itself: {:?}", d.first());
        }
    }
    let _ = canon::canonicalise(&fs_in, canon::Options { epoch: 0 });
    let after = b.scratch.metadata().expect("stat").len();
    assert_eq!(after, len, "the pass changed the image's length");
});
