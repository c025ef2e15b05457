//! The host side of one job: hello, job, layers, finish; collects progress, warnings,
//! sanitisation records and the result while layers stream out. A reader thread takes the
//! worker's messages so the worker never blocks on a full socket while the host is sending.
//!
//! The worker is not trusted (in the microVM it runs on a kernel the image could attack):
//! what it says is bounded in count and size, its result is checked against what the host
//! knows, and a job deadline holds in every sandbox (a watchdog shuts the stream down, so a
//! stalled worker cannot hold a read or a write).

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rootbox_proto::{
    text, Control, Hello, JobResult, JobSpec, Phase, ProtoError, Reader, RemoteError, Sanitised,
    Writer, PROTOCOL_VERSION, SANITISED_MAX,
};

use crate::pipeline::Item;
use crate::sandbox::Running;
use crate::ship::{self, ShipError, Shipment};
use crate::source::verify::Verified;
use crate::source::{BoxError, SourceError};

/// Warnings kept (each cut to [`NOTE_MAX`] bytes); the rest are counted.
pub const WARNINGS_MAX: usize = 100;
/// Bytes kept of one warning or sanitisation field.
pub const NOTE_MAX: usize = 2048;
/// Control messages a job may send in all (a flood ends the job).
pub const MESSAGES_MAX: u64 = 1_000_000;
const BLOCK: u64 = 4096;

/// A failed job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The worker refused or failed; it said why (exit code 4).
    #[error(transparent)]
    Remote(RemoteError),
    /// The worker went away without saying why; `cause` is what the host saw.
    #[error("the worker stopped unexpectedly")]
    Lost {
        #[source]
        cause: BoxError,
        /// The worker's last output: lines, not a cause, so [`JobError::console`] gives them
        /// to the CLI to print after the whole chain.
        console: Vec<String>,
    },
    /// The worker said something impossible or too much: it is not believed.
    #[error("the worker {what}; its result is not used")]
    Untrusted { what: String },
    #[error("the job did not finish within {} s (--job-timeout); the sandbox was stopped", .0.as_secs())]
    Timeout(Duration),
    /// The filesystem holding the output filled up while the worker wrote (exit code 1).
    #[error(
        "the filesystem holding the output filled up during the build; the sandbox was stopped"
    )]
    OutputFull,
    #[error("shipping layer {index}")]
    Ship {
        index: usize,
        #[source]
        source: ShipError,
    },
    /// A layer still on its way failed to download or verify (exit code 3).
    #[error("layer {index}")]
    Source {
        index: usize,
        #[source]
        source: SourceError,
    },
}

impl JobError {
    /// The worker's last output, when it went away without saying why: `; its last
    /// output:` and the lines, to print after the error's chain.
    pub fn console(&self) -> Option<String> {
        match self {
            JobError::Lost { console, .. } if !console.is_empty() => {
                Some(format!("; its last output:\n  {}", console.join("\n  ")))
            }
            _ => None,
        }
    }
}

/// Progress the CLI may show.
#[derive(Debug, Clone)]
pub enum Event {
    Phase(Phase, Option<u32>),
    /// Layer `index` (0-based) was sent in full.
    Shipped(usize),
}

/// Whether the filesystem holding the output is full now (polled while the job runs).
pub type FullCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the host knows that the worker's answer must fit, and when to stop waiting.
#[derive(Clone)]
pub struct Bounds {
    /// The scratch file's size: the filesystem cannot be larger.
    pub scratch_bytes: u64,
    /// How long the job may take from hello to the result.
    pub timeout: Option<Duration>,
    /// Polled every [`FULL_POLL`]: a full output filesystem ends the job at once. (Writes the
    /// worker's kernel cannot complete show there only as I/O errors it may be slow to act on;
    /// a microVM's guest can spend minutes logging them on its serial console.)
    pub output_full: Option<FullCheck>,
}

const FULL_POLL: Duration = Duration::from_millis(500);

pub struct Outcome {
    pub result: JobResult,
    pub warnings: Vec<String>,
    /// Where the image differs from its layers: at most [`SANITISED_MAX`] records.
    pub sanitised: Vec<Sanitised>,
    /// What was shipped, in order (the image's layers, then the injected files).
    pub shipped: Vec<Verified>,
}

/// Shuts the stream down at the deadline, or when the output's filesystem is full, unless
/// told the job is over; says which.
struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    fired: Arc<Mutex<Option<JobError>>>,
}

