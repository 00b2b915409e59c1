#!/usr/bin/env bash
# Builds Horovod 0.28.1 (CPU: gloo + PyTorch, no MPI/TF/MXNet) against the torch installed in
# the active environment, and caches the wheel; prints the wheel's path.
#
# Why a script: Horovod's last release (2023) is sdist-only and does not build against
# torch >= 2.1 as published. It needs C++17 in BOTH its top-level and torch CMakeLists
# (mixing 14 and 17 fails to link gloo), cmake < 4 and --no-build-isolation. The wheel is
# tied to the torch version, so the cache key includes it. ~8 minutes on 2 cores.
#
# GPU clusters: set HOROVOD_GPU_OPERATIONS=NCCL (and have CUDA + NCCL) before running.
set -euo pipefail
python_bin="${PYTHON:-python}"
cache="${SPARKREC_WHEEL_CACHE:-$HOME/.cache/sparkrec/wheels}"
torch_version="$("$python_bin" -c 'import torch; print(torch.__version__.split("+")[0])')"
dest="$cache/horovod-0.28.1-torch$torch_version"
if ls "$dest"/horovod-0.28.1-*.whl >/dev/null 2>&1; then
  ls "$dest"/horovod-0.28.1-*.whl | head -n 1
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python_bin" -m pip install -q "cmake<4" wheel packaging pyyaml psutil cloudpickle >&2
"$python_bin" -m pip download -q --no-deps --no-binary :all: horovod==0.28.1 -d "$work" >&2
tar xzf "$work"/horovod-0.28.1.tar.gz -C "$work"
src="$work/horovod-0.28.1"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
mkdir -p "$dest"
(
  cd "$src"
  export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
         HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
         MAKEFLAGS="-j${HOROVOD_BUILD_JOBS:-$(nproc)}"
  "$python_bin" -m pip wheel -q --no-build-isolation --no-deps . -w "$dest" >&2
)
ls "$dest"/horovod-0.28.1-*.whl | head -n 1
