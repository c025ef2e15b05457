//! The registry GETs of a pull (manifests, indexes, blobs), every reply read up to a bound.
//!
//! oci-client collects whole bodies before returning them (a manifest; the error reply to a
//! blob request), so a hostile registry could answer with gigabytes, or an endless chunked
//! body, and exhaust memory before rootbox saw a size. These requests are made here instead:
//! the bearer token comes from oci-client's auth flow (`Client::auth`), the URLs are the
//! distribution API's, a manifest is read chunk by chunk and abandoned past its bound, a blob
//! is handed back as a stream its caller cuts off at the descriptor's size, and error replies
//! are read up to [`ERROR_BODY_MAX`] for their message. Failures come back as oci-client's
//! own error type so retries and messages treat them all alike.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_LENGTH, RANGE};
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

/// A blob reply whose body is still to be streamed (the caller bounds it by the blob's size).
pub enum Blob {
    /// The whole blob, from its first byte.
    Full(reqwest::Response),
    /// From the offset asked for (a 206 whose `Content-Range` starts there).
    Partial(reqwest::Response),
}

/// The HTTP side of one registry session: a reqwest client configured like oci-client's, the
/// scheme, and the bearer token oci-client's auth flow gave (fetched once, again on a 401).
pub struct Http {
    client: reqwest::Client,
    plain_http: bool,
    /// `None`: not asked yet; `Some(None)`: the registry wants no token.
    token: tokio::sync::Mutex<Option<Option<String>>>,
    /// The registry asked for basic credentials once: send them up front from then on.
    basic: AtomicBool,
}

impl Http {
    pub fn new(plain_http: bool, connect: Duration, read: Duration) -> reqwest::Result<Http> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("rootbox/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect)
            .read_timeout(read)
            .build()?;
        Ok(Http {
            client,
            plain_http,
            token: tokio::sync::Mutex::new(None),
            basic: AtomicBool::new(false),
        })
    }

    fn url(&self, r: &Reference, kind: &str, target: &str) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        let ns = r.namespace().map(|ns| format!("?ns={ns}")).unwrap_or_default();
        format!("{scheme}://{}/v2/{}/{kind}/{target}{ns}", r.resolve_registry(), r.repository())
    }

    async fn token(
        &self,
        oci: &Client,
        auth: &RegistryAuth,
        r: &Reference,
        renew: bool,
    ) -> Result<Option<String>, OciDistributionError> {
        let mut t = self.token.lock().await;
        if renew || t.is_none() {
            *t = Some(oci.auth(r, auth, RegistryOperation::Pull).await?);
        }
        Ok(t.clone().flatten())
    }

    /// GETs `url` with `headers`, authenticated: the bearer token when the registry uses one
    /// (renewed once if refused), basic credentials only when the registry asks for them.
    async fn get(
        &self,
        oci: &Client,
        auth: &RegistryAuth,
        r: &Reference,
        url: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, OciDistributionError> {
        let send = |token: Option<String>, basic: bool| {
            let mut b = self.client.get(url).headers(headers.clone());
            if let Some(t) = token {
                b = b.bearer_auth(t);
            } else if let (true, RegistryAuth::Basic(u, p)) = (basic, auth) {
                b = b.basic_auth(u, Some(p));
            }
            b.send()
        };
        let token = self.token(oci, auth, r, false).await?;
        let res = send(token.clone(), self.basic.load(Ordering::Relaxed)).await?;
        if res.status() != StatusCode::UNAUTHORIZED {
            return Ok(res);
        }
        if token.is_some() {
            let renewed = self.token(oci, auth, r, true).await?;
            return Ok(send(renewed, false).await?);
        }
        if matches!(auth, RegistryAuth::Basic(..)) && !self.basic.load(Ordering::Relaxed) {
            self.basic.store(true, Ordering::Relaxed);
            return Ok(send(None, true).await?);
        }
        Ok(res)
    }

    /// GETs the manifest `r` names, accepting `accept`, reading at most `max` bytes of it.
    pub async fn manifest(
        &self,
        oci: &Client,
        auth: &RegistryAuth,
        r: &Reference,
        accept: &[&str],
        max: u64,
    ) -> Result<Reply, OciDistributionError> {
        let target = r.digest().or(r.tag()).unwrap_or("latest");
        let url = self.url(r, "manifests", target);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, header_value(&accept.join(", "))?);
        let res = self.get(oci, auth, r, &url, headers).await?;
        let status = res.status();
        let digest = header(res.headers(), "docker-content-digest");
        if status != StatusCode::OK {
            return Err(error_reply(res, &url).await);
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

    /// GETs blob `digest` of the repository `r` names, from byte `offset` on.
    pub async fn blob(
        &self,
        oci: &Client,
        auth: &RegistryAuth,
        r: &Reference,
        digest: &str,
        offset: u64,
    ) -> Result<Blob, OciDistributionError> {
        let url = self.url(r, "blobs", digest);
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(RANGE, header_value(&format!("bytes={offset}-"))?);
        }
        let res = self.get(oci, auth, r, &url, headers).await?;
        match res.status() {
            StatusCode::OK => Ok(Blob::Full(res)),
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let range = header(res.headers(), "content-range").unwrap_or_default();
                if !range.starts_with(&format!("bytes {offset}-")) {
                    return Err(OciDistributionError::SpecViolationError(format!(
                        "asked for {url} from byte {offset}, got range {range:?}"
                    )));
                }
                Ok(Blob::Partial(res))
            }
            _ => Err(error_reply(res, &url).await),
        }
    }
}

fn header_value(v: &str) -> Result<HeaderValue, OciDistributionError> {
    HeaderValue::from_str(v).map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))
}

/// The error for a reply that is not the one asked for; its body is read up to
/// [`ERROR_BODY_MAX`] for the message.
async fn error_reply(res: reqwest::Response, url: &str) -> OciDistributionError {
    let status = res.status();
    match read_bounded(res, ERROR_BODY_MAX as u64).await {
        Ok(body) => error_for(status, &body.unwrap_or_default(), url),
        Err(e) => e,
    }
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
        let t = Duration::from_secs(1);
        let r: Reference = "127.0.0.1:5000/team/app:v1".parse().unwrap();
        let plain = Http::new(true, t, t).unwrap();
        assert_eq!(
            plain.url(&r, "manifests", "v1"),
            "http://127.0.0.1:5000/v2/team/app/manifests/v1"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r: Reference = format!("debian@{d}").parse().unwrap();
        assert_eq!(
            Http::new(false, t, t).unwrap().url(&r, "blobs", &d),
            format!("https://index.docker.io/v2/library/debian/blobs/{d}")
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
