//! Sandboxes the worker runs in. Each backend starts the worker with the output file and a
//! duplex byte stream carrying the protocol; the job driver does not care which one runs.

pub mod container;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

/// A sandbox cannot run here (exit code 5).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// A started worker.
pub trait Running: Send {
    /// The protocol stream to the worker.
    fn transport(&self) -> std::io::Result<UnixStream>;
    /// Waits for the worker to exit after the job.
    fn wait(&mut self) -> std::io::Result<ExitStatus>;
    /// Stops the worker and everything it started, now.
    fn kill(&mut self);
    /// The last lines the worker printed (its console), for error reports.
    fn console_tail(&self) -> Vec<String>;
    /// The process group to kill from a signal handler.
    fn process_group(&self) -> Option<i32>;
}

/// Keeps the last `max` lines of a stream, read by a background thread.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    pub fn follow(r: impl std::io::Read + Send + 'static, max: usize) -> Self {
        let tail = Tail::default();
        let t = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("ROOTBOX_DEBUG").is_some() {
                    eprintln!("worker: {line}");
                }
                if let Ok(mut q) = t.0.lock() {
                    if q.len() == max {
                        q.pop_front();
                    }
                    q.push_back(line);
                }
            }
        });
        tail
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }
}
