#!/usr/bin/env bash
# One full-size training step (random weights, 256², batch 1 by default):
# burn-flex and PyTorch on this machine's CPU, equal thread counts, one
# process each, one after the other. Needs a quiet machine.
#   STYLECODES_RELEASE=~/stylecodes-release PYTHON=/path/to/venv/bin/python \
#     bash burn-stylecode-cli/benches/train_step.sh [RESOLUTION] [BATCH] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/../.."
resolution=${1:-256} batch=${2:-1} repeats=${3:-5}
python=${PYTHON:-python3}
threads=${THREADS:-$(nproc)}
export OMP_NUM_THREADS=$threads RAYON_NUM_THREADS=$threads
cargo build --release -p burn-stylecode-cli --bench train_step >&2
bench=$(ls -t target/release/deps/train_step-* | grep -v '\.d$' | head -1)
"$python" burn-stylecode-cli/benches/train_step.py "$resolution" "$batch" "$repeats"
"$bench" cpu "$resolution" "$batch" "$repeats" f32
