//! `rootbox-pull-bench [LAYERS [RUNS [ISOLATION [COMPRESSION]]]]`: what pipelining a registry
//! pull with the build gains, measured in one run.
//!
//! The Debian minbase tree is cut into LAYERS (default 8) layers of about equal size,
//! COMPRESSION gzip (default) or zstd, and pushed to Debian's `docker-registry` on 127.0.0.1. A warm pull (every blob cached) gives
//! the build time B. A loopback proxy then limits all replies together to the rate at which
//! the download takes about B too (a link, not a per-connection limit), and cold pulls
//! alternate between the pipelined default and `--fetch-first` (download and verify every
//! layer, then build), RUNS (default 3) of each, each into a fresh cache. Prints medians, the
//! ratio and the time saved against the most that could be: the part of the build that can
//! run while layers download (sandbox start, mkfs, applying layers; shrinking and checking
//! need the last layer).
//!
//! Needs root, the rootbox binary ($ROOTBOX_BIN), the worker image ($ROOTBOX_WORKER_IMAGE),
//! docker-registry, skopeo and the Debian fixture (made when missing).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rootbox_tests::fixture::debian;
use rootbox_tests::oci::{Compression, Image};
use rootbox_tests::registry::{self, Proxy, Rate, Registry};
use rootbox_tests::Env;

struct Run {
    wall: f64,
    /// rootbox's own split: verify (with --fetch-first: download + verify) and the job.
    verify: f64,
    job: f64,
    /// The worker's phases, in seconds.
    phases: BTreeMap<String, f64>,
    /// The image built, MiB.
    mib: f64,
}

impl Run {
    fn phases(&self) -> String {
        let p: Vec<String> = self.phases.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
        p.join(", ")
    }

    /// The part of the build that can overlap the download: the sandbox's start, mkfs and
    /// applying layers (shrink and check need every layer).
    fn overlappable(&self) -> f64 {
        let phase = |k: &str| self.phases.get(k).copied().unwrap_or(0.0);
        self.job - phase("shrink") - phase("fsck")
    }
}

/// What every pull of the bench shares.
struct Bench {
    env: Env,
    tmp: tempfile::TempDir,
    isolation: String,
}

impl Bench {
    fn pull(&self, name: &str, port: u16, extra: &[&str]) -> Result<Run> {
        let (env, tmp) = (&self.env, self.tmp.path());
        let cache = tmp.join(format!("cache-{name}"));
        let out = tmp.join(format!("{name}.ext4"));
        let home = tmp.join("home");
        std::fs::create_dir_all(&home)?;
        let src = format!("docker://127.0.0.1:{port}/bench/debian:v1");
        let mut args = vec!["--plain-http", "--json", "--isolation", &self.isolation];
        args.extend_from_slice(extra);
        let vars: [(&str, &Path); 3] =
            [("XDG_CACHE_HOME", &cache), ("HOME", &home), ("DOCKER_CONFIG", &home)];
        let t = Instant::now();
        let o = registry::pull(env, &vars, &src, &out, &args);
        let wall = t.elapsed().as_secs_f64();
        if o.code != 0 {
            bail!("pull {name} failed:\n{}", o.describe());
        }
        let v: serde_json::Value =
            serde_json::from_str(o.stdout.trim()).context("--json output")?;
        let ms = |k: &str| v["timings_ms"][k].as_f64().unwrap_or(0.0) / 1000.0;
        let _ = std::fs::remove_file(&out);
        let phases = v["timings_ms"]["worker"]
            .as_object()
            .map(|m| {
                m.iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0) / 1000.0)).collect()
            })
            .unwrap_or_default();
        let mib = v["size_bytes"].as_f64().unwrap_or(0.0) / f64::from(1 << 20);
        Ok(Run { wall, verify: ms("verify"), job: ms("sandbox_and_job"), phases, mib })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

