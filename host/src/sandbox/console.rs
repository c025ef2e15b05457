//! The microVM's console, as rootbox sees it: the last lines everything the VM's processes
//! printed (guest serial console, VMM and vsock daemon messages), and the markers the worker
//! prints (worker/src/vm.rs), matched as substrings since firmware may print before them
//! without a newline.

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::{Arc, Mutex};

use super::Tail;

pub const INIT_MARKER: &str = "rootbox-worker: vm init";
pub const READY_MARKER: &str = "rootbox-worker: vm ready";
pub const PROBE_MARKER: &str = "rootbox-worker: vm probe ok";
/// Console lines after which the VM cannot do its job, whatever happens next.
const FATAL: &[&str] = &["vhost_set_mem_table failed", "KVM internal error"];
const TAIL_LINES: usize = 40;

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
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => me.push(&format!("{prefix}{}", String::from_utf8_lossy(&buf))),
                }
            }
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
    }
}
