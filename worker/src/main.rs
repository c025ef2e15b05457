//! `rootbox-worker`'s command line: the worker itself is the library (`lib.rs`); this is how
//! rootbox starts it (container init, session) and how the microVM does (`/init`).

// Every unsafe block of the worker is in `sys`.
#![deny(unsafe_code)]

use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use rootbox_worker::session::{self, Outcome, Output, Session};
use rootbox_worker::{container, sys, vm};

#[global_allocator]
static ALLOCATOR: sys::alloc::Noting = sys::alloc::Noting;

const USAGE: &str = "usage: rootbox-worker container-init --root DIR -- SESSION-ARGS...
       rootbox-worker session --proto-fd N (--output-fd N | --output-dev PATH)
(started by rootbox; not meant to be run by hand)";

fn main() {
    // The initramfs starts the worker as `/init`, PID 1 of the microVM.
    if vm::is_init(&std::env::args().next().unwrap_or_default()) {
        vm::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("container-init") => container_init(&args[1..]),
        Some("session") => session(&args[1..]),
        Some("--version") => {
            println!("rootbox-worker {}", env!("CARGO_PKG_VERSION"));
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn container_init(args: &[String]) -> i32 {
    let Some(root) = flag(args, "--root") else {
        eprintln!("{USAGE}");
        return 2;
    };
    let rest: Vec<String> = match args.iter().position(|a| a == "--") {
        Some(i) => args[i + 1..].to_vec(),
        None => Vec::new(),
    };
    match container::init(&PathBuf::from(root), &rest) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rootbox-worker: container init: {}", session::chain(&e).join(": "));
            125
        }
    }
}

/// Takes ownership of an inherited descriptor named on the command line.
fn inherited_fd(args: &[String], name: &str) -> Option<OwnedFd> {
    let fd: RawFd = flag(args, name)?.parse().ok()?;
    sys::process::adopt_inherited(fd)
}

fn session(args: &[String]) -> i32 {
    let Some(proto) = inherited_fd(args, "--proto-fd") else {
        eprintln!("rootbox-worker: --proto-fd missing or not open\n{USAGE}");
        return 2;
    };
    let output = if let Some(fd) = inherited_fd(args, "--output-fd") {
        Output::File(File::from(fd))
    } else if let Some(dev) = flag(args, "--output-dev") {
        Output::Device(PathBuf::from(dev))
    } else {
        eprintln!("rootbox-worker: no output given\n{USAGE}");
        return 2;
    };
    let session = match Session::new(File::from(proto)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rootbox-worker: {e}");
            return 1;
        }
    };
    match session.run(output) {
        Outcome::Done => 0,
        Outcome::Reported => 1,
        Outcome::Lost(e) => {
            eprintln!("rootbox-worker: lost the host: {}", session::chain(&e).join(": "));
            1
        }
    }
}
