//! `rootbox-fixture demo OUT_DIR`: writes the demo OCI layout `make demo` pulls and prints
//! its path.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: rootbox-fixture demo OUT_DIR");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cmd, out] = args.as_slice() else { return usage() };
    if cmd != "demo" {
        return usage();
    }
    match rootbox_tests::fixture::demo::build(&PathBuf::from(out)) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rootbox-fixture: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
