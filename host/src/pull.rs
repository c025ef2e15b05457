//! `rootbox pull`: resolve, verify, start the sandbox, run the job, place the output.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rootbox_proto::{JobSpec, LayerSpec, Limits, SizePolicy};

use crate::digest::Digest;
use crate::identity;
use crate::inject;
use crate::job::{self, Event};
use crate::output::{self, Output};
use crate::pipeline;
use crate::progress::Progress;
use crate::record::{self, Record};
use crate::report::{Report, SanitisedEntry};
use crate::sandbox::{self, Unavailable};
use crate::size::{human, SizeArg};
use crate::source;
use crate::worker_image;

/// Scratch filesystem size: room for the worst case of tiny entries (a 512-byte tar header
/// can become a 4 KiB block and a 256-byte inode), plus metadata. The file is sparse, so
/// only what is written costs disk; the result is shrunk afterwards.
///
/// Whole block groups (128 MiB of 4 KiB blocks): mke2fs spreads the inodes over the groups,
/// so a partial last group changes the inodes per group, and with it where every inode
/// table and block lands (measured: 93,312 vs 98,208 inodes on two scratch sizes of one
/// image); in whole groups the inodes per group are the same for any scratch size.
pub fn scratch_size(uncompressed: u64, exact: Option<u64>) -> u64 {
    const GROUP: u64 = 128 << 20;
    let worst = uncompressed.saturating_mul(9).saturating_add(256 << 20);
    let s = exact.map_or(worst, |e| e.max(worst));
    s.checked_next_multiple_of(GROUP).unwrap_or(s / GROUP * GROUP)
}

/// What to pull, checked by the CLI (see `cli::PullArgs` for what each field means).
#[derive(Debug, Clone)]
pub struct Request {
    pub source: String,
    pub output: std::path::PathBuf,
    pub isolation: sandbox::Isolation,
    pub size: SizeArg,
    pub headroom: u32,
    pub platform: source::spec::PlatformSpec,
    pub json: bool,
    pub progress: bool,
    pub worker_image: Option<std::path::PathBuf>,
    pub max_uncompressed: u64,
    pub max_entries: u64,
    pub label: String,
    pub no_default_assets: bool,
    pub inject: Option<std::path::PathBuf>,
    pub plain_http: bool,
    pub creds: Option<source::registry::auth::Creds>,
    pub fetch_first: bool,
    pub vm_memory: u64,
    pub boot_timeout: u64,
    pub job_timeout: u64,
    /// The build's epoch (`identity::source_date_epoch`).
    pub epoch: u64,
    /// Run the worker's canonicalising pass (off: `--no-canonicalise`).
    pub canonicalise: bool,
    /// Write the build record here once the image is in place.
    pub record: Option<std::path::PathBuf>,
}

