#!/usr/bin/env bash
# Build the local base image for the Containerfile from Debian packages with mmdebstrap
# (no registry needed): Debian bookworm minbase + python3 (3.11; no CA store: dracpu trusts only the service-account CA), imported into podman as
# $DRACPU_BASE_IMAGE. Reused when present; DRACPU_BASE_REBUILD=1 forces a rebuild.
set -euo pipefail
image="${DRACPU_BASE_IMAGE:-localhost/dracpu-base:bookworm}"
suite="${DRACPU_BASE_SUITE:-bookworm}"
if [ "${DRACPU_BASE_REBUILD:-0}" != 1 ] && podman image exists "$image"; then
    echo "image: base $image present" >&2
    exit 0
fi
need=()
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v podman >/dev/null 2>&1 || need+=(podman)
if ((${#need[@]})); then
    echo "image: apt-get install ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
t0=$(date +%s)
echo "image: mmdebstrap $suite minbase + python3 -> $image (about a minute)" >&2
tar="$(mktemp --suffix=.tar)"
trap 'rm -f "$tar"' EXIT
# Docs, man pages and locales are dropped: nothing in the image reads them.
# merged-usr hook: the /usr merge done by mmdebstrap itself, not by the usrmerge package
# (which pulls in perl, about 50 MB).
mmdebstrap --quiet --variant=minbase --include=python3 \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" "$tar"
podman import --quiet --change 'CMD ["/bin/bash"]' "$tar" "$image" >/dev/null
echo "image: base $image built in $(( $(date +%s) - t0 ))s ($(podman image inspect --format '{{.Size}}' "$image") bytes)" >&2
