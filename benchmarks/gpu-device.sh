#!/bin/sh
# The prepared GPU run of `make bench-gpu`, for a machine where nothing can be installed (the lent H200: its
# image has torch with cuSPARSELt, transformers and nvidia-ml-py, no network). The package goes on PYTHONPATH the
# way pyproject.toml's package-dir maps its folders, and the image's python3 runs it from the repository root:
#   sh benchmarks/gpu-device.sh OUT_DIR [bench gpu options]
# Without a CUDA GPU it stops at the CUDA check with the reason (exit 2): that is the rehearsal on a CPU machine.
set -eu
out=${1:?usage: gpu-device.sh OUT_DIR [bench gpu options]}
shift
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
mkdir "$site/sparsetrt"
cp -R sparsetrt/. "$site/sparsetrt/"
for room in calibration prune export build runtime; do
    ln -s "$PWD/$room" "$site/sparsetrt/$room"
done
PYTHONPATH="$site" PYTHONUNBUFFERED=1 python3 -m sparsetrt.cli bench gpu --out "$out" "$@"
