//! The layering of `src/` (lib.rs's map): arrows run one way. A module under a lower layer that
//! names a higher one — through `crate::`, `super::` chains or the crate root's re-exports —
//! fails this test with the file and the line.

use std::path::{Path, PathBuf};

/// Each lower layer, and the top-level modules it must never name.
const FORBIDDEN: [(&str, &[&str]); 5] = [
    (
        "amocrm",
        &["http", "gateway", "config", "graphql", "cache", "live"],
    ),
    (
        "shared",
        &["http", "gateway", "config", "graphql", "cache", "live"],
    ),
    ("cache", &["http", "gateway", "config", "graphql", "live"]),
    ("live", &["http", "gateway", "config", "graphql"]),
    ("graphql", &["http", "gateway", "config"]),
];

/// What the crate root re-exports from the layers above: naming these is naming them.
const ROOT_REEXPORTS: [(&str, &str); 2] = [("Gateway", "gateway"), ("StartupError", "gateway")];

#[test]
fn lower_layers_never_import_the_http_layer_or_the_composition_root() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut files = 0;
    for (layer, forbidden) in FORBIDDEN {
        for file in rust_files(&src.join(layer)) {
            files += 1;
            let module = module_path(&src, &file);
            let text = std::fs::read_to_string(&file).expect("readable");
            for (line, target) in top_level_names(&module, &text) {
                if forbidden.contains(&target.as_str()) {
                    violations.push(format!(
                        "{}:{line}: `{layer}` names `{target}`",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(
        files > 20,
        "scanned only {files} files: is src/ laid out as expected?"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_scanner_sees_every_way_of_naming_a_module() {
    let module = ["cache", "pages", "refresh"].map(String::from).to_vec();
    let text = "use crate::http::Components;\n\
                use crate::{amocrm,\n    gateway::Gateway};\n\
                use super::super::super::config::Settings;\n\
                fn f() -> crate::Gateway { todo!() }\n\
                use super::Entry; // stays within cache\n\
                // crate::http in a comment is not an import\n";
    let names: Vec<_> = top_level_names(&module, text);
    assert_eq!(
        names,
        [
            (1, "http".to_owned()),
            (2, "amocrm".to_owned()),
            (2, "gateway".to_owned()),
            (4, "config".to_owned()),
            (5, "gateway".to_owned()),
            (6, "cache".to_owned()),
        ]
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a directory").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// `src/cache/pages/mod.rs` → `[cache, pages]`; `src/cache/flight.rs` → `[cache, flight]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The top-level module each `crate::…`/`super::…` path in `text` lands in, with the line it
/// starts on; comments are skipped, and a `{…}` group may span lines.
fn top_level_names(module: &[String], text: &str) -> Vec<(usize, String)> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = Vec::new();
    let mut offset = 0;
    while let Some(start) = find_path_start(&code[offset..]) {
        let at = offset + start;
        let (path, rest) = take_path(&code[at..]);
        offset = code.len() - rest.len();
        let line = code[..at].matches('\n').count() + 1;
        let mut segments = path.split("::").map(str::trim).peekable();
        let depth = match segments.next() {
            Some("crate") => 0,
            Some(_) => {
                let mut up = 1;
                while segments.peek() == Some(&"super") {
                    segments.next();
                    up += 1;
                }
                module.len().saturating_sub(up)
            }
            None => continue,
        };
        let following: Vec<&str> = segments.collect();
        let roots: Vec<String> = if depth > 0 {
            vec![module[0].clone()]
        } else {
            match following.first() {
                Some(group) if group.starts_with('{') => group
                    .trim_matches(|c| c == '{' || c == '}')
                    .split(',')
                    .filter_map(|item| item.trim().split("::").next())
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                Some(first) => vec![(*first).to_owned()],
                None => Vec::new(),
            }
        };
        for root in roots {
            let root = ROOT_REEXPORTS
                .iter()
                .find(|(item, _)| *item == root)
                .map_or(root, |(_, module)| (*module).to_owned());
            names.push((line, root));
        }
    }
    names
}

fn find_path_start(text: &str) -> Option<usize> {
    ["crate::", "super::"]
        .iter()
        .filter_map(|prefix| {
            text.match_indices(prefix)
                .find(|(at, _)| {
                    !text[..*at]
                        .chars()
                        .last()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                })
                .map(|(at, _)| at)
        })
        .min()
}

/// A path such as `crate::a::{b, c::d}` and the text after it.
fn take_path(text: &str) -> (&str, &str) {
    let mut depth = 0;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return (&text[..=at], &text[at + 1..]);
                }
            }
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => {
                return (&text[..at], &text[at..]);
            }
            _ => {}
        }
    }
    (text, "")
}
