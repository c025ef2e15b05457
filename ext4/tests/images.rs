//! The canonicalising pass and the comparison on real images made by e2fsprogs: generations
//! and times scrambled with debugfs (as the kernel leaves them), then canonicalised, must give
//! an image `e2fsck -fn` accepts, and two scrambles must canonicalise to the same bytes.
//!
//! Needs mke2fs, debugfs and e2fsck (e2fsprogs); without them the tests say so and pass,
//! except under `ROOTBOX_STRICT=1` (CI), where they fail.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use rootbox_ext4::{canon, diff, Disk, Fs};

fn tool(name: &str) -> Option<PathBuf> {
    ["/sbin", "/usr/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    match (tool("mke2fs"), tool("debugfs"), tool("e2fsck")) {
        (Some(m), Some(d), Some(e)) => Some((m, d, e)),
        _ if std::env::var_os("ROOTBOX_STRICT").is_some() => {
            panic!("ROOTBOX_STRICT=1 and e2fsprogs (mke2fs, debugfs, e2fsck) is not installed")
        }
        _ => {
            eprintln!("SKIPPED: e2fsprogs (mke2fs, debugfs, e2fsck) is not installed");
            None
        }
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("running {cmd:?}: {e}"),
    }
}

/// A tree with what the pass must re-sign: a directory big enough for an htree, a file
/// fragmented into more extents than the inode holds (an extent tree node), small files,
/// a symlink, and an xattr.
fn source_tree(dir: &Path) {
    let many = dir.join("many");
    fs::create_dir_all(&many).expect("mkdir");
    for i in 0..600 {
        fs::write(many.join(format!("file-with-a-longish-name-{i:04}")), format!("{i}\n"))
            .expect("write");
    }
    let sparse = File::create(dir.join("sparse")).expect("create");
    for i in 0..12u64 {
        use std::os::unix::fs::FileExt;
        sparse.write_all_at(&[i as u8 + 1; 4096], i * 65536).expect("write");
    }
    fs::create_dir_all(dir.join("etc")).expect("mkdir");
    fs::write(dir.join("etc/hostname"), "rootbox\n").expect("write");
    std::os::unix::fs::symlink("etc/hostname", dir.join("link")).expect("symlink");
}

/// Makes the image, indexes its directories, then gives every inode in use a different
/// generation and change time, as the kernel would.
fn scrambled_image(dir: &Path, name: &str, salt: u32) -> PathBuf {
    let (mke2fs, debugfs, e2fsck) = tools().expect("checked by the caller");
    let src = dir.join("src");
    if !src.exists() {
        source_tree(&src);
    }
    // One base image for every scramble: mke2fs -d copies the source's atimes, which
    // reading it changes.
    let base = dir.join("base.img");
    let img = dir.join(name);
    if base.exists() {
        fs::copy(&base, &img).expect("copy");
        return scramble(&img, salt, &debugfs, &e2fsck);
    }
    let out = run(Command::new(&mke2fs)
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-O", "metadata_csum,^flex_bg"])
        .args(["-U", "0e2f0000-1111-4222-8333-444455556666"])
        .args(["-E", "hash_seed=0e2f0000-1111-4222-8333-444455556667"])
        .arg("-d")
        .arg(&src)
        .arg(&img)
        .arg("32M")
        .env("E2FSPROGS_FAKE_TIME", "1700000000"));
    assert!(out.status.success(), "mke2fs: {}", String::from_utf8_lossy(&out.stderr));
    // -D indexes the big directory (an htree root and leaves); exit 1 = "fixed something".
    let out = run(Command::new(&e2fsck).args(["-fyD"]).arg(&img));
    assert!(matches!(out.status.code(), Some(0 | 1)), "e2fsck -fyD: {out:?}");
    fs::copy(&img, &base).expect("copy");
    scramble(&img, salt, &debugfs, &e2fsck)
}