pub fn run(args: &Request) -> Result<Report> {
    let started = Instant::now();
    let progress = Progress::new(args.progress, args.json);
    let say = |msg: String| progress.line(msg);
    let what = &args.source;
    let remote =
        source::registry::Options { plain_http: args.plain_http, creds: args.creds.clone() };
    let (src, image) = resolve(what, &remote, &args.platform, &progress)?;

    let vm_options =
        sandbox::vm::Options::from_flags(args.vm_memory, args.boot_timeout, args.job_timeout)
            .map_err(anyhow::Error::msg)?;
    let wimage = worker_image::locate(args.worker_image.as_deref()).map_err(Unavailable::new)?;
    let decision = sandbox::choose(args.isolation, &wimage)?;
    if !args.json {
        progress.note(format!("sandbox: {}", decision.summary()));
    }
    let plan = &decision.plan;
    // What the build record names the worker image by, hashed while the build runs instead
    // of after it (a few milliseconds): the image a sandbox starts from is read at its start.
    let wimage_digest = {
        let (wimage, part) = (wimage.clone(), sandbox::worker_image_part(plan));
        std::thread::spawn(move || wimage.digest(part))
    };

    // Fetch and check: everything up front with --fetch-first; otherwise blob digests on
    // threads while the sandbox starts and the rest as the bytes ship (see pipeline).
    let t = Instant::now();
    let injection = inject::layer(!args.no_default_assets, args.inject.as_deref())?;
    let injected = injection.is_some();
    let injected_digest = injection.as_ref().map(|l| l.digest.clone());
    let layer_digests: Vec<Digest> = image.layers.iter().map(|l| l.digest.clone()).collect();
    let identity = identity::derive(
        &identity::Inputs {
            image: &image.digest,
            layers: &layer_digests,
            size: match args.size {
                SizeArg::Auto => identity::Size::Auto { headroom_pct: args.headroom },
                SizeArg::Exact(bytes) => identity::Size::Exact { bytes },
            },
            label: &args.label,
            injected: injected_digest.as_ref(),
            epoch: args.epoch,
        },
        args.canonicalise,
    );
    let mut layers = pipeline::Layers::start(
        src.clone(),
        &image,
        injection,
        args.max_uncompressed,
        args.fetch_first,
        &progress,
    )?;
    let verify_ms = t.elapsed().as_millis() as u64;

    let exact = match args.size {
        SizeArg::Auto => None,
        SizeArg::Exact(n) => Some(n),
    };
    let out = Output::create(&args.output)
        .with_context(|| format!("creating a temp file beside {}", args.output.display()))?;
    let scratch_bytes = scratch_size(layers.scratch_basis(), exact);
    out.set_len(scratch_bytes).context("sizing the output file")?;

    let t = Instant::now();
    let mut worker = sandbox::start(plan, &wimage, out.file(), &vm_options)?;
    let flusher = out.flusher().context("starting the output's write-out")?;
    output::track_sandbox(worker.process_group(), worker.loop_devices());
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
        content_hint: layers.content_hint(),
        inject: injected,
        identity: Some(identity.clone()),
    };
    let n = image.layers.len();
    let mut on_event = |e: Event| match e {
        Event::Phase(rootbox_proto::Phase::Inject, _) => say("injecting files".into()),
        Event::Phase(p, Some(l)) => say(format!("{p} layer {} of {n}", l + 1)),
        Event::Phase(p, None) => say(p.to_string()),
        Event::Shipped(i) if i < n => say(format!("shipped layer {} of {n}", i + 1)),
        Event::Shipped(_) => say("shipped injected files".into()),
    };
    let bounds = job::Bounds {
        scratch_bytes,
        timeout: vm_options.job_timeout,
        output_full: Some(std::sync::Arc::new(out.full_check())),
    };
    // About what the image takes: its content and a tenth more for metadata and journal.
    let needed_estimate = spec.content_hint.saturating_add(spec.content_hint / 10);
    let outcome = job::run(worker.as_mut(), &mut layers, spec, bounds, &mut on_event);
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            // The watchdog stopped the sandbox itself: how the sandbox then ended says nothing.
            let reason = match e {
                job::JobError::Timeout(_) | job::JobError::OutputFull => None,
                _ => worker.stop_reason(),
            };
            worker.kill();
            output::track_sandbox(None, None);
            // The scratch filesystem itself filled: it was sized from an estimate.
            let scratch = (!layers.exact() && scratch_full(&e)).then(|| {
                format!(
                    "the {} scratch filesystem was sized from what the layers declare (or, for \
                     a registry pull, from their compressed size) and the content did not fit; \
                     --fetch-first verifies every layer before the build and sizes it exactly",
                    human(scratch_bytes)
                )
            });
            let full = out.no_space(needed_estimate);
            return Err(job_failed(e, what, reason, full, scratch));
        }
    };
    let status = worker.wait().context("waiting for the worker")?;
    drop(flusher);
    output::track_sandbox(None, None);
    let job_ms = t.elapsed().as_millis() as u64;
    if !status.success() {
        bail!("the worker reported success but exited with {status}");
    }
    let size = outcome.result.size_bytes;
    let (path, sha256) =
        out.finish(size).with_context(|| format!("writing {}", args.output.display()))?;
    say(format!("wrote {} ({})", path.display(), human(size)));
    let record = Record {
        record_version: record::VERSION,
        rootbox_version: env!("CARGO_PKG_VERSION").into(),
        source: what.clone(),
        image_digest: image.digest.clone(),
        layers: layer_digests,
        platform: args.platform.to_string(),
        isolation: record::Isolation {
            sandbox: plan.isolation().into(),
            vmm: plan.vmm().map(Into::into),
            accel: plan.accel().map(Into::into),
        },
        worker_image_digest: wimage_digest
            .join()
            .map_err(|_| anyhow::anyhow!("hashing the worker image: the thread panicked"))??,
        host_kernel: matches!(plan, sandbox::Plan::Container).then(host_kernel),
        options: record::Options {
            size: match args.size {
                SizeArg::Auto => record::Size::Auto,
                SizeArg::Exact(n) => record::Size::Exact(n),
            },
            headroom: args.headroom,
            label: args.label.clone(),
            injected_digest,
            no_default_assets: args.no_default_assets,
            inject: args.inject.clone(),
            epoch: args.epoch,
            canonicalise: args.canonicalise,
            max_uncompressed: args.max_uncompressed,
            max_entries: args.max_entries,
        },
        identity: (&identity).into(),
        sha256: sha256.clone(),
        size_bytes: size,
    };
    if let Some(p) = &args.record {
        record::write(&record, p)?;
    }

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
        diff_ids: outcome
            .shipped
            .iter()
            .take(image.layers.len())
            .map(|v| v.diff_id.clone())
            .collect::<Vec<Digest>>(),
        uncompressed_bytes: outcome
            .shipped
            .iter()
            .take(image.layers.len())
            .map(|v| v.uncompressed)
            .sum(),
        isolation: plan.isolation().into(),
        vmm: plan.vmm(),
        accel: plan.accel(),
        isolation_reason: decision.reason.clone(),
        injected,
        os_release: outcome.result.os_release.clone(),
        warnings: outcome.warnings,
        sanitised_total: outcome
            .result
            .sanitised
            .values()
            .sum::<u64>()
            .max(outcome.sanitised.len() as u64),
        sanitised_by_kind: outcome.result.sanitised.clone(),
        sanitised: outcome
            .sanitised
            .into_iter()
            .map(|s| SanitisedEntry {
                layer: image
                    .layers
                    .get(s.layer as usize)
                    .map_or_else(|| "injected files".to_string(), |l| l.digest.to_string()),
                path: s.path,
                kind: s.kind,
                what: s.what,
                why: s.why,
            })
            .collect(),
        timings_ms: crate::report::Timings {
            verify: verify_ms,
            sandbox_and_job: job_ms,
            boot: worker.boot_ms(),
            worker: outcome.result.phase_ms.iter().map(|(p, ms)| (p.to_string(), *ms)).collect(),
            total: started.elapsed().as_millis() as u64,
        },
        record,
    })
}

