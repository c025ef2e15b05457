//! `rootbox diff A B`: which ext4 structures two images differ in, named (superblock fields,
//! inode fields with the inode's path, a file's placement or blocks, directory blocks,
//! extent trees, bitmaps, the journal, free space), read without mounting either image.
//! Differences of one kind are grouped: a build that was not canonicalised differs in the
//! same few fields of thousands of inodes, and the summary says which fields.

use std::path::PathBuf;

use anyhow::Context;
use rootbox_ext4::diff::Difference;
use rootbox_ext4::{Disk, Fs};
use rootbox_proto::text::printable;

pub struct Request {
    pub a: PathBuf,
    pub b: PathBuf,
    pub json: bool,
    /// List every difference, not a few of each kind.
    pub all: bool,
}

/// How many examples of one field or kind the summary shows.
const EXAMPLES: usize = 3;

/// Compares; `Ok(true)` when the images are identical.
pub fn run(r: &Request) -> anyhow::Result<bool> {
    let open = |p: &PathBuf| -> anyhow::Result<Fs> {
        let disk = Disk::open(p).with_context(|| format!("opening {}", p.display()))?;
        Fs::open(disk).with_context(|| format!("reading {}", p.display()))
    };
    let (a, b) = (open(&r.a)?, open(&r.b)?);
    let differences = rootbox_ext4::diff::diff(&a, &b)
        .with_context(|| format!("comparing {} and {}", r.a.display(), r.b.display()))?;
    if r.json {
        let list: Vec<serde_json::Value> = differences
            .iter()
            .map(|d| {
                serde_json::json!({
                    "structure": d.structure, "field": d.field, "path": d.path, "detail": d.detail,
                })
            })
            .collect();
        let v = serde_json::json!({ "identical": differences.is_empty(), "differences": list });
        println!("{v}");
    } else {
        print!(
            "{}",
            render(&r.a.display().to_string(), &r.b.display().to_string(), &differences, r.all)
        );
    }
    Ok(differences.is_empty())
}

/// An inode field difference's words for one field: `i_ctime 1 vs 2` out of the detail.
fn field_detail<'a>(d: &'a Difference, field: &str) -> &'a str {
    d.detail.split(", ").find(|part| part.split(' ').next() == Some(field)).unwrap_or("")
}

/// An inode's fields differ (not its blocks): `field` lists the fields.
fn is_inode_fields(d: &Difference) -> bool {
    d.structure.starts_with("inode ")
        && d.field.split(' ').all(|f| f.starts_with("i_") || f == "rest")
}

fn one(d: &Difference) -> String {
    let path = d.path.as_deref().map(|p| format!(" {p}")).unwrap_or_default();
    let detail = if d.detail.is_empty() { String::new() } else { format!(": {}", d.detail) };
    printable(&format!("{}{path}: {}{detail}", d.structure, d.field), false).into_owned()
}

/// The report: inode fields counted per field with examples, blocks of inodes per kind
/// with examples, everything else line by line. `all`: every difference on its own line.
pub fn render(a: &str, b: &str, differences: &[Difference], all: bool) -> String {
    if differences.is_empty() {
        return format!("{a} and {b} are identical\n");
    }
    let mut out = format!("{a} and {b} differ ({} differences):\n", differences.len());
    if all {
        for d in differences {
            out.push_str(&format!("  {}\n", one(d)));
        }
        return out;
    }
    // Per inode field, and per kind of inode block, in first-seen order.
    let mut fields: Vec<(String, Vec<&Difference>)> = Vec::new();
    let mut blocks: Vec<(String, Vec<&Difference>)> = Vec::new();
    fn add<'d>(groups: &mut Vec<(String, Vec<&'d Difference>)>, key: &str, d: &'d Difference) {
        match groups.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => v.push(d),
            None => groups.push((key.to_string(), vec![d])),
        }
    }
    for d in differences {
        if is_inode_fields(d) {
            for f in d.field.split(' ') {
                add(&mut fields, f, d);
            }
        } else if d.structure.starts_with("inode ") {
            add(&mut blocks, &d.field, d);
        } else {
            out.push_str(&format!("  {}\n", one(d)));
        }
    }
    let example = |d: &Difference, what: &str| {
        let path = d.path.as_deref().map(|p| format!(" {p}")).unwrap_or_default();
        printable(&format!("{}{path}: {what}", d.structure), false).into_owned()
    };
    for (f, list) in &fields {
        out.push_str(&format!("  {f} differs in {} inodes, e.g.\n", list.len()));
        for d in list.iter().take(EXAMPLES) {
            out.push_str(&format!("    {}\n", example(d, field_detail(d, f))));
        }
    }
    for (kind, list) in &blocks {
        out.push_str(&format!("  {kind} differ in {} inodes, e.g.\n", list.len()));
        for d in list.iter().take(EXAMPLES) {
            out.push_str(&format!("    {}\n", example(d, &d.detail)));
        }
    }
    if !fields.is_empty() || !blocks.is_empty() {
        out.push_str("  (--all lists every difference)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(structure: &str, field: &str, path: Option<&str>) -> Difference {
        Difference {
            structure: structure.into(),
            field: field.into(),
            path: path.map(Into::into),
            detail: "1 vs 2".into(),
        }
    }

    #[test]
    fn inode_fields_are_counted_per_field_with_examples() {
        let mut v = vec![d("superblock", "s_wtime", None)];
        for i in 12..20 {
            let mut x = d(&format!("inode {i}"), "i_ctime i_generation", Some("/etc/x"));
            x.detail = format!("i_ctime 1 vs 2, i_generation {i} vs 9");
            v.push(x);
        }
        v.push(d("inode 12", "directory blocks", Some("/etc")));
        let text = render("a", "b", &v, false);
        assert!(text.starts_with("a and b differ (10 differences):\n"), "{text}");
        assert!(text.contains("  superblock: s_wtime: 1 vs 2\n"), "{text}");
        assert!(text.contains("  i_ctime differs in 8 inodes, e.g.\n"), "{text}");
        assert!(text.contains("  i_generation differs in 8 inodes, e.g.\n"), "{text}");
        assert!(text.contains("    inode 13 /etc/x: i_generation 13 vs 9\n"), "{text}");
        assert!(text.contains("  directory blocks differ in 1 inodes, e.g.\n"), "{text}");
        assert!(!text.contains("inode 15"), "three examples per field: {text}");
        assert_eq!(render("a", "b", &v, true).lines().count(), 11);
    }

    #[test]
    fn names_from_the_image_are_printed_escaped() {
        let v = vec![d("inode 12", "data", Some("/evil\u{1b}[2J"))];
        let text = render("a", "b", &v, false);
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }

    #[test]
    fn identical_images_say_so() {
        assert_eq!(render("a", "b", &[], false), "a and b are identical\n");
    }
}