fn scramble(img: &Path, salt: u32, debugfs: &Path, e2fsck: &Path) -> PathBuf {
    let fs = Fs::open(Disk::open(img).expect("open")).expect("ext4");
    let mut script = String::new();
    for ino in fs.used_inodes().expect("bitmaps") {
        if ino == 2 || ino >= 11 {
            let g = (ino as u32).wrapping_mul(2_654_435_761) ^ salt;
            script.push_str(&format!("sif <{ino}> generation {g}\n"));
            script.push_str(&format!("sif <{ino}> ctime {}\n", 1_700_000_000 + salt));
        }
    }
    let script_path = img.with_extension("debugfs");
    fs::write(&script_path, script).expect("script");
    let out = run(Command::new(debugfs).arg("-w").arg("-f").arg(&script_path).arg(img));
    assert!(out.status.success(), "debugfs: {}", String::from_utf8_lossy(&out.stderr));
    // debugfs re-signs only the inodes; e2fsck re-signs their extent and directory blocks
    // under the new generations, leaving the image as consistent as the kernel would.
    let out = run(Command::new(e2fsck).args(["-fy"]).arg(img));
    assert!(matches!(out.status.code(), Some(0 | 1)), "e2fsck -fy: {out:?}");
    img.to_path_buf()
}

fn fsck_clean(img: &Path) -> (bool, String) {
    let e2fsck = tool("e2fsck").expect("checked");
    let out = run(Command::new(e2fsck).arg("-fn").arg(img));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn open_rw(img: &Path) -> Fs {
    let f = fs::OpenOptions::new().read(true).write(true).open(img).expect("open");
    let len = f.metadata().expect("stat").len();
    Fs::open(Disk::new(f, len, img.display().to_string())).expect("ext4")
}

/// A new image `name` in `dir` made by mke2fs with 4 KiB blocks, `args` and `size`.
fn new_image(dir: &Path, name: &str, args: &[&str], size: &str) -> PathBuf {
    let (mke2fs, _, _) = tools().expect("checked by the caller");
    let img = dir.join(name);
    let out = run(Command::new(mke2fs)
        .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
        .args(args)
        .arg(&img)
        .arg(size));
    assert!(out.status.success(), "mke2fs: {out:?}");
    img
}

/// `img` holds the same bytes as `pristine`, block for block, and e2fsck finds it clean.
fn expect_as_pristine(img: &Path, pristine: &Path) {
    let (after, want) = (fs::read(img).expect("read"), fs::read(pristine).expect("read"));
    let differ: Vec<usize> = (0..want.len() / 4096)
        .filter(|&b| after[b * 4096..][..4096] != want[b * 4096..][..4096])
        .collect();
    assert!(differ.is_empty(), "blocks that differ from the pristine image's: {differ:?}");
    let (clean, out) = fsck_clean(img);
    assert!(clean, "{out}");
}

#[test]
fn canonicalising_re_signs_what_new_generations_broke_and_two_scrambles_agree() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let a = scrambled_image(dir.path(), "a.img", 1);
    let b = scrambled_image(dir.path(), "b.img", 2);
    let (clean, out) = fsck_clean(&a);
    assert!(clean, "the scrambled image is consistent: {out}");

    // Between two scrambles only inodes and the blocks they sign differ (and superblock
    // times), each named with the inode's path; nothing is left unattributed.
    let fs_a = Fs::open(Disk::open(&a).expect("open")).expect("ext4");
    let fs_b = Fs::open(Disk::open(&b).expect("open")).expect("ext4");
    let differences = diff::diff(&fs_a, &fs_b).expect("diff");
    assert!(!differences.is_empty());
    // (The superblocks carry the second e2fsck wrote them in.)
    for d in differences.iter().filter(|d| !d.structure.contains("superblock")) {
        assert!(d.structure.starts_with("inode "), "{d:?}");
        let signed = d.field == "extent tree" || d.field == "directory blocks";
        assert!(signed || d.field.contains("i_generation"), "{d:?}");
    }
    let named = |differences: &[diff::Difference], path: &str, field: &str| {
        differences.iter().any(|d| d.field == field && d.path.as_deref() == Some(path))
    };
    assert!(named(&differences, "/sparse", "extent tree"), "the fragmented file's tree node");
    assert!(named(&differences, "/many", "directory blocks"), "the htree directory's blocks");
    let htree = differences.iter().find(|d| d.path.as_deref() == Some("/many"));
    assert!(htree.is_some(), "the big directory is named by its path");
    let file = differences
        .iter()
        .find(|d| d.path.as_deref() == Some("/many/file-with-a-longish-name-0599"));
    assert!(file.is_some(), "a file in the htree directory is named by its path");

    // Against its own canonicalised copy, the re-signed blocks are named too.
    let copy = dir.path().join("a-canonical.img");
    fs::copy(&a, &copy).expect("copy");
    canon::canonicalise(&open_rw(&copy), canon::Options { epoch: 0 }).expect("canon");
    let fs_c = Fs::open(Disk::open(&copy).expect("open")).expect("ext4");
    let differences = diff::diff(&fs_a, &fs_c).expect("diff");
    assert!(named(&differences, "/sparse", "extent tree"));
    assert!(named(&differences, "/many", "directory blocks"));
    assert!(differences.iter().any(|d| d.structure == "superblock" && d.field == "s_wtime"));
    drop((fs_a, fs_b, fs_c));

    for img in [&a, &b] {
        let r = canon::canonicalise(&open_rw(img), canon::Options { epoch: 0 }).expect("canon");
        assert!(r.tree_blocks >= 1 && r.dir_blocks >= 2, "{r:?}");
        let (clean, out) = fsck_clean(img);
        assert!(clean, "e2fsck -fn after the pass: {out}");
    }
    let fs_a = Fs::open(Disk::open(&a).expect("open")).expect("ext4");
    let fs_b = Fs::open(Disk::open(&b).expect("open")).expect("ext4");
    let left: Vec<String> =
        diff::diff(&fs_a, &fs_b).expect("diff").iter().take(10).map(|d| format!("{d:?}")).collect();
    assert!(left.is_empty(), "two scrambles canonicalise to different images: {left:#?}");
    let (x, y) = (fs::read(&a).expect("read"), fs::read(&b).expect("read"));
    assert!(x == y, "the comparison found no difference in bytes that differ");
}

