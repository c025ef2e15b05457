//! The distribution API's bearer-token flow, driven by the registry's challenge: a request
//! refused with `401` and `WWW-Authenticate: Bearer realm="…",service="…"` is retried with a
//! token from `GET realm?service=…&scope=repository:REPO:pull` (sent with the basic
//! credentials, when there are any). The token reply is hostile like every other: it is read
//! up to [`TOKEN_REPLY_MAX`], and a realm on plain HTTP is refused unless `--plain-http`.

use http_auth::ChallengeParser;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::bounded::{error_for, read_bounded};

/// The most of a token reply that is read (real ones are a few KiB).
pub const TOKEN_REPLY_MAX: u64 = 1 << 20;

/// What a `WWW-Authenticate` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer { realm: String, service: Option<String> },
    Basic,
}

/// The first challenge rootbox can answer, if any.
pub fn parse(header: &HeaderValue) -> Option<Challenge> {
    let text = header.to_str().ok()?;
    ChallengeParser::new(text).filter_map(Result::ok).find_map(|c| {
        if c.scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !c.scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let param = |name: &str| {
            c.params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_unescaped())
        };
        Some(Challenge::Bearer { realm: param("realm")?, service: param("service") })
    })
}

#[derive(Deserialize)]
struct TokenReply {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The URL a token is asked for at.
pub fn token_url(
    realm: &str,
    service: Option<&str>,
    repository: &str,
    plain_http: bool,
) -> Result<Url, OciDistributionError> {
    let mut url = Url::parse(realm).map_err(|e| {
        OciDistributionError::AuthenticationFailure(format!("token realm {realm:?}: {e}"))
    })?;
    match url.scheme() {
        "https" => {}
        "http" if plain_http => {}
        s => {
            return Err(OciDistributionError::AuthenticationFailure(format!(
                "token realm {realm:?}: scheme {s:?} refused (https, or http with --plain-http)"
            )))
        }
    }
    {
        let mut q = url.query_pairs_mut();
        if let Some(s) = service {
            q.append_pair("service", s);
        }
        q.append_pair("scope", &format!("repository:{repository}:pull"));
    }
    Ok(url)
}

/// Fetches a pull token for `repository` from `realm`.
pub async fn fetch(
    client: &reqwest::Client,
    realm: &str,
    service: Option<&str>,
    repository: &str,
    auth: &RegistryAuth,
    plain_http: bool,
) -> Result<String, OciDistributionError> {
    let url = token_url(realm, service, repository, plain_http)?;
    let mut request = client.get(url.clone());
    if let RegistryAuth::Basic(u, p) = auth {
        request = request.basic_auth(u, Some(p));
    }
    let res = request.send().await?;
    let status = res.status();
    let body = read_bounded(res, TOKEN_REPLY_MAX).await?;
    // The URL without its query, for messages.
    let shown = format!("{}{}", url.origin().ascii_serialization(), url.path());
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(OciDistributionError::AuthenticationFailure(format!(
            "the token service {shown} refused ({status})"
        )));
    }
    if status != StatusCode::OK {
        return Err(error_for(status, body.as_deref().unwrap_or_default(), &shown));
    }
    let Some(body) = body else {
        return Err(OciDistributionError::RegistryTokenDecodeError(format!(
            "the reply of {shown} is larger than {TOKEN_REPLY_MAX} bytes"
        )));
    };
    // The parse error is not shown: it could quote the token.
    let reply: TokenReply = serde_json::from_slice(&body).map_err(|_| {
        OciDistributionError::RegistryTokenDecodeError(format!("the reply of {shown} is not JSON"))
    })?;
    reply.token.or(reply.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
        OciDistributionError::RegistryTokenDecodeError(format!("the reply of {shown} has no token"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let h = HeaderValue::from_static(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        );
        assert_eq!(
            parse(&h),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(parse(&HeaderValue::from_static(r#"Basic realm="x""#)), Some(Challenge::Basic));
        assert_eq!(parse(&HeaderValue::from_static(r#"Bearer service="no-realm""#)), None);
        assert_eq!(parse(&HeaderValue::from_static("Negotiate")), None);
    }

    #[test]
    fn token_urls() {
        let u = token_url("https://auth.example/token?x=1", Some("reg"), "team/app", false);
        assert_eq!(
            u.unwrap().as_str(),
            "https://auth.example/token?x=1&service=reg&scope=repository%3Ateam%2Fapp%3Apull"
        );
        assert!(token_url("http://auth.example/token", None, "a", false).is_err());
        assert!(token_url("http://127.0.0.1:1/token", None, "a", true).is_ok());
        assert!(token_url("file:///etc/passwd", None, "a", true).is_err());
        assert!(token_url("not a url", None, "a", false).is_err());
    }
}
