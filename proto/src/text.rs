//! Untrusted text on its way to a terminal or a frame: names from layers, xattr keys,
//! registry replies and everything a guest says. [`printable`] escapes what a terminal would
//! act on (C0 and C1 control characters, DEL, and the bidirectional overrides that reorder
//! what is shown), [`shortened`] keeps the first and last bytes of a long string with its full
//! length, so that any message fits a control frame and stays readable.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters a terminal interprets rather than shows.
fn is_active(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character escaped (`\n`, `\u{1b}`...); `keep_newlines` leaves
/// line breaks for text whose lines are rootbox's own (each line already escaped).
pub fn printable(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_active(c) && !(keep_newlines && c == '\n')) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if keep_newlines && c == '\n' {
            out.push('\n');
        } else if is_active(c) {
            for e in c.escape_default() {
                out.push(e);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` cut to about `max` bytes: its first and last bytes around `…` and the full length.
pub fn shortened(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let keep = max.saturating_sub(32) / 2;
    let head = floor_boundary(s, keep);
    let tail = ceil_boundary(s, s.len() - keep);
    let mut out = String::with_capacity(max);
    let _ = write!(out, "{}…{} ({} bytes)", &s[..head], &s[tail..], s.len());
    Cow::Owned(out)
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// An error and its sources, outermost first, each said once: a cause whose text the one
/// before already holds (a wrapper that prints its `{source}`) is not repeated. The one chain
/// formatter of host and worker.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !out.last().is_some_and(|prev| prev.contains(&m)) {
            out.push(m);
        }
        cur = c.source();
    }
    out
}

/// [`error_chain`] as one line, `outer: inner: innermost`.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    error_chain(e).join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn a_chain_says_each_cause_once() {
        let inner = E("disk full", None);
        let echo = E("writing x: disk full", Some(Box::new(inner)));
        let outer = E("applying layer 1", Some(Box::new(echo)));
        assert_eq!(error_chain(&outer), ["applying layer 1", "writing x: disk full"]);
        assert_eq!(error_line(&outer), "applying layer 1: writing x: disk full");
    }

    #[test]
    fn terminal_controls_are_escaped() {
        assert_eq!(printable("plain name", false), "plain name");
        assert_eq!(printable("a\u{1b}[2Jb", false), "a\\u{1b}[2Jb");
        assert_eq!(printable("fake\nline", false), "fake\\nline");
        assert_eq!(printable("ours\nline", true), "ours\nline");
        assert_eq!(printable("cr\rback\u{8}", true), "cr\\rback\\u{8}");
        assert_eq!(printable("csi \u{9b}31m", false), "csi \\u{9b}31m");
        assert_eq!(printable("evil\u{202e}gpj.exe", false), "evil\\u{202e}gpj.exe");
        assert_eq!(printable("ünïcödé ok", false), "ünïcödé ok");
    }

    #[test]
    fn long_text_keeps_both_ends_and_its_length() {
        assert_eq!(shortened("short", 100), "short");
        let long = format!("{}{}", "a".repeat(5000), "the end");
        let s = shortened(&long, 200);
        assert!(s.len() <= 200, "{}", s.len());
        assert!(s.starts_with("aaaa") && s.contains("the end (5007 bytes)"), "{s}");
        let wide = "é".repeat(1000);
        assert!(shortened(&wide, 101).ends_with("(2000 bytes)"), "cut on char boundaries");
    }
}
