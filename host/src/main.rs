//! `rootbox`: the host CLI. It resolves and verifies images, starts a sandbox, ships layer
//! bytes to the worker inside it and places the finished ext4. It must never interpret layer
//! content itself: everything that reads tar entries runs in the worker.

// Every unsafe block of the host is in `sys`.
#![deny(unsafe_code)]

mod bundle;
mod cache;
mod cli;
mod compare;
mod digest;
mod doctor;
mod exit;
mod identity;
mod inject;
mod job;
mod local;
mod loopdev;
mod oci;
mod output;
mod pipeline;
mod progress;
mod pull;
mod record;
#[cfg(test)]
mod refusals;
mod report;
mod sandbox;
mod scratch;
mod ship;
mod size;
mod source;
#[allow(unsafe_code)]
mod sys;
mod verify;
mod worker_image;

use clap::Parser;

fn main() {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Err(e) = output::install_signal_cleanup() {
        let e = anyhow::Error::new(e).context("installing signal handlers");
        eprintln!("rootbox: error: {}", exit::message(&e));
        std::process::exit(exit::OTHER);
    }
    let ok = |r: anyhow::Result<()>| r.map(|()| 0);
    let result = match &cli.command {
        cli::Command::Pull(args) => ok((|| pull::run(&args.request()?)?.print(args.json))()),
        cli::Command::Bundle(args) => {
            ok((|| bundle::run(&args.request()?)?.print(args.build.json))())
        }
        cli::Command::Verify(args) => verify::run(&args.request()).and_then(|v| {
            v.print(args.json)?;
            Ok(v.exit_code())
        }),
        cli::Command::Doctor(args) => ok(doctor::run(args.worker_image.as_deref(), args.json)),
        cli::Command::Cache(c) => ok(cache::run(&c.request())),
        cli::Command::Diff(args) => {
            compare::run(&args.request()).map(|same| if same { 0 } else { exit::DIFFERS })
        }
    };
    match result {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("rootbox: error: {}", exit::message(&e));
            std::process::exit(exit::classify(&e));
        }
    }
}
