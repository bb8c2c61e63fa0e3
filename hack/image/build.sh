#!/usr/bin/env bash
# Build the dracpu image with podman from the Containerfile on the local Debian base
# (hack/image/base.sh), then save it as an OCI archive for `ctr images import` or
# `kind load image-archive`. Prints the archive path.
#   DRACPU_IMAGE        image name        (default localhost/dracpu:<pyproject version>)
#   DRACPU_BASE_IMAGE   base image        (default the local Debian base; any Python 3.11+ image works)
#   DRACPU_IMAGE_DIR    archive directory (default ~/.cache/dracpu/image)
#   DRACPU_IMAGE_NO_CACHE=1  build without the layer cache
set -euo pipefail
cd "$(dirname "$0")/../.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
image="${DRACPU_IMAGE:-localhost/dracpu:$version}"
base="${DRACPU_BASE_IMAGE:-localhost/dracpu-base:bookworm}"
out="${DRACPU_IMAGE_DIR:-$HOME/.cache/dracpu/image}"
if [ "$base" = localhost/dracpu-base:bookworm ]; then hack/image/base.sh; fi
mkdir -p "$out"
t0=$(date +%s)
echo "image: podman build $image on $base" >&2
# The host's CA bundle goes in as a build secret (used for PyPI, never stored in a layer).
ca="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
[ -s "$ca" ] || ca=/dev/null
nocache=()
[ "${DRACPU_IMAGE_NO_CACHE:-0}" = 1 ] && nocache=(--no-cache)
podman build --quiet --network host --pull=never --build-arg "BASE=$base" "${nocache[@]}" \
    --secret "id=ca-bundle,src=$ca" \
    -f Containerfile -t "$image" . >/dev/null
t1=$(date +%s)
archive="$out/dracpu.tar"
rm -f "$archive.tmp"
# docker-archive keeps the repo:tag name, which both `ctr images import` and kind read.
podman save --quiet --format docker-archive -o "$archive.tmp" "$image"
mv "$archive.tmp" "$archive"
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "image: $image built in $((t1 - t0))s, $((size / 1024 / 1024)) MiB; saved to $archive ($(( $(stat -c %s "$archive") / 1024 / 1024 )) MiB) in $(( $(date +%s) - t1 ))s" >&2
echo "$archive"
