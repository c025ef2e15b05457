//! Registry credentials: `--creds USER:PASS`, else the first auth file that has an entry for
//! the registry: `$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`
//! (basic `auth` entries, keyed by registry or `registry/namespace`, longest match first).
//! Anonymous otherwise. A password is never formatted: [`Creds`] redacts itself and errors
//! name where credentials came from, never what they are.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

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
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Anonymous => f.write_str("anonymously (no --creds, no auth file entry)"),
            Origin::Flag => f.write_str("with the credentials from --creds"),
            Origin::File(p) => write!(f, "with the credentials from {}", p.display()),
        }
    }
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
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

/// Keys to try for `registry/repository`, most specific first.
fn candidates(registry: &str, repository: &str) -> Vec<String> {
    let hosts: Vec<&str> =
        if matches!(registry, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
            vec!["docker.io", "index.docker.io", "registry-1.docker.io"]
        } else {
            vec![registry]
        };
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
        let entries: BTreeMap<String, &AuthEntry> =
            file.auths.iter().map(|(k, v)| (normalize(k), v)).collect();
        for k in &keys {
            if let Some(e) = entries.get(k) {
                if let Some((u, p)) = decode(e) {
                    return Ok((RegistryAuth::Basic(u, p), Origin::File(path)));
                }
                return Err(SourceError::Invalid(format!(
                    "auth file {}: the entry for {k} has no usable \"auth\" (base64 USER:PASS)",
                    path.display()
                )));
            }
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
    fn decodes_basic_entries() {
        let e = AuthEntry { auth: Some("YWxpY2U6cHc=".into()), username: None, password: None };
        assert_eq!(decode(&e), Some(("alice".into(), "pw".into())));
        let bad = AuthEntry { auth: Some("!!".into()), username: None, password: None };
        assert_eq!(decode(&bad), None);
    }
}
