//! The tar reader on arbitrary bytes: every member and all of its data read to the end, as the
//! worker's applier reads a layer, then the same bytes listed by the seeking reader, as the
//! host lists a docker-archive. Beyond "no panic, no unbounded allocation, no hang", it checks
//! what the reader promises:
//! - an entry's data is exactly `Entry::data_len()` bytes (the packed segments when sparse);
//! - after a refusal, every later call is refused too;
//! - the seeking reader lists the same members as the streaming one, up to where the stream
//!   failed (it skips data without reading it, so it may go on past a truncation).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use rootbox_tar::{shown, Archive, Member};

fuzz_target!(|data: &[u8]| {
    let (streamed, streamed_ok) = streaming(data);
    let (listed, listed_ok) = seeking(data);
    assert!(
        listed.len() >= streamed.len() && listed[..streamed.len()] == streamed[..],
        "the seeking reader lists other members than the streaming one"
    );
    if streamed_ok {
        assert!(listed_ok && listed.len() == streamed.len(), "the seeking reader reads on");
    }
});

/// Every member and its data; whether the archive read to its end without error.
fn streaming(data: &[u8]) -> (Vec<Member>, bool) {
    let mut a = Archive::new(data);
    let mut members = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let m = match a.next_member() {
            Ok(Some(m)) => m,
            Ok(None) => return (members, true),
            Err(e) => {
                let _ = (e.to_string(), e.name());
                assert!(a.next_member().is_err(), "a refused archive reads on: {e}");
                return (members, false);
            }
        };
        let want = match &m {
            Member::Entry(e) => {
                let _ = (shown(&e.name), shown(&e.link), e.kind.name());
                e.data_len()
            }
            Member::Global(_) => 0,
        };
        assert_eq!(a.data_left(), want, "data to read after {m:?}");
        let mut got = 0u64;
        loop {
            match a.read_data(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) => {
                    let _ = e.to_string();
                    members.push(m);
                    return (members, false);
                }
            }
        }
        assert_eq!(got, want, "data read of {m:?}");
        members.push(m);
    }
}

/// Every member, data skipped by seeking.
fn seeking(data: &[u8]) -> (Vec<Member>, bool) {
    let mut a = Archive::seekable(Cursor::new(data));
    let mut members = Vec::new();
    loop {
        match a.next_member() {
            Ok(Some(m)) => members.push(m),
            Ok(None) => return (members, true),
            Err(e) => {
                let _ = e.to_string();
                return (members, false);
            }
        }
    }
}

// libFuzzer's mutations, then the header checksums written again (see `seal_headers`).
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let size = fuzzer_mutate(data, size, max_size);
    if !seed.is_multiple_of(8) {
        rootbox_fuzz::seal_headers(&mut data[..size]);
    }
    size
});
