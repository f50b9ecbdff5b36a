#!/usr/bin/env bash
# Full-size SD1.5 UNet step: burn-flex, burn-wgpu and PyTorch on this machine,
# plain and with the style control module, one process per configuration.
#   PYTHON=/path/to/venv/bin/python bash burn-stylecode-cli/benches/unet_step.sh [REPEATS]
# wgpu needs a Vulkan driver (on a CPU-only Linux box: mesa-vulkan-drivers).
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=${1:-3}
python=${PYTHON:-python3}
cargo build --release -p burn-stylecode-cli --features wgpu --bench unet_step >&2
bench=$(ls -t target/release/deps/unet_step-* | grep -v '\.d$' | head -1)
for mode in plain styled; do
  "$python" burn-stylecode-cli/benches/unet_step.py "$mode" "$repeats"
  "$bench" cpu "$mode" "$repeats"
  "$bench" wgpu "$mode" "$repeats" || echo "{\"impl\": \"burn\", \"backend\": \"wgpu\", \"mode\": \"$mode\", \"error\": \"failed\"}"
done
