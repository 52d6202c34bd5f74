#!/usr/bin/env bash
# Updates the GraphiQL playground's browser assets in assets/graphiql/, which are committed and
# embedded into the binary by the build: /graphiql works with no network on a fresh clone. Run it
# after changing a pin below (then commit the result), or with --check to re-verify the committed
# files against the registry. `npm pack` of three pinned packages (not an `npm install`): each
# pin's sha512 must equal the integrity the npm registry publishes for that version, and the
# tarball must hash to it. The files' SHA-256 digests go to SHA256SUMS, which a unit test checks
# the embedded bytes against, offline.
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
check=false
if [ "${1:-}" = "--check" ]; then check=true; fi
if complete && ! $check; then
    exit 0
fi
command -v npm >/dev/null || { echo "update-graphiql: needs npm (Node.js)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"
for entry in "${packages[@]}"; do
    IFS='|' read -r spec integrity files <<<"$entry"
    published=$(npm view "$spec" dist.integrity)
    if [ "$published" != "$integrity" ]; then
        echo "update-graphiql: the registry publishes $published for $spec, not the pinned $integrity" >&2
        exit 1
    fi
    tarball=$(cd "$work" && npm pack "$spec" --silent | tail -n 1)
    [ -f "$work/$tarball" ] || { echo "update-graphiql: npm pack $spec produced no tarball" >&2; exit 1; }
    actual="sha512-$(node -e 'process.stdout.write(require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$work/$tarball")"
    if [ "$actual" != "$integrity" ]; then
        echo "update-graphiql: $spec does not match its pinned integrity ($actual)" >&2
        exit 1
    fi
    for file in $files; do
        tar -xzf "$work/$tarball" -C "$work" "package/$file"
        if $check; then
            cmp -s "$work/package/$file" "$dest/$(basename "$file")" || {
                echo "update-graphiql: the committed $(basename "$file") differs from $spec's" >&2
                exit 1
            }
            continue
        fi
        # Each file replaced by a rename: a reader never sees half of one.
        cp "$work/package/$file" "$dest/.$(basename "$file").part"
        mv "$dest/.$(basename "$file").part" "$dest/$(basename "$file")"
    done
    rm -rf "$work/package"
done
if $check; then
    echo "update-graphiql: the committed assets are exactly the pinned packages' files" >&2
    exit 0
fi
echo "$wanted" >"$stamp"
(cd "$dest" && sha256sum "${files_wanted[@]}" >SHA256SUMS)
echo "update-graphiql: GraphiQL's assets are in $dest; commit them, the next build embeds them" >&2
