#!/usr/bin/env bash
# Fetch the peers as wheels for a machine without network whose python already holds
# torch (e.g. a GPU box with Python 3.12): run this where pip reaches PyPI, copy
# benchmarks/build/wheels along (build/ is gitignored), and there run
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site benchmarks/build/wheels/*.whl
#   PYTHONPATH=/tmp/site BENCH_PYTHON=python3 bash benchmarks/run.sh --device cuda
#
# Only what such an image usually lacks is fetched (numpy, einops, numba, scipy, toolz,
# cloudpickle, fsspec, pyyaml, packaging are assumed there). PYVER=3.12 by default.
set -euo pipefail
DEST="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/build/wheels"
PYVER="${PYVER:-3.12}"
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" \
  qlty==1.5.0 monai==1.6.1 zarr==3.1.6 donfig numcodecs google-crc32c dask distributed partd locket \
  mrcfile tblib zict sortedcontainers
ls "$DEST"