#[test]
fn stamping_a_new_filesystem_sets_every_time_of_its_inodes() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("new.img");
    let mke2fs = tool("mke2fs").expect("checked");
    let out = run(Command::new(mke2fs).args(["-q", "-F", "-t", "ext4"]).arg(&img).arg("16M"));
    assert!(out.status.success());
    let fs = open_rw(&img);
    let n = canon::stamp(&fs, 1_234_567_890).expect("stamp");
    assert!(n >= 4, "root, lost+found, the journal and the resize inode: {n}");
    for ino in fs.used_inodes().expect("bitmaps") {
        let raw = fs.inode(ino).expect("inode");
        let extra = u16::from_le_bytes([raw[0x80], raw[0x81]]);
        let times: &[usize] =
            if extra >= 24 { &[0x08, 0x0C, 0x10, 0x90] } else { &[0x08, 0x0C, 0x10] };
        for &o in times {
            let t = u32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
            assert_eq!(t, 1_234_567_890, "inode {ino} time at {o:#x}");
        }
    }
    let (clean, out) = fsck_clean(&img);
    assert!(clean, "{out}");
}

#[test]
fn a_truncated_or_foreign_image_is_refused_not_read_past_its_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk");
    fs::write(&junk, vec![0u8; 8192]).expect("write");
    let e = Fs::open(Disk::open(&junk).expect("open")).err().expect("refused");
    assert!(e.to_string().contains("not an ext4 image"), "{e}");
    if tools().is_none() {
        return;
    }
    let img = scrambled_image(dir.path(), "t.img", 3);
    let f = fs::OpenOptions::new().write(true).open(&img).expect("open");
    f.set_len(1 << 20).expect("truncate");
    let e = Fs::open(Disk::open(&img).expect("open")).err().expect("refused");
    assert!(e.to_string().contains("image holds 1048576 bytes"), "{e}");
}

