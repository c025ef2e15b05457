//! `rootbox doctor`: what this machine offers, which sandbox `--isolation auto` picks and
//! why (the same decision and sentence as `pull`), and why a sandbox cannot run.

use std::path::Path;

use serde::Serialize;

use crate::sandbox::Isolation;
use crate::sandbox::{self, choice, kvm, Plan};
use crate::worker_image;

#[derive(Debug, Serialize)]
struct SandboxState {
    name: &'static str,
    usable: bool,
    why_not: Option<String>,
    /// The microVM's VMM and accelerator, when usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    vmm: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accel: Option<&'static str>,
    /// What was chosen and why (e.g. why KVM is not used).
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Debug, Serialize)]
struct Doctor {
    version: &'static str,
    worker_image: Option<String>,
    worker_image_found_via: Option<&'static str>,
    worker_image_problem: Option<String>,
    sandboxes: Vec<SandboxState>,
    /// What `--isolation auto` runs (`container`, `vm`), null when nothing can run...
    default_isolation: Option<&'static str>,
    /// ...its VMM and accelerator (null for the container)...
    default_vmm: Option<&'static str>,
    default_accel: Option<&'static str>,
    /// ...and why: `pull --json`'s `isolation_reason`, or why nothing can run.
    isolation_reason: String,
    /// Where the KVM probe's verdict is kept until the host reboots, when it is.
    kvm_probe_cache: Option<String>,
}

pub fn run(flag: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let img = worker_image::locate(flag);
    // One look at the machine (one KVM probe at most) for all three answers.
    let facts = img.as_ref().map(|i| choice::Facts::probe(Isolation::Auto, i));
    let decide = |isolation| match &facts {
        Ok(f) => choice::decide(isolation, f).map_err(|e| e.why),
        Err(e) => Err(String::clone(e)),
    };
    let state = |name, d: Result<sandbox::Decision, String>| match d {
        Ok(d) => SandboxState {
            name,
            usable: true,
            why_not: None,
            vmm: d.plan.vmm(),
            accel: d.plan.accel(),
            detail: match &d.plan {
                Plan::Vm(p) => Some(p.describe()),
                Plan::Container => None,
            },
        },
        Err(why) => SandboxState {
            name,
            usable: false,
            why_not: Some(why),
            vmm: None,
            accel: None,
            detail: None,
        },
    };
    let sandboxes =
        vec![state("container", decide(Isolation::Container)), state("vm", decide(Isolation::Vm))];
    let auto = decide(Isolation::Auto);
    let d = Doctor {
        version: env!("CARGO_PKG_VERSION"),
        worker_image: img.as_ref().ok().map(|i| i.dir.display().to_string()),
        worker_image_found_via: img.as_ref().ok().map(|i| i.found_via),
        worker_image_problem: img.as_ref().err().cloned(),
        sandboxes,
        default_isolation: auto.as_ref().ok().map(|d| d.plan.isolation()),
        default_vmm: auto.as_ref().ok().and_then(|d| d.plan.vmm()),
        default_accel: auto.as_ref().ok().and_then(|d| d.plan.accel()),
        isolation_reason: match &auto {
            Ok(d) => d.reason.clone(),
            Err(why) => why.clone(),
        },
        kvm_probe_cache: kvm::cache_path().filter(|p| p.is_file()).map(|p| p.display().to_string()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!("rootbox {}", d.version);
    match (&d.worker_image, &d.worker_image_problem) {
        (Some(dir), _) => {
            println!("worker image: {dir} (via {})", d.worker_image_found_via.unwrap_or("?"))
        }
        (None, Some(p)) => println!("worker image: {p}"),
        (None, None) => {}
    }
    for s in &d.sandboxes {
        match (&s.why_not, &s.detail) {
            (None, Some(d)) => println!("sandbox {}: usable: {d}", s.name),
            (None, None) => println!("sandbox {}: usable", s.name),
            (Some(w), _) => println!("sandbox {}: unavailable: {w}", s.name),
        }
    }
    match &auto {
        Ok(a) => println!("--isolation auto: sandbox: {}", a.summary()),
        Err(why) => println!("--isolation auto: {why}"),
    }
    if let Some(p) = &d.kvm_probe_cache {
        println!(
            "KVM probe verdict cached in {p} until the host reboots (delete it to probe again)"
        );
    }
    Ok(())
}
