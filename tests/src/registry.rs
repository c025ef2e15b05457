//! A real registry for the registry-pull tests: Debian's `docker-registry` (distribution v2)
//! serving 127.0.0.1 on a free port, storage in a temp dir, optionally behind htpasswd basic
//! auth; images pushed into it with skopeo. Its access log counts blob downloads. A small
//! TCP proxy on loopback can slow replies down (to catch a pull in the middle) and cut every
//! connection at once; an HTTP front can answer chosen requests with faults (5xx, 429, an
//! endless body). Everything stops when dropped. Nothing here talks to any address but
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

/// A loopback TCP proxy in front of a registry: replies throttled (see [`Rate`]), bytes
/// counted, every connection cut on [`Proxy::stop`].
pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

/// How a proxy throttles replies.
#[derive(Debug, Clone, Copy)]
pub enum Rate {
    /// Bytes per second for each connection on its own.
    PerConnection(u64),
    /// Bytes per second for all connections together, like one network link.
    Shared(u64),
}

/// A byte throttle without bursts: each write is due when the link would have carried it
/// (one per connection, or one shared).
struct Throttle {
    rate: u64,
    free_at: Mutex<Instant>,
}

impl Throttle {
    fn new(rate: u64) -> Arc<Throttle> {
        Arc::new(Throttle { rate: rate.max(1), free_at: Mutex::new(Instant::now()) })
    }

