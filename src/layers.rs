//! The layering rule, checked on the source: each top-level module imports only from the
//! modules before it, and the bottom layer does no I/O.
//!
//! | rank | module | may import |
//! |---|---|---|
//! | 0 | `core` | nothing of the crate; no Kubernetes client, no network, no files |
//! | 1 | `spec` | `core` |
//! | 2 | `simulate` | `core`, `spec` |
//! | 2 | `kubeio` | `core`, `spec` |
//! | 3 | `brokers` | `core`, `spec`, `kubeio` |
//! | 4 | `reconcile` | `core`, `spec`, `kubeio`, `brokers` |
//! | 5 | `runtime` | everything |
//!
//! Modules of the same rank do not import each other, so there is no cycle among top-level
//! modules. A file-level `use super::…` that climbs out of its top-level module is refused
//! (name the layer with `crate::`).

use std::path::{Path, PathBuf};

const LAYERS: &[(&str, u8)] = &[
    ("core", 0),
    ("spec", 1),
    ("simulate", 2),
    ("kubeio", 2),
    ("brokers", 3),
    ("reconcile", 4),
    ("runtime", 5),
];

/// Crates and std modules that do I/O (or are a Kubernetes client): none of them in `core`.
const IO_IN_CORE: &[&str] = &[
    "kube::",
    "kube_runtime::",
    "k8s_openapi::",
    "reqwest::",
    "tokio::",
    "lapin::",
    "aws_config::",
    "aws_sdk_sqs::",
    "axum::",
    "hyper::",
    "std::fs",
    "std::net",
    "std::process",
];

fn rank(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// The code of a file without comments (doc links may name any layer).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // `//` inside a string literal (a URL) is rare in imports; keep the line start.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level modules a piece of code names through `crate::` (including `crate::{a, b}`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        // Skip `nerite_crate::` and the like: `crate` must start a path.
        let starts_path = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if starts_path {
            if let Some(group) = after.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for part in group[..end].split(',') {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.push(name);
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        }
        rest = after;
    }
    out
}

/// How deep a file's module sits below the crate root (`core/mod.rs` 1, `core/policy.rs` 2).
fn depth(relative: &Path) -> usize {
    let parts = relative.components().count();
    match relative.file_name().and_then(|f| f.to_str()) {
        Some("mod.rs") => parts - 1,
        _ => parts,
    }
}

/// Every broken rule in one file of top-level module `module`.
fn violations(module: &str, relative: &Path, text: &str) -> Vec<String> {
    let Some(own) = rank(module) else {
        return vec![format!(
            "{}: top-level module {module:?} has no layer (add it to LAYERS)",
            relative.display()
        )];
    };
    let code = code_of(text);
    let mut out = Vec::new();
    for name in crate_paths(&code) {
        if name == module {
            continue;
        }
        match rank(&name) {
            Some(r) if r < own => {}
            Some(_) => out.push(format!(
                "{}: {module} (layer {own}) imports crate::{name}, which is not below it",
                relative.display()
            )),
            // `crate::SomeItem` at the root: only lib.rs defines anything there.
            None => out.push(format!(
                "{}: crate::{name} is not a layer",
                relative.display()
            )),
        }
    }
    // File-level imports only: an inline `mod tests` adds a level of its own.
    let climb = "super::".repeat(depth(relative));
    let climbs = code.lines().any(|l| {
        let l = l.strip_prefix("pub ").unwrap_or(l);
        l.strip_prefix("use ")
            .is_some_and(|p| p.starts_with(&climb))
    });
    if !climb.is_empty() && climbs {
        out.push(format!(
            "{}: a super:: path climbs out of {module}; name the layer with crate::",
            relative.display()
        ));
    }
    if own == 0 {
        for io in IO_IN_CORE {
            if code.contains(io) {
                out.push(format!(
                    "{}: core does no I/O, but the code uses {io}",
                    relative.display()
                ));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn imports_go_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    let mut checked = 0;
    for f in &files {
        let Ok(relative) = f.strip_prefix(&src) else {
            continue;
        };
        let mut parts = relative.components();
        let first = parts
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default();
        // lib.rs, main.rs and this file are the root.
        let module = match first.strip_suffix(".rs") {
            Some(_) => continue,
            None => first,
        };
        let text = std::fs::read_to_string(f).unwrap_or_default();
        broken.extend(violations(module, relative, &text));
        checked += 1;
    }
    assert!(
        checked > 50,
        "only {checked} files found under {}",
        src.display()
    );
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_rule_catches_what_it_must() {
    let at = |p: &str| PathBuf::from(p);
    // Upward and sideways imports.
    assert_eq!(
        violations(
            "core",
            &at("core/policy.rs"),
            "use crate::reconcile::Context;"
        )
        .len(),
        1
    );
    assert_eq!(
        violations("kubeio", &at("kubeio/mod.rs"), "use crate::simulate::x;").len(),
        1
    );
    assert_eq!(
        violations(
            "brokers",
            &at("brokers/sqs/mod.rs"),
            "use crate::{core::error::SourceError, runtime::cli};"
        )
        .len(),
        1
    );
    // Downward imports and comments are fine.
    assert!(
        violations(
            "reconcile",
            &at("reconcile/mod.rs"),
            "use crate::brokers::jobs;\n//! see [`crate::runtime::run`]\nuse crate::core::policy;"
        )
        .is_empty()
    );
    // Climbing out with super::, and I/O in core.
    assert_eq!(
        violations(
            "brokers",
            &at("brokers/sqs/model.rs"),
            "use super::super::super::x;"
        )
        .len(),
        1
    );
    assert!(
        violations(
            "brokers",
            &at("brokers/sqs/model.rs"),
            "use super::super::jobs;"
        )
        .is_empty()
    );
    assert_eq!(
        violations(
            "core",
            &at("core/x.rs"),
            "let c = kube::Client::try_default();"
        )
        .len(),
        1
    );
    assert_eq!(violations("nowhere", &at("nowhere/x.rs"), "").len(), 1);
}
