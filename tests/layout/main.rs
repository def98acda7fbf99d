//! The host crate's layout, checked from its sources (`./run-tests.sh` runs
//! it with the other tests):
//! - no import cycles: within each folder of `host/src` (and between the
//!   top-level modules) the sibling modules' uses form no cycle; a module
//!   using its parent (`super::`) or its children is not an edge;
//! - every file under `host/src` holds at most [`MAX_LINES`] lines of
//!   non-test code;
//! - each example step under `examples/` carries a current copy of the WIT.
//!
//! Hand-written rather than `cargo modules dependencies --acyclic`: that
//! tool builds rust-analyzer (minutes on these machines, a pinned nightly
//! API), and the rule wanted here is narrower and says which `use` line
//! closes a cycle. Test code (`#[cfg(test)]` items, `tests.rs` files) is left
//! out: a test may use whatever it tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Non-test lines a file under `host/src` may hold.
const MAX_LINES: usize = 600;

/// A source file: its module path below the crate (`["worker", "stream"]`)
/// and its code with comments, string contents and test items blanked
/// (line numbers kept).
#[derive(Debug)]
struct Module {
    path: Vec<String>,
    file: String,
    code: String,
    /// Lines outside test items, comments and blank lines included.
    lines: usize,
}

/// A use of sibling `to` by `from` (both module paths), at `file:line`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    at: String,
}

fn module_path(rel: &str) -> Option<Vec<String>> {
    let rel = rel.strip_suffix(".rs")?;
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    match parts.last().map(String::as_str) {
        Some("lib") | Some("main") if parts.len() == 1 => return None,
        Some("mod") => {
            parts.pop();
        }
        // A test module in a file of its own.
        Some("tests") => return None,
        _ => {}
    }
    Some(parts)
}

