"""How far two float32 runs of the same image tower may part on real photos: the bound under any backend check.

    python bench/tower_conditioning.py [--model starter|test] [--images 4] [--size 289]

Runs the unfused PyTorch image tower of a random align-base model on real photos (skimage's) in float32 and
in float64, and in float32 again on the same pixels laid out contiguously (the processor returns them
channels-last strided), and prints per image the cosine between the pooled outputs, then per block the lowest
cosine of float32 to float64. When PyTorch's own float32 runs already part by more than the ONNX backend's
first-batch check allows (cosine 0.99999), a graph refused by that check on these weights is no evidence of a
wrong export: the model, not the backend, is ill-conditioned on that photo. `starter` is the starter model
(the paper's initialisation, BatchNorm calibrated on generated images); `test` is tests.helpers' randomised
transformers model. A diagnostic: nothing asserts these figures.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package and tests.helpers

from align_torch import AlignModel  # noqa: E402
from align_torch.train.starter import starter_model, starter_processor  # noqa: E402
from tests.helpers.export_data import photos  # noqa: E402


def cosine(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-sample cosine in float64 (F.cosine_similarity's eps would swamp a tiny-valued random tower)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).tolist()


def load(which: str) -> AlignModel:
    if which == "starter":
        return starter_model("align-base")
    from tests.helpers.checkpoints import write_hf_checkpoint
    from tests.helpers.hf_reference import hf_align_model

    folder = write_hf_checkpoint(Path(tempfile.mkdtemp()), hf_align_model(seed=0), fmt="bin")
    return AlignModel.from_pretrained(folder).eval()


def block_outputs(vision: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(pooled (B, C), each block's output) of one run."""
    seen: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda _m, _a, out: seen.append(out.double())) for b in vision.blocks]
    try:
        with torch.no_grad():
            pooled = vision(pixels).pooler_output
    finally:
        for h in handles:
            h.remove()
    return pooled, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("starter", "test"), default="starter")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=289)
    args = parser.parse_args()
    vision = load(args.model).vision_model.eval()
    pixels = starter_processor(args.size, 64)(images=photos(args.images), return_tensors="pt")["pixel_values"]
    pooled32, blocks32 = block_outputs(vision, pixels)
    pooled64, blocks64 = block_outputs(copy.deepcopy(vision).double(), pixels.double())
    with torch.no_grad():
        contiguous = vision(pixels.contiguous()).pooler_output
    print("pooled, float32 vs float64:            ", [f"{c:.6f}" for c in cosine(pooled32, pooled64)])
    print("pooled, float32 vs float32 contiguous: ", [f"{c:.6f}" for c in cosine(pooled32, contiguous)])
    for i, (a, b) in enumerate(zip(blocks32, blocks64, strict=True)):
        print(f"block {i:2d}: lowest cosine {min(cosine(a, b)):.6f}, largest value {float(b.abs().max()):.3g}")


if __name__ == "__main__":
    main()
