//! The host side of one job: hello, job, layers, finish; collects progress, warnings,
//! sanitisation records and the result while layers stream out. A reader thread takes the worker's messages so the
//! worker never blocks on a full socket while the host is sending.

use std::sync::mpsc;
use std::time::Duration;

use rootbox_proto::{
    Control, Hello, JobResult, JobSpec, Phase, ProtoError, Reader, RemoteError, Sanitised, Writer,
    PROTOCOL_VERSION, SANITISED_MAX,
};

use crate::layer::{self, ShipError, Verified};
use crate::sandbox::Running;
use crate::source::{Layer, SourceError};

/// A failed job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The worker refused or failed; it said why (exit code 4).
    #[error(transparent)]
    Remote(RemoteError),
    /// The worker went away without saying why.
    #[error("the worker stopped unexpectedly ({cause}){}", console_suffix(.console))]
    Lost { cause: String, console: Vec<String> },
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

fn console_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its last output:\n  {}", lines.join("\n  "))
    }
}

/// Progress the CLI may show.
#[derive(Debug, Clone)]
pub enum Event {
    Phase(Phase, Option<u32>),
    /// Layer `index` (0-based) was sent in full.
    Shipped(usize),
}

pub struct Outcome {
    pub result: JobResult,
    pub warnings: Vec<String>,
    /// Where the image differs from its layers: at most [`SANITISED_MAX`] records.
    pub sanitised: Vec<Sanitised>,
    /// What was shipped, in order (the image's layers, then the injected files).
    pub shipped: Vec<Verified>,
}

/// Runs the job, shipping `layers` in order as they become ready (a registry pull hands them
/// over while later ones still download). A layer that fails to arrive ends the job.
pub fn run(
    worker: &mut dyn Running,
    layers: &mut dyn Iterator<Item = Result<(Layer, Verified), SourceError>>,
    spec: JobSpec,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, JobError> {
    let lost = |cause: String, w: &dyn Running| JobError::Lost { cause, console: w.console_tail() };
    let stream = worker.transport().map_err(|e| lost(format!("no transport: {e}"), worker))?;
    let mut wr = Writer::new(stream.try_clone().map_err(|e| lost(e.to_string(), worker))?);
    let mut rd = Reader::new(stream);

    let hello = Control::Hello(Hello { version: PROTOCOL_VERSION, features: vec![] });
    wr.send(&hello).map_err(|e| lost(chain(&e), worker))?;
    match rd.read_control() {
        Ok(Control::Hello(h)) if h.version == PROTOCOL_VERSION => {}
        Ok(Control::Hello(h)) => {
            return Err(lost(
                ProtoError::Version { ours: PROTOCOL_VERSION, theirs: h.version }.to_string(),
                worker,
            ))
        }
        Ok(other) => return Err(lost(format!("expected hello, got {other:?}"), worker)),
        Err(e) => return Err(lost(chain(&e), worker)),
    }
    wr.send(&Control::Job(spec)).map_err(|e| lost(chain(&e), worker))?;

    let (tx, rx) = mpsc::channel::<Result<Control, ProtoError>>();
    std::thread::spawn(move || loop {
        let msg = rd.read_control();
        let last = !matches!(
            msg,
            Ok(Control::Progress { .. } | Control::Warning { .. } | Control::Sanitised(_))
        );
        if tx.send(msg).is_err() || last {
            break;
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
            match msg {
                Ok(Control::Progress { phase, layer }) => on_event(Event::Phase(phase, layer)),
                Ok(Control::Warning { message }) => notes.warnings.push(message),
                Ok(Control::Sanitised(s)) => {
                    if notes.sanitised.len() < SANITISED_MAX {
                        notes.sanitised.push(s);
                    }
                }
                other => {
                    *early = Some(other);
                    return;
                }
            }
        }
    };

    let mut ship_err = None;
    let mut shipped = Vec::new();
    for i in 0.. {
        pump(&mut early, &mut notes, on_event, None);
        if early.is_some() {
            break;
        }
        let (l, v) = match layers.next() {
            None => break,
            Some(Ok(x)) => x,
            // The worker waits for bytes that will not come: the caller stops it.
            Some(Err(source)) => return Err(JobError::Source { index: i + 1, source }),
        };
        if let Err(e) = layer::ship(&l, &v, i as u32, &mut wr) {
            // A failed send means the worker (or its VM) went away: say so, with its output.
            ship_err = Some(match e {
                ShipError::Send(p) => {
                    lost(format!("sending layer {}: {}", i + 1, chain(&p)), worker)
                }
                other => JobError::Ship { index: i + 1, source: other },
            });
            break;
        }
        shipped.push(v);
        on_event(Event::Shipped(i));
    }
    if early.is_none() && ship_err.is_none() {
        if let Err(e) = wr.send(&Control::Finish) {
            ship_err = Some(lost(chain(&e), worker));
        }
    }
    // Wait for the verdict. A send failure usually means the worker stopped on an error it
    // is reporting: prefer its words over ours.
    while early.is_none() {
        let before = early.is_none();
        pump(&mut early, &mut notes, on_event, Some(Duration::from_secs(3600)));
        if before && early.is_none() {
            break;
        }
    }
    match early {
        Some(Ok(Control::Done(mut result))) => {
            notes.warnings.append(&mut result.warnings);
            Ok(Outcome { result, warnings: notes.warnings, sanitised: notes.sanitised, shipped })
        }
        Some(Ok(Control::Error(remote))) => Err(JobError::Remote(remote)),
        Some(Ok(other)) => Err(lost(format!("unexpected message {other:?}"), worker)),
        Some(Err(e)) => Err(ship_err.unwrap_or_else(|| lost(chain(&e), worker))),
        None => Err(ship_err.unwrap_or_else(|| lost("no answer".into(), worker))),
    }
}

/// What the worker said besides progress and its verdict.
#[derive(Default)]
struct Notes {
    warnings: Vec<String>,
    sanitised: Vec<Sanitised>,
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
