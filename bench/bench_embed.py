"""`align-torch embed` end to end (decode + resize in DataLoader workers + model) against the model alone on
the same images already preprocessed, and the decode rate of one core; random weights, one process.

    python bench/bench_embed.py [--preset align-base|align-tiny] [--images 64] [--size 640x480]
                                [--workers 2] [--batch-size 16] [--device cpu|cuda]
    python bench/bench_embed.py --against-transformers [--preset align-base|align-tiny] [--images 64]
                                [--batch-size 16] [--no-towers]

The second form is what a user sees on the CPU: `align-torch embed PHOTOS --out DIR` with its defaults, with
each backend and with `--draft-decode`, against transformers' `get_image_features` through its own image
processor on the same real photos (skimage's, as JPEG), at align-base size with random weights (the starter
model), in one process; images/s as the command reports it (the model loaded, the ONNX graph already cached by a
first run), and the defaults' seconds per stage (`--profile`). Then, in the same run, bench_export.py's table of
every backend and precision of both towers (transformers, eager, fused, ONNX Runtime fp32, int8 where it keeps
0.99 cosine; text padded and packed). `--preset align-tiny` checks the script in a minute.

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


def write_photos(folder: Path, n: int) -> None:
    """n JPEGs (quality 90) of the 17 real photos (skimage), mirrored on every second round: each file different."""
    from tests.helpers.export_data import photos

    base = photos(17)
    for i in range(n):
        image = base[i % 17]
        if (i // 17) % 2:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(folder / f"{i:05d}.jpg", quality=90)


def command_rate(argv: list[str], show: bool = False) -> float:
    """`align-torch embed ARGV`, in this process: the images/s it reports (model loaded, files to folder); `show`
    prints what it said (its --profile lines)."""
    import contextlib
    import io
    import re

    from align_torch.cli import main as cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = cli(argv)
    if status != 0:
        raise SystemExit(f"embed failed: {err.getvalue()}")
    if show:
        print(f"align-torch {' '.join(argv[:1] + argv[2:])}:\n{err.getvalue()}", file=sys.stderr)
    return float(re.search(r"([0-9.]+) images/s", err.getvalue()).group(1))


def transformers_rate(model_dir: Path, files: list[Path], batch_size: int) -> float:
    """transformers' get_image_features on the same files through its own image processor: images/s."""
    import transformers

    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    model = transformers.AlignModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        model.get_image_features(**processor(images=[load_image(files[0])], return_tensors="pt"))  # warm-up
        start = time.perf_counter()
        for i in range(0, len(files), batch_size):
            images = [PIL.Image.open(f).convert("RGB") for f in files[i : i + batch_size]]
            model.get_image_features(**processor(images=images, return_tensors="pt"))
    return len(files) / (time.perf_counter() - start)


def command_against_transformers(args: argparse.Namespace, tmp: Path) -> dict:
    """`embed` with its defaults (each backend, auto, draft decoding) against transformers, one process."""
    from align_torch.inference.convert import convert
    from align_torch.train.starter import write_starter_checkpoint

    # The starter model (the paper's initialisation): tests.helpers' randomised BatchNorm statistics make real
    # photos blow its activations up to 1e4, where any two float paths (fused eager, ONNX Runtime) part by 0.02 in
    # cosine, and the ONNX backend's first-batch check rightly refuses the graph.
    model_dir = convert(write_starter_checkpoint(tmp / "starter", args.preset), tmp / "hf", to="hf")
    (tmp / "photos").mkdir()
    write_photos(tmp / "photos", args.images)
    files = list_images(tmp / "photos")
    os.environ["ALIGN_TORCH_CACHE"] = str(tmp / "cache")
    common = ["embed", str(tmp / "photos"), "--model", str(model_dir), "--device", "cpu", "--quiet"]
    rates = {"transformers get_image_features": transformers_rate(model_dir, files, args.batch_size)}
    command_rate([*common, "--out", str(tmp / "warm"), "--backend", "onnxruntime"])  # exports and caches the graph
    rates["embed (defaults)"] = command_rate([*common, "--out", str(tmp / "defaults"), "--profile"], show=True)
    for backend in ("auto", "torch", "onnxruntime"):
        rates[f"embed --backend {backend}"] = command_rate([*common, "--out", str(tmp / backend), "--backend", backend])
    rates["embed --draft-decode"] = command_rate([*common, "--out", str(tmp / "draft"), "--draft-decode"])
    base = rates["transformers get_image_features"]
    return {name: {"images_per_s": round(r, 2), "over_transformers": round(r / base, 2)} for name, r in rates.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="align-base", help="align-base, or align-tiny to check the script quickly")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", default="640x480", help="generated JPEG size WxH")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--against-transformers",
        action="store_true",
        help="instead: `embed` as a user runs it (defaults, each backend) against transformers' get_image_features "
        "on the same real photos, on the CPU; then bench_export.py's table of both towers",
    )
    p.add_argument(
        "--towers", action=argparse.BooleanOptionalAction, default=True, help="with --against-transformers: the table"
    )
    args = p.parse_args()
    if args.against_transformers:
        with tempfile.TemporaryDirectory() as tmp:
            figures = command_against_transformers(args, Path(tmp))
        machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        print(json.dumps({"machine": machine, "load_average": os.getloadavg()[0], **figures}, indent=2), flush=True)
        if args.towers:
            from bench_export import main as towers

            towers(["--preset", "tiny" if args.preset == "align-tiny" else "align-base", "--no-compile"])
        return
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
            source=str(model_dir),
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
