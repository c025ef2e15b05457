//! `rootbox pull`: resolve, verify, start the sandbox, run the job, place the output.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rootbox_proto::{JobSpec, LayerSpec, Limits, SizePolicy};

use crate::cli::{Isolation, PullArgs};
use crate::digest::Digest;
use crate::inject;
use crate::job::{self, Event};
use crate::layer::{self, Verified};
use crate::output::{self, Output};
use crate::report::Report;
use crate::sandbox::{self, Running, Unavailable};
use crate::size::{human, SizeArg};
use crate::source;
use crate::worker_image;

/// Scratch filesystem size: room for the worst case of tiny entries (a 512-byte tar header
/// can become a 4 KiB block and a 256-byte inode), plus metadata. The file is sparse, so
/// only what is written costs disk; the result is shrunk afterwards.
pub fn scratch_size(uncompressed: u64, exact: Option<u64>) -> u64 {
    let worst = uncompressed.saturating_mul(9).saturating_add(256 << 20);
    let s = exact.map_or(worst, |e| e.max(worst));
    s.div_ceil(1 << 20) << 20
}

pub fn run(args: &PullArgs) -> Result<Report> {
    let started = Instant::now();
    let show = args.progress || (std::io::stderr().is_terminal() && !args.json);
    let say = |msg: String| {
        if show {
            eprintln!("rootbox: {msg}");
        }
    };
    let what = &args.source;
    let src = source::parse(what)?;
    let image = src.resolve(&args.platform).with_context(|| format!("resolving {what}"))?;

    let isolation = match args.isolation {
        Isolation::Vm => {
            return Err(Unavailable(
                "the microVM sandbox (--isolation vm) is not available in this build yet; use --isolation container (as root)".into(),
            )
            .into())
        }
        Isolation::Auto | Isolation::Container => "container",
    };
    let wimage = worker_image::locate(args.worker_image.as_deref()).map_err(Unavailable)?;
    if let Some(why) = sandbox::container::unavailable(&wimage) {
        return Err(Unavailable(why).into());
    }

    let t = Instant::now();
    let mut budget = args.max_uncompressed;
    let mut verified: Vec<Verified> = Vec::new();
    for (i, l) in image.layers.iter().enumerate() {
        let lwhat = format!("{what} layer {} of {} ({})", i + 1, image.layers.len(), l.digest);
        say(format!("verifying layer {} of {} ({})", i + 1, image.layers.len(), l.digest.short()));
        verified.push(layer::verify(l, &lwhat, &mut budget, args.max_uncompressed)?);
    }
    let uncompressed: u64 = verified.iter().map(|v| v.uncompressed).sum();
    let mut layers = image.layers.clone();
    let injection = inject::layer(!args.no_default_assets, args.inject.as_deref())?;
    if let Some(l) = &injection {
        let mut unbounded = u64::MAX;
        let v = layer::verify(l, "injected files", &mut unbounded, u64::MAX)?;
        layers.push(l.clone());
        verified.push(v);
    }
    let verify_ms = t.elapsed().as_millis() as u64;

    let exact = match args.size {
        SizeArg::Auto => None,
        SizeArg::Exact(n) => Some(n),
    };
    let out = Output::create(&args.output)
        .with_context(|| format!("creating a temp file beside {}", args.output.display()))?;
    out.set_len(scratch_size(uncompressed, exact)).context("sizing the output file")?;

    let t = Instant::now();
    let mut worker = sandbox::container::start(&wimage, out.file())?;
    output::track_process_group(worker.process_group());
    let spec = JobSpec {
        image: image.name.clone(),
        layers: image.layers.iter().map(|l| LayerSpec { digest: l.digest.to_string() }).collect(),
        size: match args.size {
            SizeArg::Auto => SizePolicy::Auto { headroom_pct: args.headroom },
            SizeArg::Exact(bytes) => SizePolicy::Exact { bytes },
        },
        limits: Limits {
            max_total_bytes: args.max_uncompressed,
            max_entries: args.max_entries,
            ..Limits::default()
        },
        label: Some(args.label.clone()),
        content_hint: uncompressed,
        inject: injection.is_some(),
    };
    let n = image.layers.len();
    let mut on_event = |e: Event| match e {
        Event::Phase(rootbox_proto::Phase::Inject, _) => say("injecting files".into()),
        Event::Phase(p, Some(l)) => say(format!("{p} layer {} of {n}", l + 1)),
        Event::Phase(p, None) => say(p.to_string()),
        Event::Shipped(i) => say(format!("shipped layer {} of {n}", i + 1)),
    };
    let outcome = job::run(&mut worker, &layers, &verified, spec, &mut on_event);
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            worker.kill();
            output::track_process_group(None);
            return Err(e).with_context(|| format!("building {what}"));
        }
    };
    let status = worker.wait().context("waiting for the worker")?;
    output::track_process_group(None);
    let job_ms = t.elapsed().as_millis() as u64;
    if !status.success() {
        bail!("the worker reported success but exited with {status}");
    }
    let size = outcome.result.size_bytes;
    let (path, sha256) =
        out.finish(size).with_context(|| format!("writing {}", args.output.display()))?;
    say(format!("wrote {} ({})", path.display(), human(size)));

    Ok(Report {
        path,
        sha256,
        size_bytes: size,
        used_bytes: outcome.result.used_bytes,
        inodes: outcome.result.inodes,
        entries: outcome.result.entries,
        source: what.clone(),
        source_digest: image.digest.clone(),
        layers: image.layers.iter().map(|l| l.digest.clone()).collect(),
        diff_ids: verified
            .iter()
            .take(image.layers.len())
            .map(|v| v.diff_id.clone())
            .collect::<Vec<Digest>>(),
        uncompressed_bytes: uncompressed,
        isolation: isolation.into(),
        injected: injection.is_some(),
        os_release: outcome.result.os_release.clone(),
        warnings: outcome.warnings,
        timings_ms: crate::report::Timings {
            verify: verify_ms,
            sandbox_and_job: job_ms,
            worker: outcome.result.phase_ms.iter().map(|(p, ms)| (p.to_string(), *ms)).collect(),
            total: started.elapsed().as_millis() as u64,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_sizes() {
        assert_eq!(scratch_size(0, None), 256 << 20);
        assert_eq!(scratch_size(100 << 20, None), (900 + 256) << 20);
        assert_eq!(scratch_size(1 << 20, Some(4 << 30)), 4 << 30);
        assert_eq!(scratch_size(u64::MAX, None) % (1 << 20), 0);
    }
}
