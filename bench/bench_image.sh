#!/usr/bin/env bash
# Image figures: size, cold build (base rebuilt, no layer cache), rebuild after a source change,
# rebuild with nothing changed. Builds from a copy of HEAD in a temp dir, so the work tree is
# not touched; the image tag is the usual one (localhost/dracpu:<version>).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
git archive HEAD | tar -x -C "$tmp"
timed() {  # timed LABEL ENV... : run the build, print LABEL and seconds
    local label=$1; shift
    local t0; t0=$(date +%s.%N)
    env "$@" "$tmp/hack/image/build.sh" >/dev/null 2>"$tmp/log" || { cat "$tmp/log" >&2; exit 1; }
    printf '%-34s %6.1f s\n' "$label" "$(echo "$(date +%s.%N) - $t0" | bc)"
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
timed "cold (base + no layer cache)" DRACPU_BASE_REBUILD=1 DRACPU_IMAGE_NO_CACHE=1
timed "warm, nothing changed" DRACPU_IMAGE_NO_CACHE=0
echo "# bench probe $(date +%s)" >>"$tmp/dracpu/__init__.py"
timed "warm, one source file changed" DRACPU_IMAGE_NO_CACHE=0
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
size=$(podman image inspect --format '{{.Size}}' "localhost/dracpu:$version")
base=$(podman image inspect --format '{{.Size}}' localhost/dracpu-base:bookworm)
printf 'image size                          %6.1f MiB (base %.1f MiB)\n' \
    "$(echo "$size / 1048576" | bc -l)" "$(echo "$base / 1048576" | bc -l)"