fn bench(layers: usize, runs: usize, isolation: String, compression: Compression) -> Result<()> {
    let env = Env::locate();
    if let Some(why) = rootbox_tests::guard::missing(&env).or_else(registry::missing) {
        bail!("cannot run: {why}");
    }
    let tmp = tempfile::Builder::new().prefix("rootbox-pull-bench-").tempdir()?;
    let tar = std::fs::read(debian::ensure_tar(&env.workspace)?)?;
    let b = Bench { env, tmp, isolation };
    let image = Image::from_tars(&debian::split_even(&tar, layers)?, compression);
    let compressed: usize = image.layers.iter().map(|l| l.blob.len()).sum();
    let layout = b.tmp.path().join("layout");
    image.write_oci(&layout, Some("v1"))?;
    let reg = Registry::start(None);
    reg.push(&layout, "v1", "bench/debian:v1", false);

    // Warm-up (also fills the cache for the warm pull), then the build time B.
    b.pull("warm", reg.port, &[])?;
    let warm: Vec<Run> = (0..runs).map(|_| b.pull("warm", reg.port, &[])).collect::<Result<_>>()?;
    println!("pull-bench: warm pull worker phases (s): {}", warm[0].phases());
    let build = median(warm.iter().map(|r| r.wall).collect());
    let rate = (compressed as f64 / build) as u64;
    println!(
        "pull-bench: Debian minbase as {} {compression:?} layers, {:.1} MiB compressed, {} isolation",
        image.layers.len(),
        compressed as f64 / f64::from(1 << 20),
        b.isolation
    );
    println!(
        "pull-bench: warm pull (build only) {build:.2} s; link limited to {:.1} MiB/s (download ~ build)",
        rate as f64 / f64::from(1 << 20)
    );

    let (mut piped, mut first, mut download, mut overlap) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        for fetch_first in [false, true] {
            // A fresh proxy per pull: the link starts idle.
            let proxy = Proxy::start_with(reg.port, Some(Rate::Shared(rate)));
            let name = format!("{}-{i}", if fetch_first { "first" } else { "piped" });
            let extra: &[&str] = if fetch_first { &["--fetch-first"] } else { &[] };
            let r = b.pull(&name, proxy.port, extra)?;
            println!(
                "pull-bench: run {i} {:<11} {:5.2} s, {:.0} MiB image (verify {:4.2} s, sandbox+job {:4.2} s; worker: {})",
                if fetch_first { "fetch-first" } else { "pipelined" },
                r.wall,
                r.mib,
                r.verify,
                r.job,
                r.phases()
            );
            if fetch_first {
                download.push(r.verify);
                overlap.push(r.overlappable());
                first.push(r.wall);
            } else {
                piped.push(r.wall);
            }
        }
    }
    let (p, f, d, o) = (median(piped), median(first), median(download), median(overlap));
    println!(
        "pull-bench: median pipelined {p:.2} s, download-then-build {f:.2} s \
         (of which download+verify {d:.2} s)"
    );
    println!(
        "pull-bench: pipelined / download-then-build = {:.2}; saves {:.2} s of the {:.2} s of \
         build that can overlap the download (sandbox start, mkfs, apply)",
        p / f,
        f - p,
        o.min(d)
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let num = |i: usize, default: usize| -> Option<usize> {
        match args.get(i) {
            None => Some(default),
            Some(a) => a.to_str()?.parse().ok().filter(|n| *n > 0),
        }
    };
    let (Some(layers), Some(runs)) = (num(0, 8), num(1, 3)) else {
        eprintln!("usage: rootbox-pull-bench [LAYERS [RUNS [container|vm [gzip|zstd]]]]");
        return ExitCode::from(2);
    };
    let isolation = args.get(2).and_then(|a| a.to_str()).unwrap_or("container").to_string();
    let compression = match args.get(3).and_then(|a| a.to_str()) {
        None | Some("gzip") => Compression::Gzip,
        Some("zstd") => Compression::Zstd,
        Some(_) => {
            eprintln!("rootbox-pull-bench: compression is gzip or zstd");
            return ExitCode::from(2);
        }
    };
    match bench(layers, runs, isolation, compression) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rootbox-pull-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
