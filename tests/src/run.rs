//! Drives the `rootbox` binary and checks what its contract promises about a run: exit code,
//! the stdout formats, the single error sentence, and what is (not) left in the output dir.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::digest::sha256_hex;
use crate::guard::Env;

/// How long one rootbox run may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(900);

/// A finished run.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub command: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit code: {}\nstdout:\n{}\nstderr:\n{}",
            self.command,
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn shell_quote(a: &std::ffi::OsStr) -> String {
    let s = a.to_string_lossy();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=+,@".contains(&b)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `bin args...`, feeding `stdin` if given; fails the test after [`TIMEOUT`].
pub fn run_with(bin: &Path, args: &[OsString], stdin: Option<Vec<u8>>) -> Outcome {
    run_with_env(bin, args, stdin, &[])
}

/// [`run_with`] with `vars` added to the environment.
pub fn run_with_env(
    bin: &Path,
    args: &[OsString],
    stdin: Option<Vec<u8>>,
    vars: &[(&str, &Path)],
) -> Outcome {
    let mut command: Vec<String> = vars
        .iter()
        .map(|(k, v)| format!("{k}={}", shell_quote(v.as_os_str())))
        .chain([shell_quote(bin.as_os_str())])
        .collect();
    command.extend(args.iter().map(|a| shell_quote(a)));
    let command = command.join(" ");
    let mut child = Command::new(bin)
        .args(args)
        .envs(vars.iter().copied())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {command}: {e}"));
    let feeder = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin piped");
        // A broken pipe is the child's business: it shows in its exit status.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for rootbox") {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command}: still running after {TIMEOUT:?}; killed");
        }
        thread::sleep(Duration::from_millis(20));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let stdout = String::from_utf8_lossy(&out_t.join().expect("stdout reader")).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().expect("stderr reader")).into_owned();
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Outcome { command, code, stdout, stderr }
}

impl Env {
    /// `rootbox pull SOURCE -o OUT --worker-image W --no-default-assets EXTRA...`.
    pub fn pull(&self, source: &str, out: &Path, extra: &[&str]) -> Outcome {
        self.pull_input(source, out, extra, None)
    }

    /// Like [`Env::pull`], with `stdin` fed to the child (for `rootfs-tar:-`).
    pub fn pull_input(
        &self,
        source: &str,
        out: &Path,
        extra: &[&str],
        stdin: Option<Vec<u8>>,
    ) -> Outcome {
        let mut args: Vec<OsString> =
            vec!["pull".into(), source.into(), "-o".into(), out.as_os_str().to_owned()];
        args.push("--worker-image".into());
        args.push(self.worker_image.as_os_str().to_owned());
        args.push("--no-default-assets".into());
        // The container sandbox unless a test names one: tests/tests/vm.rs covers the VM.
        if !extra.iter().any(|a| a.starts_with("--isolation")) {
            args.push("--isolation".into());
            args.push("container".into());
        }
        args.extend(extra.iter().map(OsString::from));
        run_with(&self.bin, &args, stdin)
    }
}

/// Fails the test unless the run exited 0.
pub fn expect_success(o: &Outcome) {
    assert_eq!(o.code, 0, "rootbox failed:\n{}", o.describe());
}

/// The lines of stderr that start with `rootbox: error: `.
pub fn error_lines(o: &Outcome) -> Vec<&str> {
    o.stderr.lines().filter(|l| l.starts_with("rootbox: error: ")).collect()
}

/// The lines of stderr that say which sandbox ran and why (`rootbox: sandbox: ...`).
pub fn sandbox_lines(o: &Outcome) -> Vec<&str> {
    o.stderr.lines().filter(|l| l.starts_with("rootbox: sandbox: ")).collect()
}

