//! A fake worker on a socketpair that floods, lies and stalls: the job must end cleanly,
//! quickly and within bounds each time.

use std::os::unix::net::UnixStream;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use rootbox_proto::{
    Control, Hello, JobResult, JobSpec, Limits, Phase, Reader, RemoteError, SizePolicy, Writer,
    PROTOCOL_VERSION,
};

use super::{run, Bounds, JobError, Outcome, MESSAGES_MAX, NOTE_MAX, WARNINGS_MAX};
use crate::digest::Digest;
use crate::pipeline::Ready;
use crate::sandbox::Running;
use crate::source::spec::Compression;
use crate::source::verify::{Checked, Verified};
use crate::source::{BlobLocation, CompressionHint, Layer, SourceError};

struct Fake {
    host: UnixStream,
}

impl Running for Fake {
    fn transport(&self) -> std::io::Result<UnixStream> {
        self.host.try_clone()
    }
    fn wait(&mut self) -> std::io::Result<ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        Ok(ExitStatus::from_raw(0))
    }
    fn kill(&mut self) {}
    fn console_tail(&self) -> Vec<String> {
        Vec::new()
    }
    fn process_group(&self) -> Option<i32> {
        None
    }
}

fn spec() -> JobSpec {
    JobSpec {
        image: "fake".into(),
        layers: vec![],
        size: SizePolicy::Auto { headroom_pct: 0 },
        limits: Limits::default(),
        label: None,
        content_hint: 0,
        inject: false,
        identity: None,
    }
}

fn done(size_bytes: u64, used_bytes: u64) -> Control {
    Control::Done(JobResult {
        size_bytes,
        used_bytes,
        inodes: 1,
        entries: 0,
        warnings: vec![],
        phase_ms: vec![],
        os_release: Default::default(),
        sanitised: Default::default(),
    })
}

/// Runs a job against a worker that does `script` after the handshake.
fn job_with(
    layers: Vec<Ready>,
    timeout: Option<Duration>,
    script: impl FnOnce(&mut Reader<UnixStream>, &mut Writer<UnixStream>) + Send + 'static,
) -> Result<Outcome, JobError> {
    job_for(spec(), layers, timeout, script)
}

/// [`job_with`] for the job `spec`.
fn job_for(
    spec: JobSpec,
    layers: Vec<Ready>,
    timeout: Option<Duration>,
    script: impl FnOnce(&mut Reader<UnixStream>, &mut Writer<UnixStream>) + Send + 'static,
) -> Result<Outcome, JobError> {
    let (host, worker) = UnixStream::pair().expect("socketpair");
    // Not joined: a stalling fake sleeps on after the job has ended.
    std::thread::spawn(move || {
        let mut rd = Reader::new(worker.try_clone().expect("clone"));
        let mut wr = Writer::new(worker);
        assert!(matches!(rd.read_control(), Ok(Control::Hello(_))));
        let hello = Hello { version: PROTOCOL_VERSION, features: vec![] };
        let _ = wr.send(&Control::Hello(hello));
        assert!(matches!(rd.read_control(), Ok(Control::Job(_))));
        script(&mut rd, &mut wr);
    });
    let mut fake = Fake { host };
    let mut it = layers.into_iter().map(Ok::<_, SourceError>);
    let bounds = Bounds { scratch_bytes: 1 << 30, timeout, output_full: None };
    run(&mut fake, &mut it, spec, bounds, &mut |_| {})
}

fn until_finish(rd: &mut Reader<UnixStream>) {
    while !matches!(rd.read_control(), Ok(Control::Finish) | Err(_)) {}
}

#[test]
fn a_flood_of_warnings_and_records_is_kept_bounded() {
    let r = job_with(vec![], None, |rd, wr| {
        until_finish(rd);
        let big = "w".repeat(100 * 1024);
        for _ in 0..2000 {
            let _ = wr.send(&Control::Warning { message: big.clone() });
        }
        for i in 0..5000 {
            let _ = wr.send(&Control::Sanitised(rootbox_proto::Sanitised {
                layer: 0,
                path: format!("/p{i}{}", "x".repeat(50_000)),
                kind: rootbox_proto::SanitisedKind::Xattr,
                what: "x".into(),
                why: "y".into(),
            }));
        }
        let _ = wr.send(&done(1 << 20, 4096));
    })
    .map_err(|e| e.to_string())
    .expect("the job itself is fine");
    assert_eq!(r.warnings.len(), WARNINGS_MAX + 1);
    assert!(r.warnings.iter().all(|w| w.len() <= NOTE_MAX), "warnings are cut");
    assert!(
        r.warnings[WARNINGS_MAX].contains("1900 more warnings"),
        "{}",
        r.warnings[WARNINGS_MAX]
    );
    assert_eq!(r.sanitised.len(), rootbox_proto::SANITISED_MAX);
    assert!(r.sanitised.iter().all(|s| s.path.len() <= NOTE_MAX));
}

