"""Seed inputs for the fuzz targets (fuzz/harness.rs), run by hand from the
repository root before a first `cargo fuzz run`:

    ~/venvs/stylecode/bin/python fuzz/make_seeds.py

Writes small valid (and a few nearly valid) files under fuzz/corpus/NAME/;
the fuzzer grows the corpus from them and `cargo fuzz cmin` shrinks it back
to what covers new code before it is committed.
"""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from safetensors.numpy import save as save_numpy

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def out(target: str, name: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def pickles() -> None:
    for name in ["malicious_in_state_dict.bin", "malicious_top_level.bin"]:
        out("pickle_bin", name, (ROOT / "tests/fixtures/import" / name).read_bytes())
    torch.manual_seed(0)
    for name, obj in {
        "controlnet_dict.bin": {"controlnet": {"sref_autoencoder.proj.weight": torch.randn(2, 3).half()}},
        "flat_dict.bin": {"sref_autoencoder.a": torch.zeros(3), "other": torch.arange(4)},
        "views.bin": {"state_dict": {"a": (s := torch.randn(4, 4))[1:], "b": s.t()}},
        "scalars.bin": {"a": torch.tensor(1.5, dtype=torch.bfloat16), "n": 3, "s": "text"},
    }.items():
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        out("pickle_bin", name, buffer.getvalue())


def safetensors_files() -> None:
    rng = np.random.default_rng(0)
    out("safetensors", "f32.safetensors", save_numpy({"w": rng.standard_normal((4, 3)).astype(np.float32)}))
    out("safetensors", "mixed.safetensors", save_numpy({
        "h": rng.standard_normal((2, 2)).astype(np.float16),
        "i": np.arange(6, dtype=np.int64).reshape(3, 2),
        "e": np.zeros((0, 4), np.float32),
        "s": np.array(2.0, np.float32),
    }, metadata={"format": "pt"}))
    bf16 = save_numpy({"b": np.zeros((2, 2), np.float16)}).replace(b'"F16"', b'"BF16"')
    out("safetensors", "bf16.safetensors", bf16)
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}).encode()
    out("safetensors", "overlapping.safetensors", len(header).to_bytes(8, "little") + header + bytes(8))


def pngs() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("stylecode", "AAAAAAAAAAAAAAAAAAAAA")
    info.add_text("prompt", "a cat", zip=True)
    info.add_itxt("negative", "blurry \u00e9", lang="en", tkey="neg")
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (10, 20, 30)).save(buffer, "PNG", pnginfo=info)
    out("png_text", "text_chunks.png", buffer.getvalue())
    buffer = io.BytesIO()
    Image.new("L", (3, 1)).save(buffer, "PNG")
    out("png_text", "no_text.png", buffer.getvalue())


def manifests() -> None:
    lines = [
        {"image": "a.png", "prompt": "a cat"},
        {"style": "s.jpg", "target": "t.png", "prompt": ""},
        {"image": "", "prompt": "x"},
    ]
    out("manifest", "pairs.jsonl", ("\n".join(json.dumps(l) for l in lines) + "\n\n{not json\n").encode())
    out("manifest", "one.jsonl", b'{"image": "../../x.png", "prompt": "p", "extra": 1}')


if __name__ == "__main__":
    for target in ["pickle_bin", "safetensors", "png_text", "manifest"]:
        shutil.rmtree(CORPUS / target, ignore_errors=True)
    pickles()
    safetensors_files()
    pngs()
    manifests()
    for target in sorted(p.name for p in CORPUS.iterdir()):
        print(target, len(list((CORPUS / target).iterdir())), "seeds")
