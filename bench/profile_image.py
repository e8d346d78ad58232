"""Where the image tower's time goes, by kind of layer, before and after `fuse_for_inference`.

    python bench/profile_image.py [--batch N] [--iters N] [--threads N] [--json out.json]

Times every module of align-base's EfficientNet-B7 tower with forward hooks (exact on the CPU, where ops run
synchronously; on CUDA use torch.profiler instead) and sums them by role: stem, 1x1 expand conv, depthwise
conv, squeeze-excite, 1x1 project conv, each BatchNorm and SiLU, and the rest of each block (the stride-2
padding and the residual add). Random weights: the time does not depend on their values. In a fused tower
the SiLUs after the stem, expand and depthwise convs run inside those convs, so their time counts there.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from align_torch import AlignModel  # noqa: E402
from align_torch.inference.fast import fuse_for_inference  # noqa: E402
from align_torch.model.efficientnet import MBConv  # noqa: E402

# module attribute name -> role in the table
ROLES = {
    "stem": "stem (conv, BN, SiLU)",
    "expand_conv": "1x1 expand conv",
    "expand_bn": "BatchNorm",
    "expand_act": "SiLU",
    "dw_conv": "depthwise conv",
    "dw_bn": "BatchNorm",
    "dw_act": "SiLU",
    "se": "squeeze-excite",
    "project_conv": "1x1 project conv",
    "project_bn": "BatchNorm",
}
REST = "pad + residual add"


def profile(tower: torch.nn.Module, pixels: torch.Tensor, iters: int) -> dict[str, float]:
    """Mean seconds per forward spent in each role (REST = block time not inside any timed child)."""
    spent: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}

    def pre(module: torch.nn.Module, _args: object) -> None:
        starts[id(module)] = time.perf_counter()

    def post(role: str):
        def hook(module: torch.nn.Module, _args: object, _out: object) -> None:
            spent[role] += time.perf_counter() - starts[id(module)]

        return hook

    handles = []
    for name, module in tower.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        role = ROLES.get(leaf) if name.count(".") <= 2 else None  # blocks.i.<leaf>, or "stem"
        if isinstance(module, MBConv):
            role = "block total"
        if role is not None:
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post(role))]
    with torch.inference_mode():
        tower(pixels)  # warm-up: oneDNN builds its kernels on the first call
        spent.clear()
        t = time.perf_counter()
        for _ in range(iters):
            tower(pixels)
        total = time.perf_counter() - t
    for h in handles:
        h.remove()
    children = sum(v for k, v in spent.items() if k not in ("block total", ROLES["stem"]))
    out = {k: v / iters for k, v in spent.items() if k != "block total"}
    out[REST] = (spent["block total"] - children) / iters
    out["pooling and the rest"] = total / iters - spent["block total"] / iters - out[ROLES["stem"]]
    out["total"] = total / iters
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AlignModel().eval()
    pixels = torch.randn(args.batch, 3, 289, 289)
    variants = {
        "unfused": model.vision_model,
        "fused (default: NCHW on the CPU)": fuse_for_inference(copy.deepcopy(model)).vision_model,
        "fused channels_last": fuse_for_inference(copy.deepcopy(model), channels_last=True).vision_model,
    }
    table = {name: profile(tower, pixels, args.iters) for name, tower in variants.items()}
    roles = list(dict.fromkeys(k for t in table.values() for k in t))
    print(f"ms per image, batch {args.batch}, {torch.get_num_threads()} threads")
    print("| role | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    for role in roles:
        cells = []
        for t in table.values():
            ms = 1000 * t.get(role, 0.0) / args.batch
            cells.append(f"{ms:.1f} ({100 * t.get(role, 0.0) / t['total']:.0f}%)")
        print(f"| {role} | " + " | ".join(cells) + " |")
    if args.json is not None:
        from align_torch.util.fileio import atomic_file

        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps({"batch": args.batch, "seconds_per_forward": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
