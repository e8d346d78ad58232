"""`align-torch embed` end to end (decode + resize in DataLoader workers + model) against the model alone on
the same images already preprocessed, and the decode rate of one core; random weights, one process.

    python bench/bench_embed.py [--preset align-base|align-tiny] [--images 64] [--size 640x480]
                                [--workers 2] [--batch-size 16] [--device cpu|cuda]

End to end is `retrieval.embed_folder.embed_to_folder` writing a real embeddings folder (float16, one
partition per `--batch-size * 4` images), so it includes the npy/parquet writes. On a GPU the model runs
under bf16 autocast in both measurements. A benchmark: no test asserts these times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package and tests.helpers (randomised transformers models, processor files)

from align_torch import AlignModel, AlignProcessor  # noqa: E402
from align_torch.data import list_images, load_image  # noqa: E402
from align_torch.inference.fast import fuse_for_inference  # noqa: E402
from align_torch.model.config import preset  # noqa: E402
from align_torch.retrieval.embed_folder import embed_to_folder  # noqa: E402
from align_torch.retrieval.partitions import plan_input  # noqa: E402
from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR, write_checkpoint  # noqa: E402


def write_images(folder: Path, n: int, size: tuple[int, int]) -> None:
    """n JPEGs (quality 90) of smooth colour fields with noise: photo-like decode cost, all different."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        a, b, c = rng.uniform(0.002, 0.02, 3)
        base = np.stack([np.sin(xx * a + i), np.cos(yy * b + 2 * i), np.sin((xx + yy) * c)], -1) * 100 + 128
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        PIL.Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="align-base")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", default="640x480", help="generated JPEG size WxH")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    size = tuple(int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        write_images(tmp / "images", args.images, size)
        cfg = preset(args.preset)
        side = cfg.vision.image_size
        resize = round(side * 346 / 289)  # align-base's resize-then-crop ratio
        model_dir = tmp / "model"
        torch.manual_seed(0)
        AlignModel(cfg).save_pretrained(model_dir)
        pre = {**ALIGN_BASE_PREPROCESSOR, "size": {"height": resize, "width": resize}}
        write_checkpoint(model_dir, {**pre, "crop_size": {"height": side, "width": side}})
        processor = AlignProcessor.from_pretrained(model_dir)
        model = fuse_for_inference(AlignModel.from_pretrained(model_dir, device=device))
        files = list_images(tmp / "images")

        # Decode + resize + crop in this process only: the rate one DataLoader worker (one core) sustains.
        start = time.perf_counter()
        pixels = torch.stack([torch.from_numpy(processor.image_processor.preprocess_one(load_image(f))) for f in files])
        decode = len(files) / (time.perf_counter() - start)

        # The model alone on the same preprocessed images (a warm-up batch first).
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        with torch.no_grad(), autocast:
            model.encode_image(pixels[: args.batch_size].to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(pixels), args.batch_size):
                model.encode_image(pixels[i : i + args.batch_size].to(device), normalize=True).float().cpu()
            model_only = len(pixels) / (time.perf_counter() - start)

        plan = plan_input([tmp / "images"], partition_size=args.batch_size * 4)
        start = time.perf_counter()
        summary = embed_to_folder(
            model,
            processor.image_processor,
            processor.tokenizer,
            plan,
            tmp / "out",
            model_name=str(model_dir),
            batch_size=args.batch_size,
            workers=args.workers,
        )
        end_to_end = summary.rows / (time.perf_counter() - start)

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.preset,
        "images": args.images,
        "jpeg_size": args.size,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "decode_resize_per_core_images_per_s": round(decode, 1),
        "model_alone_images_per_s": round(model_only, 2),
        "embed_end_to_end_images_per_s": round(end_to_end, 2),
        "end_to_end_over_model_alone": round(end_to_end / model_only, 3),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
