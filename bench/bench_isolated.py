"""Image tower speed with each model alone in a fresh process, as a user runs it.

    python bench/bench_isolated.py [--batch 4] [--iters 5] [--rounds 3] [--threads N] [--json out.json]

`bench.py` times every variant in one process, interleaved. That is fair to a noisy machine but not to the
CPU allocator: transformers' tower allocates a fresh buffer for every BatchNorm and SiLU output, and with
several models resident glibc returns more of those buffers to the OS between calls, so each call
page-faults its memory back in and transformers slows down more than align_torch does. Here one checkpoint
(random align-base weights with calibrated BatchNorm statistics, saved once in the Hugging Face layout) is
loaded by each side's own `from_pretrained` in its own subprocess; the sides alternate for `--rounds`
rounds, and each side's best call over all rounds counts. `--keep-memory` runs the workers with glibc told
never to give memory back (`MALLOC_MMAP_MAX_=0`, `MALLOC_TRIM_THRESHOLD_` huge), which takes page faults
out of both sides and leaves the arithmetic; `--huge-pages` sets PyTorch's `THP_MEM_ALLOC_ENABLE=1`, which
backs large tensors with 2 MiB pages (512 times fewer faults). A benchmark: no test asserts these times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> what the worker runs
SIDES = {
    "transformers": "transformers AlignModel.get_image_features, fp32",
    "align_torch": "align_torch encode_image, fp32, unfused",
    "align_torch fused": "align_torch encode_image after fuse_for_inference(), fp32",
}


def worker(side: str, checkpoint: Path, batch: int, iters: int) -> dict[str, object]:
    """Load one side from `checkpoint`, time `iters` calls on a photo-like batch; seconds per call."""
    from tests.helpers.hf_reference import smooth_images

    pixels = smooth_images(batch, 289)  # (B, 3, 289, 289)
    if side == "transformers":
        from transformers import AlignModel as HFAlignModel

        model = HFAlignModel.from_pretrained(checkpoint).eval()

        def run() -> torch.Tensor:
            out = model.get_image_features(pixel_values=pixels)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    else:
        from align_torch import AlignModel
        from align_torch.inference.fast import fuse_for_inference

        model = AlignModel.from_pretrained(checkpoint).eval()
        if side == "align_torch fused":
            fuse_for_inference(model)

        def run() -> torch.Tensor:
            return model.encode_image(pixels)

    times, faults = [], []
    with torch.inference_mode():
        first = run()  # warm-up: oneDNN builds its kernels and reorders weights on the first call
        for _ in range(iters):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"times": times, "page_faults": faults, "embedding": first[:, :8].tolist()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--iters", type=int, default=5, help="timed calls per process")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per side, alternating")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep-memory", action="store_true", help="workers keep freed memory (no page faults)")
    p.add_argument(
        "--huge-pages",
        action="store_true",
        help="workers allocate large tensors on transparent huge pages (THP_MEM_ALLOC_ENABLE=1)",
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--worker", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("batch", "iters", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.checkpoint, args.batch, args.iters)))
        return 0

    from tests.helpers.hf_reference import hf_align_model

    times: dict[str, list[float]] = {side: [] for side in SIDES}
    faults: dict[str, list[int]] = {side: [] for side in SIDES}
    embeddings: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "align-base-random"
        hf_align_model(seed=0).save_pretrained(checkpoint)
        for r in range(args.rounds):
            for side in SIDES:
                cmd = [sys.executable, __file__, "--worker", side, "--checkpoint", str(checkpoint)]
                cmd += ["--batch", str(args.batch), "--iters", str(args.iters)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                env = dict(os.environ)
                if args.keep_memory:
                    env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**62))
                if args.huge_pages:
                    env.update(THP_MEM_ALLOC_ENABLE="1")
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    sys.stderr.write(out.stderr)
                    raise SystemExit(f"worker {side!r} failed with exit code {out.returncode}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                times[side] += result["times"]
                faults[side] += result["page_faults"]
                embeddings[side] = result["embedding"]
                print(
                    f"  round {r + 1}: {side} best {min(result['times']) / args.batch * 1e3:.0f} ms/image",
                    file=sys.stderr,
                    flush=True,
                )

    ref = torch.tensor(embeddings["transformers"])
    base_best, base_median = min(times["transformers"]), statistics.median(times["transformers"])
    rows = []
    for side, what in SIDES.items():
        best, median = min(times[side]), statistics.median(times[side])
        diff = (torch.tensor(embeddings[side]) - ref).abs().max().item() / ref.abs().max().item()
        rows.append(
            {
                "side": side,
                "what": what,
                "best_ms_per_image": best / args.batch * 1e3,
                "median_ms_per_image": median / args.batch * 1e3,
                "ratio_best": base_best / best,
                "ratio_median": base_median / median,
                "max_rel_diff_first8": diff,
                "page_faults_per_call": statistics.median(faults[side]),
            }
        )
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    memory = "glibc keeps freed memory" if args.keep_memory else "default allocator"
    memory += ", huge pages" if args.huge_pages else ""
    print(f"{machine}; batch {args.batch}, {args.rounds} processes x {args.iters} calls per side; {memory}")
    print(
        "| side | best ms/image | median ms/image | vs transformers (best) | vs transformers (median) | page faults/call |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['side']} | {row['best_ms_per_image']:.0f} | {row['median_ms_per_image']:.0f} | "
            f"{row['ratio_best']:.2f}x | {row['ratio_median']:.2f}x | {row['page_faults_per_call']:,.0f} |"
        )
    if args.json is not None:
        from align_torch.util.fileio import atomic_file

        with atomic_file(args.json) as tmp_file:
            record = {"machine": machine, "batch": args.batch, "memory": memory, "rows": rows}
            tmp_file.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