#[test]
fn a_flood_of_messages_ends_the_job() {
    let start = Instant::now();
    let r = job_with(vec![], None, |_, wr| {
        for _ in 0..MESSAGES_MAX + 10 {
            if wr.send(&Control::Progress { phase: Phase::Apply, layer: None }).is_err() {
                return;
            }
        }
        let _ = wr.send(&done(1 << 20, 4096));
    });
    assert!(matches!(r, Err(JobError::Untrusted { .. })), "{:?}", r.err());
    eprintln!("{} messages refused in {:?}", MESSAGES_MAX, start.elapsed());
}

#[test]
fn impossible_results_are_not_believed() {
    for (size, used, want) in [
        (4097, 0, "not a multiple of 4096"),
        (0, 0, "not a multiple of 4096"),
        (2 << 30, 4096, "larger than the 1073741824-byte file"),
        (1 << 20, 2 << 20, "bytes used of a"),
    ] {
        let r = job_with(vec![], None, move |rd, wr| {
            until_finish(rd);
            let _ = wr.send(&done(size, used));
        });
        let e = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(want), "{size}/{used}: {e}");
    }
}

#[test]
fn a_stalled_worker_times_out() {
    let start = Instant::now();
    let r = job_with(vec![], Some(Duration::from_millis(500)), |rd, _| {
        until_finish(rd);
        std::thread::sleep(Duration::from_secs(5));
    });
    assert!(matches!(r, Err(JobError::Timeout(_))), "{:?}", r.err());
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
}

#[test]
fn a_worker_that_stops_reading_cannot_hold_a_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = dir.path().join("layer");
    let data = vec![7u8; 64 << 20];
    std::fs::write(&blob, &data).expect("write");
    let layer = Layer {
        digest: Digest::of(&data),
        verify_digest: true,
        diff_id: Some(Digest::of(&data)),
        compression: CompressionHint::Known(Compression::None),
        blob: BlobLocation::File { path: blob, offset: 0, len: data.len() as u64 },
    };
    let v = Verified {
        compression: Compression::None,
        uncompressed: data.len() as u64,
        diff_id: Digest::of(&data),
    };
    let start = Instant::now();
    let ready = Ready { layer, checked: Checked::Full(v), what: "the layer".into() };
    let r = job_with(vec![ready], Some(Duration::from_millis(800)), |_, _| {
        std::thread::sleep(Duration::from_secs(6));
    });
    assert!(matches!(r, Err(JobError::Timeout(_))), "{:?}", r.err());
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
}

#[test]
fn errors_naming_huge_paths_arrive_shortened() {
    let r = job_with(vec![], None, |rd, wr| {
        until_finish(rd);
        let _ = wr.send(&Control::Error(RemoteError {
            operation: "applying layer 1 of 1".into(),
            layer: None,
            path: Some(format!("/{}\u{1b}[2J", "a".repeat(200_000))),
            causes: vec!["refusing a name of 200002 bytes".into()],
            internal: false,
        }));
    });
    let Err(JobError::Remote(e)) = r else { panic!("{:?}", r.err()) };
    assert!(e.path.as_deref().is_some_and(|p| p.len() <= 600));
    let shown = e.to_string();
    assert!(!shown.contains('\u{1b}') && shown.len() < 1500, "{shown}");
}

#[test]
fn garbage_is_a_lost_worker_not_a_crash() {
    let r = job_with(vec![], None, |rd, wr| {
        until_finish(rd);
        let _ = wr.send_data(b"not a control frame");
    });
    assert!(matches!(r, Err(JobError::Lost { .. })), "{:?}", r.err());
}

/// A one-layer job: `data` as an uncompressed layer whose config says `diff_id`, checked
/// before the build by its blob only (as a local source's layers are).
fn blob_checked(dir: &tempfile::TempDir, data: &[u8], diff_id: Digest) -> Ready {
    let path = dir.path().join("layer");
    std::fs::write(&path, data).expect("write");
    let layer = Layer {
        digest: Digest::of(data),
        verify_digest: true,
        diff_id: Some(diff_id),
        compression: CompressionHint::Known(Compression::None),
        blob: BlobLocation::File { path, offset: 0, len: data.len() as u64 },
    };
    let checked = Checked::Blob { compression: Compression::None };
    Ready { layer, checked, what: "img layer 1 of 1".into() }
}

