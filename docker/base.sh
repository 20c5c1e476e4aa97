#!/bin/sh
# A base image made from Debian's packages, for machines that reach no container registry:
#   docker/base.sh CONTAINER CACHE_DIR [TAG]
# mmdebstrap writes a minimal Debian 12 root filesystem with python3 and python3-venv once, cached as a tarball in
# CACHE_DIR (20-25 s on this project's machines, 225 MB); `CONTAINER import` (podman or docker) turns it into TAG
# every time (seconds).
set -eu

container="$1"
cache="$2"
tag="${3:-localhost/sparsetrt-base:bookworm}"
tarball="$cache/debian-bookworm-python3.tar"

if [ ! -s "$tarball" ]; then
    command -v mmdebstrap >/dev/null || { echo "mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 2; }
    mkdir -p "$cache"
    partial="$cache/.partial-$$.tar"  # mmdebstrap picks the format from the extension
    # a killed run leaves no half-written tarball for the next one to import
    trap 'rm -f "$partial"' EXIT
    trap 'exit 130' INT TERM
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$partial"
    mv "$partial" "$tarball"
fi
"$container" import "$tarball" "$tag" >/dev/null
echo "$tag (from $tarball)"
