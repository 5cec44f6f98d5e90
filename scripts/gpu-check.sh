#!/usr/bin/env bash
# Everything that needs a GPU, in one go: build with CUDA, run the parity tests, then the bench
# suite on the GPU (JSON lines in gpu-bench.jsonl, the table on stderr).
#
#   scripts/gpu-check.sh            # device cuda:0
#   DEVICE=cuda:1 scripts/gpu-check.sh
#
# Needs nvcc and a CUDA driver. Untested until a GPU machine runs it (see README, GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda:0}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
cargo build --release --features cuda
# Parity with the PyTorch reference (hidden states, logits, loss, every gradient) on the GPU,
# then the whole suite on the CPU of the CUDA build.
SSMLAB_TEST_DEVICE="$DEVICE" cargo test --release --features cuda -- bigs_tiny_matches_reference
cargo test --release --features cuda
./target/release/ssmlab bench --json --device "$DEVICE" | tee gpu-bench.jsonl
echo "wrote gpu-bench.jsonl"
