//! Embeds GraphiQL's browser assets into the binary when `scripts/fetch-graphiql.sh` has put
//! them into `assets/graphiql/`; without them `/graphiql` loads the same versions from a CDN.
//! Writes `$OUT_DIR/graphiql_assets.rs`, which `src/graphiql.rs` includes.

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
    let present = FILES.iter().all(|(name, _)| dir.join(name).is_file());
    let code = if present {
        let assets: Vec<String> = FILES
            .iter()
            .map(|(name, content_type)| {
                format!(
                    "Asset {{ name: {name:?}, content_type: {content_type:?}, bytes: include_bytes!({:?}) }}",
                    dir.join(name).display().to_string()
                )
            })
            .collect();
        format!(
            "/// GraphiQL's assets, embedded at build time.\npub const EMBEDDED: Option<&[Asset]> = Some(&[{}]);\n",
            assets.join(", ")
        )
    } else {
        "/// GraphiQL's assets were not fetched before this build.\npub const EMBEDDED: Option<&[Asset]> = None;\n".to_owned()
    };
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("graphiql_assets.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
