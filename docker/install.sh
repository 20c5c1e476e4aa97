#!/bin/sh
# Run by the images' builder stages: sparsetrt (from the sources in the working directory) and the packages of
# requirements file $1 at the versions of constraints.txt, into the active virtual environment. From /wheels only
# when it holds wheels (hermetic: no index is asked, nothing is built), else from the package index.
set -eu

requirements="$1"
if ls /wheels/*.whl >/dev/null 2>&1; then
    echo "installing from the wheelhouse only ($(find /wheels -name "*.whl" | wc -l) wheels)"
    set -- --no-index --find-links /wheels
else
    echo "no wheelhouse in docker/wheels: installing from the package index"
    set --
fi
pip install "$@" --constraint constraints.txt --requirement "$requirements" "setuptools>=77" wheel
# only the requirements above: the package's full dependency list would bring torch and the whole toolchain
pip install "$@" --no-deps --no-build-isolation .
# the final stage copies this environment: leave no installer or build tools in it
pip uninstall --quiet --yes setuptools wheel pip
