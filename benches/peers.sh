#!/usr/bin/env bash
# `make bench PEERS=all`: the Pingora-based peers that are not Debian packages, built once at a
# fixed version with `cargo install --locked` into a cache outside the work tree
# ($TEN_BENCH_PEERS, default ~/.cache/tenement-bench/peers/CRATE-VERSION) and reused by later
# runs. A build that fails is skipped with one line (the harness then leaves the row out and
# says why); it never stops `make bench`.
set -uo pipefail
cache=${TEN_BENCH_PEERS:-$HOME/.cache/tenement-bench/peers}

peer() {
    local crate=$1 version=$2 bin=$3
    local root="$cache/$crate-$version"
    if [ -x "$root/bin/$bin" ]; then
        echo "bench peers: $crate $version: $root/bin/$bin (built before)"
        return
    fi
    mkdir -p "$root"
    echo "bench peers: building $crate $version (minutes; once) into $root"
    # Not into the workspace's target dir: cargo's own temporary one, removed after.
    if env -u CARGO_TARGET_DIR nice -n 10 cargo install --locked --version "$version" \
        --root "$root" "$crate" >"$root/build.log" 2>&1; then
        echo "bench peers: $crate $version: built"
    else
        echo "bench peers: $crate $version: cargo install failed, skipped:" \
            "$(grep -m1 '^error' "$root/build.log" || tail -n 1 "$root/build.log")" \
            "(log: $root/build.log)"
    fi
}

peer pingap 0.16.1 pingap