/// The running kernel's release (`uname -r`): the container sandbox's worker writes the image
/// through it.
fn host_kernel() -> String {
    rustix::system::uname().release().to_string_lossy().into_owned()
}

/// Opens the source and resolves its image: every refusal of the image's documents (and of
/// the source's name) leaves from here.
pub fn resolve(
    what: &str,
    remote: &source::registry::Options,
    platform: &source::spec::PlatformSpec,
    progress: &Progress,
) -> Result<(Arc<dyn source::Source>, source::Image)> {
    let src: Arc<dyn source::Source> = source::open(what, remote, progress)?.into();
    let image = src.resolve(platform).with_context(|| format!("resolving {what}"))?;
    Ok((src, image))
}

/// A failed job as the CLI reports it, under `building WHAT`: a full output filesystem (it
/// shows in the worker as an I/O error: say what it is), else a full scratch filesystem
/// sized from an estimate (`scratch` says so), else what ended the sandbox when known,
/// around the job's own error.
pub fn job_failed(
    e: job::JobError,
    what: &str,
    stopped: Option<String>,
    full: Option<output::NoSpace>,
    scratch: Option<String>,
) -> anyhow::Error {
    let e = match (full, scratch, stopped) {
        (Some(full), _, _) => anyhow::Error::new(e).context(full),
        (None, Some(s), _) => anyhow::Error::new(e).context(s),
        (None, None, Some(r)) => anyhow::Error::new(e).context(r),
        (None, None, None) => e.into(),
    };
    e.context(format!("building {what}"))
}

/// Whether the worker failed because its filesystem ran out of space.
fn scratch_full(e: &job::JobError) -> bool {
    match e {
        job::JobError::Remote(r) => r.causes.iter().any(|c| c.contains("No space left on device")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_sizes() {
        assert_eq!(scratch_size(0, None), 256 << 20);
        // 1156 MiB of worst case, in whole 128 MiB groups.
        assert_eq!(scratch_size(100 << 20, None), 1280 << 20);
        assert_eq!(scratch_size(1 << 20, Some(4 << 30)), 4 << 30);
        assert_eq!(scratch_size(1 << 20, Some((4 << 30) + 4096)), (4 << 30) + (128 << 20));
        assert_eq!(scratch_size(u64::MAX, None) % (128 << 20), 0);
    }
}