    /// Books `n` bytes on the link and waits until they have gone through.
    fn pass(&self, n: usize) {
        let due = {
            let Ok(mut free_at) = self.free_at.lock() else { return };
            let start = (*free_at).max(Instant::now());
            *free_at = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
            *free_at
        };
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
}

/// Copies `from` to `to` until either end closes or `stop`, counting into `count` and
/// throttled by `throttle`.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    throttle: Option<&Throttle>,
    count: Option<&AtomicU64>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 64 << 10];
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
        if let Some(c) = count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
        if let Some(t) = throttle {
            t.pass(n);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Listens on a free loopback port and hands each connection to `handle` on its own thread
/// until `stop`. Returns the port.
fn serve(stop: Arc<AtomicBool>, handle: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = listener.local_addr().expect("local addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let handle = Arc::new(handle);
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((c, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            let _ = c.set_nonblocking(false);
            let h = handle.clone();
            thread::spawn(move || h(c));
        }
    });
    port
}

impl Proxy {
    /// A proxy limiting each connection's replies to `rate` bytes per second.
    pub fn start(upstream: u16, rate: Option<u64>) -> Proxy {
        Self::start_with(upstream, rate.map(Rate::PerConnection))
    }

    pub fn start_with(upstream: u16, rate: Option<Rate>) -> Proxy {
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let shared = match rate {
            Some(Rate::Shared(r)) => Some(Throttle::new(r)),
            _ => None,
        };
        let (s, f, c) = (stop.clone(), forwarded.clone(), conns.clone());
        let port = serve(stop.clone(), move |client| {
            let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                let _ = client.shutdown(Shutdown::Both);
                return;
            };
            let (Ok(c1), Ok(u1), Ok(c2), Ok(u2)) =
                (client.try_clone(), up.try_clone(), client.try_clone(), up.try_clone())
            else {
                return;
            };
            if let Ok(mut v) = c.lock() {
                v.extend([c2, u2]);
            }
            let throttle = match rate {
                None => None,
                Some(Rate::PerConnection(r)) => Some(Throttle::new(r)),
                Some(Rate::Shared(_)) => shared.clone(),
            };
            let s1 = s.clone();
            thread::spawn(move || pump(c1, u1, None, None, &s1));
            pump(up, client, throttle.as_deref(), Some(&f), &s);
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

/// What a faulty registry front answers instead of forwarding a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultReply {
    /// This status with a short body (429 gets the distribution API's `TOOMANYREQUESTS`).
    Status(u16),
    /// This status with a chunked body that never ends (until the client hangs up or 1 GiB
    /// has gone out).
    Endless(u16),
    /// 200 with these headers (`Name: value\r\n` each) and this body.
    Canned { headers: String, body: Vec<u8> },
    /// The registry's own reply, after this long.
    Late(Duration),
}

/// Requests whose path contains `path` get `reply`, the first `times` of them.
#[derive(Debug, Clone)]
pub struct Fault {
    pub path: String,
    pub times: usize,
    pub reply: FaultReply,
}

impl Fault {
    pub fn new(path: &str, times: usize, reply: FaultReply) -> Fault {
        Fault { path: path.to_string(), times, reply }
    }
}

/// A bearer-token gate: `/v2/` requests without `Authorization: Bearer TOKEN` get a `401`
/// challenge naming this front's `/token` realm, which hands out TOKEN (to `creds` only,
/// when set, checked as basic auth), as the distribution token flow does.
#[derive(Debug, Clone)]
pub struct TokenGate {
    pub token: String,
    pub creds: Option<(String, String)>,
}

/// An HTTP front for a registry on loopback that answers chosen requests itself (see
/// [`Fault`]), optionally behind a [`TokenGate`], and forwards the rest, one request per
/// connection (`Connection: close`, so every request passes through the checks). Counts the
/// faults it served, the tokens it handed out and the body bytes it sent.
pub struct FaultyFront {
    pub port: u16,
    state: Arc<FrontState>,
}

struct FrontState {
    upstream: u16,
    /// The front's own port, for the token realm (set once listening).
    port: std::sync::OnceLock<u16>,
    stop: Arc<AtomicBool>,
    faults: Mutex<Vec<Fault>>,
    gate: Option<TokenGate>,
    served: AtomicU64,
    tokens: AtomicU64,
    sent: AtomicU64,
}

/// The request head (up to the blank line), or `None` if the client went away first.
fn read_head(c: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 << 10 || c.read(&mut b).ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    String::from_utf8(head).ok()
}

fn answer(mut c: TcpStream, fault: FaultReply, sent: &AtomicU64) {
    match fault {
        FaultReply::Status(code) => {
            let body = if code == 429 {
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down (test fault)"}]}"#
            } else {
                "test fault"
            };
            let json = "Content-Type: application/json\r\n";
            return reply(c, &format!("{code} Test Fault"), json, body.as_bytes());
        }
        FaultReply::Canned { headers, body } => return reply(c, "200 OK", &headers, &body),
        // Forwarded by `front_one` once the wait is over.
        FaultReply::Late(_) => return,
        FaultReply::Endless(code) => {
            let _ = write!(
                c,
                "HTTP/1.1 {code} Test Fault\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                 Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            );
            let chunk = vec![b' '; 64 << 10];
            while sent.load(Ordering::SeqCst) < 1 << 30 {
                if write!(c, "{:x}\r\n", chunk.len()).is_err()
                    || c.write_all(&chunk).is_err()
                    || c.write_all(b"\r\n").is_err()
                {
                    break;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
    }
    let _ = c.shutdown(Shutdown::Both);
}

fn reply(mut c: TcpStream, status: &str, headers: &str, body: &[u8]) {
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(body);
    let _ = c.shutdown(Shutdown::Both);
}

fn header_of<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn front_one(mut c: TcpStream, st: &FrontState) {
    let Some(head) = read_head(&mut c) else { return };
    let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
    let fault = st.faults.lock().ok().and_then(|mut v| {
        let f = v.iter_mut().find(|f| f.times > 0 && path.contains(&f.path))?;
        f.times -= 1;
        Some(f.reply.clone())
    });
    match fault {
        Some(FaultReply::Late(wait)) => {
            st.served.fetch_add(1, Ordering::SeqCst);
            thread::sleep(wait);
        }
        Some(r) => {
            st.served.fetch_add(1, Ordering::SeqCst);
            return answer(c, r, &st.sent);
        }
        None => {}
    }
    if let Some(gate) = &st.gate {
        let auth = header_of(&head, "authorization").unwrap_or_default();
        if path.starts_with("/token") {
            let allowed = gate.creds.as_ref().is_none_or(|(u, p)| {
                auth == format!("Basic {}", base64(format!("{u}:{p}").as_bytes()))
            });
            if !allowed {
                return reply(c, "401 Unauthorized", "", br#"{"details":"wrong credentials"}"#);
            }
            st.tokens.fetch_add(1, Ordering::SeqCst);
            let body =
                format!(r#"{{"token":"{0}","access_token":"{0}","expires_in":300}}"#, gate.token);
            return reply(c, "200 OK", "Content-Type: application/json\r\n", body.as_bytes());
        }
        if path.starts_with("/v2/") && auth != format!("Bearer {}", gate.token) {
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{}/token\",service=\"rootbox-test\"\r\n",
                st.port.get().copied().unwrap_or_default()
            );
            let body =
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
            return reply(c, "401 Unauthorized", &challenge, body);
        }
    }
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", st.upstream)) else { return };
    let mut lines: Vec<&str> = head
        .trim_end()
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    if up.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes()).is_ok() {
        pump(up, c, None, Some(&st.sent), &st.stop);
    }
}

impl FaultyFront {
    pub fn start(upstream: u16, faults: Vec<Fault>) -> FaultyFront {
        Self::start_gated(upstream, faults, None)
    }

    pub fn start_gated(upstream: u16, faults: Vec<Fault>, gate: Option<TokenGate>) -> FaultyFront {
        let state = Arc::new(FrontState {
            upstream,
            port: std::sync::OnceLock::new(),
            stop: Arc::new(AtomicBool::new(false)),
            faults: Mutex::new(faults),
            gate,
            served: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        });
        let st = state.clone();
        let port = serve(state.stop.clone(), move |c| front_one(c, &st));
        let _ = state.port.set(port);
        FaultyFront { port, state }
    }

    /// Requests answered with a fault so far.
    pub fn faults_served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Tokens handed out so far.
    pub fn tokens_issued(&self) -> u64 {
        self.state.tokens.load(Ordering::SeqCst)
    }

    /// Reply bytes sent so far (forwarded replies and fault bodies).
    pub fn sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyFront {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

/// Standard base64 with padding (auth files, basic auth headers).
pub fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// `env VAR=VALUE... rootbox ARGS...`: rootbox with its own cache and auth environment.
pub fn rootbox(env: &Env, vars: &[(&str, &Path)], args: &[&str]) -> Outcome {
    rootbox_under(&[], env, vars, args)
}

/// [`rootbox`] started by `launcher` (a program and its arguments, such as `prlimit
/// --nofile=1024:1024`), or by `env` alone when it is empty.
pub fn rootbox_under(
    launcher: &[&str],
    env: &Env,
    vars: &[(&str, &Path)],
    args: &[&str],
) -> Outcome {
    let (program, rest) = match launcher.split_first() {
        Some((p, rest)) => (*p, rest),
        None => ("env", &[][..]),
    };
    let mut a: Vec<OsString> = rest.iter().map(OsString::from).collect();
    if !launcher.is_empty() {
        a.push("env".into());
    }
    a.extend(vars.iter().map(|(k, v)| {
        let mut s = OsString::from(format!("{k}="));
        s.push(v.as_os_str());
        s
    }));
    a.push(env.bin.clone().into_os_string());
    a.extend(args.iter().map(OsString::from));
    run_with(Path::new(program), &a, None)
}

/// `rootbox pull SOURCE -o OUT --worker-image W --no-default-assets EXTRA...` with `vars`.
pub fn pull(
    env: &Env,
    vars: &[(&str, &Path)],
    source: &str,
    out: &Path,
    extra: &[&str],
) -> Outcome {
    pull_under(&[], env, vars, source, out, extra)
}

/// [`pull`] started by `launcher` (see [`rootbox_under`]).
pub fn pull_under(
    launcher: &[&str],
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
    rootbox_under(launcher, env, vars, &args)
}