/// What `pull` prints on stderr for the `--json` fields `isolation`, `vmm`, `accel` and
/// `isolation_reason` of `v` (a pull's report, or doctor's `default_*` fields with `prefix`
/// `default_`): `rootbox: sandbox: container (REASON)` or `... vm, VMM with ACCEL (REASON)`.
pub fn sandbox_line(v: &Value, prefix: &str) -> String {
    let field = |f: &str| v[format!("{prefix}{f}")].as_str().unwrap_or("?").to_string();
    let reason = v["isolation_reason"].as_str().unwrap_or("?");
    match field("isolation").as_str() {
        "container" => format!("rootbox: sandbox: container ({reason})"),
        other => format!(
            "rootbox: sandbox: {other}, {} with {} ({reason})",
            field("vmm"),
            field("accel")
        ),
    }
}

/// `rootbox doctor --json --worker-image IMAGE` (with `vars` in its environment), parsed.
pub fn doctor_json(bin: &Path, image: &Path, vars: &[(&str, &Path)]) -> Value {
    let o = run_with_env(
        bin,
        &["doctor".into(), "--json".into(), "--worker-image".into(), image.into()],
        None,
        vars,
    );
    expect_success(&o);
    json_summary(&o)
}

/// Fails the test unless the run exited with `code` and printed exactly one
/// `rootbox: error: ` line that contains every string of `mentions` (case-insensitively).
pub fn expect_failure(o: &Outcome, code: &[i32], mentions: &[&str]) {
    assert!(
        code.contains(&o.code),
        "expected exit code {code:?}, got {}:\n{}",
        o.code,
        o.describe()
    );
    let lines = error_lines(o);
    assert_eq!(lines.len(), 1, "expected exactly one 'rootbox: error: ' line:\n{}", o.describe());
    let line = lines[0].to_lowercase();
    for m in mentions {
        assert!(
            line.contains(&m.to_lowercase()),
            "error line does not mention {m:?}:\n{}",
            o.describe()
        );
    }
}

/// Fails the test unless `dir` holds exactly `names` (no output, no temp files).
pub fn expect_dir_holds(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(found, want, "unexpected contents of {}", dir.display());
}

/// `e2fsck -fn IMAGE` must exit 0.
pub fn expect_fsck_clean(image: &Path) {
    let o = run_with(Path::new("e2fsck"), &["-fn".into(), image.as_os_str().to_owned()], None);
    assert_eq!(o.code, 0, "e2fsck found problems in {}:\n{}", image.display(), o.describe());
}

/// sha256 hex of a file.
pub fn file_sha256(path: &Path) -> String {
    sha256_hex(&fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
}

/// Parses the text summary: the `path`, `sha256` and `size` lines (`key: value` or `key value`).
pub fn text_summary(o: &Outcome) -> (PathBuf, String, u64) {
    let mut path = None;
    let mut sha = None;
    let mut size = None;
    for line in o.stdout.lines() {
        let (key, value) = match line.split_once(':') {
            Some((k, v)) if !k.contains(' ') => (k.trim(), v.trim()),
            _ => match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k.trim(), v.trim()),
                None => continue,
            },
        };
        match key {
            "path" => path = Some(PathBuf::from(value)),
            "sha256" => sha = Some(value.trim_start_matches("sha256:").to_string()),
            "size" => size = value.split_whitespace().next().and_then(|v| v.parse().ok()),
            _ => {}
        }
    }
    match (path, sha, size) {
        (Some(p), Some(s), Some(z)) => (p, s, z),
        _ => panic!("stdout lacks path/sha256/size lines:\n{}", o.describe()),
    }
}

/// Parses `--json` stdout: exactly one JSON object.
pub fn json_summary(o: &Outcome) -> Value {
    let v: Value = serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{}", o.describe()));
    assert!(v.is_object(), "stdout JSON is not an object:\n{}", o.describe());
    v
}

/// The strings of a JSON array field.
pub fn json_strings(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("JSON field {field} is not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str().unwrap_or_else(|| panic!("{field} holds a non-string: {v}")).to_string()
        })
        .collect()
}
