// A minimal frontend client of amocrm-gateway, with nothing but `fetch` (browsers, Node 18+):
// a fragment, paging with `after`, and an automatic-persisted-query round trip over GET.
//
//   node examples/fetch.mjs [http://127.0.0.1:8080] [token]
//
// The token is a client key (gateway with --access-token) or your amoCRM token (forwarding
// mode); a gateway in --demo mode needs none.

const endpoint = `${process.argv[2] ?? "http://127.0.0.1:8080"}/graphql`;
const token = process.argv[3];
const headers = { "content-type": "application/json" };
if (token) headers.authorization = `Bearer ${token}`;

// A fragment: what this screen shows of a contact.
const CONTACTS = `
  fragment ContactRow on Contact {
    id
    name
    leads { id name price }
  }
  query Contacts($first: Int!, $after: String) {
    contacts(first: $first, after: $after, order: { field: ID, direction: ASC }) {
      pageInfo { hasNextPage endCursor }
      nodes { ...ContactRow }
    }
  }`;

async function post(body) {
  const response = await fetch(endpoint, { method: "POST", headers, body: JSON.stringify(body) });
  return response.json();
}

async function sha256(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// Automatic persisted queries, as Apollo Client's persisted-query link does it: the hash alone
// first (as a GET, which browsers can cache), the document only when the gateway asks for it.
async function persisted(query, variables) {
  const extensions = { persistedQuery: { version: 1, sha256Hash: await sha256(query) } };
  const url = new URL(endpoint);
  url.searchParams.set("operationName", "Contacts");
  url.searchParams.set("variables", JSON.stringify(variables));
  url.searchParams.set("extensions", JSON.stringify(extensions));
  const first = await (await fetch(url, { headers })).json();
  if (first.errors?.[0]?.extensions?.code !== "PERSISTED_QUERY_NOT_FOUND") return first;
  console.log("APQ: the gateway did not know the hash; sending the document once");
  return post({ query, variables, extensions });
}

let after = null;
for (let page = 1; page <= 3; page++) {
  const { data, errors } = await post({ query: CONTACTS, variables: { first: 2, after } });
  if (errors) throw new Error(JSON.stringify(errors));
  const { nodes, pageInfo } = data.contacts;
  console.log(`page ${page}: ${nodes.map((c) => `${c.id} ${c.name} (${c.leads.length} leads)`).join(", ")}`);
  if (!pageInfo.hasNextPage) break;
  after = pageInfo.endCursor;
}

const once = await persisted(CONTACTS, { first: 2 });
const again = await persisted(CONTACTS, { first: 2 });
if (once.errors || again.errors) throw new Error(JSON.stringify(once.errors ?? again.errors));
console.log(`APQ: by hash alone the second time: ${again.data.contacts.nodes.length} contacts`);
