//! `rootbox doctor`: what this machine offers, and why a sandbox cannot run.

use std::path::Path;

use serde::Serialize;

use crate::sandbox;
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
    default_isolation: Option<&'static str>,
}

pub fn run(flag: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let img = worker_image::locate(flag);
    let mut sandboxes = Vec::new();
    let container_why = match &img {
        Ok(i) => sandbox::container::unavailable(i),
        Err(e) => Some(e.clone()),
    };
    sandboxes.push(SandboxState {
        name: "container",
        usable: container_why.is_none(),
        why_not: container_why,
        vmm: None,
        accel: None,
        detail: None,
    });
    let vm = match &img {
        Ok(i) => sandbox::vm::choose(i),
        Err(e) => Err(e.clone()),
    };
    sandboxes.push(match vm {
        Ok(p) => SandboxState {
            name: "vm",
            usable: true,
            why_not: None,
            vmm: Some(p.vmm.name()),
            accel: Some(p.accel.name()),
            detail: Some(p.describe()),
        },
        Err(why) => SandboxState {
            name: "vm",
            usable: false,
            why_not: Some(why),
            vmm: None,
            accel: None,
            detail: None,
        },
    });
    // `--isolation auto` prefers the microVM.
    let default_isolation = sandboxes.iter().rev().find(|s| s.usable).map(|s| s.name);
    let d = Doctor {
        version: env!("CARGO_PKG_VERSION"),
        worker_image: img.as_ref().ok().map(|i| i.dir.display().to_string()),
        worker_image_found_via: img.as_ref().ok().map(|i| i.found_via),
        worker_image_problem: img.as_ref().err().cloned(),
        sandboxes,
        default_isolation,
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
    println!(
        "default isolation: {}",
        d.default_isolation.unwrap_or("none: no sandbox can run here")
    );
    Ok(())
}
