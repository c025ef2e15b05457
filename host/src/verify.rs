//! `rootbox verify RECORD`: rebuilds what a build record describes, from the same source and
//! options, in the sandbox it names (or `--isolation`), into a temp dir (or `--keep PATH`),
//! and compares the output's sha256 with the record's. When they differ, it names the
//! record's fields that differ now (the worker image, the host kernel, rootbox's version,
//! the image behind the source...), which is where to look first.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::digest::Digest;
use crate::exit;
use crate::pull;
use crate::record::{self, Difference, Record};
use crate::sandbox::Isolation;
use crate::size::SizeArg;
use crate::source;

/// What to verify, checked by the CLI (see `cli::VerifyArgs`).
#[derive(Debug, Clone)]
pub struct Request {
    pub record: PathBuf,
    /// `None`: the sandbox the record names.
    pub isolation: Option<Isolation>,
    pub worker_image: Option<PathBuf>,
    pub keep: Option<PathBuf>,
    pub json: bool,
    pub progress: bool,
    pub plain_http: bool,
    pub creds: Option<source::registry::auth::Creds>,
    pub vm_memory: u64,
    pub boot_timeout: u64,
    pub job_timeout: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Identical,
    Differs,
}

/// The verdict: `--json` prints it as is.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub verdict: Outcome,
    pub record_sha256: Digest,
    pub rebuilt_sha256: Digest,
    /// The record's fields that differ in the rebuild's record (empty when identical, and
    /// when only the output differs).
    pub differences: Vec<Difference>,
    /// Where the rebuild was kept (`--keep`), else null (it was removed).
    pub kept: Option<PathBuf>,
    /// The rebuild's own record.
    pub rebuilt: Record,
}

pub fn run(req: &Request) -> Result<Verdict> {
    let then = record::read(&req.record)?;
    // The rebuild goes where nothing of the user's is: a temp dir, removed on return.
    let scratch = tempfile::Builder::new()
        .prefix("rootbox-verify-")
        .tempdir()
        .context("creating a temp dir for the rebuild")?;
    let output = req.keep.clone().unwrap_or_else(|| scratch.path().join("rebuilt.ext4"));
    let build = rebuild_request(&then, req, output)?;
    let report = pull::run(&build).with_context(|| {
        format!("rebuilding {} from the record {}", then.source, req.record.display())
    })?;
    let now = report.record;
    let identical = now.sha256 == then.sha256 && now.size_bytes == then.size_bytes;
    Ok(Verdict {
        verdict: if identical { Outcome::Identical } else { Outcome::Differs },
        record_sha256: then.sha256.clone(),
        rebuilt_sha256: now.sha256.clone(),
        differences: record::differences(&then, &now),
        kept: req.keep.clone(),
        rebuilt: now,
    })
}

/// The pull the record describes: its source and the options it recorded, the sandbox it
/// ran in unless overridden, and this verify's own sandbox, registry and display settings.
fn rebuild_request(then: &Record, req: &Request, output: PathBuf) -> Result<pull::Request> {
    let isolation = match req.isolation {
        Some(i) => i,
        None => match then.isolation.sandbox.as_str() {
            "container" => Isolation::Container,
            "vm" => Isolation::Vm,
            other => anyhow::bail!(
                "the build record {} names the sandbox {other:?}, not container or vm \
                 (choose one with --isolation)",
                req.record.display()
            ),
        },
    };
    let platform = source::spec::PlatformSpec::parse(&then.platform)
        .map_err(|why| anyhow::anyhow!("the build record {}: {why}", req.record.display()))?;
    let o = &then.options;
    Ok(pull::Request {
        source: then.source.clone(),
        output,
        isolation,
        size: match o.size {
            record::Size::Auto => SizeArg::Auto,
            record::Size::Exact(n) => SizeArg::Exact(n),
        },
        headroom: o.headroom,
        platform,
        json: req.json,
        progress: req.progress,
        worker_image: req.worker_image.clone(),
        max_uncompressed: o.max_uncompressed,
        max_entries: o.max_entries,
        label: o.label.clone(),
        no_default_assets: o.no_default_assets,
        inject: o.inject.clone(),
        plain_http: req.plain_http,
        creds: req.creds.clone(),
        fetch_first: false,
        vm_memory: req.vm_memory,
        boot_timeout: req.boot_timeout,
        job_timeout: req.job_timeout,
        epoch: o.epoch,
        canonicalise: o.canonicalise,
        record: None,
    })
}

