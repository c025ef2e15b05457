//! The layer applier on arbitrary bytes, into a fresh temp dir, unprivileged: owners and
//! device numbers go through the worker's recorder (devices are made as fifos), as its rule
//! tests run it, so nothing here needs root or touches anything outside the temp dir.
//!
//! The input is one or more layers, each a tar stream read up to its end-of-archive blocks:
//! what follows is the next layer (at most [`LAYERS_MAX`]). An empty layer (the two zero
//! blocks alone) switches the layers after it to injection rules, as the job's last layer of
//! injected files is applied. The first error ends the job, as it does in the worker.
//!
//! Beyond "no panic, no unbounded allocation, no hang", it checks the applier's first promise:
//! nothing outside the image root moved (a canary beside it, and the names beside it).
#![no_main]

use std::path::Path;

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use rootbox_proto::{Limits, SANITISED_MAX};
use rootbox_worker::apply::ops::recorder::Recorder;
use rootbox_worker::apply::Applier;

const LAYERS_MAX: u32 = 8;
const END_OF_ARCHIVE: usize = 2 * 512;
const CANARY: &[u8] = b"the canary sings\n";

fuzz_target!(|data: &[u8]| {
    let Ok(base) = tempfile::tempdir() else { return };
    let root = base.path().join("root");
    if std::fs::create_dir(&root).is_err()
        || std::fs::write(base.path().join("canary"), CANARY).is_err()
    {
        return;
    }
    apply(&root, data);
    assert_untouched(base.path());
});

fn apply(root: &Path, data: &[u8]) {
    let Ok(mut a) = Applier::new(root, Limits::default(), Recorder::default()) else { return };
    let mut rest = data;
    let mut injecting = false;
    for index in 0..LAYERS_MAX {
        if rest.is_empty() {
            break;
        }
        let before = rest;
        if let Err(e) = a.apply_layer(index, &mut rest) {
            let _ = (e.to_string(), e.path(), e.causes());
            return;
        }
        let used = &before[..before.len() - rest.len()];
        if !injecting && used.len() == END_OF_ARCHIVE && used.iter().all(|&b| b == 0) {
            injecting = true;
            a.begin_injection();
        }
    }
    let _ = a.os_release();
    if let Err(e) = a.finish() {
        let _ = (e.to_string(), e.path(), e.causes());
    }
    assert!(a.report.records.len() <= SANITISED_MAX, "{} records", a.report.records.len());
}

fn assert_untouched(base: &Path) {
    let names: Vec<_> = match std::fs::read_dir(base) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
        Err(e) => panic!("listing {}: {e}", base.display()),
    };
    assert_eq!(names.len(), 2, "beside the image root: {names:?}");
    let canary = std::fs::symlink_metadata(base.join("canary"));
    assert!(canary.as_ref().is_ok_and(|m| m.file_type().is_file()), "the canary is {canary:?}");
    assert_eq!(std::fs::read(base.join("canary")).ok().as_deref(), Some(CANARY));
}

// libFuzzer's mutations, then the header checksums written again (see `seal_headers`).
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = fuzzer_mutate(data, size, max_size);
    if !seed.is_multiple_of(8) {
        rootbox_fuzz::seal_headers(&mut data[..size]);
    }
    size
});
