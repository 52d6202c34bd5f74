//! The GraphiQL playground at `/graphiql`: an example query (contacts with their leads, paged
//! with variables), an example mutation and an example subscription in tabs of their own; the
//! schema docs, and the `Authorization` header the caller needs.
//!
//! Its assets come from the official npm packages (GraphiQL, React, ReactDOM), pinned, committed
//! in `assets/graphiql/` (`scripts/update-graphiql.sh` fetches them and checks the registry's
//! sha512) and embedded into the binary at build time, so the playground works air-gapped:
//! nothing is loaded from anywhere but the gateway.

/// One embedded file, served at `/graphiql/assets/{name}`.
#[derive(Debug)]
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/graphiql_assets.rs"));

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

/// The second tab: a write, and how to make it safe to retry.
pub const EXAMPLE_MUTATION: &str = r#"# Creates a contact. The answer holds it as amoCRM now has it, and every cached list
# already shows it. Send the same idempotencyKey again (after a timeout, say) and you get
# the same contact back instead of a second one.
mutation CreateContact($name: String!, $phone: String!, $key: String) {
  createContacts(
    input: [{
      name: $name
      customFields: [{ fieldCode: "PHONE", values: [{ value: $phone, enumCode: "WORK" }] }]
    }]
    idempotencyKey: $key
  ) {
    contacts {
      id
      name
      createdAt
      customFieldsValues { fieldCode values { value enumCode } }
    }
  }
}
"#;

/// The third tab: live updates, over the WebSocket GraphiQL opens to the same endpoint.
pub const EXAMPLE_SUBSCRIPTION: &str = r#"# Changes of contacts as they happen: edits in amoCRM (told by its webhooks, or found
# by the change feed) and writes through the gateway. Run it and leave it running, then
# run the mutation in the other tab: the new contact appears here.
subscription ContactChanged {
  contactChanged {
    kind
    id
    contact { id name updatedAt }
  }
}
"#;

pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
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
        "mutation": EXAMPLE_MUTATION,
        "mutationVariables": "{ \"name\": \"Анна Смирнова\", \"phone\": \"+7 900 123-45-67\", \"key\": \"example-1\" }",
        "subscription": EXAMPLE_SUBSCRIPTION,
        "headers": headers,
    });
    // `</` must not close the script element the config is embedded in.
    let config = config.to_string().replace("</", "<\\/");
    let mut page = include_str!("graphiql.html").replace("__CONFIG__", &config);
    for asset in ASSETS {
        let name = asset.name;
        page = page.replace(&format!("__{name}__"), &format!("{ASSETS_PATH}/{name}"));
    }
    page
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// The embedded files are the ones `scripts/update-graphiql.sh` took from the packages
    /// whose published sha512 it checked: it wrote their digests, and nothing changed since.
    #[test]
    fn the_embedded_assets_match_their_recorded_digests() {
        let sums = include_str!("../assets/graphiql/SHA256SUMS");
        for asset in super::ASSETS {
            let digest = hex::encode(Sha256::digest(asset.bytes));
            let line = format!("{digest}  {}", asset.name);
            assert!(
                sums.lines().any(|l| l == line),
                "{} differs from the digest scripts/update-graphiql.sh recorded",
                asset.name
            );
        }
        assert_eq!(sums.lines().count(), super::ASSETS.len());
    }

    #[test]
    fn the_page_names_only_the_gateways_own_assets() {
        let page = super::page(None);
        assert!(
            !page.contains(".js__") && !page.contains(".css__"),
            "a placeholder was left: {page}"
        );
        assert!(!page.contains("https://"), "{page}");
        for asset in super::ASSETS {
            assert!(page.contains(&format!("{}/{}", super::ASSETS_PATH, asset.name)));
        }
    }
}
