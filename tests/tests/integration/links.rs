//! Documentation links (DESIGN §6, "Docs"): every relative link in `README.md`,
//! `CHANGELOG.md` and `docs/**/*.md` points at a file or folder that exists, and a `#anchor`
//! into a Markdown file names one of its headings (GitHub's heading ids). Links with a
//! scheme (`https:`, `mailto:`) are not followed. Pure Rust: a file walk and a small
//! Markdown scan that skips fenced code blocks and inline code.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The repository root (this crate lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every Markdown file under `dir`, recursively, in a stable order.
fn markdown_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            markdown_under(&path, out);
        } else if path.extension().is_some_and(|x| x == "md") {
            out.push(path);
        }
    }
}

/// The text of `line` with inline code spans (`` `…` ``) removed.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let fence = &rest[start..start + ticks];
        let after = &rest[start + ticks..];
        match after.find(fence) {
            Some(end) => rest = &after[end + ticks..],
            // An unmatched backtick is literal text.
            None => {
                out.push_str(fence);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The lines of `text` outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// The link targets of one line of prose: inline links and images `[text](target)` and
/// reference definitions `[label]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut out = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(close) = trimmed.find(']')
        && trimmed[close + 1..].starts_with(':')
    {
        if let Some(target) = trimmed[close + 2..].split_whitespace().next() {
            out.push(target.trim_matches(['<', '>']).to_string());
        }
        return out;
    }
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        // The target ends at the matching `)`; a title (`"…"`) follows a space.
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = i;
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(['<', '>']).to_string());
        rest = &after[end.min(after.len())..];
    }
    out
}

/// GitHub's id of a heading: lower case, inline code marks and punctuation other than `-`
/// and `_` dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file: its headings' ids (repeats numbered `-1`, `-2`, … as
/// GitHub does).
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose_lines(text) {
        let t = line.trim_start();
        let hashes = t.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !t[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&t[hashes..].replace('`', ""));
        let mut id = base.clone();
        let mut n = 0;
        while seen.contains(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        seen.insert(id);
    }
    seen
}

/// The broken links of `file` (whose text is `text`), as `file:line: target: why`.
fn broken_links(file: &Path, text: &str) -> Vec<String> {
    let mut broken = Vec::new();
    let dir = file.parent().expect("a file has a folder");
    for (number, line) in prose_lines(text) {
        for target in link_targets(line) {
            if target.is_empty() {
                broken.push(format!("{}:{number}: empty link target", file.display()));
                continue;
            }
            // `https:`, `mailto:` …: not followed.
            if target
                .split_once(':')
                .is_some_and(|(scheme, _)| !scheme.contains(['/', '#', '.']))
            {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            if path.is_empty() {
                // An anchor into this page.
                if let Some(anchor) = anchor
                    && !anchors(text).contains(anchor)
                {
                    broken.push(format!(
                        "{}:{number}: {target}: no heading #{anchor} on this page",
                        file.display()
                    ));
                }
                continue;
            }
            let resolved = dir.join(path);
            if !resolved.exists() {
                broken.push(format!(
                    "{}:{number}: {target}: {} does not exist",
                    file.display(),
                    resolved.display()
                ));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if resolved.extension().is_none_or(|x| x != "md") {
                continue;
            }
            let target_text = std::fs::read_to_string(&resolved)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", resolved.display()));
            if !anchors(&target_text).contains(anchor) {
                broken.push(format!(
                    "{}:{number}: {target}: {} has no heading #{anchor}",
                    file.display(),
                    resolved.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = root();
    let mut files = vec![root.join("README.md"), root.join("CHANGELOG.md")];
    markdown_under(&root.join("docs"), &mut files);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        checked += prose_lines(&text)
            .iter()
            .map(|(_, l)| link_targets(l).len())
            .sum::<usize>();
        broken.extend(broken_links(file, &text));
    }
    assert!(checked > 0, "no links found in {} files", files.len());
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn a_missing_file_or_heading_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("other.md"),
        "# Other page\n\n## The `--json` output\n",
    )
    .unwrap();
    let page = dir.path().join("page.md");
    let text = "\
# Page
[ok](other.md) [ok](other.md#other-page) [ok](other.md#the---json-output) [ok](#page) [bad](#nope-here)
[web](https://example.org/x) `[code](nowhere.md)`
```
[fenced](nowhere.md)
```
[gone](missing.md) ![img](missing.png) [bad anchor](other.md#nope)
[ref]: also-missing.md
";
    let broken = broken_links(&page, text);
    assert_eq!(broken.len(), 5, "{broken:#?}");
    for (what, line) in [
        ("#nope-here", 2),
        ("missing.md", 7),
        ("missing.png", 7),
        ("#nope", 7),
        ("also-missing.md", 8),
    ] {
        assert!(
            broken
                .iter()
                .any(|b| b.contains(what) && b.contains(&format!(":{line}:"))),
            "{what} not reported on line {line}: {broken:#?}"
        );
    }
}

#[test]
fn heading_ids_follow_github() {
    assert_eq!(
        slug(
            "Plugin-set file (`--plugins FILE`, RON)"
                .replace('`', "")
                .as_str()
        ),
        "plugin-set-file---plugins-file-ron"
    );
    assert_eq!(
        slug("Dynamic (a shared library, --plugin)"),
        "dynamic-a-shared-library---plugin"
    );
    let ids = anchors("# A\n## A\n```\n# not a heading\n```\n#not either\n");
    assert_eq!(ids, HashSet::from(["a".to_string(), "a-1".to_string()]));
}
