//! The registry GETs of a pull (manifests, indexes, blobs), every reply read up to a bound.
//!
//! oci-client collects whole bodies before returning them (a manifest, the error reply to a
//! blob request, a token reply), so a hostile registry could answer with gigabytes, or an
//! endless chunked body, and exhaust memory before rootbox saw a size. These requests, and
//! the token flow (`token`), are made here instead; oci-client parses the references. A
//! manifest is read chunk by chunk and abandoned past its bound, a blob is handed back as a
//! stream its caller cuts off at the descriptor's size, and error replies are read up to
//! [`ERROR_BODY_MAX`] for their message. Failures come back as oci-client's error type, so
//! retries and messages treat them all alike.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, RANGE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::token::{self, Challenge};

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

/// The credential a request goes out with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cred {
    None,
    Bearer(String),
    Basic,
}

/// The HTTP side of one registry session: a reqwest client, the scheme, and the credential
/// the registry's last challenge asked for (a bearer token, or the basic credentials).
pub struct Http {
    client: reqwest::Client,
    plain_http: bool,
    cred: Mutex<Cred>,
}

impl Http {
    pub fn new(plain_http: bool, connect: Duration, read: Duration) -> reqwest::Result<Http> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("rootbox/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect)
            .read_timeout(read)
            .build()?;
        Ok(Http { client, plain_http, cred: Mutex::new(Cred::None) })
    }

    fn url(&self, r: &Reference, kind: &str, target: &str) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        let ns = r.namespace().map(|ns| format!("?ns={ns}")).unwrap_or_default();
        format!("{scheme}://{}/v2/{}/{kind}/{target}{ns}", r.resolve_registry(), r.repository())
    }

    fn cred(&self) -> Cred {
        self.cred.lock().map(|c| c.clone()).unwrap_or(Cred::None)
    }

    /// GETs `url` with `headers`. A `401` is answered once as its challenge asks: with a new
    /// bearer token (see `token`), or with the basic credentials; later requests start with
    /// that credential.
    async fn get(
        &self,
        auth: &RegistryAuth,
        r: &Reference,
        url: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, OciDistributionError> {
        let send = |cred: &Cred| {
            let mut b = self.client.get(url).headers(headers.clone());
            match (cred, auth) {
                (Cred::Bearer(t), _) => b = b.bearer_auth(t),
                (Cred::Basic, RegistryAuth::Basic(u, p)) => b = b.basic_auth(u, Some(p)),
                _ => {}
            }
            b.send()
        };
        let cred = self.cred();
        let res = send(&cred).await?;
        if res.status() != StatusCode::UNAUTHORIZED {
            return Ok(res);
        }
        let next = match res.headers().get(WWW_AUTHENTICATE).and_then(token::parse) {
            Some(Challenge::Bearer { realm, service }) => {
                let repo = r.repository();
                let t = token::fetch(
                    &self.client,
                    &realm,
                    service.as_deref(),
                    repo,
                    auth,
                    self.plain_http,
                );
                Cred::Bearer(t.await?)
            }
            Some(Challenge::Basic) if matches!(auth, RegistryAuth::Basic(..)) => Cred::Basic,
            _ => return Ok(res),
        };
        // Basic credentials already sent and refused: asking again changes nothing. (A
        // refused bearer token is renewed: it may have expired.)
        if cred == Cred::Basic && next == Cred::Basic {
            return Ok(res);
        }
        if let Ok(mut c) = self.cred.lock() {
            *c = next.clone();
        }
        Ok(send(&next).await?)
    }

    /// GETs the manifest `r` names, accepting `accept`, reading at most `max` bytes of it.
    pub async fn manifest(
        &self,
        auth: &RegistryAuth,
        r: &Reference,
        accept: &[&str],
        max: u64,
    ) -> Result<Reply, OciDistributionError> {
        let target = r.digest().or(r.tag()).unwrap_or("latest");
        let url = self.url(r, "manifests", target);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, header_value(&accept.join(", "))?);
        let res = self.get(auth, r, &url, headers).await?;
        let status = res.status();
        let digest = header(res.headers(), "docker-content-digest");
        if status != StatusCode::OK {
            return Err(error_reply(res, &url).await);
        }
        Ok(match read_bounded(res, max).await? {
            Some(body) => Reply::Body(body, digest),
            None => Reply::TooLarge,
        })
    }

    /// GETs blob `digest` of the repository `r` names, from byte `offset` on.
    pub async fn blob(
        &self,
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
        let res = self.get(auth, r, &url, headers).await?;
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
pub async fn read_bounded(
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
pub fn error_for(status: StatusCode, body: &[u8], url: &str) -> OciDistributionError {
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