impl Watchdog {
    fn start(stream: &std::os::unix::net::UnixStream, bounds: &Bounds) -> Option<Watchdog> {
        if bounds.timeout.is_none() && bounds.output_full.is_none() {
            return None;
        }
        let stream = stream.try_clone().ok()?;
        let (done, rx) = mpsc::channel::<()>();
        let fired = Arc::new(Mutex::new(None));
        let f = fired.clone();
        let (limit, full) = (bounds.timeout, bounds.output_full.clone());
        let deadline = limit.map(|l| Instant::now() + l);
        std::thread::spawn(move || loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let tick = match (left, &full) {
                (Some(l), Some(_)) => l.min(FULL_POLL),
                (Some(l), None) => l,
                (None, _) => FULL_POLL,
            };
            match rx.recv_timeout(tick) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let why = match (limit, left) {
                (Some(l), Some(left)) if left <= tick => Some(JobError::Timeout(l)),
                _ if full.as_ref().is_some_and(|f| f()) => Some(JobError::OutputFull),
                _ => None,
            };
            if let Some(why) = why {
                if let Ok(mut f) = f.lock() {
                    *f = Some(why);
                }
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return;
            }
        });
        Some(Watchdog { done: Some(done), fired })
    }

    /// Why the watchdog ended the job, if it did.
    fn fired(&self) -> Option<JobError> {
        self.fired.lock().ok().and_then(|mut f| f.take())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = d.send(());
        }
    }
}

