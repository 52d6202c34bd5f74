#!/usr/bin/env bash
# A curl session with amocrm-gateway: a fragment, paging with `after`, and an automatic
# persisted query (unknown hash → PersistedQueryNotFound → hash and document → hash alone).
#
#   examples/curl-session.sh [http://127.0.0.1:8080] [token]
#
# Needs curl and jq. The token is a client key or your amoCRM token; --demo needs none.
set -euo pipefail
base=${1:-http://127.0.0.1:8080}
auth=()
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if [ -n "${2:-}" ]; then auth=(-H "Authorization: Bearer $2"); fi

query='fragment ContactRow on Contact { id name leads { id name } }
query Contacts($first: Int!, $after: String) {
  contacts(first: $first, after: $after) { pageInfo { hasNextPage endCursor } nodes { ...ContactRow } }
}'

graphql() { # graphql <json body>
    curl -sS --compressed "${auth[@]}" -H 'content-type: application/json' -d "$1" "$base/graphql"
}

echo "# page 1"
page1=$(graphql "$(jq -n --arg q "$query" '{query: $q, variables: {first: 2}}')")
echo "$page1" | jq -c '.data.contacts.nodes[] | {id, name}'
cursor=$(echo "$page1" | jq -r '.data.contacts.pageInfo.endCursor')

echo "# page 2, after $cursor"
graphql "$(jq -n --arg q "$query" --arg after "$cursor" '{query: $q, variables: {first: 2, after: $after}}')" |
    jq -c '.data.contacts.nodes[] | {id, name}'

echo "# APQ: the hash alone, which the gateway does not know yet"
hash=$(printf '%s' "$query" | sha256sum | cut -d' ' -f1)
extensions=$(jq -nc --arg h "$hash" '{persistedQuery: {version: 1, sha256Hash: $h}}')
graphql "$(jq -n --argjson e "$extensions" '{variables: {first: 2}, extensions: $e}')" |
    jq -c '.errors[0] | {message, code: .extensions.code}'

echo "# APQ: hash and document, once"
graphql "$(jq -n --arg q "$query" --argjson e "$extensions" '{query: $q, variables: {first: 2}, extensions: $e}')" |
    jq -c '[.data.contacts.nodes[].id]'

echo "# APQ: the hash alone again, as a GET a browser can cache"
curl -sS --compressed -G "${auth[@]}" "$base/graphql" \
    --data-urlencode "operationName=Contacts" \
    --data-urlencode 'variables={"first":2}' \
    --data-urlencode "extensions=$extensions" -D - -o "$out" |
    grep -i -E '^(cache-control|x-cache|vary):'
jq -c '[.data.contacts.nodes[].id]' "$out"
