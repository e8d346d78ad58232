"""What `embed --draft-decode` changes: pixels, embeddings and decode time against the exact decode, on real photos.

    python bench/draft_decode.py [--model starter|DIR] [--scale 3]

The photos are skimage's 17 and matplotlib's grace_hopper.jpg, saved as JPEG (quality 90) at their own size and
enlarged `--scale` times (a camera's photo is far larger than the model's 346-pixel resize; draft mode only
acts on a JPEG at least twice that size). For each: the scale PIL's draft mode decoded at, the largest and mean
difference of the resized uint8 pixels (0-255), the cosine between the two embeddings, and the decode+preprocess
time of both. `starter` is align-base's starter model (random weights, BatchNorm calibrated); DIR any model
folder. A measurement: nothing asserts these figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package and tests.helpers

from align_torch.data import load_image  # noqa: E402
from align_torch.inference.embed import encode_image_batch  # noqa: E402
from align_torch.inference.loader import load_for_inference  # noqa: E402


def real_photos(folder: Path, scale: int) -> list[Path]:
    """skimage's photos and grace_hopper.jpg as JPEG files, at their size and `scale` times it."""
    import matplotlib

    from tests.helpers.export_data import photos

    images = {f"skimage{i:02d}": im for i, im in enumerate(photos(17))}
    images["grace_hopper"] = PIL.Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    paths = []
    for name, image in images.items():
        image = image.convert("RGB")
        for s in (1, scale):
            big = image.resize((image.width * s, image.height * s), PIL.Image.Resampling.LANCZOS) if s > 1 else image
            paths.append(folder / f"{name}_x{s}.jpg")
            big.save(paths[-1], quality=90)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="starter")
    p.add_argument("--scale", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model
        if args.model == "starter":
            from align_torch.train.starter import write_starter_checkpoint

            model_dir = write_starter_checkpoint(tmp / "starter", "align-base")
        model, processor = load_for_inference(model_dir, "cpu")
        ip = processor.image_processor
        draft = (ip.size[1], ip.size[0])
        (tmp / "photos").mkdir()
        rows, cosines = [], {1: [], args.scale: []}
        for path in real_photos(tmp / "photos", args.scale):
            timed = {}
            for name, size in (("exact", None), ("draft", draft)):
                start = time.perf_counter()
                image = load_image(path, draft=size)
                resized = ip.resize_one(image)  # (3, H, W) uint8
                pixels = torch.from_numpy(ip.normalize_one(resized))[None]  # (1, 3, H, W)
                timed[name] = (time.perf_counter() - start, image.size, resized.astype(np.int16), pixels)
            diff = np.abs(timed["exact"][2] - timed["draft"][2])
            e, d = (encode_image_batch(model, timed[k][3]) for k in ("exact", "draft"))
            cos = float((e * d).sum())
            s = args.scale if path.stem.endswith(f"x{args.scale}") else 1
            cosines[s].append(cos)
            rows.append(
                f"{path.stem:20s} {str(timed['exact'][1]):12s} -> {str(timed['draft'][1]):12s} "
                f"max {int(diff.max()):3d} mean {diff.mean():6.3f}  cosine {cos:.6f}  "
                f"{timed['exact'][0] * 1000:6.1f} ms -> {timed['draft'][0] * 1000:6.1f} ms"
            )
        print(f"model {args.model}; file size -> decoded size, resized pixel difference (0-255), embedding cosine")
        print("\n".join(rows))
        for s, c in cosines.items():
            print(f"x{s}: lowest cosine {min(c):.6f}, mean {np.mean(c):.6f}")


if __name__ == "__main__":
    main()