/// What the fake worker saw of the layer: its data bytes, and whether `layer_end` came.
type Seen = std::sync::Arc<std::sync::Mutex<(u64, bool)>>;

fn watching(seen: Seen) -> impl FnOnce(&mut Reader<UnixStream>, &mut Writer<UnixStream>) {
    move |rd, _| loop {
        match rd.read_frame() {
            Ok(rootbox_proto::Frame::Data(n)) => seen.lock().expect("lock").0 += n as u64,
            Ok(rootbox_proto::Frame::Control(Control::LayerEnd { .. })) => {
                seen.lock().expect("lock").1 = true
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn one_layer_spec(max_total_bytes: u64) -> JobSpec {
    let mut s = spec();
    s.layers = vec![rootbox_proto::LayerSpec { digest: "sha256:x".into() }];
    s.limits.max_total_bytes = max_total_bytes;
    s
}

#[test]
fn a_layer_whose_diff_id_does_not_match_ends_the_job_before_its_layer_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = vec![5u8; 3 << 20];
    let ready = blob_checked(&dir, &data, Digest::of(b"something else"));
    let seen = Seen::default();
    // The deadline turns a missing check (the job waiting for a verdict) into a failure.
    let deadline = Some(Duration::from_secs(10));
    let r = job_for(one_layer_spec(1 << 30), vec![ready], deadline, watching(seen.clone()));
    match r {
        Err(JobError::Source { index: 1, source: SourceError::DiffIdMismatch { actual, .. } }) => {
            assert_eq!(actual, Digest::of(&data))
        }
        other => panic!("expected a diff_id mismatch, got {:?}", other.err()),
    }
    std::thread::sleep(Duration::from_millis(100));
    let (bytes, ended) = *seen.lock().expect("lock");
    assert!(!ended, "layer_end was sent for a layer that failed its diff_id");
    assert!(bytes <= data.len() as u64);
}

#[test]
fn a_layer_over_the_uncompressed_budget_stops_shipping_at_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = vec![6u8; 4 << 20];
    let ready = blob_checked(&dir, &data, Digest::of(&data));
    let seen = Seen::default();
    let deadline = Some(Duration::from_secs(10));
    let r = job_for(one_layer_spec(1 << 20), vec![ready], deadline, watching(seen.clone()));
    assert!(
        matches!(r, Err(JobError::Source { index: 1, source: SourceError::Limit { limit, .. } }) if limit == 1 << 20),
        "{:?}",
        r.err()
    );
    std::thread::sleep(Duration::from_millis(100));
    let (bytes, ended) = *seen.lock().expect("lock");
    assert!(!ended);
    assert!(bytes <= 1 << 20, "{bytes} bytes shipped past a 1 MiB budget");
}

#[test]
fn a_layer_checked_by_its_blob_ships_and_reports_its_diff_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = vec![8u8; 1 << 20];
    let ready = blob_checked(&dir, &data, Digest::of(&data));
    let r = job_for(one_layer_spec(1 << 30), vec![ready], None, |rd, wr| {
        // Data frames are not control messages: read frames up to finish.
        loop {
            match rd.read_frame() {
                Ok(rootbox_proto::Frame::Control(Control::Finish)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = wr.send(&done(1 << 20, 1 << 19));
    });
    let o = r.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.shipped.len(), 1);
    assert_eq!(o.shipped[0].diff_id, Digest::of(&data));
    assert_eq!(o.shipped[0].uncompressed, data.len() as u64);
}

#[test]
fn the_budget_is_charged_across_layers_as_they_ship() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir2 = tempfile::tempdir().expect("tempdir");
    let (a, b) = (vec![1u8; 3 << 20], vec![2u8; 3 << 20]);
    let first = blob_checked(&dir, &a, Digest::of(&a));
    let second = blob_checked(&dir2, &b, Digest::of(&b));
    // Each fits the 5 MiB budget alone; together they do not.
    let mut spec = one_layer_spec(5 << 20);
    spec.layers.push(rootbox_proto::LayerSpec { digest: "sha256:y".into() });
    let seen = Seen::default();
    let deadline = Some(Duration::from_secs(10));
    let r = job_for(spec, vec![first, second], deadline, watching(seen));
    assert!(
        matches!(r, Err(JobError::Source { index: 2, source: SourceError::Limit { .. } })),
        "{:?}",
        r.err()
    );
}
