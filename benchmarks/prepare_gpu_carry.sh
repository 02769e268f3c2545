#!/usr/bin/env bash
# Downloads, on this machine, the wheels that the borrowed GPU machine lacks
# to run benchmarks/gpu_check.py on Keras's JAX backend: Keras and its
# dependencies, for Python 3.12 on x86_64 Linux, into gpu_carry/ (git-ignored;
# the device tool carries at most 64 MiB of ignored paths). The GPU machine
# has Python 3.12, JAX with CUDA, numpy, h5py, rich, ml-dtypes and absl-py,
# no TensorFlow, no Keras and no network; there, pip installs from the folder
# only what is missing (the dependencies it has are kept):
#
#   benchmarks/prepare_gpu_carry.sh            # here, with network
#   # then, on the device (the run tool, carry=["gpu_carry"]):
#   python -m pip install -q --no-index --find-links gpu_carry keras \
#     && python benchmarks/gpu_check.py
#
# Usage: benchmarks/prepare_gpu_carry.sh [KERAS_VERSION]
# KERAS_VERSION defaults to the Keras of the Python running pip here (the one
# the tests ran with).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
version="${1:-$("$python" -c 'import importlib.metadata as m; print(m.version("keras"))')}"
carry=gpu_carry
rm -rf "$carry"
mkdir -p "$carry"
"$python" -m pip download --quiet --dest "$carry" \
  --only-binary=:all: --implementation cp --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any \
  "keras==$version"
size=$(du -sm "$carry" | cut -f1)
ls -1 "$carry"
echo "$carry: ${size} MiB"
if [ "$size" -ge 64 ]; then
  echo "error: $carry is ${size} MiB; the device tool carries at most 64 MiB" >&2
  exit 1
fi
