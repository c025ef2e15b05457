//! How a failed command ends: the one error line it prints (each cause said once), and the
//! exit code, documented in README: 0 ok, 1 other, 2 usage, 3 source or verification,
//! 4 content refused or build failed in the worker, 5 sandbox unavailable, 6 different
//! (`verify`: the rebuild is not the record's bytes; `diff`: the images differ), 128+N signal.

use crate::job::JobError;
use crate::sandbox::Unavailable;
use crate::source::SourceError;

pub const OTHER: i32 = 1;
pub const USAGE: i32 = 2;
pub const SOURCE: i32 = 3;
pub const CONTENT: i32 = 4;
pub const SANDBOX: i32 = 5;
/// A verdict, not an error (nothing failed), printed on stdout: `rootbox verify`'s rebuild
/// finished and its sha256 is not the record's; `rootbox diff`'s images differ.
pub const DIFFERS: i32 = 6;

/// What follows `rootbox: error: `: the error and its causes through the one chain formatter
/// (`outer: inner: innermost`, each said once), then a lost worker's last output. Escaped:
/// the chain holds names from layers, registry replies and worker words.
pub fn message(e: &anyhow::Error) -> String {
    let mut line = rootbox_proto::text::error_line(e.as_ref());
    if let Some(console) = e.chain().find_map(|c| c.downcast_ref::<JobError>()?.console()) {
        line.push_str(&console);
    }
    rootbox_proto::text::printable(&line, true).into_owned()
}

pub fn classify(e: &anyhow::Error) -> i32 {
    // Before the worker's I/O error it explains: the host's disk, not the image. (A context,
    // so found by anyhow's downcast, not in the chain of sources.)
    if e.downcast_ref::<crate::output::NoSpace>().is_some() {
        return OTHER;
    }
    for cause in e.chain() {
        if cause.is::<crate::identity::BadEpoch>() {
            return USAGE;
        }
        if cause.downcast_ref::<crate::record::RecordError>().is_some_and(|r| r.is_usage()) {
            return USAGE;
        }
        if cause.is::<SourceError>() {
            return SOURCE;
        }
        if cause.is::<Unavailable>() {
            return SANDBOX;
        }
        if let Some(j) = cause.downcast_ref::<JobError>() {
            return match j {
                JobError::Remote(r) if r.internal => OTHER,
                JobError::Remote(_) => CONTENT,
                JobError::Source { .. } => SOURCE,
                JobError::Lost { .. }
                | JobError::Ship { .. }
                | JobError::Untrusted { .. }
                | JobError::Timeout(_)
                | JobError::OutputFull => OTHER,
            };
        }
    }
    OTHER
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::NoSpace;
    use rootbox_proto::RemoteError;

    fn remote(internal: bool) -> JobError {
        JobError::Remote(RemoteError {
            operation: "applying layer 1 of 1".into(),
            layer: None,
            path: Some("/data/blob".into()),
            causes: vec!["Read-only file system (os error 30)".into()],
            internal,
        })
    }

    #[test]
    fn a_full_disk_is_the_hosts_problem_even_under_the_workers_error() {
        let full = NoSpace {
            dir: "/out".into(),
            mount: "/out".into(),
            free: 0,
            total: 1 << 26,
            written: 1 << 26,
            needed: 1 << 28,
        };
        let e = anyhow::Error::new(remote(false)).context(full).context("building oci:x");
        assert_eq!(classify(&e), OTHER);
        let e = anyhow::Error::new(remote(false)).context("building oci:x");
        assert_eq!(classify(&e), CONTENT);
        let e = anyhow::Error::new(remote(true)).context("building oci:x");
        assert_eq!(classify(&e), OTHER);
    }

    #[test]
    fn a_malformed_source_date_epoch_is_a_usage_error() {
        let bad = crate::identity::BadEpoch { value: "soon".into(), source: None };
        assert_eq!(classify(&anyhow::Error::new(bad).context("pull")), USAGE);
    }

    #[test]
    fn a_record_verify_cannot_read_is_a_usage_error_and_failing_to_write_one_is_not() {
        use crate::record::RecordError;
        let version = RecordError::Version { path: "r.json".into(), found: "2".into() };
        assert_eq!(classify(&anyhow::Error::new(version).context("verify")), USAGE);
        let write =
            RecordError::Write { path: "r.json".into(), source: std::io::ErrorKind::Other.into() };
        assert_eq!(classify(&anyhow::Error::new(write)), OTHER);
    }
}
