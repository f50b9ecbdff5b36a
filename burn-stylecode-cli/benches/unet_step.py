"""PyTorch twin of unet_step.rs: one full-size SD1.5 UNet step (diffusers,
random weights, batch 2, 4x64x64, 77x768 context) on the CPU, plain or with
a control module of the release's shape (mid + up blocks of a second UNet
and 13 per-pixel mixing layers), or one full-size VAE decode (diffusers'
AutoencoderKL with SD1.5's config, a 4x64x64 latent -> 512x512). Prints one
JSON line like the Rust bench.

    python unet_step.py [plain|styled|vae] [REPEATS] [LATENT]
"""

import json
import resource
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

mode = sys.argv[1] if len(sys.argv) > 1 else "plain"
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
latent = int(sys.argv[3]) if len(sys.argv) > 3 else 64
torch.manual_seed(0)
torch.set_grad_enabled(False)


if mode == "vae":
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).eval()
    latents = torch.randn(1, 4, 64, 64)
unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()
sample = torch.randn(2, 4, latent, latent)
context = torch.randn(2, 77, 768)
t = torch.tensor([500.0])

if mode == "styled":
    ctrl = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, use_linear_projection=True).eval()
    del ctrl.down_blocks, ctrl.conv_in, ctrl.conv_out, ctrl.conv_norm_out, ctrl.time_embedding
    widths = [1280] + [1280] * 3 + [1280] * 3 + [640] * 3 + [320] * 3
    mixers = [torch.nn.Linear(2 * c, 2 * c) for c in widths]
    style = torch.randn(2, 1280, (latent + 7) // 8, (latent + 7) // 8)


def sub_blocks(blocks):
    out = []
    for b in blocks:
        attns = getattr(b, "attentions", None) or []
        for i, r in enumerate(b.resnets):
            out.append([r] + ([attns[i]] if i < len(attns) else []))
        if getattr(b, "upsamplers", None):
            out[-1].extend(b.upsamplers)
        if getattr(b, "downsamplers", None):
            out.append(list(b.downsamplers))
    return out


def run_sub(mods, x, temb, ctx):
    for m in mods:
        name = type(m).__name__
        if name == "ResnetBlock2D":
            x = m(x, temb)
        elif name == "Transformer2DModel":
            x = m(x, ctx).sample
        else:
            x = m(x)
    return x


def mix(linear, h_ctrl, h_base, s=0.9):
    b, c, h, w = h_ctrl.shape
    y = linear(torch.cat([h_ctrl, h_base], 1).view(b, 2 * c, h * w).permute(0, 2, 1))
    y = y.permute(0, 2, 1).reshape(b, 2 * c, h, w)
    h_ctrl, out = y.chunk(2, 1)
    return h_ctrl, h_base * (1 - s) + out * s


def styled_step():
    temb = unet.time_embedding(unet.time_proj(t.expand(2)))
    h = unet.conv_in(sample)
    skips = [h]
    for sb in sub_blocks(unet.down_blocks):
        h = run_sub(sb, h, temb, context)
        skips.append(h)
    h = unet.mid_block(h, temb, encoder_hidden_states=context)
    hc = ctrl.mid_block(style, temb, encoder_hidden_states=context)
    hc, h = mix(mixers[0], hc, h)
    for sb_base, sb_ctrl, mixer in zip(sub_blocks(unet.up_blocks), sub_blocks(ctrl.up_blocks), mixers[1:]):
        skip = skips.pop()
        hc = run_sub(sb_ctrl, torch.cat([hc, torch.zeros_like(skip)], 1), temb, context)
        h = run_sub(sb_base, torch.cat([h, skip], 1), temb, context)
        hc, h = mix(mixer, hc, h)
    return unet.conv_out(torch.nn.functional.silu(unet.conv_norm_out(h)))


def step():
    if mode == "vae":
        return vae.decode(latents).sample
    if mode == "styled":
        return styled_step()
    return unet(sample, t, context).sample


step()
times = []
for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
times.sort()
print(json.dumps({
    "impl": "pytorch",
    "backend": "cpu",
    "mode": mode,
    "latent": latent,
    "threads": torch.get_num_threads(),
    "seconds_per_step": times[len(times) // 2],
    "all_seconds": times,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
