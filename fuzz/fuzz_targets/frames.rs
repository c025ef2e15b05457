//! The wire frame decoder on arbitrary bytes, as either side reads what its peer sends: every
//! frame until the stream ends or a frame is refused, then the same bytes through
//! `read_control` (the host's and the worker's loops). Beyond "no panic, no unbounded
//! allocation, no hang", it checks what the protocol promises of a decoded message:
//! - it encodes back to a frame that decodes to the same message (unless defaults made it
//!   grow past the control-frame limit);
//! - a worker error cut by `RemoteError::bounded` always fits a control frame, and its
//!   `Display` is one line with no control character, whatever the peer put in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rootbox_proto::text::{printable, shortened};
use rootbox_proto::{Control, Frame, ProtoError, Reader, RemoteError, Writer, DATA_MAX};

fuzz_target!(|data: &[u8]| {
    let mut rd = Reader::new(data);
    loop {
        match rd.read_frame() {
            Ok(Frame::Data(n)) => {
                assert!(n <= DATA_MAX as usize, "a {n}-byte data frame");
                assert_eq!(rd.data(n).len(), n);
            }
            Ok(Frame::Control(c)) => check_control(&c),
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }

    // A refused frame consumes its header (at least), so this ends.
    let mut rd = Reader::new(data);
    loop {
        match rd.read_control() {
            Ok(c) => check_control(&c),
            Err(ProtoError::Closed) => break,
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});

fn check_control(c: &Control) {
    let mut out = Vec::new();
    match Writer::new(&mut out).send(c) {
        Ok(()) => {
            let back = Reader::new(out.as_slice()).read_control();
            assert!(matches!(&back, Ok(b) if b == c), "{c:?} came back as {back:?}");
        }
        // Fields the peer left out come back with their defaults, which may not fit.
        Err(ProtoError::TooLarge { .. }) => {}
        Err(e) => panic!("{c:?} does not encode: {e}"),
    }
    let _ = format!("{c:?}");
    match c {
        Control::Error(e) => check_error(e),
        Control::Warning { message } | Control::Abort { reason: message } => check_text(message),
        Control::Sanitised(s) => {
            for t in [&s.path, &s.what, &s.why] {
                check_text(t);
            }
        }
        Control::Done(r) => r.warnings.iter().for_each(|w| check_text(w)),
        _ => {}
    }
}

fn check_error(e: &RemoteError) {
    one_line(&e.to_string());
    let b = e.clone().bounded();
    one_line(&b.to_string());
    let mut out = Vec::new();
    if let Err(err) = Writer::new(&mut out).send(&Control::Error(b)) {
        panic!("a bounded error does not fit a control frame: {err}");
    }
}

/// What the host does with a peer's text before it is shown or kept.
fn check_text(s: &str) {
    one_line(&printable(s, false));
    let short = shortened(s, 4096);
    assert!(short.len() <= 4096, "shortened to {} bytes", short.len());
}

fn one_line(s: &str) {
    assert!(!s.chars().any(char::is_control), "a control character in {s:?}");
}
