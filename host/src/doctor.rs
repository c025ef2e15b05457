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
    });
    sandboxes.push(SandboxState {
        name: "vm",
        usable: false,
        why_not: Some("the microVM sandbox is not part of this build yet".into()),
    });
    let default_isolation = sandboxes.iter().find(|s| s.usable).map(|s| s.name);
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
        match &s.why_not {
            None => println!("sandbox {}: usable", s.name),
            Some(w) => println!("sandbox {}: unavailable: {w}", s.name),
        }
    }
    println!(
        "default isolation: {}",
        d.default_isolation.unwrap_or("none: no sandbox can run here")
    );
    Ok(())
}
