//! The microVM's console, as rootbox sees it: the last lines everything the VM's processes
//! printed (guest serial console, VMM and vsock daemon messages), and the markers the worker
//! prints (worker/src/vm.rs), matched as substrings since firmware may print before them
//! without a newline.

use std::io::Read;
use std::process::Child;
use std::sync::{Arc, Mutex};

use super::Tail;

pub const INIT_MARKER: &str = "rootbox-worker: vm init";
pub const READY_MARKER: &str = "rootbox-worker: vm ready";
pub const PROBE_MARKER: &str = "rootbox-worker: vm probe ok";
/// Console lines after which the VM cannot do its job, whatever happens next.
const FATAL: &[&str] = &["vhost_set_mem_table failed", "KVM internal error"];
const TAIL_LINES: usize = 40;
/// Bytes kept of one console line; the rest of a longer line is read and dropped.
pub const LINE_MAX: usize = 1024;

/// Calls `line` for every line of `r`, each cut to [`LINE_MAX`] bytes, however long the
/// lines and the stream are: memory stays bounded whatever a guest prints.
pub fn bounded_lines(mut r: impl Read, mut line: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut cur: Vec<u8> = Vec::with_capacity(LINE_MAX);
    let mut dropping = false;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for part in buf[..n].split_inclusive(|&b| b == b'\n') {
            let (body, ends) = match part.strip_suffix(b"\n") {
                Some(b) => (b, true),
                None => (part, false),
            };
            if !dropping {
                let room = LINE_MAX - cur.len();
                cur.extend_from_slice(&body[..body.len().min(room)]);
                dropping = body.len() > room;
            }
            if ends {
                line(&cur);
                cur.clear();
                dropping = false;
            }
        }
    }
    if !cur.is_empty() {
        line(&cur);
    }
}

/// What the console showed so far.
#[derive(Debug, Default, Clone)]
pub struct Marks {
    pub init: bool,
    pub ready: bool,
    pub probe_ok: bool,
    pub fatal: Option<String>,
}

/// The last lines of everything the VM's processes printed, and the markers seen.
#[derive(Clone, Default)]
pub struct Console {
    pub tail: Tail,
    marks: Arc<Mutex<Marks>>,
}

impl Console {
    pub fn marks(&self) -> Marks {
        self.marks.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn push(&self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        // What a guest prints never reaches a terminal as it is.
        let line = &*rootbox_proto::text::printable(line, false);
        if let Ok(mut m) = self.marks.lock() {
            m.init |= line.contains(INIT_MARKER);
            m.ready |= line.contains(READY_MARKER);
            m.probe_ok |= line.contains(PROBE_MARKER);
            if m.fatal.is_none() && FATAL.iter().any(|f| line.contains(f)) {
                m.fatal = Some(line.to_string());
            }
        }
        if std::env::var_os("ROOTBOX_DEBUG").is_some() {
            eprintln!("vm: {line}");
        }
        if let Ok(mut q) = self.tail.0.lock() {
            if q.len() >= TAIL_LINES {
                q.pop_front();
            }
            q.push_back(line.to_string());
        }
    }

    /// A line of rootbox's own about the VM, told apart from what the VM printed.
    pub fn note(&self, what: &str) {
        self.push(&format!("[rootbox: {what}]"));
    }

    pub fn follow(&self, r: impl Read + Send + 'static, prefix: &'static str) {
        let me = self.clone();
        std::thread::spawn(move || {
            bounded_lines(r, |l| me.push(&format!("{prefix}{}", String::from_utf8_lossy(l))));
        });
    }

    pub fn follow_child(&self, child: &mut Child, prefix: &'static str) {
        if let Some(o) = child.stdout.take() {
            self.follow(o, prefix);
        }
        if let Some(e) = child.stderr.take() {
            self.follow(e, prefix);
        }
    }
}

pub fn console_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; the VM's last output:\n  {}", lines.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_markers_and_tail() {
        let c = Console::default();
        c.push("PCI: whatever\r\n");
        assert!(!c.marks().init);
        c.push("Booting from ROM..rootbox-worker: vm init\r\n");
        c.push("qemu-system-x86_64: vhost_set_mem_table failed: Invalid argument (22)");
        let m = c.marks();
        assert!(m.init && !m.ready && !m.probe_ok);
        assert_eq!(
            m.fatal.as_deref(),
            Some("qemu-system-x86_64: vhost_set_mem_table failed: Invalid argument (22)")
        );
        for i in 0..100 {
            c.push(&format!("line {i}"));
        }
        let t = c.tail.lines();
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t.last().map(String::as_str), Some("line 99"));
        c.note("x");
        assert_eq!(c.tail.lines().last().map(String::as_str), Some("[rootbox: x]"));
        c.push("colour \u{1b}[31mred");
        assert_eq!(c.tail.lines().last().map(String::as_str), Some("colour \\u{1b}[31mred"));
    }

    #[test]
    fn endless_lines_are_cut_and_memory_stays_bounded() {
        // 64 MiB without a newline, then a short line, then a tail without one.
        struct Endless(usize);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0);
                buf[..n].fill(b'x');
                self.0 -= n;
                Ok(n)
            }
        }
        let r = Endless(64 << 20).chain(&b"\nshort\nlast"[..]);
        let mut lines = Vec::new();
        bounded_lines(r, |l| lines.push(l.to_vec()));
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), LINE_MAX);
        assert_eq!((lines[1].as_slice(), lines[2].as_slice()), (&b"short"[..], &b"last"[..]));
    }
}
