"""PyTorch twin of `stylecode generate --prompt P --steps 20 --seed 1 -o OUT
--weights DIR` (512x512, DDIM, classifier-free guidance 7.5), timed as a
whole process by `cargo xtask bench`: diffusers' StableDiffusionPipeline on
the CPU over the same sd15/ folder.

    python generate.py WEIGHTS PROMPT STEPS OUT.png
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

sd15 = Path(sys.argv[1]) / "sd15"
prompt, steps, out = sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.set_grad_enabled(False)
pipe = StableDiffusionPipeline(
    vae=AutoencoderKL.from_pretrained(sd15 / "vae"),
    text_encoder=CLIPTextModel.from_pretrained(sd15 / "text_encoder"),
    tokenizer=CLIPTokenizer.from_pretrained(sd15 / "tokenizer"),
    unet=UNet2DConditionModel.from_pretrained(sd15 / "unet"),
    scheduler=DDIMScheduler.from_pretrained(sd15 / "scheduler"),
    safety_checker=None,
    feature_extractor=None,
    requires_safety_checker=False,
)
pipe.set_progress_bar_config(disable=True)
image = pipe(
    prompt,
    num_inference_steps=steps,
    guidance_scale=7.5,
    height=512,
    width=512,
    generator=torch.Generator().manual_seed(1),
).images[0]
image.save(out)
