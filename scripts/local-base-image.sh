#!/usr/bin/env bash
# Makes `debian:bookworm-slim` (the tag the Dockerfiles start from) without a registry: a
# minimal Debian bookworm root from Debian's own mirror with debootstrap, loaded with
# `docker import`. Does nothing when the image is already there. Needs root (debootstrap).
#   scripts/local-base-image.sh [TAG]
set -euo pipefail
tag=${1:-debian:bookworm-slim}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag: already present"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "base image $tag: installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
root=$(mktemp -d /tmp/bookworm-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "base image $tag: debootstrap --variant=minbase bookworm from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -20 "$root.log"
    exit 1
}
rm -f "$root.log"
# Slim it the way the official slim image is: no package lists, caches, manuals or docs.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$tag" >/dev/null
echo "base image $tag: imported ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
