//! The surroundings of one hostile run, and proof afterwards that nothing outside the image
//! moved: a temp dir holding a canary file, the input and an output dir; plus a fingerprint of
//! the worker image tree.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::guard::Env;

pub const CANARY: &str = "canary";
pub const CANARY_TEXT: &[u8] = b"the canary sings\n";

/// mtime in nanoseconds, content hash and names of a directory's children.
fn dir_state(dir: &Path) -> (i128, Vec<String>) {
    let meta = fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("lstat {}: {e}", dir.display()));
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    (i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()), names)
}

/// A quick fingerprint of a tree: every path's type, mode, owner, size, mtime, symlink target,
/// and the hash of every regular file.
pub fn fingerprint(root: &Path) -> String {
    let mut h = Sha256::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let m =
                fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
            let line = format!(
                "{} {:o} {}:{} {} {}.{}\n",
                p.strip_prefix(root).unwrap_or(&p).display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            );
            h.update(line.as_bytes());
            let ft = m.file_type();
            if ft.is_symlink() {
                h.update(fs::read_link(&p).map(|t| t.display().to_string()).unwrap_or_default());
            } else if ft.is_file() {
                h.update(fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())));
            } else if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    hex::encode(h.finalize())
}

/// One hostile run's surroundings.
pub struct Scene {
    pub dir: tempfile::TempDir,
    /// Where sources are written (`<dir>/in`).
    pub input: PathBuf,
    /// The output directory (`<dir>/out`), empty before the run.
    pub out_dir: PathBuf,
    worker_image: PathBuf,
    worker_before: String,
    canary_mtime: i128,
    dir_before: (i128, Vec<String>),
}

impl Scene {
    pub fn new(env: &Env) -> Scene {
        let dir = tempfile::Builder::new().prefix("rootbox-hostile-").tempdir().expect("tempdir");
        let input = dir.path().join("in");
        let out_dir = dir.path().join("out");
        fs::create_dir(&input).expect("mkdir in");
        fs::create_dir(&out_dir).expect("mkdir out");
        let canary = dir.path().join(CANARY);
        fs::write(&canary, CANARY_TEXT).expect("write canary");
        let canary_mtime = dir_state_file(&canary);
        let dir_before = dir_state(dir.path());
        Scene {
            worker_image: env.worker_image.clone(),
            worker_before: fingerprint(&env.worker_image),
            dir,
            input,
            out_dir,
            canary_mtime,
            dir_before,
        }
    }

    /// The canary's absolute path on the host.
    pub fn canary(&self) -> PathBuf {
        self.dir.path().join(CANARY)
    }

    /// `<out>/out.ext4`.
    pub fn output(&self) -> PathBuf {
        self.out_dir.join("out.ext4")
    }

    /// Fails the test if the canary, its directory or the worker image changed.
    pub fn assert_untouched(&self) {
        let text = fs::read(self.canary()).expect("canary is gone");
        assert_eq!(text, CANARY_TEXT, "canary content changed");
        assert_eq!(dir_state_file(&self.canary()), self.canary_mtime, "canary mtime changed");
        assert_eq!(dir_state(self.dir.path()), self.dir_before, "the canary's directory changed");
        assert_eq!(fingerprint(&self.worker_image), self.worker_before, "the worker image changed");
    }

    /// After a refused run: nothing changed and no output (nor temp file) was left.
    pub fn assert_refused_cleanly(&self) {
        self.assert_untouched();
        crate::run::expect_dir_holds(&self.out_dir, &[]);
    }
}

fn dir_state_file(p: &Path) -> i128 {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}
