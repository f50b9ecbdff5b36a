"""A full-size weights folder of random weights for the whole-process rows of
`cargo xtask bench` (encode, generate), written in each model's upstream
format so that `stylecode` and the PyTorch twins (encode.py, generate.py)
read the same files:

- siglip/      transformers' SiglipVisionModel at google/siglip-base-patch16-224's
               shape (its default config) and SiglipImageProcessor, save_pretrained;
- stylecodes/  the release's AttentionAutoencoder at its full default size,
               under the checkpoint's key names (sref_autoencoder.*), and
               config.json {"version": "1"};
- sd15/        diffusers' SD1.5 UNet and VAE, transformers' CLIP ViT-L/14 text
               encoder (save_pretrained), the real CLIP BPE vocabulary
               (tests/fixtures/tokenizer), SD1.5's scheduler config.

Weights come from each library's own initialisation (seeded), so activations
stay finite through a whole generation.

    STYLECODES_RELEASE=~/stylecodes-release python make_weights.py OUT [encode|generate]...
"""

import gzip
import json
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
from release import release_module  # noqa: E402

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1) + "\n")


def make_encode_models(out: Path) -> None:
    torch.manual_seed(1)
    SiglipVisionModel(SiglipVisionConfig()).eval().save_pretrained(out / "siglip", safe_serialization=True)
    SiglipImageProcessor().save_pretrained(out / "siglip")
    torch.manual_seed(2)
    autoencoder = release_module("controlnet.attention_autoencoder").AttentionAutoencoder().eval()
    tensors = {f"sref_autoencoder.{k}": v.contiguous() for k, v in autoencoder.state_dict().items()}
    (out / "stylecodes").mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "stylecodes" / "stylecodes.safetensors"))
    write_json(out / "stylecodes" / "config.json", {"version": "1"})


def bytes_to_unicode() -> dict:
    """CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer(folder: Path) -> None:
    """SD1.5's tokenizer folder from CLIP's BPE file (49,408 tokens), as CLIP builds it."""
    lines = gzip.open(REPO / "tests" / "fixtures" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz").read()
    merges = [tuple(line.split()) for line in lines.decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(vocab) == 49408, len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    write_json(folder / "special_tokens_map.json", special)
    write_json(folder / "tokenizer_config.json", {**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})


def make_sd15(out: Path) -> None:
    sd15 = out / "sd15"
    torch.manual_seed(3)
    UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64).eval().save_pretrained(sd15 / "unet")
    torch.manual_seed(4)
    AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).eval().save_pretrained(sd15 / "vae")
    torch.manual_seed(5)
    clip = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
    )
    CLIPTextModel(clip).eval().save_pretrained(sd15 / "text_encoder", safe_serialization=True)
    write_tokenizer(sd15 / "tokenizer")
    write_json(
        sd15 / "scheduler" / "scheduler_config.json",
        {
            "_class_name": "PNDMScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": False,
            "num_train_timesteps": 1000,
            "prediction_type": "epsilon",
            "set_alpha_to_one": False,
            "skip_prk_steps": True,
            "steps_offset": 1,
        },
    )


def main() -> None:
    out = Path(sys.argv[1])
    parts = sys.argv[2:] or ["encode", "generate"]
    if "encode" in parts:
        make_encode_models(out)
    if "generate" in parts:
        make_sd15(out)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
