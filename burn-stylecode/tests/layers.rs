//! The crate's top-level modules point one way: `nn` ← `weights` ← the
//! networks (`siglip`, `sd`, `style`) ← `pipeline` and `import`, with
//! `error` shared by all. This test reads the sources and fails on any
//! `crate::` path that points up or sideways into a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module's layer; a module may use lower layers, and
/// modules of its own layer as long as no cycle forms.
const LAYERS: [(&str, usize); 11] = [
    ("error", 0),
    ("decode", 1),
    ("nn", 1),
    ("weights", 2),
    ("siglip", 3),
    ("sd", 3),
    ("style", 3),
    ("pipeline", 4),
    ("import", 4),
    ("train", 4),
    ("lib", 5),
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// The top-level modules each `crate::` path of `source` names (comments skipped).
fn uses(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a::x, b};`: the first segment of each item.
                let group = &group[..group.find('}').unwrap_or(group.len())];
                group.split(',').map(|item| item.trim()).collect()
            } else {
                vec![rest]
            };
            for name in names {
                let end = name.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(name.len());
                if end > 0 {
                    found.insert(name[..end].to_string());
                }
            }
        }
    }
    found
}

/// Top-level module → the top-level modules it uses.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let first = file.strip_prefix(&src).unwrap().components().next().unwrap();
        let module = first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let used = uses(&std::fs::read_to_string(&file).unwrap());
        graph.entry(module.clone()).or_default().extend(used.into_iter().filter(|m| *m != module));
    }
    graph
}

#[test]
fn the_scanner_sees_grouped_and_nested_paths() {
    let found = uses("use crate::{nn::Linear, weights};\nlet x = crate::sd::unet_2d::f();\n// crate::style");
    assert_eq!(found, BTreeSet::from(["nn".to_string(), "weights".to_string(), "sd".to_string()]));
}

#[test]
fn layers_point_one_way() {
    let layers: BTreeMap<&str, usize> = LAYERS.into_iter().collect();
    let graph = module_graph();
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let Some(&own) = layers.get(module.as_str()) else {
            wrong.push(format!("`{module}` has no layer in LAYERS (tests/layers.rs, ARCHITECTURE.md)"));
            continue;
        };
        for target in used {
            match layers.get(target.as_str()) {
                Some(&layer) if layer <= own => {}
                Some(_) => wrong.push(format!("`{module}` uses `{target}`, a higher layer")),
                None => wrong.push(format!("`{module}` uses `crate::{target}`, which is not a top-level module")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_cycle_between_top_level_modules() {
    let graph = module_graph();
    // Depth-first search; a module met again while on the path closes a cycle.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| *m == module) {
            let mut cycle: Vec<String> = path[start..].iter().map(|m| m.to_string()).collect();
            cycle.push(module.to_string());
            return Some(cycle);
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("the top-level modules form a cycle: {}", cycle.join(" → "));
        }
    }
    // The graph is not empty: the scan found the crate's layering.
    assert!(graph["pipeline"].contains("sd") && graph["style"].contains("sd") && graph["sd"].contains("weights"));
}
