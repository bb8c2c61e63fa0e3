#!/usr/bin/env bash
# Build the NRI runtime test peer against one pinned github.com/containerd/nri version.
#
#   tests/peers/nri/build.sh v0.8.0        -> prints the binary path
#
# Sources are copied next to the pinned go.mod/go.sum of versions/<version>/ into
# ${DRACPU_PEER_CACHE:-~/.cache/dracpu/peers}/nri-<version>-<source hash>/ and built there with
# `nice`. A binary whose recorded source hash matches is reused, so repeated test runs build
# nothing, and worktrees with different peer sources each keep their own binary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${1:?usage: build.sh <nri-version>}"
mods="$here/versions/$version"
[[ -f "$mods/go.mod" ]] || { echo "no pinned module set for NRI $version in $mods" >&2; exit 2; }
tags=""
case "$version" in v0.12.*) tags="nri_v12" ;; esac
hash="$(cat "$here"/*.go "$mods/go.mod" "$mods/go.sum" "$0" | sha256sum | cut -d' ' -f1)"
cache="${DRACPU_PEER_CACHE:-$HOME/.cache/dracpu/peers}/nri-$version-${hash:0:12}"
bin="$cache/nripeer"
if [[ -x "$bin" && -f "$cache/source.sha256" && "$(cat "$cache/source.sha256")" == "$hash" ]]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$cache/src"
rm -f "$cache/src"/*.go
cp "$here"/*.go "$mods/go.mod" "$mods/go.sum" "$cache/src/"
(
    cd "$cache/src"
    GOFLAGS="-mod=mod -buildvcs=false" nice -n 10 go build -p 1 -tags "$tags" \
        -ldflags "-X main.nriVersion=$version" -o "$bin.tmp" . >&2
)
mv "$bin.tmp" "$bin"
echo "$hash" > "$cache/source.sha256"
echo "$bin"
