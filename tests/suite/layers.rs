//! The layer rule of the source tree (README, "Source layout"), checked on `src/`: a module may
//! only import modules on a floor below its own; nothing imports `cli`, and only `cli` imports
//! `bench`; `src/tui` names no candle or engine type (its jobs carry run paths and ids).

use std::path::{Path, PathBuf};

/// The floors, bottom (0) to top.
const LAYERS: [(&str, u8); 13] = [
    ("text", 0),
    ("engine", 1),
    ("data", 2),
    ("runs", 2),
    ("train", 3),
    ("probe", 4),
    ("kernels", 4),
    ("compare", 4),
    ("sample", 4),
    ("sweep", 4),
    ("tui", 5),
    ("bench", 6),
    ("cli", 6),
];

fn floor(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

/// The crate-level module of a file under `src/` (`src/train/mlm.rs` → `train`) and its depth
/// below the crate root (`train::mlm` → 2, `src/train/mod.rs` → 1).
fn module_of(rel: &Path) -> (String, usize) {
    let parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let top = parts[0].trim_end_matches(".rs").to_string();
    let last = parts.last().map(String::as_str).unwrap_or("");
    let depth = if last == "mod.rs" {
        parts.len() - 1
    } else {
        parts.len()
    };
    (top, depth)
}

/// The crate-level modules a source text names: `crate::x`, each item of `crate::{x, y::z}`,
/// and `super::…` paths that climb to the crate root from a file `depth` modules deep.
fn referenced_modules(text: &str, depth: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let line_of = |i: usize| text[..i].matches('\n').count() + 1;
    let ident_at = |i: usize| -> String {
        text[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let push_after = |start: usize, out: &mut Vec<(usize, String)>| {
        if bytes.get(start) == Some(&b'{') {
            // a group: the leading identifier of each top-level item
            let mut level = 0;
            let mut item_start = start + 1;
            for (k, &b) in bytes.iter().enumerate().skip(start) {
                match b {
                    b'{' => level += 1,
                    b'}' | b',' if level == 1 => {
                        let item = text[item_start..k].trim_start();
                        let id: String = item
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !id.is_empty() {
                            out.push((line_of(start), id));
                        }
                        item_start = k + 1;
                        if b == b'}' {
                            break;
                        }
                    }
                    b'}' => level -= 1,
                    _ => {}
                }
            }
        } else {
            out.push((line_of(start), ident_at(start)));
        }
    };
    for (i, _) in text.match_indices("crate::") {
        // `ssmlab_crate::` or `$crate::` are not this crate's root
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        push_after(i + "crate::".len(), &mut out);
    }
    for (i, _) in text.match_indices("super::") {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // counted from the first `super::` of a chain
        }
        let mut hops = 0;
        let mut j = i;
        while text[j..].starts_with("super::") {
            hops += 1;
            j += "super::".len();
        }
        if hops >= depth {
            push_after(j, &mut out);
        }
    }
    out
}

/// Every breach of the layer rule in `text`, a file at `rel` under `src/`.
fn breaches(rel: &Path, text: &str) -> Vec<String> {
    let (top, depth) = module_of(rel);
    let Some(own) = floor(&top) else {
        return Vec::new(); // lib.rs, main.rs: the crate root wires everything
    };
    let mut out = Vec::new();
    for (line, target) in referenced_modules(text, depth) {
        let Some(theirs) = floor(&target) else {
            continue;
        };
        if target == top || (top == "cli" && target == "bench") {
            continue;
        }
        if theirs >= own {
            out.push(format!(
                "{}:{line}: `{top}` (floor {own}) imports `{target}` (floor {theirs}); an import \
                 may only point down",
                rel.display()
            ));
        }
    }
    if top == "tui" {
        for (i, l) in text.lines().enumerate() {
            if l.contains("candle_") || l.contains("crate::engine") {
                out.push(format!(
                    "{}:{}: the TUI names an engine or candle type: {}",
                    rel.display(),
                    i + 1,
                    l.trim()
                ));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn imports_only_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 50, "src/ was not found: {}", src.display());
    let mut all = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        all.extend(breaches(rel, &std::fs::read_to_string(f).unwrap()));
    }
    assert!(all.is_empty(), "layer rule broken:\n{}", all.join("\n"));
}

/// The checker catches each kind of breach the tree once had, so the test above can fail.
#[test]
fn the_layer_check_catches_upward_imports() {
    let cases = [
        // compare reached into bench for its step timer
        (
            "compare/mod.rs",
            "use crate::bench::suite::{StepHow, bigs_step_seconds};",
        ),
        // the TUI's probe worker named a candle device
        (
            "tui/mod.rs",
            "let m = crate::probe::ProbeModel::open(&p, &candle_core::Device::Cpu);",
        ),
        // the TUI's jobs carried engine types
        (
            "tui/app.rs",
            "pub models: Vec<(String, crate::engine::bigs::BigsConfig)>,",
        ),
        // a group import with an upward item
        ("train/mlm.rs", "use crate::{data::mlm::pack, tui::App};"),
        // super:: climbing to the crate root
        ("runs/index.rs", "use super::super::probe::resolve;"),
        // nothing imports the CLI
        ("bench/mod.rs", "use crate::cli::Cli;"),
    ];
    for (file, line) in cases {
        let found = breaches(Path::new(file), line);
        assert!(!found.is_empty(), "{file}: `{line}` was not caught");
    }
    // and what is allowed passes
    for (file, line) in [
        ("compare/mod.rs", "use crate::compare::step::StepHow;"),
        ("cli/bench.rs", "use crate::bench::suite::run_suite;"),
        ("train/mlm.rs", "use super::session::Task;"),
        ("train/diffusion/mod.rs", "use super::cas::load_classifier;"),
        (
            "sample.rs",
            "use crate::{engine::diffussm::Diffussm, train::cas};",
        ),
    ] {
        assert_eq!(
            breaches(Path::new(file), line),
            Vec::<String>::new(),
            "{file}"
        );
    }
}

/// The file-level import graph of `src/engine`: module path (`["cpu", "act"]`) → the engine
/// modules it names through `super::…` or `crate::engine::…`.
fn engine_graph(files: &[(Vec<String>, String)]) -> Vec<(Vec<String>, Vec<Vec<String>>)> {
    let known: Vec<&Vec<String>> = files.iter().map(|(m, _)| m).collect();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    // the first path segments after a prefix: `a::b`, or each item of `{a::b, c}`
    let heads = |rest: &str| -> Vec<Vec<String>> {
        let mut path = Vec::new();
        let mut r = rest;
        loop {
            if let Some(group) = r.strip_prefix('{') {
                let mut level = 0;
                let mut out = Vec::new();
                let mut start = 0;
                for (k, c) in group.char_indices() {
                    match c {
                        '{' => level += 1,
                        '}' if level > 0 => level -= 1,
                        ',' | '}' if level == 0 => {
                            let item = group[start..k].trim();
                            let mut p = path.clone();
                            p.extend(item.split("::").map(ident).filter(|s| !s.is_empty()));
                            out.push(p);
                            start = k + 1;
                            if c == '}' {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                return out;
            }
            let id = ident(r);
            if id.is_empty() {
                return vec![path];
            }
            r = &r[id.len()..];
            path.push(id);
            match r.strip_prefix("::") {
                Some(next) => r = next,
                None => return vec![path],
            }
        }
    };
    let mut graph = Vec::new();
    for (m, text) in files {
        let parent = &m[..m.len().saturating_sub(1)];
        let mut targets: Vec<Vec<String>> = Vec::new();
        let mut resolve = |base: Vec<String>, rest: &str| {
            for tail in heads(rest) {
                let mut full = base.clone();
                full.extend(tail);
                let best = (1..=full.len())
                    .rev()
                    .map(|n| full[..n].to_vec())
                    .find(|p| known.contains(&p));
                if let Some(t) = best
                    && t != *m
                    && !targets.contains(&t)
                {
                    targets.push(t);
                }
            }
        };
        for (i, _) in text.match_indices("crate::engine::") {
            resolve(Vec::new(), &text[i + "crate::engine::".len()..]);
        }
        for (i, _) in text.match_indices("super::") {
            if text[..i].ends_with("::") {
                continue;
            }
            let mut base = parent.to_vec();
            let mut j = i;
            while text[j..].starts_with("super::") {
                j += "super::".len();
                if j > i + "super::".len() {
                    base.pop();
                }
            }
            resolve(base, &text[j..]);
        }
        graph.push((m.clone(), targets));
    }
    graph
}

/// A cycle of the graph, if any, as the modules along it.
fn find_cycle(graph: &[(Vec<String>, Vec<Vec<String>>)]) -> Option<Vec<String>> {
    fn visit(
        g: &[(Vec<String>, Vec<Vec<String>>)],
        n: usize,
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        state[n] = 1;
        stack.push(n);
        for t in &g[n].1 {
            let Some(k) = g.iter().position(|(m, _)| m == t) else {
                continue;
            };
            if state[k] == 1 {
                let from = stack.iter().position(|&s| s == k).unwrap_or(0);
                let mut c: Vec<String> = stack[from..].iter().map(|&s| g[s].0.join("::")).collect();
                c.push(g[k].0.join("::"));
                return Some(c);
            }
            if state[k] == 0
                && let Some(c) = visit(g, k, state, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        state[n] = 2;
        None
    }
    let mut state = vec![0u8; graph.len()];
    for n in 0..graph.len() {
        if state[n] == 0
            && let Some(c) = visit(graph, n, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn engine_files(root: &Path) -> Vec<(Vec<String>, String)> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(root).unwrap();
            let mut m: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if m.last().is_some_and(|l| l == "mod") {
                m.pop();
            }
            (!m.is_empty()).then(|| (m, std::fs::read_to_string(f).unwrap()))
        })
        .collect()
}

#[test]
fn the_engine_has_no_file_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let graph = engine_graph(&engine_files(&root));
    assert!(graph.len() > 15, "{}", root.display());
    if let Some(c) = find_cycle(&graph) {
        panic!(
            "engine files import each other in a cycle: {}",
            c.join(" → ")
        );
    }
    // the kernels of the CPU depend on nothing of the engine but its error type
    for (m, targets) in &graph {
        if m[0] == "cpu" {
            for t in targets {
                assert!(
                    t[0] == "cpu" || t[0] == "error",
                    "engine::{} imports engine::{}",
                    m.join("::"),
                    t.join("::")
                );
            }
        }
    }
}

#[test]
fn the_cycle_check_finds_the_old_engine_cycle() {
    // nn ↔ fused ↔ rowops ↔ bigs_fused, as the engine was
    let files: Vec<(Vec<String>, String)> = [
        (
            "nn",
            "use super::bigs_fused::linear_rows; super::rowops::layer_norm(x)",
        ),
        ("fused", "use super::nn::Gelu;"),
        (
            "rowops",
            "use super::fused::{gelu_f32, gelu_f64};\nuse super::nn::Gelu;",
        ),
        ("bigs_fused", "use super::rowops::{Elem, col_sums};"),
        ("cpu/act", "use super::super::error::Result;"),
        ("error", ""),
    ]
    .iter()
    .map(|(m, t)| (m.split('/').map(String::from).collect(), t.to_string()))
    .collect();
    let graph = engine_graph(&files);
    let act = graph
        .iter()
        .find(|(m, _)| m.join("/") == "cpu/act")
        .unwrap();
    assert_eq!(act.1, vec![vec!["error".to_string()]]);
    let c = find_cycle(&graph).expect("the old cycle is found");
    assert!(c.len() >= 3, "{c:?}");
}
