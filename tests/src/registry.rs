//! A real registry for the registry-pull tests: Debian's `docker-registry` (distribution v2)
//! serving 127.0.0.1 on a free port, storage in a temp dir, optionally behind htpasswd basic
//! auth; images pushed into it with skopeo. Its access log counts blob downloads. A small
//! TCP proxy on loopback can slow replies down (to catch a pull in the middle) and cut every
//! connection at once. Everything stops when dropped. Nothing here talks to any address but
//! 127.0.0.1.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::guard::{strict, Env};
use crate::run::{run_with, Outcome};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Why the registry tests cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    if !Path::new(REGISTRY_BIN).is_file() {
        return Some(format!("{REGISTRY_BIN} not installed (apt-get install docker-registry)"));
    }
    for tool in ["skopeo", "htpasswd"] {
        if !on_path(tool) {
            return Some(format!("{tool} not installed (make setup)"));
        }
    }
    None
}

/// `Some(())` when the registry tools are here; otherwise fails (strict) or skips.
pub fn require(test: &str) -> Option<()> {
    match missing() {
        None => Some(()),
        Some(why) if strict() => panic!("{test}: ROOTBOX_STRICT=1 and {why}"),
        Some(why) => {
            eprintln!("SKIP: {test}: {why}");
            None
        }
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local addr").port()
}

fn wait_listening(port: u16, what: &str, child: &mut Child, log: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
            let mut b = [0u8; 12];
            if s.read(&mut b).is_ok_and(|n| n >= 12) && b.starts_with(b"HTTP/") {
                return;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} not listening on 127.0.0.1:{port} after 20 s");
}

/// A running registry.
pub struct Registry {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    log: PathBuf,
    creds: Option<(String, String)>,
}

impl Registry {
    /// Starts one on a free port; `auth` = (user, password) turns on htpasswd basic auth.
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new().prefix("rootbox-registry-").tempdir().expect("tempdir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        if let Some((user, pass)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("running htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            let htpasswd = dir.path().join("htpasswd");
            fs::write(&htpasswd, out.stdout).expect("writing htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: rootbox-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        fs::write(&cfg, config).expect("writing registry config");
        let log = dir.path().join("registry.log");
        let logf = fs::File::create(&log).expect("registry log");
        let mut child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .expect("starting docker-registry");
        wait_listening(port, "docker-registry", &mut child, &log);
        Registry {
            child: Some(child),
            dir,
            port,
            log,
            creds: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy oci:DIR:TAG docker://127.0.0.1:PORT/DEST` (`all`: every image of an index).
    pub fn push(&self, layout: &Path, tag: &str, dest: &str, all: bool) {
        let mut args: Vec<OsString> = vec!["copy".into(), "--dest-tls-verify=false".into()];
        if all {
            args.push("--all".into());
        }
        if let Some((u, p)) = &self.creds {
            args.push(format!("--dest-creds={u}:{p}").into());
        }
        args.push(format!("oci:{}:{tag}", layout.display()).into());
        args.push(format!("docker://{}/{dest}", self.host()).into());
        let o = run_with(Path::new("skopeo"), &args, None);
        assert_eq!(o.code, 0, "skopeo copy failed:\n{}", o.describe());
    }

    /// How many blob GETs the registry served so far (from its access log).
    pub fn blob_gets(&self) -> usize {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("response completed"))
            .filter(|l| l.contains("http.request.method=GET"))
            .filter(|l| l.contains("/blobs/sha256:"))
            .count()
    }

    /// The registry's stored bytes of a blob (to tamper with).
    pub fn storage_blob(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stops the registry now (SIGKILL to the process this test started).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback TCP proxy in front of a registry: replies throttled to `rate` bytes per second
/// per connection, bytes counted, every connection cut on [`Proxy::stop`].
pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    rate: Option<u64>,
    count: Option<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 << 10];
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(sent as f64 / r as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Proxy {
    pub fn start(upstream: u16, rate: Option<u64>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, f, c) = (stop.clone(), forwarded.clone(), conns.clone());
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                if let (Ok(a), Ok(b)) = (client.try_clone(), up.try_clone()) {
                    if let Ok(mut v) = c.lock() {
                        v.push(a);
                        v.push(b);
                    }
                }
                let (c1, u1) = (client.try_clone().expect("clone"), up.try_clone().expect("clone"));
                let (s1, s2, f2) = (s.clone(), s.clone(), f.clone());
                thread::spawn(move || pump(c1, u1, None, None, s1));
                thread::spawn(move || pump(up, client, rate, Some(f2), s2));
            }
        });
        Proxy { port, stop, forwarded, conns }
    }

    /// Reply bytes forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Stops accepting and cuts every connection.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(v) = self.conns.lock() {
            for c in v.iter() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `env VAR=VALUE... rootbox ARGS...`: rootbox with its own cache and auth environment.
pub fn rootbox(env: &Env, vars: &[(&str, &Path)], args: &[&str]) -> Outcome {
    let mut a: Vec<OsString> = vars
        .iter()
        .map(|(k, v)| {
            let mut s = OsString::from(format!("{k}="));
            s.push(v.as_os_str());
            s
        })
        .collect();
    a.push(env.bin.clone().into_os_string());
    a.extend(args.iter().map(OsString::from));
    run_with(Path::new("env"), &a, None)
}

/// `rootbox pull SOURCE -o OUT --worker-image W --no-default-assets EXTRA...` with `vars`.
pub fn pull(
    env: &Env,
    vars: &[(&str, &Path)],
    source: &str,
    out: &Path,
    extra: &[&str],
) -> Outcome {
    let out_s = out.display().to_string();
    let wi = env.worker_image.display().to_string();
    let mut args = vec!["pull", source, "-o", &out_s, "--worker-image", &wi, "--no-default-assets"];
    args.extend_from_slice(extra);
    rootbox(env, vars, &args)
}
