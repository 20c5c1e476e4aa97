#!/bin/sh
# Download the wheels the images install into docker/wheels (hermetic, air-gapped image builds):
#   docker/wheelhouse.sh [PYTHON]      PYTHON: the interpreter whose pip (and its index settings) downloads them
set -eu

python="${1:-python3}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"

# tensorrt-rtx-cu12 is published as a source distribution (a shim over its -libs and -bindings wheels): built
# into a wheel here, so nothing is built inside an image
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$here/wheels" --constraint "$root/constraints.txt" tensorrt-rtx-cu12
# one pip run: the two images' requirements resolve together against the versions `make setup` was verified with
"$python" -m pip download --quiet --only-binary=:all: --dest "$here/wheels" --find-links "$here/wheels" \
    --constraint "$root/constraints.txt" \
    --requirement "$here/requirements-cpu.txt" --requirement "$here/requirements-build.txt" \
    "setuptools>=77" wheel
echo "wheelhouse: $(find "$here/wheels" -name '*.whl' | wc -l) wheels in $here/wheels"
