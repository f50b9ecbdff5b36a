"""PyTorch twin of train_step.rs: one full-size training step with random
weights on the CPU. The frozen diffusers SD1.5 UNet, the release's own
AttentionAutoencoder (official shape) and the release's StyleCodesModel
wiring (tests/fixtures/style_twin.py, checked against the release by
make_pipeline_fixtures.py), the straight-through quantiser, the ε-MSE,
global-norm clipping and torch.optim.AdamW. Prints one JSON line like the
Rust bench.

    STYLECODES_RELEASE=~/stylecodes-release python train_step.py [RESOLUTION] [BATCH] [REPEATS]
"""

import json
import resource
import sys
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "fixtures"))
from release import release_module  # noqa: E402
from style_twin import TinyStyleCodes  # noqa: E402

resolution = int(sys.argv[1]) if len(sys.argv) > 1 else 256
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
torch.manual_seed(0)

base = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
base.requires_grad_(False)
autoencoder = release_module("controlnet.attention_autoencoder").AttentionAutoencoder()
control = TinyStyleCodes(base, heads=8)
trainable = list(autoencoder.parameters()) + list(control.parameters())
optim = torch.optim.AdamW(trainable, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)

betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
alphas_cumprod = torch.cumprod(1.0 - betas, 0).to(torch.float32)
LEVELS, SNAP = 63.0, 1e-4


def straight_through(x):
    q = torch.floor(((x + 1.0) * (LEVELS / 2.0) + SNAP).clamp(0.0, LEVELS)) * (2.0 / LEVELS) - 1.0
    return x + (q - x).detach()


side = resolution // 8
features = torch.randn(batch, 196, 768)
context = torch.randn(batch, 77, 768)
mean, logvar = torch.randn(batch, 4, side, side), torch.randn(batch, 4, side, side) * 0.1 - 2.0
posterior_noise, noise = torch.randn(batch, 4, side, side), torch.randn(batch, 4, side, side)
timesteps = torch.tensor([100 + 700 * k // max(batch, 2) for k in range(batch)])


def step():
    optim.zero_grad(set_to_none=True)
    with torch.no_grad():
        z0 = (mean + torch.exp(0.5 * logvar) * posterior_noise) * 0.18215
        abar = alphas_cumprod[timesteps].view(batch, 1, 1, 1)
        noisy = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
    code = straight_through(autoencoder.encode(features))
    predicted = control(base, autoencoder, noisy, timesteps.to(torch.float32), context, code, 1.0)
    loss = torch.mean((predicted.float() - noise) ** 2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optim.step()
    return loss.item()


step()  # warm-up
times, losses = [], []
for _ in range(repeats):
    start = time.perf_counter()
    losses.append(step())
    times.append(time.perf_counter() - start)
times.sort()
print(json.dumps({
    "impl": "pytorch",
    "backend": "cpu",
    "threads": torch.get_num_threads(),
    "resolution": resolution,
    "batch": batch,
    "seconds_per_step": times[len(times) // 2],
    "min_seconds": times[0],
    "all_seconds": times,
    "losses": losses,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
