//! Running rootbox as a user would and watching what it leaves: spawned with its stderr
//! streamed, killed, waited for; processes that still name or hold a directory, and
//! incompressible noise tars large enough to keep a sandbox busy.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::run::expect_dir_holds;
use crate::Env;

/// Starts `rootbox ARGS` with extra environment; its stderr lines arrive on the channel.
pub fn spawn_rootbox(
    env: &Env,
    args: &[OsString],
    vars: &[(&str, &Path)],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(&env.bin)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning rootbox");
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Reads rootbox's stderr lines until one contains `needle` (e.g. the progress line
/// `apply layer 1`); fails the test if rootbox exits first or `limit` passes. Returns the
/// lines read, that one last.
pub fn wait_for_line(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    limit: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                let found = l.contains(needle);
                seen.push(l);
                if found {
                    return seen;
                }
            }
            Err(e) => panic!("rootbox never said {needle:?} ({e}); it said:\n{}", seen.join("\n")),
        }
    }
}

pub fn pull_args(env: &Env, source: &str, out: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["pull".into(), source.into(), "-o".into(), out.into()];
    a.extend(["--worker-image".into(), env.worker_image.clone().into_os_string()]);
    a.push("--no-default-assets".into());
    a.extend(extra.iter().map(OsString::from));
    a
}

/// Waits for `child`, failing the test after `limit`; returns (code, all stderr lines).
pub fn finish(
    mut child: std::process::Child,
    rx: &std::sync::mpsc::Receiver<String>,
    limit: Duration,
) -> (i32, Vec<String>) {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("rootbox still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut lines = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        lines.push(l);
    }
    (status.code().unwrap_or(-1), lines)
}

/// Command lines of live processes that mention `needle` on it or hold a file under it open.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").expect("/proc").flatten() {
        if !e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(raw) = fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            // QEMU gets the output as an inherited descriptor: look at open files too.
            let open =
                fs::read_dir(e.path().join("fd")).into_iter().flatten().flatten().any(|fd| {
                    fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains(needle))
                });
            if cmd.contains(needle) || open {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Fails unless nothing the run started is left: no process naming `dirs`, every dir empty.
pub fn expect_nothing_left(dirs: &[&Path]) {
    // The kernel reaps killed processes asynchronously: give it a moment.
    let start = Instant::now();
    for d in dirs {
        let needle = d.to_string_lossy().into_owned();
        loop {
            let left = processes_mentioning(&needle);
            if left.is_empty() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "processes left behind:\n{left:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        expect_dir_holds(d, &[]);
    }
}

/// A fast deterministic byte generator (xorshift64*), incompressible enough for the test.
pub struct Noise {
    state: u64,
    left: u64,
    pub hash: sha2::Sha256,
}

impl Noise {
    pub fn new(seed: u64, len: u64) -> Noise {
        use sha2::Digest;
        Noise { state: seed | 1, left: len, hash: sha2::Sha256::new() }
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = (buf.len() as u64).min(self.left) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.hash.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes a flat tar of `count` files of `size` noise bytes each; returns their sha256s.
pub fn noise_tar(path: &Path, count: u64, size: u64) -> Vec<(String, String)> {
    use sha2::Digest;
    let f = fs::File::create(path).expect("create tar");
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, "data", std::io::empty()).expect("dir entry");
    let mut sums = Vec::new();
    for i in 0..count {
        let name = format!("data/noise{i}");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        let mut noise = Noise::new(0x9E37_79B9_7F4A_7C15 ^ i, size);
        b.append_data(&mut h, &name, &mut noise).expect("file entry");
        sums.push((name, hex::encode(noise.hash.finalize())));
    }
    b.into_inner().expect("finish tar").flush().expect("flush");
    sums
}

/// `/proc/PID/status` as key → value.
pub fn status(pid: u32) -> BTreeMap<String, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Every process below `root`, parents before children: (pid, parent, command name). (The
/// name, not /proc/PID/exe: a process made non-dumpable, or in another mount namespace,
/// hides or rewrites its exe link.)
pub fn descendants(root: u32) -> Vec<(u32, u32, String)> {
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    for e in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Some(pp) = status(pid).get("PPid").and_then(|p| p.parse().ok()) {
            parent.insert(pid, pp);
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (&c, &pp) in &parent {
            if pp == p {
                let comm = fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
                out.push((c, p, comm.trim_end().to_string()));
                frontier.push(c);
            }
        }
    }
    out
}

/// Sends signal `sig` (`INT`, `KILL`, `STOP`...) to `pid` with `kill(1)` (the tests' crate
/// links no system-call crate).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
}
