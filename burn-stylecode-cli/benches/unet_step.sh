#!/usr/bin/env bash
# Full-size SD1.5 on this machine, burn against PyTorch in the same run: the
# UNet step plain and with the style control module, and the VAE decode; one
# process per configuration (its own peak memory), then a table of medians,
# minimums and ratios.
#   PYTHON=/path/to/venv/bin/python bash burn-stylecode-cli/benches/unet_step.sh [REPEATS]
# Equal threads: both sides use every core unless RAYON_NUM_THREADS and
# OMP_NUM_THREADS say otherwise (set both). BACKENDS="cpu wgpu" adds wgpu
# (needs a Vulkan driver; on a CPU-only Linux box: mesa-vulkan-drivers).
set -euo pipefail
cd "$(dirname "$0")/../.."
repeats=${1:-5}
python=${PYTHON:-python3}
backends=${BACKENDS:-cpu}
features=""
[[ " $backends " == *" wgpu "* ]] && features="--features wgpu"
# shellcheck disable=SC2086
cargo build --release -p burn-stylecode-cli $features --bench unet_step >&2
bench=$(ls -t target/release/deps/unet_step-* | grep -v '\.d$' | head -1)
results=$(mktemp)
trap 'rm -f "$results"' EXIT
# plain:8: an 8×8-latent step, to see the cost follow the FLOPs (1/64 of 64×64's).
for work in plain:64 styled:64 vae:64 plain:8; do
  mode=${work%:*} latent=${work#*:}
  "$python" burn-stylecode-cli/benches/unet_step.py "$mode" "$repeats" "$latent" | tee -a "$results"
  for backend in $backends; do
    "$bench" "$backend" "$mode" "$repeats" "$latent" | tee -a "$results" ||
      echo "{\"impl\": \"burn\", \"backend\": \"$backend\", \"mode\": \"$mode\", \"latent\": $latent, \"error\": \"failed\"}" | tee -a "$results"
  done
done
"$python" - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
key = lambda r: f"{r['mode']} {r.get('latent', 64)}²"
torch = {key(r): r for r in rows if r["impl"] == "pytorch"}
print(f"\n{'work':<10} {'impl':<12} {'median s':>9} {'min s':>8} {'ratio':>6} {'peak MiB':>9} {'mem ratio':>9}")
for r in rows:
    if "error" in r:
        print(f"{r['mode']:<10} burn-{r['backend']:<7} failed")
        continue
    name = "pytorch" if r["impl"] == "pytorch" else f"burn-{r['backend']}"
    t = torch[key(r)]
    low = r.get("min_seconds", min(r["all_seconds"]))
    print(f"{key(r):<10} {name:<12} {r['seconds_per_step']:>9.2f} {low:>8.2f} "
          f"{r['seconds_per_step'] / t['seconds_per_step']:>6.2f} {r['peak_rss_mib']:>9.0f} "
          f"{r['peak_rss_mib'] / t['peak_rss_mib']:>9.2f}")
PY
