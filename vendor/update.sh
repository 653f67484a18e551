#!/bin/sh
# vendor/update.sh CRATE VERSION [--pristine DIR]
# Replace vendor/CRATE with CRATE VERSION as published on crates.io, then apply
# vendor/patches/CRATE/*.patch in order (stops at the first that does not apply).
# --pristine DIR: only unpack the unpatched crate into DIR (to diff a new patch against).
set -eu
crate=${1:?usage: vendor/update.sh CRATE VERSION [--pristine DIR]}
version=${2:?usage: vendor/update.sh CRATE VERSION [--pristine DIR]}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
file="$crate-$version.crate"
cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$file" 2>/dev/null | head -n 1 || true)
if [ -n "$cached" ]; then
    cp "$cached" "$tmp/$file"
else
    curl -fsSL "https://static.crates.io/crates/$crate/$file" -o "$tmp/$file"
fi
tar xzf "$tmp/$file" -C "$tmp"
rm -f "$tmp/$crate-$version/.cargo_vcs_info.json" "$tmp/$crate-$version/.cargo-ok"
if [ "${3:-}" = "--pristine" ]; then
    dest=${4:?--pristine needs a directory}
    rm -rf "$dest" && mv "$tmp/$crate-$version" "$dest"
    echo "unpacked $crate $version into $dest"
    exit 0
fi
for p in "$here/patches/$crate"/*.patch; do
    [ -e "$p" ] || continue
    echo "applying $(basename "$p")"
    patch -d "$tmp/$crate-$version" -p1 --forward --batch < "$p"
done
rm -rf "${here:?}/$crate"
mv "$tmp/$crate-$version" "$here/$crate"
echo "vendor/$crate is $crate $version with $(ls "$here/patches/$crate" | wc -l) patch(es);" \
    "set the version in Cargo.toml if it changed, then make test"
