//! The module layering of docs/ARCHITECTURE.md, checked from the source:
//! every `crate::` and `super::` path outside test code is an import edge.
//! Top-level modules may only import modules of a lower layer, and no
//! modules (at any depth) import each other in a circle.
//!
//! Run alone with `cargo test --test it architecture` (no services needed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lower layers first; a module may import its own layer's modules only
/// when the layer lists them as independent (no edges between them).
const LAYERS: &[&[&str]] = &[
    &["domain"],
    &["config"],
    &["telemetry"],
    &["store", "providers", "broker", "coordination", "samples"],
    &["pipeline", "emulator", "schema"],
    &["worker"],
    &["ops"],
    &["console", "demo"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `a::b`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code outside `#[cfg(test)]` items (everything before the first
/// one: test modules sit at the end of a file by convention here), with
/// comments removed (a doc link is not an import).
fn non_test(text: &str) -> String {
    let code = text.find("#[cfg(test)]").map_or(text, |i| &text[..i]);
    code.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Import edges between modules, `depth` path segments deep.
fn edges(depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let me = module_path(&src, &file);
        if me.is_empty() || me[0] == "main" || me[0] == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = non_test(&text);
        let code = code.as_str();
        // `super` is the module's parent (for a folder's mod.rs too).
        let parent = me[..me.len() - 1].to_vec();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
            for (i, _) in code.match_indices(prefix) {
                let before = code[..i].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let rest = &code[i + prefix.len()..];
                let segs: Vec<&str> = rest
                    .split("::")
                    .map(|s| {
                        s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .next()
                            .unwrap_or("")
                    })
                    .take_while(|s| !s.is_empty() && s.chars().next().unwrap().is_ascii_lowercase())
                    .collect();
                // Only module paths count (not items of the crate root).
                let is_module =
                    |name: &str| src.join(format!("{name}.rs")).exists() || src.join(name).is_dir();
                if prefix == "crate::" && !segs.first().is_some_and(|s| is_module(s)) {
                    continue;
                }
                let mut target = base.clone();
                target.extend(segs.iter().map(|s| s.to_string()));
                if target.is_empty() {
                    continue;
                }
                let cut =
                    |p: &[String]| p.iter().take(depth).cloned().collect::<Vec<_>>().join("::");
                let (from, to) = (cut(&me), cut(&target));
                if from != to && !to.is_empty() {
                    edges.entry(from).or_default().insert(to);
                }
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().chain(edges.values().flatten()).collect();
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for m in edges.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for n in &nodes {
        let mut comp: Vec<String> = nodes
            .iter()
            .filter(|m| reaches[*n].contains(**m) && reaches[**m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        comp.sort();
        if comp.len() > 1 && !out.contains(&comp) {
            out.push(comp);
        }
    }
    out
}

#[test]
fn architecture_top_level_modules_import_only_lower_layers() {
    let mut problems = Vec::new();
    for (from, tos) in edges(1) {
        let Some(lf) = layer(&from) else {
            problems.push(format!(
                "{from} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md"
            ));
            continue;
        };
        for to in tos {
            match layer(&to) {
                Some(lt) if lt < lf => {}
                Some(_) => problems.push(format!("{from} imports {to}, which is not below it")),
                None => problems.push(format!("{from} imports {to}, which is in no layer")),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn architecture_has_no_import_cycles() {
    for depth in [1, 2, 3] {
        let found = cycles(&edges(depth));
        assert!(
            found.is_empty(),
            "modules importing each other in a circle (depth {depth}): {found:?}"
        );
    }
}
