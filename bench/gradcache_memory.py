"""Peak memory of one training step, plain or micro-batched (GradCache), as the batch grows.

Each measurement runs in a fresh process: on the CPU the figure is the peak RSS during the step minus the RSS
just before it (model, optimiser-free, and the input batch already in memory); on CUDA it is
torch.cuda.max_memory_allocated during the step minus the allocation before it.

    python bench/gradcache_memory.py                       # tiny preset, CPU, B = 64 256 1024, M = 8
    python bench/gradcache_memory.py --preset base --device cuda --batch 256 1024 4096 --micro 64 --bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(preset: str, batch: int, micro: int | None, device: str, bf16: bool, checkpointing: bool) -> float:
    """MiB that one step adds on top of the model and its input batch."""
    import torch

    from align_torch import AlignModel
    from align_torch.model.config import align_base, align_tiny
    from align_torch.train.data import Batch
    from align_torch.train.gradcache import gradcache_backward
    from align_torch.train.modes import prepare_model
    from align_torch.train.trainer import forward_loss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = {"tiny": align_tiny, "base": align_base}[preset]()
    model = AlignModel(cfg).to(device).train()
    prepare_model(model, freeze_bn=True, grad_checkpointing=checkpointing)
    size = cfg.vision.image_size
    ids = torch.randint(1, cfg.text.vocab_size, (batch, 64), device=device)
    pixels = torch.randn(batch, 3, size, size, device=device)
    data = Batch(pixels, ids, torch.ones_like(ids), torch.zeros_like(ids), [])
    precision = "bf16" if bf16 else "fp32"
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mb()
    if micro is None:
        forward_loss(model, data, model.temperature, 0.1, precision).backward()
    else:
        gradcache_backward(model, data, model.temperature, 0.1, micro, precision)
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20 - before
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def run_isolated(preset: str, batch: int, micro: int | None, device: str = "cpu", **flags: bool) -> float:
    """`measure` in a fresh process, so earlier steps' peaks do not hide this one's."""
    args = json.dumps([preset, batch, micro, device, flags.get("bf16", False), flags.get("checkpointing", False)])
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import gradcache_memory as g; "
    code += f"print(g.measure(*json.loads({args!r})))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("tiny", "base"), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--skip-plain", action="store_true", help="only the micro-batched step")
    args = p.parse_args()
    flags = {"bf16": args.bf16, "checkpointing": args.checkpointing}
    print(f"preset {args.preset}, {args.device}, MiB added by one step (fresh process each)")
    print(f"| batch | plain | micro-batched (M={args.micro}) |")
    print("|---|---|---|")
    for batch in args.batch:
        plain = "-" if args.skip_plain else f"{run_isolated(args.preset, batch, None, args.device, **flags):.0f}"
        micro = run_isolated(args.preset, batch, args.micro, args.device, **flags)
        print(f"| {batch} | {plain} | {micro:.0f} |", flush=True)


if __name__ == "__main__":
    main()