/// The comparison reads images a user hands it and the pass reads what a sandboxed build
/// wrote: a corrupt image is refused or compared, never a panic, a hang or a write outside
/// it. Bytes of the metadata (superblock fields, descriptors, block maps, tree node headers,
/// the start of directory blocks) are overwritten at pseudo-random places, 100 times.
#[test]
fn corrupt_images_are_refused_or_read_never_a_panic() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base = scrambled_image(dir.path(), "base-copy.img", 4);
    let clean = fs::read(&base).expect("read");
    let fs_base = Fs::open(Disk::open(&base).expect("open")).expect("ext4");
    let used = fs_base.used_inodes().expect("bitmaps");
    // The bytes worth hitting, as (offset, length): the superblock's fields, the group
    // descriptors, every inode's block map, the headers of extent tree nodes and the start
    // of directory blocks (record lengths, htree roots).
    let mut targets: Vec<(u64, u64)> = vec![(1024, 0x180), (4096, 64 * 4)];
    for &ino in &used {
        let at = fs_base.inode_offset(ino).expect("inode");
        targets.push((at, 0xA0));
        let raw = fs_base.inode(ino).expect("inode");
        if let Ok(m) = rootbox_ext4::map::file_map(&fs_base, ino, &raw) {
            targets.extend(m.tree.iter().map(|&b| (b * 4096, 24)));
            targets.extend(m.data.iter().take(2).map(|r| (r.physical * 4096, 48)));
        }
    }
    let victim = dir.path().join("victim.img");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut refused, mut read) = (0, 0);
    for _ in 0..100 {
        let mut bytes = clean.clone();
        for _ in 0..1 + next() % 24 {
            let (start, len) = targets[(next() % targets.len() as u64) as usize];
            let at = (start + next() % len) as usize;
            if at < bytes.len() {
                bytes[at] = next() as u8;
            }
        }
        fs::write(&victim, &bytes).expect("write");
        let len = bytes.len() as u64;
        let opened = Fs::open(Disk::open(&victim).expect("open"));
        let Ok(fs_v) = opened else {
            refused += 1;
            continue;
        };
        let _ = diff::diff(&fs_base, &fs_v);
        let _ = diff::diff(&fs_v, &fs_base);
        if canon::canonicalise(&open_rw(&victim), canon::Options { epoch: 0 }).is_err() {
            refused += 1;
        } else {
            read += 1;
        }
        assert_eq!(fs::metadata(&victim).expect("stat").len(), len, "the pass grew the image");
    }
    eprintln!("corrupt images: {refused} refused, {read} canonicalised");
    assert!(refused > 0 && read > 0, "the corruptions should sometimes matter, sometimes not");
}

/// A change to one group's descriptor is reported as that group's, whatever the descriptor
/// size: each of 32- and 64-byte descriptors, with a field changed in the third of five
/// groups (debugfs re-signs the descriptor), gives differences in group 2's descriptor only.
#[test]
fn a_descriptor_change_is_named_for_its_own_group() {
    if tools().is_none() {
        return;
    }
    let (mke2fs, debugfs, _) = tools().expect("checked");
    let dir = tempfile::tempdir().expect("tempdir");
    for (features, desc_size) in [("^64bit,^flex_bg", 32), ("64bit,^flex_bg", 64)] {
        let a = dir.path().join(format!("a{desc_size}.img"));
        let out = run(Command::new(&mke2fs)
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-g", "4096", "-O", features])
            .args(["-U", "0e2f0000-1111-4222-8333-444455556666"])
            .args(["-E", "hash_seed=0e2f0000-1111-4222-8333-444455556667"])
            .arg(&a)
            .arg("80M")
            .env("E2FSPROGS_FAKE_TIME", "1700000000"));
        assert!(out.status.success(), "mke2fs: {}", String::from_utf8_lossy(&out.stderr));
        let b = dir.path().join(format!("b{desc_size}.img"));
        fs::copy(&a, &b).expect("copy");
        let out = run(Command::new(&debugfs)
            .args(["-w", "-R", "set_bg 2 itable_unused 7"])
            .arg(&b)
            .env("E2FSPROGS_FAKE_TIME", "1700000000"));
        assert!(out.status.success(), "debugfs: {}", String::from_utf8_lossy(&out.stderr));

        let (fa, fb) = (
            Fs::open(Disk::open(&a).expect("a")).expect("a"),
            Fs::open(Disk::open(&b).expect("b")).expect("b"),
        );
        assert_eq!(fa.groups.len(), 5, "{desc_size}-byte descriptors");
        let found = diff::diff(&fa, &fb).expect("diff");
        let fields: Vec<(&str, &str)> =
            found.iter().map(|d| (d.structure.as_str(), d.field.as_str())).collect();
        assert!(
            fields.contains(&("group 2 descriptor", "bg_itable_unused_lo")),
            "{desc_size}-byte descriptors: {fields:?}"
        );
        assert!(
            fields.iter().all(|(s, _)| *s == "group 2 descriptor"),
            "{desc_size}-byte descriptors: only group 2's descriptor differs: {fields:?}"
        );
    }
}

