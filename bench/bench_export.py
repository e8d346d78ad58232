"""Deployed towers against transformers' AlignModel on the CPU: eager, fused, compiled, ONNX Runtime fp32 and int8.

The int8 image graph is ONNX Runtime's static quantization calibrated on the 17 photos (quantize.py), and it is
timed only when it keeps a mean cosine of 0.99 to fp32 there; otherwise the report gives the refusal's figure.

    python bench/bench_export.py [--preset align-base|tiny] [--batch-images 4] [--batch-texts 32] [--iters 3]
                                 [--no-compile] [--json out.json]

The same random align-base weights on both sides (bench.py's models), in one process. Reports images/s and
texts/s (captions of real lengths padded to 64, as the processor pads) for each way of running a tower, as
a ratio to transformers fp32 and with the largest difference from its output; then the int8 graphs' quality
against the fp32 graphs: mean and lowest cosine on 17 real photos (skimage) and 300 held-out captions, zero-shot
top-1 agreement on the photos, and the overlap of each caption's 10 nearest captions. With random weights the
quality figures bound what int8 rounding does to these towers, not what it does to trained ones.
A benchmark: no test asserts these times.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from align_torch import AlignProcessor  # noqa: E402
from align_torch.inference.export import export_towers  # noqa: E402
from align_torch.inference.fast import fuse_for_inference  # noqa: E402
from align_torch.inference.towers import tower  # noqa: E402
from bench import (  # noqa: E402  (bench.py puts the package and tests/ on the path)
    CAPTION_LENGTHS,
    Result,
    Variant,
    _features,
    build_models,
    compare,
    describe,
    make_texts,
    run_group,
    table,
)

LABELS = "astronaut cat coffee rocket galaxy cells retina man bricks grass gravel coins moon page text horse".split()


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_fn(session, feeds: dict) -> callable:
    feeds = {k: v.numpy() for k, v in feeds.items()}
    return lambda: torch.from_numpy(session.run(None, feeds)[0])


def processor_for(preset: str, folder: Path) -> AlignProcessor:
    """The tests' vocabulary and align-base's (or the tiny) image settings, written as a checkpoint folder's files."""
    from tests.helpers.checkpoints import TINY_PREPROCESSOR
    from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR, write_checkpoint

    write_checkpoint(folder, TINY_PREPROCESSOR if preset == "tiny" else ALIGN_BASE_PREPROCESSOR)
    return AlignProcessor.from_pretrained(folder)


def speed(hf, ours, processor, exported: Path, args) -> list[Result]:
    from tests.helpers.hf_reference import smooth_images

    fused = fuse_for_inference(copy.deepcopy(ours))
    results = []
    pixels = smooth_images(args.batch_images, ours.config.vision.image_size)
    image = [
        Variant("transformers fp32", lambda: _features(hf.get_image_features(pixel_values=pixels)), True),
        Variant("align_torch eager (unfused)", lambda: ours.encode_image(pixels)),
        Variant("align_torch fused", lambda: fused.encode_image(pixels)),
    ]
    if args.compile:
        image_c = torch.compile(tower(fused, "image"), fullgraph=True, options={"freezing": True})
        image.append(Variant("align_torch fused + compile(fullgraph)", lambda: image_c(pixels)))
    image.append(Variant("ONNX Runtime fp32", ort_fn(ort_session(exported / "image.onnx"), {"pixel_values": pixels})))
    if (exported / "image.int8.onnx").exists():  # written only when it kept 0.99 mean cosine on the photos
        q_image = ort_fn(ort_session(exported / "image.int8.onnx"), {"pixel_values": pixels})
        image.append(Variant("ONNX Runtime int8 (static, calibrated)", q_image))
    batch = make_texts(args.batch_texts, ours.config.text.vocab_size, full=False, device=torch.device("cpu"))
    text = [
        Variant("transformers fp32", lambda: _features(hf.get_text_features(**batch)), True),
        Variant("align_torch eager (unfused)", lambda: ours.encode_text(**batch)),
        Variant("align_torch fused (packed)", lambda: fused.encode_text(**batch)),
    ]
    if args.compile:
        text_c = torch.compile(tower(fused, "text"), fullgraph=True)
        text.append(Variant("align_torch compile(fullgraph), padded", lambda: text_c(*batch.values())))
    text += [
        Variant("ONNX Runtime fp32, padded", ort_fn(ort_session(exported / "text.onnx"), batch)),
        Variant("ONNX Runtime int8, padded", ort_fn(ort_session(exported / "text.int8.onnx"), batch)),
    ]
    for group, variants, n in (
        ("image", image, args.batch_images),
        ("text captions padded to 64", text, args.batch_texts),
    ):
        r, outs = run_group(group, variants, n, args.iters, torch.device("cpu"))
        compare(r, outs, variants)
        print(table(r), file=sys.stderr, flush=True)
        results += r
    return results


