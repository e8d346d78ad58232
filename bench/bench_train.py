"""Fine-tuning step: align_torch against transformers' AlignModel, same random align-base weights, same batch.

    python bench/bench_train.py [--device cpu|cuda] [--batch-size N] [--image-size PX] [--steps N]
                                [--precision fp32|bf16] [--variants ...] [--json out.json]

One training step = forward both towers, ALIGN's loss, backward, AdamW step. Each variant runs in its own
subprocess so its peak memory is its own: on CUDA torch.cuda.max_memory_allocated (above the weights and
optimiser state already resident), on the CPU the process's peak resident set (ru_maxrss) during the
first step minus the resident set before it (so it includes gradients and AdamW state, alike for all). Variants: align_torch, align_torch with gradient checkpointing (both
towers), transformers, transformers with gradient_checkpointing_enable() (its text tower only; its vision
tower has no checkpointing). Reports pairs/s (best of --steps after one warm-up step) and the ratios to
transformers. A benchmark: no test asserts these numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package and tests.helpers (randomised transformers models, processor files)

VARIANTS = ("align_torch", "align_torch+ckpt", "transformers", "transformers+ckpt")


def _models():
    """(transformers model, align_torch model) with identical random align-base weights. The towers take
    any image size, so one align-base config serves every --image-size."""
    from align_torch import AlignModel
    from align_torch.checkpoint.hf_keys import config_from_hf, hf_to_native
    from align_torch.checkpoint.weights import load_state_dict
    from tests.helpers.hf_reference import hf_align_model

    hf = hf_align_model(seed=0)
    native = AlignModel(config_from_hf(hf.config.to_dict()))
    load_state_dict(native, hf_to_native(hf.state_dict()), strict=True)
    return hf, native


def _worker(args: argparse.Namespace) -> dict:
    """Run one variant and return its figures (called in a subprocess)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    hf, native = _models()
    is_hf = args.worker.startswith("transformers")
    model = hf if is_hf else native
    del hf, native  # only the benchmarked model stays resident
    if args.worker.endswith("+ckpt"):
        if is_hf:
            model.gradient_checkpointing_enable()
        else:
            model.set_grad_checkpointing(True)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(1)
    batch = dict(
        input_ids=torch.randint(1000, 30000, (args.batch_size, 64), generator=g).to(device),
        attention_mask=torch.ones(args.batch_size, 64, dtype=torch.long, device=device),
        pixel_values=torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(device),
    )

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(**batch, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    gc.collect()
    rss_before = psutil.Process().memory_info().rss
    step()  # warm-up, also the CPU memory measurement: gradients, AdamW state and activations
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before  # KiB -> bytes
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:
        peak = rss_peak / 2**30
    return {"variant": args.worker, "pairs_per_s": args.batch_size / min(times), "peak_gib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int, default=289)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batch_size = args.batch_size or (64 if args.device.startswith("cuda") else 8)
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    results = []
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--worker", variant, "--device", args.device]
        cmd += ["--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]
        cmd += ["--steps", str(args.steps), "--precision", args.precision]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
        out = proc.stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
    base = {r["variant"]: r for r in results}
    print(f"train step, align-base at {args.image_size} px, batch {args.batch_size}, {args.precision}, {card}")
    print(f"{'variant':<20} {'pairs/s':>9} {'vs hf':>7} {'peak GiB':>9} {'vs hf':>7}")
    for r in results:
        ref = base.get("transformers")
        speed = f"{r['pairs_per_s'] / ref['pairs_per_s']:.2f}x" if ref else "-"
        mem = f"{r['peak_gib'] / ref['peak_gib']:.2f}x" if ref and ref["peak_gib"] > 0 else "-"
        print(f"{r['variant']:<20} {r['pairs_per_s']:>9.2f} {speed:>7} {r['peak_gib']:>9.2f} {mem:>7}")
    if args.json:
        meta = {k: getattr(args, k) for k in ("device", "batch_size", "image_size", "steps", "precision")}
        Path(args.json).write_text(json.dumps({**meta, "device_name": card, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
