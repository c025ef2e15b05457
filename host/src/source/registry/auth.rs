//! Registry credentials: `--creds USER:PASS`, else the first auth file that has them for the
//! registry: `$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`.
//! In each file, as docker reads it: a `credHelpers` entry for the registry, then basic
//! `auths` entries (keyed by registry or `registry/namespace`, longest match first), then the
//! `credsStore`. A helper is `docker-credential-NAME get` on `$PATH`, given the server on
//! stdin and answering `{"Username":…,"Secret":…}`. Anonymous otherwise. A password is never
//! formatted: [`Creds`] redacts itself and errors name where credentials came from, never
//! what they are (nor what a helper printed).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::source::SourceError;

/// `USER:PASS` from the command line.
#[derive(Clone, PartialEq, Eq)]
pub struct Creds {
    pub user: String,
    pass: String,
}

impl fmt::Debug for Creds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Creds({:?}, <redacted>)", self.user)
    }
}

impl Creds {
    /// Parses `USER:PASS` (the password may contain `:`); for clap.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Self { user: u.into(), pass: p.into() }),
            _ => Err("--creds must be USER:PASS".into()),
        }
    }
}

/// Where the credentials in use came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Anonymous,
    Flag,
    File(PathBuf),
    /// `docker-credential-NAME`, named in this auth file.
    Helper(String, PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Anonymous => f.write_str("anonymously (no --creds, no auth file entry)"),
            Origin::Flag => f.write_str("with the credentials from --creds"),
            Origin::File(p) => write!(f, "with the credentials from {}", p.display()),
            Origin::Helper(name, p) => write!(
                f,
                "with the credentials from docker-credential-{name} (named in {})",
                p.display()
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The auth files to look in, in order.
fn files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(d).join("config.json"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(h).join(".docker/config.json"));
    }
    out
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `host:5000/ns/` → `host:5000/ns`.
fn normalize(key: &str) -> String {
    let k = key.trim();
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    let k = k.trim_end_matches('/');
    let k = k.strip_suffix("/v1").or_else(|| k.strip_suffix("/v2")).unwrap_or(k);
    k.to_string()
}

fn is_docker_hub(registry: &str) -> bool {
    matches!(registry, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

/// The names a registry goes by in auth files.
fn hosts(registry: &str) -> Vec<&str> {
    if is_docker_hub(registry) {
        vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        vec![registry]
    }
}

/// What a credential helper is asked for: docker's server address for the registry.
fn server_url(registry: &str) -> String {
    if is_docker_hub(registry) {
        "https://index.docker.io/v1/".into()
    } else {
        registry.into()
    }
}

/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a helper's answer that is read.
const HELPER_OUTPUT_MAX: u64 = 1 << 20;

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-NAME get` for `server`: `Some((user, secret))`, or `None` when
/// the helper has nothing for it. Nothing the helper prints reaches a message.
fn run_helper(
    name: &str,
    server: &str,
    file: &Path,
) -> Result<Option<(String, String)>, SourceError> {
    let helper =
        || format!("auth file {}: credential helper docker-credential-{name}", file.display());
    let invalid = |why: String| SourceError::Invalid(format!("{}: {why}", helper()));
    let failed = |what: &str, e: std::io::Error| SourceError::Failed {
        what: format!("{}: {what}", helper()),
        source: e.into(),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(invalid("not a helper name".into()));
    }
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => invalid(format!("{program} is not on $PATH")),
            _ => failed("cannot run it", e),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its status below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut stdout = child.stdout.take().ok_or_else(|| invalid("no stdout".into()))?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = stdout.by_ref().take(HELPER_OUTPUT_MAX).read_to_end(&mut out);
        r.map(|_| out)
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < HELPER_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(invalid(format!("no answer within {} s", HELPER_TIMEOUT.as_secs())));
            }
            Err(e) => return Err(failed("waiting for it", e)),
        }
    };
    let out = reader.join().ok().and_then(|r| r.ok()).unwrap_or_default();
    if !status.success() {
        // docker's helpers say "credentials not found" this way; anything else is a failure.
        if String::from_utf8_lossy(&out).to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(invalid(format!("failed ({status})")));
    }
    let a: HelperAnswer = serde_json::from_slice(&out)
        .map_err(|_| invalid("its answer is not {\"Username\": …, \"Secret\": …}".into()))?;
    if a.username == "<token>" {
        return Err(invalid(
            "it holds an identity token, which rootbox cannot use; give --creds USER:PASS".into(),
        ));
    }
    if a.username.is_empty() && a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some((a.username, a.secret)))
}

/// Keys to try for `registry/repository`, most specific first.
fn candidates(registry: &str, repository: &str) -> Vec<String> {
    let hosts = hosts(registry);
    let parts: Vec<&str> = repository.split('/').collect();
    let mut out = Vec::new();
    for n in (1..=parts.len()).rev() {
        for h in &hosts {
            out.push(format!("{h}/{}", parts[..n].join("/")));
        }
    }
    out.extend(hosts.iter().map(|h| h.to_string()));
    out
}

fn decode(e: &AuthEntry) -> Option<(String, String)> {
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD.decode(a.trim()).ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (u, p) = s.split_once(':')?;
        return Some((u.to_string(), p.to_string()));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) if !u.is_empty() => Some((u.clone(), p.clone())),
        _ => None,
    }
}

/// The credentials to use for `registry/repository`.
pub fn find(
    registry: &str,
    repository: &str,
    flag: Option<&Creds>,
) -> Result<(RegistryAuth, Origin), SourceError> {
    if let Some(c) = flag {
        return Ok((RegistryAuth::Basic(c.user.clone(), c.pass.clone()), Origin::Flag));
    }
    let keys = candidates(registry, repository);
    for path in files() {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(SourceError::Io { what: "an auth file".into(), path, source })
            }
        };
        // The parse error is not shown: it could quote a secret.
        let file: AuthFile = serde_json::from_slice(&bytes).map_err(|_| {
            SourceError::Invalid(format!(
                "auth file {} is not JSON with an \"auths\" object",
                path.display()
            ))
        })?;
        let helper = |name: &str| -> Result<Option<(RegistryAuth, Origin)>, SourceError> {
            let found = run_helper(name, &server_url(registry), &path)?;
            Ok(found.map(|(u, p)| {
                (RegistryAuth::Basic(u, p), Origin::Helper(name.to_string(), path.clone()))
            }))
        };
        let helpers: BTreeMap<String, &String> =
            file.cred_helpers.iter().map(|(k, v)| (normalize(k), v)).collect();
        if let Some(name) = hosts(registry).iter().find_map(|h| helpers.get(*h)) {
            if let Some(found) = helper(name)? {
                return Ok(found);
            }
        }
        let entries: BTreeMap<String, &AuthEntry> =
            file.auths.iter().map(|(k, v)| (normalize(k), v)).collect();
        let mut unusable = None;
        for k in &keys {
            if let Some(e) = entries.get(k) {
                if let Some((u, p)) = decode(e) {
                    return Ok((RegistryAuth::Basic(u, p), Origin::File(path.clone())));
                }
                unusable = Some(k.clone());
                break;
            }
        }
        // With a credsStore, `auths` entries are empty placeholders: the store has the secret.
        if let Some(store) = file.creds_store.as_deref().filter(|s| !s.is_empty()) {
            if let Some(found) = helper(store)? {
                return Ok(found);
            }
        } else if let Some(k) = unusable {
            return Err(SourceError::Invalid(format!(
                "auth file {}: the entry for {k} has no usable \"auth\" (base64 USER:PASS)",
                path.display()
            )));
        }
    }
    Ok((RegistryAuth::Anonymous, Origin::Anonymous))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_parse_and_redact() {
        let c = Creds::parse("alice:se:cret").unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.pass, "se:cret");
        assert!(!format!("{c:?}").contains("se:cret"));
        assert!(Creds::parse(":x").is_err());
        assert!(Creds::parse("alice").is_err());
    }

    #[test]
    fn keys_normalize_and_rank() {
        assert_eq!(normalize("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(normalize("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(normalize("127.0.0.1:5000/team/"), "127.0.0.1:5000/team");
        assert_eq!(
            candidates("127.0.0.1:5000", "team/app"),
            ["127.0.0.1:5000/team/app", "127.0.0.1:5000/team", "127.0.0.1:5000"]
        );
        assert!(candidates("docker.io", "library/debian").contains(&"index.docker.io".to_string()));
    }

    #[test]
    fn helpers_are_named_not_pathed() {
        let f = Path::new("/x/config.json");
        for bad in ["", "../../bin/sh", "a b", "x/y"] {
            let e = run_helper(bad, "127.0.0.1:5000", f).unwrap_err().to_string();
            assert!(e.contains("not a helper name"), "{bad}: {e}");
        }
        let e = run_helper("rootbox-no-such-helper", "h", f).unwrap_err().to_string();
        assert!(e.contains("docker-credential-rootbox-no-such-helper is not on $PATH"), "{e}");
        assert_eq!(server_url("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(server_url("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn decodes_basic_entries() {
        let e = AuthEntry { auth: Some("YWxpY2U6cHc=".into()), username: None, password: None };
        assert_eq!(decode(&e), Some(("alice".into(), "pw".into())));
        let bad = AuthEntry { auth: Some("!!".into()), username: None, password: None };
        assert_eq!(decode(&bad), None);
    }
}