/// What an earlier mount left in the journal's log is zeroed, in every run the pass reads
/// (blocks at the start, across a 256-block read boundary and at the end): the image comes
/// out byte for byte as the same image without the stale bytes does.
#[test]
fn stale_journal_blocks_are_zeroed_wherever_they_lie() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = new_image(dir.path(), "journal.img", &["-J", "size=4"], "64M");
    let (_, debugfs, _) = tools().expect("checked");
    // Where the journal inode's logical blocks lie.
    let physical = |logical: u32| -> u64 {
        let out =
            run(Command::new(&debugfs).arg("-R").arg(format!("bmap <8> {logical}")).arg(&img));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a block number")
    };
    let logical = [1u32, 2, 255, 256, 257, 600, 1023];
    let stale: Vec<u64> = logical.iter().map(|&l| physical(l)).collect();
    let pristine = dir.path().join("pristine.img");
    fs::copy(&img, &pristine).expect("copy");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&img).expect("open");
        for (i, b) in stale.iter().enumerate() {
            f.write_all_at(&[0xA5 ^ i as u8; 100], b * 4096 + 7).expect("write");
        }
    }
    let r = canon::canonicalise(&open_rw(&img), canon::Options { epoch: 0 }).expect("canon");
    assert_eq!(r.journal_blocks_zeroed, stale.len() as u64);
    let p = canon::canonicalise(&open_rw(&pristine), canon::Options { epoch: 0 }).expect("canon");
    assert_eq!(p.journal_blocks_zeroed, 0);
    expect_as_pristine(&img, &pristine);
}

/// A deleted inode left in a group marked as holding none in use (resize2fs marks a group so
/// once all its inodes are free) is zeroed like any other deleted slot: the image comes out
/// byte for byte as the same image without it does.
#[test]
fn deleted_inodes_in_a_group_marked_unused_are_zeroed() {
    if tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["-I", "256", "-O", "metadata_csum,^flex_bg"];
    let img = new_image(dir.path(), "groups.img", &args, "300M");
    let fs = Fs::open(Disk::open(&img).expect("open")).expect("ext4");
    let (g, group) = fs
        .groups
        .iter()
        .enumerate()
        .find(|(_, gr)| gr.flags & rootbox_ext4::layout::BG_INODE_UNINIT != 0)
        .expect("a group mke2fs left with no inode in use");
    // A deleted inode as the kernel leaves one: a mode, a deletion time, a generation.
    let mut slot = vec![0u8; fs.inode_size as usize];
    slot[0..2].copy_from_slice(&0o100644u16.to_le_bytes());
    slot[0x14..0x18].copy_from_slice(&1_796_309_749u32.to_le_bytes());
    slot[0x64..0x68].copy_from_slice(&0x5050_4b1du32.to_le_bytes());
    let at = group.inode_table * fs.block_size + 5 * fs.inode_size;
    drop(fs);
    let pristine = dir.path().join("pristine.img");
    fs::copy(&img, &pristine).expect("copy");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&img).expect("open");
        f.write_all_at(&slot, at).expect("write");
    }
    let opts = canon::Options { epoch: 0 };
    // With the marks read before a shrink: the pass reads a table as far as the kernel had
    // used it then. Here the group's mark says never, so the slot is not read...
    let copy = dir.path().join("copy.img");
    fs::copy(&img, &copy).expect("copy");
    let fs = open_rw(&copy);
    let mut marks = canon::inode_marks(&fs);
    assert_eq!(marks[g], 0, "a group mke2fs left unused");
    let r = canon::canonicalise_marked(&fs, opts, Some(&marks)).expect("canon");
    assert_eq!(r.inodes_cleared, 0);
    // ...and where it says the kernel used the first 16 slots (as it did before resize2fs
    // marked the group unused), it is.
    marks[g] = 16;
    let r = canon::canonicalise_marked(&open_rw(&img), opts, Some(&marks)).expect("canon");
    assert_eq!(r.inodes_cleared, 1, "the deleted inode in group {g}");
    // Without marks every table is read in full.
    let r = canon::canonicalise(&open_rw(&copy), opts).expect("canon");
    assert_eq!(r.inodes_cleared, 1);
    let p = canon::canonicalise(&open_rw(&pristine), opts).expect("canon");
    assert_eq!(p.inodes_cleared, 0);
    expect_as_pristine(&img, &pristine);
}
