//! Embeds GraphiQL's browser assets, committed in `assets/graphiql/`, into the binary, so the
//! playground works with no network. Writes `$OUT_DIR/graphiql_assets.rs`, which
//! `src/graphiql.rs` includes.

use std::path::Path;

/// The files the playground needs, with their content types.
const FILES: [(&str, &str); 4] = [
    ("react.production.min.js", "text/javascript; charset=utf-8"),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
    ),
    ("graphiql.min.js", "text/javascript; charset=utf-8"),
    ("graphiql.min.css", "text/css; charset=utf-8"),
];

fn main() {
    println!("cargo::rerun-if-changed=assets/graphiql");
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest_dir).join("assets/graphiql");
    let assets: Vec<String> = FILES
        .iter()
        .map(|(name, content_type)| {
            let path = dir.join(name);
            assert!(
                path.is_file(),
                "{} is missing: GraphiQL's assets are committed; restore them with git, or run \
                 scripts/update-graphiql.sh",
                path.display()
            );
            format!(
                "Asset {{ name: {name:?}, content_type: {content_type:?}, bytes: include_bytes!({:?}) }}",
                path.display().to_string()
            )
        })
        .collect();
    let code = format!(
        "/// GraphiQL's assets, embedded at build time.\npub const ASSETS: &[Asset] = &[{}];\n",
        assets.join(", ")
    );
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("graphiql_assets.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
