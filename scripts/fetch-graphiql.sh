#!/usr/bin/env bash
# Fetches the GraphiQL playground's browser assets into assets/graphiql/, where the build embeds
# them into the binary: /graphiql then works without internet. `npm pack` of three pinned
# packages (not an `npm install`), each checked against the sha512 integrity the npm registry
# published for it. Idempotent; the fetched files are not committed (.gitignore). Without them
# the build still succeeds and /graphiql loads the same versions from unpkg.com.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=assets/graphiql
# package@version, its published integrity, then the files taken from it (path in the package).
packages=(
    "graphiql@4.1.2|sha512-rNlzQIAzm6i2KBXmVQWBgLvt0TloxFVB2d18bukvdsvjEuFDHsKx5IVOomL1W1o5WW+tE54+ioHb2AEKzO2cUg==|graphiql.min.js graphiql.min.css"
    "react@18.3.1|sha512-wS+hAgJShR0KhEvPJArfuPVN1+Hz1t0Y6n5jLrGQbkb4urgPE/0Rve+1kMB1v/oWgHgm4WIcV+i7F2pTVj+2iQ==|umd/react.production.min.js"
    "react-dom@18.3.1|sha512-5m4nQKp+rZRb09LNH59GM4BxTh9251/ylbKIbpe7TpGxfJ+9kv6BLkLBXIjjspbgbnIBNqlI23tRnTWT0snUIw==|umd/react-dom.production.min.js"
)
files_wanted=(graphiql.min.js graphiql.min.css react.production.min.js react-dom.production.min.js)
stamp="$dest/PACKAGES"
wanted=$(printf '%s\n' "${packages[@]}")
complete() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] || return 1
    for file in "${files_wanted[@]}"; do [ -s "$dest/$file" ] || return 1; done
}
if complete; then
    exit 0
fi
rm -f "$stamp"
command -v npm >/dev/null || { echo "fetch-graphiql: needs npm (Node.js)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"
for entry in "${packages[@]}"; do
    IFS='|' read -r spec integrity files <<<"$entry"
    tarball=$(cd "$work" && npm pack "$spec" --silent | tail -n 1)
    [ -f "$work/$tarball" ] || { echo "fetch-graphiql: npm pack $spec produced no tarball" >&2; exit 1; }
    actual="sha512-$(node -e 'process.stdout.write(require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$work/$tarball")"
    if [ "$actual" != "$integrity" ]; then
        echo "fetch-graphiql: $spec does not match its pinned integrity ($actual)" >&2
        exit 1
    fi
    for file in $files; do
        tar -xzf "$work/$tarball" -C "$work" "package/$file"
        # Each file replaced by a rename: a reader never sees half of one.
        cp "$work/package/$file" "$dest/.$(basename "$file").part"
        mv "$dest/.$(basename "$file").part" "$dest/$(basename "$file")"
    done
    rm -rf "$work/package"
done
echo "$wanted" >"$stamp"
echo "fetch-graphiql: GraphiQL's assets are in $dest; the next build embeds them" >&2
