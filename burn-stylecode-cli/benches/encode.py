"""PyTorch twin of `stylecode encode --format official IMAGE --weights DIR`,
timed as a whole process by `cargo xtask bench`: the release's pipeline
(`get_image_embeds`, then `make_stylecode`) on the CPU, without the UNet its
demo also loads: SiglipImageProcessor, SiglipVisionModel's hidden_states[-2],
the release's AttentionAutoencoder.encode and encode_to_base64 (6 bits a
value). Prints the code, which should equal stylecode's.

    STYLECODES_RELEASE=~/stylecodes-release python encode.py WEIGHTS IMAGE
"""

import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import SiglipImageProcessor, SiglipVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "fixtures"))
from release import release_module  # noqa: E402

weights, image_path = Path(sys.argv[1]), sys.argv[2]
torch.set_grad_enabled(False)
processor = SiglipImageProcessor.from_pretrained(weights / "siglip")
vision = SiglipVisionModel.from_pretrained(weights / "siglip").eval()
autoencoder = release_module("controlnet.attention_autoencoder").AttentionAutoencoder().eval()
prefix = "sref_autoencoder."
state = load_file(str(weights / "stylecodes" / "stylecodes.safetensors"))
autoencoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)

image = Image.open(image_path).convert("RGB")
pixels = processor(images=image, return_tensors="pt").pixel_values
hidden = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
latent = autoencoder.encode(hidden)[0].numpy()
print(autoencoder.encode_to_base64(latent, 6))
