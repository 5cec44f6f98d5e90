#!/usr/bin/env bash
# Times ssmlab against the PyTorch peers side by side, alternating A, B, A, B (ROUNDS rounds),
# for the three compared cases: the BiGS reference step, DiffuSSM training and DiffuSSM
# sampling. Compare the best of each side as a ratio, never an absolute time.
#
#   PEERS=../shared/peers PYTHON=~/.peer-venv/bin/python scripts/peer-ab.sh
#
# The peers' venv: python3 -m venv ~/.peer-venv && ~/.peer-venv/bin/pip install torch numpy
set -euo pipefail
cd "$(dirname "$0")/.."
S="$PWD/target/release/ssmlab"
PEERS="$(cd "${PEERS:-../shared/peers}" && pwd)"
PYTHON="${PYTHON:-$HOME/.peer-venv/bin/python}"
ROUNDS="${ROUNDS:-2}"
[ -x "$S" ] || { echo "peer-ab: build first (cargo build --release)" >&2; exit 1; }
[ -x "$PYTHON" ] || { echo "peer-ab: no python at $PYTHON (set PYTHON)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$PEERS"/*.py "$work"/
for _ in $(seq "$ROUNDS"); do
  (cd "$work" && "$PYTHON" diffussm_torch.py bench --image-size 28 --channels 1 --patch 4 --M 1 \
      --d-model 128 --layers 4 --num-ssm 32 --ssm-channels 128 --mlp-ratio 2 --batch 32 --steps 10 \
      --sample-n 16 --ddim-steps 50 --cfg-scale 2.0 --threads 2) |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"peer   diffussm train {d['train']['images_per_s']:.1f} img/s  sample {d['sample']['total_s']:.2f} s  rss {d['peak_rss_mb']} MB\")"
  "$S" --threads 2 bench diffussm 2>/dev/null |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"ssmlab diffussm train {d['train_images_per_s']:.1f} img/s  sample {d['sample_s']:.2f} s\")"
  (cd "$work" && "$PYTHON" bigs_torch.py bench --d-model 256 --layers 4 --seq-len 128 --batch 16 \
      --steps 10 --threads 2 --gather-masked) |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"peer   bigs {d['tokens_per_s']:.0f} tok/s  rss {d.get('peak_rss_mb')} MB\")"
  "$S" --threads 2 bench --json --only "reference L=128 head=masked" 2>/dev/null |
    grep '"case":"reference L=128 head=masked"' |
    python3 -c "import json,sys; d=json.loads(sys.stdin.readline()); print(f\"ssmlab bigs {d['tokens_per_s']:.0f} tok/s  rss {d['peak_rss_mib']:.0f} MiB\")"
done