/// Runs the job, shipping `layers` in order as they become ready (a registry pull hands them
/// over while later ones still download). A layer that fails to arrive ends the job.
pub fn run(
    worker: &mut dyn Running,
    layers: &mut dyn Iterator<Item = Item>,
    spec: JobSpec,
    bounds: Bounds,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, JobError> {
    let stream = worker.transport().map_err(|e| lost(Box::new(NoTransport(e)), worker))?;
    let watchdog = Watchdog::start(&stream, &bounds);
    let r = talk(worker, stream, layers, spec, bounds, on_event);
    match (r, watchdog.as_ref().and_then(Watchdog::fired)) {
        (Err(_), Some(why)) => Err(why),
        (r, _) => r,
    }
}

fn talk(
    worker: &mut dyn Running,
    stream: std::os::unix::net::UnixStream,
    layers: &mut dyn Iterator<Item = Item>,
    spec: JobSpec,
    bounds: Bounds,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, JobError> {
    let mut wr =
        Writer::new(stream.try_clone().map_err(|e| lost(Box::new(NoTransport(e)), worker))?);
    let mut rd = Reader::new(stream);

    let hello = Control::Hello(Hello { version: PROTOCOL_VERSION, features: vec![] });
    wr.send(&hello).map_err(|e| lost(Box::new(e), worker))?;
    match rd.read_control() {
        Ok(Control::Hello(h)) if h.version == PROTOCOL_VERSION => {}
        Ok(Control::Hello(h)) => {
            let e = ProtoError::Version { ours: PROTOCOL_VERSION, theirs: h.version };
            return Err(lost(Box::new(e), worker));
        }
        Ok(other) => {
            return Err(lost(format!("expected hello, got {}", kind(&other)).into(), worker))
        }
        Err(e) => return Err(lost(Box::new(e), worker)),
    }
    // Shipping charges the image's layers (not the injected files) to its budget.
    let (image_layers, limit) = (spec.layers.len(), spec.limits.max_total_bytes);
    wr.send(&Control::Job(spec)).map_err(|e| lost(Box::new(e), worker))?;

    let (tx, rx) = mpsc::channel::<Result<Control, ProtoError>>();
    std::thread::spawn(move || {
        let mut count = 0u64;
        loop {
            let msg = rd.read_control();
            count += 1;
            let last = !matches!(
                msg,
                Ok(Control::Progress { .. } | Control::Warning { .. } | Control::Sanitised(_))
            );
            // Past the cap the reader stops: the job sees a flood, not an endless stream.
            let msg = if count > MESSAGES_MAX { Err(ProtoError::Closed) } else { msg };
            let flood = count > MESSAGES_MAX;
            if tx.send(msg).is_err() || last || flood {
                break;
            }
        }
    });

    let mut notes = Notes::default();
    let mut early: Option<Result<Control, ProtoError>> = None;
    // Drains what the worker said so far; keeps the first terminal message.
    let pump = |early: &mut Option<Result<Control, ProtoError>>,
                notes: &mut Notes,
                on_event: &mut dyn FnMut(Event),
                block: Option<Duration>| {
        loop {
            let msg = match block {
                Some(t) => match rx.recv_timeout(t) {
                    Ok(m) => m,
                    Err(_) => return,
                },
                None => match rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => return,
                },
            };
            notes.messages += 1;
            match msg {
                Ok(Control::Progress { phase, layer }) => on_event(Event::Phase(phase, layer)),
                Ok(Control::Warning { message }) => notes.warn(message),
                Ok(Control::Sanitised(s)) => notes.sanitised(s),
                other => {
                    *early = Some(other);
                    return;
                }
            }
        }
    };

    let mut ship_err = None;
    let mut shipped = Vec::new();
    let mut budget = limit;
    for i in 0.. {
        pump(&mut early, &mut notes, on_event, None);
        if early.is_some() {
            break;
        }
        let ready = match layers.next() {
            None => break,
            Some(Ok(x)) => x,
            // The worker waits for bytes that will not come: the caller stops it.
            Some(Err(source)) => return Err(JobError::Source { index: i + 1, source }),
        };
        let mut between = || {
            pump(&mut early, &mut notes, on_event, None);
            early.is_none()
        };
        let s = Shipment {
            layer: &ready.layer,
            checked: &ready.checked,
            what: &ready.what,
            index: i as u32,
        };
        // The injected files are rootbox's own, not charged to the image's budget.
        let mut unbounded = u64::MAX;
        let b = if i < image_layers { &mut budget } else { &mut unbounded };
        let v = match ship::ship(&s, b, limit, &mut wr, &mut between) {
            Ok(Some(v)) => v,
            Ok(None) => break,
            // The layer is not what its image says: the worker's build is void; the caller
            // stops it.
            Err(ShipError::Source(source)) => {
                return Err(JobError::Source { index: i + 1, source })
            }
            // A failed send means the worker (or its VM) went away: say so, with its output.
            Err(e) => {
                let gone = matches!(e, ShipError::Send(_));
                let shipping = JobError::Ship { index: i + 1, source: e };
                ship_err = Some(if gone { lost(Box::new(shipping), worker) } else { shipping });
                break;
            }
        };
        shipped.push(v);
        on_event(Event::Shipped(i));
    }
    if early.is_none() && ship_err.is_none() {
        if let Err(e) = wr.send(&Control::Finish) {
            ship_err = Some(lost(Box::new(e), worker));
        }
    }
    // Wait for the verdict (the watchdog bounds the wait). A send failure usually means the
    // worker stopped on an error it is reporting: prefer its words over ours.
    while early.is_none() {
        let before = notes.messages;
        pump(&mut early, &mut notes, on_event, Some(Duration::from_secs(3600)));
        if early.is_none() && notes.messages == before {
            break;
        }
    }
    if notes.messages >= MESSAGES_MAX {
        return Err(JobError::Untrusted {
            what: format!("sent more than {MESSAGES_MAX} messages"),
        });
    }
    match early {
        Some(Ok(Control::Done(result))) => {
            let mut result = checked(result, &bounds)?;
            for w in std::mem::take(&mut result.warnings) {
                notes.warn(w);
            }
            let mut warnings = notes.warnings;
            if notes.warnings_dropped > 0 {
                warnings.push(format!("... and {} more warnings", notes.warnings_dropped));
            }
            Ok(Outcome { result, warnings, sanitised: notes.kept, shipped })
        }
        Some(Ok(Control::Error(remote))) => Err(JobError::Remote(remote.bounded())),
        Some(Ok(other)) => Err(lost(format!("unexpected message {}", kind(&other)).into(), worker)),
        Some(Err(e)) => Err(ship_err.unwrap_or_else(|| lost(Box::new(e), worker))),
        None => Err(ship_err.unwrap_or_else(|| lost("no answer".into(), worker))),
    }
}

/// The worker's result, believed only where it fits what the host knows.
fn checked(r: JobResult, bounds: &Bounds) -> Result<JobResult, JobError> {
    let lie = |what: String| Err(JobError::Untrusted { what });
    if r.size_bytes == 0 || !r.size_bytes.is_multiple_of(BLOCK) {
        return lie(format!(
            "reported a filesystem of {} bytes (not a multiple of 4096)",
            r.size_bytes
        ));
    }
    if r.size_bytes > bounds.scratch_bytes {
        return lie(format!(
            "reported a filesystem of {} bytes, larger than the {}-byte file it was built in",
            r.size_bytes, bounds.scratch_bytes
        ));
    }
    if r.used_bytes > r.size_bytes {
        return lie(format!(
            "reported {} bytes used of a {}-byte filesystem",
            r.used_bytes, r.size_bytes
        ));
    }
    Ok(r)
}

/// The name of a message, for errors (never its content: a guest chose it).
fn kind(c: &Control) -> String {
    let v = serde_json::to_value(c).unwrap_or_default();
    v.get("type").and_then(|t| t.as_str()).unwrap_or("?").to_string()
}

/// What the worker said besides progress and its verdict, bounded.
#[derive(Default)]
struct Notes {
    warnings: Vec<String>,
    warnings_dropped: u64,
    kept: Vec<Sanitised>,
    messages: u64,
}

impl Notes {
    fn warn(&mut self, w: String) {
        if self.warnings.len() < WARNINGS_MAX {
            self.warnings.push(text::shortened(&w, NOTE_MAX).into_owned());
        } else {
            self.warnings_dropped += 1;
        }
    }

    fn sanitised(&mut self, mut s: Sanitised) {
        if self.kept.len() < SANITISED_MAX {
            for f in [&mut s.path, &mut s.what, &mut s.why] {
                if f.len() > NOTE_MAX {
                    *f = text::shortened(f, NOTE_MAX).into_owned();
                }
            }
            self.kept.push(s);
        }
    }
}

fn lost(cause: BoxError, worker: &dyn Running) -> JobError {
    JobError::Lost { cause, console: worker.console_tail() }
}

/// The sandbox gave no stream to the worker.
#[derive(Debug, thiserror::Error)]
#[error("no transport")]
struct NoTransport(#[source] std::io::Error);

#[cfg(test)]
mod tests;