impl Verdict {
    pub fn exit_code(&self) -> i32 {
        match self.verdict {
            Outcome::Identical => 0,
            Outcome::Differs => exit::DIFFERS,
        }
    }

    /// The verdict on stdout (one line, or with differences a line each more), the hint on
    /// stderr.
    pub fn print(&self, json: bool) -> Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        for line in self.lines() {
            println!("{}", rootbox_proto::text::printable(&line, false));
        }
        if let Outcome::Differs = self.verdict {
            match &self.kept {
                Some(p) => eprintln!(
                    "rootbox: hint: the rebuild is kept at {}; compare with rootbox diff",
                    p.display()
                ),
                None => eprintln!(
                    "rootbox: hint: keep the rebuild with --keep PATH and compare with rootbox diff"
                ),
            }
        }
        Ok(())
    }

    fn lines(&self) -> Vec<String> {
        match self.verdict {
            Outcome::Identical => vec![format!("identical: {}", self.rebuilt_sha256)],
            Outcome::Differs => {
                let mut out = vec![format!(
                    "differs: record {}, rebuilt {}",
                    self.record_sha256, self.rebuilt_sha256
                )];
                if self.differences.is_empty() {
                    out.push(
                        "  the environment is as recorded (worker_image_digest, host_kernel, \
                         rootbox_version)"
                            .into(),
                    );
                }
                for d in &self.differences {
                    out.push(format!("  {}: record {}, now {}", d.field, d.record, d.now));
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    fn request() -> Request {
        Request {
            record: "r.json".into(),
            isolation: None,
            worker_image: None,
            keep: None,
            json: false,
            progress: false,
            plain_http: false,
            creds: None,
            vm_memory: 256 << 20,
            boot_timeout: 30,
            job_timeout: 3600,
        }
    }

    #[test]
    fn the_rebuild_takes_the_records_source_options_and_sandbox() {
        let mut r = sample();
        r.options.size = record::Size::Exact(64 << 20);
        r.options.label = "root".into();
        r.options.epoch = 1_700_000_000;
        r.options.canonicalise = false;
        r.options.inject = Some("extra".into());
        r.isolation.sandbox = "vm".into();
        let b = rebuild_request(&r, &request(), "out".into()).unwrap();
        assert_eq!(b.source, r.source);
        assert_eq!(b.size, SizeArg::Exact(64 << 20));
        assert_eq!((b.label.as_str(), b.epoch, b.canonicalise), ("root", 1_700_000_000, false));
        assert_eq!(b.inject, Some(PathBuf::from("extra")));
        assert!(b.no_default_assets);
        assert_eq!(b.isolation, Isolation::Vm);
        assert_eq!(b.record, None, "a verify writes no record");
        let over = Request { isolation: Some(Isolation::Container), ..request() };
        assert_eq!(
            rebuild_request(&r, &over, "out".into()).unwrap().isolation,
            Isolation::Container
        );
        r.isolation.sandbox = "chroot".into();
        let e = rebuild_request(&r, &request(), "out".into()).unwrap_err();
        assert!(e.to_string().contains("\"chroot\""), "{e}");
    }

    #[test]
    fn the_verdict_says_what_differs() {
        let then = sample();
        let mut now = sample();
        now.sha256 = Digest::of(b"other");
        now.host_kernel = Some("6.9.0".into());
        let v = Verdict {
            verdict: Outcome::Differs,
            record_sha256: then.sha256.clone(),
            rebuilt_sha256: now.sha256.clone(),
            differences: record::differences(&then, &now),
            kept: None,
            rebuilt: now,
        };
        assert_eq!(v.exit_code(), exit::DIFFERS);
        let lines = v.lines();
        assert_eq!(
            lines[0],
            format!("differs: record {}, rebuilt {}", then.sha256, Digest::of(b"other"))
        );
        assert_eq!(lines[1], "  host_kernel: record 6.1.0, now 6.9.0");
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["verdict"], "differs");
        assert_eq!(json["differences"][0]["field"], "host_kernel");
    }
}
