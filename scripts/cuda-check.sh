#!/usr/bin/env bash
# Compile-checks the `cuda` feature on a machine without a GPU (and without a CUDA toolkit):
# nvcc, the CUDA runtime headers and CCCL come from NVIDIA's PyPI wheels in a venv, and
# `CUDA_COMPUTE_CAP` stands in for the GPU that nvcc would otherwise query.
#
#   scripts/cuda-check.sh                  # venv in ~/.cache/ssmlab-cuda-venv, target/cuda-check
#   CUDA_VENV=/tmp/v scripts/cuda-check.sh
#
# Why `check` and not `build`: cudarc links against libcuda, which only a GPU machine's driver
# has; the link and the run happen in scripts/gpu-check.sh on a GPU machine.
# The 13.4 wheels are pinned: cudarc 0.19 (candle 0.11.1) knows CUDA up to 13.4 and panics on
# newer toolkits ("Unsupported cuda toolkit version"). Nearly all of the time (about 10 minutes
# on 2 cores) is nvcc compiling candle's kernels on one core, so the venv and the target
# directory are kept between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CUDA_VENV:-$HOME/.cache/ssmlab-cuda-venv}"
CUDA_WHEEL_VERSION="${CUDA_WHEEL_VERSION:-13.4.92}"
# CCCL (cub, thrust, libcu++) is versioned on its own; its newest wheel serves CUDA 13.x.
CCCL_WHEEL_VERSION="${CCCL_WHEEL_VERSION:-13.3.5.0.6}"
start=$(date +%s)
# Exit status: 0 the check passed, 1 it failed (a compile error), 3 the toolchain could not be
# installed (no python3 venv, or the wheels could not be downloaded): .ci/run warns on 3.
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" || { echo "cuda-check: cannot create a venv at $VENV" >&2; exit 3; }
fi
# The compiler's parts come in separate wheels (nvcc, cicc in nvidia-nvvm, headers in
# nvidia-cuda-crt); unpinned, pip pulls the newest of the dependencies, and a 13.5 cicc emits
# PTX that the 13.4 ptxas rejects ("Unsupported .version 9.5"). Every part is pinned.
pins=(
  "nvidia-cuda-nvcc==$CUDA_WHEEL_VERSION"
  "nvidia-nvvm==$CUDA_WHEEL_VERSION"
  "nvidia-cuda-crt==$CUDA_WHEEL_VERSION"
  "nvidia-cuda-runtime==$CUDA_WHEEL_VERSION"
  "nvidia-cuda-cccl==$CCCL_WHEEL_VERSION"
)
marker="$VENV/.ssmlab-cuda-pins"
if [ "$(cat "$marker" 2>/dev/null)" != "${pins[*]}" ]; then
  "$VENV/bin/pip" install -q "${pins[@]}" ||
    { echo "cuda-check: could not install ${pins[*]}" >&2; exit 3; }
  echo "${pins[*]}" > "$marker"
fi
site=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))')
root=""
for cand in "$site/nvidia/cu13" "$site/nvidia/cuda_nvcc"; do
  if [ -x "$cand/bin/nvcc" ]; then root="$cand"; break; fi
done
if [ -z "$root" ]; then
  echo "cuda-check: no nvcc under $site/nvidia (the nvidia-cuda-nvcc wheel's layout changed?)" >&2
  exit 1
fi
export CUDA_HOME="$root" CUDA_PATH="$root" CUDA_ROOT="$root"
export PATH="$root/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# The include folder must hold cuda_runtime.h and CCCL (cuda/std, cub, thrust).
export CPATH="$root/include${CPATH:+:$CPATH}"
nvcc --version | tail -n 2
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda-check}" \
  cargo check --release --features cuda --all-targets
echo "cuda-check: cargo check --release --features cuda passed in $(( $(date +%s) - start )) s"