def int8_quality(processor: AlignProcessor, exported: Path) -> dict[str, float]:
    """The int8 graphs against the fp32 graphs on real photos and held-out captions."""
    from tests.helpers.export_data import captions, photos

    def run(name: str, feeds: dict) -> torch.Tensor:
        return F.normalize(torch.from_numpy(ort_session(exported / name).run(None, feeds)[0]), dim=-1)

    pixels = {"pixel_values": processor(images=photos(17))["pixel_values"].numpy()}
    corpus = dict(processor.tokenizer(captions(300, seed=11), padding=True, truncation=True, return_tensors="np"))
    prompts = dict(processor.tokenizer([f"a photo of a {x}." for x in LABELS], padding=True, return_tensors="np"))
    img32 = run("image.onnx", pixels)  # (17, P)
    img8 = run("image.int8.onnx", pixels) if (exported / "image.int8.onnx").exists() else img32
    txt32, txt8 = run("text.onnx", dict(corpus)), run("text.int8.onnx", dict(corpus))  # (300, P)
    lab32, lab8 = run("text.onnx", dict(prompts)), run("text.int8.onnx", dict(prompts))  # (16, P)
    image_cos = (img32 * img8).sum(-1)
    text_cos = (txt32 * txt8).sum(-1)
    top1_agree = ((img32 @ lab32.T).argmax(-1) == (img8 @ lab8.T).argmax(-1)).float().mean()
    near32 = (txt32 @ txt32.T).fill_diagonal_(-2).topk(10).indices
    near8 = (txt8 @ txt8.T).fill_diagonal_(-2).topk(10).indices
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(near32, near8, strict=True)) / near32.numel()
    return {
        "image_int8": "written" if (exported / "image.int8.onnx").exists() else "refused (below 0.99 mean cosine)",
        "image_mean_cosine": float(image_cos.mean()),
        "image_min_cosine": float(image_cos.min()),
        "text_mean_cosine": float(text_cos.mean()),
        "text_min_cosine": float(text_cos.min()),
        "zero_shot_top1_agreement": float(top1_agree),
        "caption_top10_overlap": overlap,
    }


def export_all(ours, processor: AlignProcessor, exported: Path, tmp: Path, preset: str) -> tuple[dict, str | None]:
    """Both towers in fp32, the text tower in int8, and the image tower in int8 calibrated on the 17 photos when
    it keeps 0.99 mean cosine (else the refusal, with its figure), all in the folder `exported`."""
    from align_torch.inference.quantize import Int8Refused
    from tests.helpers.export_data import photos

    meta = export_towers(ours, processor.tokenizer, exported, model_id=f"random {preset}")
    text = export_towers(ours, processor.tokenizer, tmp / "text8", towers=["text"], int8=True)
    (tmp / "text8" / "text.int8.onnx").rename(exported / "text.int8.onnx")
    meta["text.int8"] = text["text.int8"]
    calibration = processor(images=photos(17))["pixel_values"]
    try:
        image = export_towers(ours, None, tmp / "image8", towers=["image"], int8=True, calibration=calibration)
    except Int8Refused as e:
        return meta, str(e)
    (tmp / "image8" / "image.int8.onnx").rename(exported / "image.int8.onnx")
    meta["image.int8"] = image["image.int8"]
    return meta, None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="align-base", choices=["align-base", "tiny"])
    p.add_argument("--batch-images", type=int, default=4)
    p.add_argument("--batch-texts", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    t0 = time.time()
    hf, ours = build_models(args.preset, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        processor = processor_for(args.preset, Path(tmp) / "processor")
        exported = Path(tmp) / "exported"
        meta, refused = export_all(ours, processor, exported, Path(tmp), args.preset)
        export_s = time.time() - t0
        print(f"models built and exported in {export_s:.0f} s", file=sys.stderr, flush=True)
        results = speed(hf, ours, processor, exported, args)
        quality = int8_quality(processor, exported)
        sizes = {p.name: p.stat().st_size for p in exported.iterdir() if p.suffix == ".onnx"}
    report = {
        "device": describe(torch.device("cpu")),
        "torch": torch.__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "caption_lengths": list(CAPTION_LENGTHS),
        "export_parity_max_abs": {k: v["parity"]["max_abs"] for k, v in meta.items()},
        "onnx_bytes": sizes,
        "int8_quality": quality,
        "int8_image_refused": refused,
        "results": [r.__dict__ for r in results],
    }
    print(f"\n{report['device']}, torch {report['torch']}")
    print(table(results))
    keys = ("export_parity_max_abs", "onnx_bytes", "int8_quality", "int8_image_refused")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
