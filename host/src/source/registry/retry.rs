//! Which registry failures are worth another try (connection resets and refusals, timeouts,
//! 5xx, 429), how long to wait before it (bounded exponential backoff), and which ones mean
//! the credentials were refused. A failure's message is its cause chain, which never holds
//! credentials: they travel in headers.

use std::io;
use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};

/// Tries per request, the first included.
pub const ATTEMPTS: u32 = 5;

/// Wait before try `n` (1-based, n >= 2): 250 ms doubling, at most 4 s (all waits: 3.75 s).
pub fn backoff(n: u32) -> Duration {
    let ms = 250u64 << n.saturating_sub(2).min(4);
    Duration::from_millis(ms.min(4000))
}

fn transient_reqwest(e: &reqwest::Error) -> bool {
    if let Some(s) = e.status() {
        return s.is_server_error() || s.as_u16() == 429;
    }
    e.is_connect() || e.is_timeout() || e.is_body() || e.is_request() || e.is_decode()
}

/// An I/O failure: a connection that dropped (a body that ended early is `UnexpectedEof`).
fn transient_io(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | BrokenPipe
            | UnexpectedEof
            | TimedOut
            | Interrupted
            | NotConnected
    )
}

pub fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => transient_reqwest(r),
        OciDistributionError::IoError(io) => transient_io(io),
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|x| matches!(x.code, OciErrorCode::Toomanyrequests))
        }
        _ => false,
    }
}

/// The registry refused these credentials (or their absence).
pub fn denied(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        let waits: Vec<u64> = (2..=ATTEMPTS).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [250, 500, 1000, 2000]);
        assert_eq!(backoff(40), Duration::from_millis(4000));
    }

    #[test]
    fn classification() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: String::new(),
        };
        assert!(transient(&server(503)));
        assert!(transient(&server(429)));
        assert!(!transient(&server(404)));
        assert!(denied(&server(401)));
        assert!(transient(&OciDistributionError::IoError(io::ErrorKind::ConnectionReset.into())));
        assert!(!transient(&OciDistributionError::IoError(io::ErrorKind::NotFound.into())));
        assert!(denied(&OciDistributionError::UnauthorizedError { url: "u".into() }));
    }
}
