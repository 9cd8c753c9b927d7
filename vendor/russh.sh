#!/usr/bin/env bash
# vendor/russh.sh: rebuilds vendor/russh from the published crate and vendor/russh.patch, and
# checks (default) or writes (--write) the tree in the repository.
#
#   bash vendor/russh.sh            # vendor/russh is exactly russh $VERSION + russh.patch
#   bash vendor/russh.sh --write    # replace vendor/russh with that (after changing VERSION,
#                                   # SHA256 and the patch, to upgrade)
#
# The crate comes from crates.io and must have the SHA-256 below (the checksum Cargo.lock
# recorded for it before it was vendored). What is dropped: examples, tests and benches (not
# built as a dependency), with their manifest sections and the dev-dependencies.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VERSION=0.65.1
SHA256=94be3d86c71b9ed220a675c405e35c7a02565a009bf8da2e9cc13a700320a5c5

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
crate="$work/russh-$VERSION.crate"
cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"russh-$VERSION.crate" 2>/dev/null | head -n1 || true)
if [[ -n "$cached" ]]; then
    cp "$cached" "$crate"
else
    curl -fsSL --retry 3 -o "$crate" "https://static.crates.io/crates/russh/russh-$VERSION.crate"
fi
echo "$SHA256  $crate" | sha256sum -c --quiet -

tar -xzf "$crate" -C "$work"
tree="$work/russh-$VERSION"
rm -rf "$tree"/{examples,tests,benches,Cargo.lock,Cargo.toml.orig,.cargo_vcs_info.json}
python3 - "$tree/Cargo.toml" <<'PY'
import re, sys
path = sys.argv[1]
sections = re.split(r'(?m)^(?=\[)', open(path).read())
drop = ('[[example]]', '[[test]]', '[[bench]]')
keep = [s for s in sections
        if not (s.split('\n', 1)[0].strip() in drop
                or s.startswith('[dev-dependencies'))]
open(path, 'w').write(''.join(keep))
PY
patch -s -d "$tree" -p1 < russh.patch

if [[ "${1:-}" == "--write" ]]; then
    rm -rf russh
    cp -r "$tree" russh
    echo "vendor/russh: russh $VERSION + russh.patch written"
elif diff -r "$tree" russh; then
    echo "vendor/russh: russh $VERSION + russh.patch, nothing else"
else
    echo "vendor/russh differs from russh $VERSION + russh.patch (above)" >&2
    exit 1
fi
