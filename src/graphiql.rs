//! The GraphiQL playground at `/graphiql`: an example query (contacts with their leads, paged
//! with variables), the schema docs, and the `Authorization` header the caller needs.
//!
//! Its assets come from the official npm packages (GraphiQL, React, ReactDOM), fetched and
//! integrity-checked by `scripts/fetch-graphiql.sh` and embedded into the binary at build time,
//! so the playground works air-gapped. A binary built without them serves a page that loads
//! the same pinned versions from unpkg.com, and says so in the log at start-up.

/// One embedded file, served at `/graphiql/assets/{name}`.
#[derive(Debug)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/graphiql_assets.rs"));

/// Where each asset lives on the CDN, for a build without them.
const CDN: [(&str, &str); 4] = [
    (
        "react.production.min.js",
        "https://unpkg.com/react@18.3.1/umd/react.production.min.js",
    ),
    (
        "react-dom.production.min.js",
        "https://unpkg.com/react-dom@18.3.1/umd/react-dom.production.min.js",
    ),
    (
        "graphiql.min.js",
        "https://unpkg.com/graphiql@4.1.2/graphiql.min.js",
    ),
    (
        "graphiql.min.css",
        "https://unpkg.com/graphiql@4.1.2/graphiql.min.css",
    ),
];

pub const ASSETS_PATH: &str = "/graphiql/assets";

/// The example GraphiQL opens with: contacts with their leads, paged with variables.
pub const EXAMPLE_QUERY: &str = r#"# Contacts with their leads, newest changes first.
# Run it, then put pageInfo.endCursor into "after" (Variables, below) for the next page.
query Contacts($first: Int = 10, $after: String) {
  contacts(first: $first, after: $after, order: { field: UPDATED_AT, direction: DESC }) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id
      name
      updatedAt
      tags { name }
      customFieldsValues { fieldCode values { value enumCode } }
      leads { id name price }
    }
  }
}
"#;

/// Whether the assets were embedded at build time.
pub fn embedded() -> bool {
    EMBEDDED.is_some()
}

pub fn asset(name: &str) -> Option<&'static Asset> {
    EMBEDDED?.iter().find(|asset| asset.name == name)
}

/// The page, with the header hint callers of this gateway need (if any).
pub fn page(authorization: Option<&str>) -> String {
    let headers = authorization
        .map(|value| serde_json::json!({ "Authorization": value }).to_string())
        .unwrap_or_default();
    let config = serde_json::json!({
        "endpoint": "/graphql",
        "query": EXAMPLE_QUERY,
        "variables": "{ \"first\": 10 }",
        "headers": headers,
    });
    // `</` must not close the script element the config is embedded in.
    let config = config.to_string().replace("</", "<\\/");
    let mut page = include_str!("graphiql.html").replace("__CONFIG__", &config);
    for (name, cdn) in CDN {
        let url = match embedded() {
            true => format!("{ASSETS_PATH}/{name}"),
            false => cdn.to_owned(),
        };
        page = page.replace(&format!("__{name}__"), &url);
    }
    page
}