/// `src` with comments and the contents of string and char literals
/// replaced by spaces (newlines kept).
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |c: u8| if c == b'\n' { b'\n' } else { b' ' };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' && (i == 0 || !is_ident(b[i - 1])) {
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                out.extend(std::iter::repeat_n(b' ', j + 1 - i));
                i = j + 1;
                while i < b.len() && !b[i..].starts_with(&close) {
                    out.push(blank(b[i]));
                    i += 1;
                }
                out.extend(std::iter::repeat_n(b' ', close.len().min(b.len() - i)));
                i += close.len();
            } else {
                out.push(b[i]);
                i += 1;
            }
        } else if b[i] == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    out.push(b' ');
                    i += 1;
                }
                out.push(blank(b[i]));
                i += 1;
            }
            out.push(b' ');
            i += 1;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal (a lifetime has no closing quote).
            let end = b[i + 1..]
                .iter()
                .position(|&c| c == b'\'')
                .map_or(b.len(), |p| i + 2 + p);
            out.extend(std::iter::repeat_n(b' ', end - i));
            i = end;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out.truncate(b.len());
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `code` with every `#[cfg(test)]` item blanked: the attribute, any
/// attributes after it, and the item up to its `;` or closing brace; and
/// how many lines those items spanned.
fn strip_tests(code: &str) -> (String, usize) {
    let mut test_lines = 0;
    let mut b = code.as_bytes().to_vec();
    let mut from = 0;
    while let Some(p) = find(&b[from..], b"#[cfg(test)]") {
        let start = from + p;
        let mut i = start;
        let mut depth = 0i32;
        let mut seen_brace = false;
        while i < b.len() {
            match b[i] {
                b'{' => {
                    depth += 1;
                    seen_brace = true;
                }
                b'}' => {
                    depth -= 1;
                    if depth == 0 && seen_brace {
                        i += 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let end = i.min(b.len());
        test_lines += 1 + b[start..end].iter().filter(|&&c| c == b'\n').count();
        for c in &mut b[start..end] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = end;
    }
    (String::from_utf8_lossy(&b).into_owned(), test_lines)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse(files: &[(String, String)]) -> Vec<Module> {
    files
        .iter()
        .filter_map(|(rel, src)| {
            let (code, test_lines) = strip_tests(&strip_comments(src));
            Some(Module {
                path: module_path(rel)?,
                file: rel.clone(),
                code,
                lines: src.lines().count().saturating_sub(test_lines),
            })
        })
        .collect()
}

/// The paths `code` names from the crate root: `crate::a::b`, `super::c`
/// resolved against `here`, and each item of a `{...}` group after either;
/// with the line each is on.
fn references(here: &[String], code: &str) -> Vec<(Vec<String>, usize)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let at_word = i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b':');
        let base: Option<(Vec<String>, usize)> = if at_word && b[i..].starts_with(b"crate::") {
            Some((Vec::new(), 7))
        } else if at_word && b[i..].starts_with(b"super::") {
            let mut base = here.to_vec();
            let mut len = 0;
            while b[i + len..].starts_with(b"super::") {
                base.pop();
                len += 7;
            }
            Some((base, len))
        } else {
            None
        };
        let Some((base, len)) = base else {
            i += 1;
            continue;
        };
        let line = 1 + b[..i].iter().filter(|&&c| c == b'\n').count();
        i += len;
        collect_paths(b, &mut i, base, line, &mut out);
    }
    out
}

/// Reads `a::b::c` or `a::{b, c::d}` at `*i` onto `base`.
fn collect_paths(
    b: &[u8],
    i: &mut usize,
    mut base: Vec<String>,
    line: usize,
    out: &mut Vec<(Vec<String>, usize)>,
) {
    loop {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
        if *i < b.len() && b[*i] == b'{' {
            *i += 1;
            loop {
                while *i < b.len() && (b[*i].is_ascii_whitespace() || b[*i] == b',') {
                    *i += 1;
                }
                if *i >= b.len() || b[*i] == b'}' {
                    *i += 1;
                    return;
                }
                let before = *i;
                collect_paths(b, i, base.clone(), line, out);
                // Skip `as name` and anything else up to the next item.
                while *i < b.len() && b[*i] != b',' && b[*i] != b'}' {
                    *i += 1;
                }
                if *i == before {
                    *i += 1;
                }
            }
        }
        let start = *i;
        while *i < b.len() && is_ident(b[*i]) {
            *i += 1;
        }
        if *i == start {
            out.push((base, line));
            return;
        }
        base.push(String::from_utf8_lossy(&b[start..*i]).into_owned());
        if b[*i..].starts_with(b"::") {
            *i += 2;
        } else {
            out.push((base, line));
            return;
        }
    }
}

/// The sibling uses: for each reference from module M to a path T whose
/// first segment below their common ancestor is a module other than M's own
/// branch.
fn edges(modules: &[Module]) -> BTreeSet<Edge> {
    let known: BTreeSet<&Vec<String>> = modules.iter().map(|m| &m.path).collect();
    let mut out = BTreeSet::new();
    for m in modules {
        for (target, line) in references(&m.path, &m.code) {
            let common = m
                .path
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == m.path.len() || common == target.len() {
                continue; // into itself or a child, or an item of an ancestor
            }
            let to = target[..=common].to_vec();
            if !known.contains(&to) {
                continue; // an item of the common ancestor, not a module
            }
            out.insert(Edge {
                from: m.path[..=common].join("::"),
                to: to.join("::"),
                at: format!("{}:{line}", m.file),
            });
        }
    }
    out
}

/// Each cycle among siblings, as its modules in order with the use that
/// makes each step (`a -> b (file:line)`).
fn cycles(edges: &BTreeSet<Edge>) -> Vec<String> {
    let mut graph: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for e in edges {
        graph
            .entry(&e.from)
            .or_default()
            .entry(&e.to)
            .or_insert(&e.at);
    }
    let mut found = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let children = |n: &str| -> std::vec::IntoIter<&str> {
        graph
            .get(n)
            .map(|m| m.keys().copied().collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
    };
    for &start in graph.keys() {
        // Depth-first from each node, reporting a path back to a node on
        // the path.
        let mut on_path: Vec<&str> = vec![start];
        let mut iters = vec![children(start)];
        while let Some(it) = iters.last_mut() {
            match it.next() {
                Some(next) if done.contains(next) => {}
                Some(next) => {
                    if let Some(p) = on_path.iter().position(|&n| n == next) {
                        let mut c: Vec<&str> = on_path[p..].to_vec();
                        c.push(next);
                        let text: Vec<String> = c
                            .windows(2)
                            .map(|w| format!("{} -> {} ({})", w[0], w[1], graph[w[0]][w[1]]))
                            .collect();
                        let text = text.join(", ");
                        if !found.contains(&text) {
                            found.push(text);
                        }
                    } else {
                        on_path.push(next);
                        iters.push(children(next));
                    }
                }
                None => {
                    iters.pop();
                    if let Some(n) = on_path.pop() {
                        done.insert(n);
                    }
                }
            }
        }
    }
    found
}

/// Files over the limit, with their non-test line counts.
fn long_files(modules: &[Module]) -> Vec<String> {
    modules
        .iter()
        .filter_map(|m| {
            let n = m.lines;
            (n > MAX_LINES).then(|| format!("{} ({n} lines of non-test code)", m.file))
        })
        .collect()
}

fn read_tree(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from(root)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn host_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn host_modules_form_no_import_cycle() {
    let modules = parse(&read_tree(&host_src()));
    assert!(modules.len() > 30, "read {} modules", modules.len());
    let e = edges(&modules);
    // The check sees real uses (so it can fail): the engine drives the
    // transitions.
    assert!(
        e.iter()
            .any(|e| e.from == "engine" && e.to == "transitions"),
        "{e:#?}"
    );
    let c = cycles(&e);
    assert!(c.is_empty(), "import cycles:\n{}", c.join("\n"));
}

#[test]
fn host_files_are_short() {
    let long = long_files(&parse(&read_tree(&host_src())));
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

// ---- the checker's own cases ----

fn tree(files: &[(&str, &str)]) -> Vec<Module> {
    parse(
        &files
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect::<Vec<_>>(),
    )
}

/// One case: a tree of files and the cycles expected in it.
fn check(files: &[(&str, &str)], expected: &[&str]) {
    let got = cycles(&edges(&tree(files)));
    assert_eq!(got, expected, "{files:?}");
}

#[test]
fn cycles_are_found_where_they_are() {
    let lib = ("lib.rs", "pub mod a; pub mod b;");
    check(
        &[lib, ("a.rs", "use crate::b::X;"), ("b.rs", "fn f() {}")],
        &[],
    );
    check(
        &[
            lib,
            ("a.rs", "use crate::b::X;"),
            ("b.rs", "\nuse crate::a::Y;"),
        ],
        &["a -> b (a.rs:1), b -> a (b.rs:2)"],
    );
    // Grouped imports, and a path deep inside the sibling.
    check(
        &[
            lib,
            ("a.rs", "use crate::{b::{c::Z}, other};"),
            ("b/mod.rs", "mod c;"),
            ("b/c.rs", "fn g() { crate::a::h() }"),
        ],
        &["a -> b (a.rs:1), b -> a (b/c.rs:1)"],
    );
    // Within a folder, through `super::`.
    check(
        &[
            ("w/mod.rs", "mod x; mod y; pub struct T;"),
            ("w/x.rs", "use super::y::Y; use super::T;"),
            ("w/y.rs", "use super::x::X;"),
        ],
        &["w::x -> w::y (w/x.rs:1), w::y -> w::x (w/y.rs:1)"],
    );
    // A parent and its children use each other: no cycle.
    check(
        &[
            ("w/mod.rs", "mod x; pub use x::X; pub struct T;"),
            ("w/x.rs", "use super::T; use crate::w::T as U;"),
        ],
        &[],
    );
}

#[test]
fn comments_strings_and_tests_are_not_uses() {
    let lib = ("lib.rs", "pub mod a; pub mod b;");
    let b = ("b.rs", "use crate::a::X;");
    for a in [
        "// see crate::b::Y\n/* crate::b::Z */ fn f() {}",
        "/// [`crate::b::Y`]\nfn f() {}",
        "fn f() -> &'static str { \"crate::b::Y\" }",
        "fn f() -> &'static str { r#\"crate::b::Y\"# }",
        "#[cfg(test)]\nmod tests {\n    use crate::b::Y;\n    fn g() { let _ = '{'; }\n}",
        "#[cfg(test)]\nuse crate::b::Y;\nfn f() {}",
    ] {
        check(&[lib, ("a.rs", a), b], &[]);
    }
    // ... while the same use outside them is one.
    check(
        &[lib, ("a.rs", "#[cfg(test)]\nmod t {}\nuse crate::b::Y;"), b],
        &["a -> b (a.rs:3), b -> a (b.rs:1)"],
    );
    // A file of tests is not looked at.
    check(&[lib, ("a/tests.rs", "use crate::b::Y;"), b], &[]);
}

#[test]
fn long_files_count_only_non_test_code() {
    let body = "fn f() {}\n".repeat(MAX_LINES);
    let tests = format!(
        "#[cfg(test)]\nmod tests {{\n{}}}\n",
        "fn t() {}\n".repeat(50)
    );
    // Comments count as lines; test items do not.
    assert!(long_files(&tree(&[("a.rs", &format!("{body}{tests}"))])).is_empty());
    assert_eq!(
        long_files(&tree(&[("a.rs", &format!("{body}fn g() {{}}\n"))])),
        [format!("a.rs ({} lines of non-test code)", MAX_LINES + 1)]
    );
}

/// Each example step under `examples/` carries the WIT it builds against,
/// as a crate outside this repository would: a copy of `wit/tarpool.wit`,
/// kept the same.
#[test]
fn examples_carry_the_current_wit() {
    let root = host_src().join("../..");
    let wit = std::fs::read_to_string(root.join("wit/tarpool.wit")).unwrap();
    let mut seen = 0;
    for e in std::fs::read_dir(root.join("examples")).unwrap() {
        let dir = e.unwrap().path();
        if !dir.join("Cargo.toml").exists() {
            continue;
        }
        seen += 1;
        let copy = std::fs::read_to_string(dir.join("wit/tarpool.wit"))
            .unwrap_or_else(|e| panic!("{}: wit/tarpool.wit: {e}", dir.display()));
        assert!(
            copy == wit,
            "{}/wit/tarpool.wit differs from wit/tarpool.wit: copy it again",
            dir.display()
        );
    }
    assert!(seen >= 2, "the example steps are under examples/");
}

/// The Rust items `ARCHITECTURE.md` names as `a::b::name` (tests that
/// prove an invariant, functions of the codemap): the last name of each,
/// with whether some `.rs` file of the repository defines it.
fn architecture_names(doc: &str, sources: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for quoted in doc.split('`').skip(1).step_by(2) {
        let path = quoted.trim_end_matches("()");
        let parts: Vec<&str> = path.split("::").collect();
        let ident = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if parts.len() < 2 || !parts.iter().all(ident) {
            continue;
        }
        let name = parts[parts.len() - 1];
        let defined = ["fn", "mod", "const", "static"].iter().any(|kw| {
            sources
                .match_indices(&format!("{kw} {name}"))
                .any(|(i, m)| {
                    let after = sources.as_bytes().get(i + m.len()).copied().unwrap_or(b' ');
                    !is_ident(after)
                })
        });
        out.push((path.to_string(), defined));
    }
    out
}

/// The `.rs` files under `root`, but not in a `target` directory.
fn rust_sources(root: &Path, out: &mut String) {
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target" && n != ".git") {
                rust_sources(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(&p).unwrap());
            out.push('\n');
        }
    }
}

/// Every test and function `ARCHITECTURE.md` names beside an invariant
/// or in its codemap exists: a renamed or deleted test leaves no stale
/// sentence behind.
#[test]
fn architecture_names_only_what_exists() {
    let root = host_src().join("../..");
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut sources = String::new();
    for dir in ["host", "tests", "guest-steps"] {
        rust_sources(&root.join(dir), &mut sources);
    }
    let names = architecture_names(&doc, &sources);
    assert!(names.len() > 40, "read {} names", names.len());
    let stale: Vec<&str> = names
        .iter()
        .filter(|(_, defined)| !defined)
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(
        stale.is_empty(),
        "ARCHITECTURE.md names what no file defines: {stale:?}"
    );
}

#[test]
fn architecture_names_are_read_from_code_spans() {
    let sources = "fn real_test() {}\nmod real_mod;\nfn real_testing() {}";
    let doc = "a `m::real_test` b `x::real_mod` c `y::gone_test` `not a path` `Type::Name` `m::real_tes` `z::real_test()`";
    assert_eq!(
        architecture_names(doc, sources),
        [
            ("m::real_test".to_string(), true),
            ("x::real_mod".to_string(), true),
            ("y::gone_test".to_string(), false),
            ("m::real_tes".to_string(), false),
            ("z::real_test".to_string(), true),
        ]
    );
}
