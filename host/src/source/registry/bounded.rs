//! Manifest and index GETs that read at most a bound of the reply.
//!
//! oci-client's `pull_manifest_raw` collects the whole body before returning it, so a hostile
//! registry could answer a manifest request with gigabytes (or an endless chunked body) and
//! exhaust memory before rootbox sees the size. This module makes that one request itself:
//! the bearer token comes from oci-client's auth flow (`Client::auth`), the URL is the
//! distribution API's, and the body is read chunk by chunk and abandoned past the bound.
//! Error replies are read up to [`ERROR_BODY_MAX`] for their message. Failures come back as
//! oci-client's own error type so retries and messages treat both paths alike.

use std::time::Duration;

use futures_util::StreamExt;
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_LENGTH};
use reqwest::StatusCode;

/// The part of an error reply kept for its message.
pub const ERROR_BODY_MAX: usize = 64 << 10;

/// What a bounded GET brought back.
#[derive(Debug)]
pub enum Reply {
    /// The whole body, and the registry's `Docker-Content-Digest`, if it sent one.
    Body(Vec<u8>, Option<String>),
    /// The body is longer than the bound (it was not read past it).
    TooLarge,
}

/// A reqwest client for these requests, configured like oci-client's.
pub fn http_client(connect: Duration, read: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("rootbox/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect)
        .read_timeout(read)
        .build()
}

/// `{scheme}://{registry}/v2/{repository}/manifests/{digest or tag}`.
pub fn manifest_url(r: &Reference, plain_http: bool) -> String {
    let scheme = if plain_http { "http" } else { "https" };
    let target = r.digest().or(r.tag()).unwrap_or("latest");
    let ns = r.namespace().map(|ns| format!("?ns={ns}")).unwrap_or_default();
    format!("{scheme}://{}/v2/{}/manifests/{target}{ns}", r.resolve_registry(), r.repository())
}

/// GETs the manifest `r` names, accepting `accept`, reading at most `max` bytes of it.
pub async fn get_manifest(
    http: &reqwest::Client,
    oci: &Client,
    auth: &RegistryAuth,
    r: &Reference,
    plain_http: bool,
    accept: &[&str],
    max: u64,
) -> Result<Reply, OciDistributionError> {
    let url = manifest_url(r, plain_http);
    let token = oci.auth(r, auth, RegistryOperation::Pull).await?;
    let request = |basic: bool| {
        let mut b = http.get(&url).header(ACCEPT, accept.join(", "));
        if let Some(t) = &token {
            b = b.bearer_auth(t);
        } else if let (true, RegistryAuth::Basic(u, p)) = (basic, auth) {
            b = b.basic_auth(u, Some(p));
        }
        b
    };
    let mut res = request(false).send().await?;
    // Basic credentials go out only when the registry asks for them.
    if res.status() == StatusCode::UNAUTHORIZED
        && token.is_none()
        && matches!(auth, RegistryAuth::Basic(..))
    {
        res = request(true).send().await?;
    }
    let status = res.status();
    let digest = header(res.headers(), "docker-content-digest");
    if status != StatusCode::OK {
        let body = read_bounded(res, ERROR_BODY_MAX as u64).await?.unwrap_or_default();
        return Err(error_for(status, &body, &url));
    }
    if res
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > max)
    {
        return Ok(Reply::TooLarge);
    }
    Ok(match read_bounded(res, max).await? {
        Some(body) => Reply::Body(body, digest),
        None => Reply::TooLarge,
    })
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The body, or `None` once it passes `max` bytes (the rest is never read).
async fn read_bounded(
    res: reqwest::Response,
    max: u64,
) -> Result<Option<Vec<u8>>, OciDistributionError> {
    let mut body = Vec::new();
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() as u64 + chunk.len() as u64 > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The error oci-client would have made of this reply, so `retry` classifies it the same way.
fn error_for(status: StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    let message = || String::from_utf8_lossy(body).chars().take(512).collect::<String>();
    match status {
        StatusCode::UNAUTHORIZED => OciDistributionError::UnauthorizedError { url: url.into() },
        s if s.is_client_error() => match serde_json::from_slice::<OciEnvelope>(body) {
            Ok(envelope) => OciDistributionError::RegistryError { envelope, url: url.into() },
            Err(_) => OciDistributionError::ServerError {
                code: s.as_u16(),
                url: url.into(),
                message: message(),
            },
        },
        s => OciDistributionError::ServerError {
            code: s.as_u16(),
            url: url.into(),
            message: message(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let r: Reference = "127.0.0.1:5000/team/app:v1".parse().unwrap();
        assert_eq!(manifest_url(&r, true), "http://127.0.0.1:5000/v2/team/app/manifests/v1");
        let d = format!("sha256:{}", "a".repeat(64));
        let r: Reference = format!("debian@{d}").parse().unwrap();
        assert_eq!(
            manifest_url(&r, false),
            format!("https://index.docker.io/v2/library/debian/manifests/{d}")
        );
    }

    #[test]
    fn error_replies_classify_like_oci_clients() {
        let e = error_for(StatusCode::SERVICE_UNAVAILABLE, b"busy", "u");
        assert!(super::super::retry::transient(&e));
        let e = error_for(StatusCode::TOO_MANY_REQUESTS, b"slow down", "u");
        assert!(super::super::retry::transient(&e));
        let e = error_for(StatusCode::UNAUTHORIZED, b"", "u");
        assert!(super::super::retry::denied(&e));
        let env = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        let e = error_for(StatusCode::NOT_FOUND, env, "u");
        assert!(matches!(e, OciDistributionError::RegistryError { .. }));
        assert!(!super::super::retry::transient(&e));
        let long = vec![b'x'; 10_000];
        let OciDistributionError::ServerError { message, .. } =
            error_for(StatusCode::BAD_GATEWAY, &long, "u")
        else {
            panic!("not a server error")
        };
        assert_eq!(message.len(), 512);
    }
}
