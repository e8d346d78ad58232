"""align_torch against transformers' AlignModel: the same random align-base weights, one process, one device.

    python bench/bench.py [--device cpu|cuda] [--batch-images N] [--batch-texts N] [--iters N]
                          [--train-batch N] [--bf16/--no-bf16] [--compile/--no-compile] [--skip-train]
                          [--preset align-base|tiny] [--json out.json]

Reports images/s of the image tower, texts/s of the text tower (all 64 tokens real, and real-length
captions padded to 64 as the processor pads by default), train-step pairs/s and (CUDA) peak memory, each as
a ratio to transformers, and every fast path's largest output difference from transformers' fp32 output.
Variants of one group run interleaved, one call each in turn, and the best of `--iters` calls counts, so
a noisy machine slows every variant alike. bf16 and compile default to on for CUDA and off for the CPU,
where bf16 has no fast kernels and inductor compiles for minutes. A benchmark: no test asserts these times.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package and tests.helpers (randomised transformers models, processor files)

from align_torch import AlignModel  # noqa: E402
from align_torch.checkpoint.hf_keys import config_from_hf, hf_to_native  # noqa: E402
from align_torch.checkpoint.weights import load_state_dict  # noqa: E402
from align_torch.inference.fast import fuse_for_inference, trim_padding  # noqa: E402

TEXT_TOKENS = 64  # align-base's tokenizer pads to 64
# Real caption lengths in tokens, [CLS] and [SEP] included (COCO-like captions of 6-22 words).
CAPTION_LENGTHS = (12, 14, 9, 17, 13, 11, 15, 24, 10, 16, 13, 19, 12, 8, 14, 21)


@dataclass
class Result:
    """One variant's figures. Ratios divide its throughput by the named transformers variant's."""

    group: str
    name: str
    items_per_s: float
    best_s: float
    median_s: float
    vs_transformers_fp32: float | None = None
    vs_transformers_best: float | None = None
    max_abs_diff: float | None = None  # against transformers fp32, on the same inputs
    max_rel_diff: float | None = None  # max_abs_diff / the largest reference value
    min_cosine: float | None = None
    peak_mem_gib: float | None = None  # CUDA only: above what was resident before (weights, other models)
    note: str = ""


@dataclass
class Variant:
    name: str
    fn: Callable[[], torch.Tensor]
    is_transformers: bool = False
    note: str = ""


# --- models and inputs --------------------------------------------------------------------------------
def build_models(preset: str, device: torch.device) -> tuple[torch.nn.Module, AlignModel]:
    """transformers' AlignModel with random weights and randomised BN/LN, and ours loaded from its state."""
    from tests.helpers.hf_reference import hf_align_model

    config = None
    if preset == "tiny":
        from tests.helpers.checkpoints import tiny_hf_config

        config = tiny_hf_config()
    # transformers' AlignModel supports only eager attention.
    hf = hf_align_model(seed=0, config=config, attn_implementation="eager")
    ours = AlignModel(config_from_hf(hf.config.to_dict())).eval()
    load_state_dict(ours, hf_to_native(hf.state_dict()))
    return hf.to(device), ours.to(device)


def make_texts(n: int, vocab: int, full: bool, device: torch.device) -> dict[str, torch.Tensor]:
    """`n` texts of 64 tokens: all real (`full`), or caption lengths padded with id 0 as the processor does."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (n, TEXT_TOKENS), generator=g)
    lengths = [TEXT_TOKENS] * n if full else [CAPTION_LENGTHS[i % len(CAPTION_LENGTHS)] for i in range(n)]
    mask = (torch.arange(TEXT_TOKENS)[None, :] < torch.tensor(lengths)[:, None]).long()  # (n, 64)
    ids[:, 0] = 101  # [CLS]
    ids[torch.arange(n), torch.tensor(lengths) - 1] = 102  # [SEP]
    ids = ids * mask
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {k: v.to(device) for k, v in batch.items()}


def _features(out: object) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features, 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# --- timing -------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def peak_gib(device: torch.device, base: int) -> float | None:
    """Peak CUDA memory above `base` bytes (what was resident before the variant ran), in GiB."""
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else None


def run_group(
    group: str, variants: list[Variant], n_items: int, iters: int, device: torch.device
) -> tuple[list[Result], dict[str, torch.Tensor]]:
    """Warm every variant up (compiles), then time them round-robin; returns results and first outputs."""
    outputs, peaks, times = {}, {}, {v.name: [] for v in variants}
    with torch.inference_mode():
        for v in variants:
            base = allocated(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            outputs[v.name] = v.fn().float().clone()
            sync(device)
            peaks[v.name] = peak_gib(device, base)
            print(f"  {group}: {v.name} ready", file=sys.stderr, flush=True)
        for _ in range(iters):
            for v in variants:
                sync(device)
                t = time.perf_counter()
                v.fn()
                sync(device)
                times[v.name].append(time.perf_counter() - t)
    results = [
        Result(
            group,
            v.name,
            items_per_s=n_items / min(times[v.name]),
            best_s=min(times[v.name]),
            median_s=statistics.median(times[v.name]),
            peak_mem_gib=peaks[v.name],
            note=v.note,
        )
        for v in variants
    ]
    return results, outputs


def compare(results: list[Result], outputs: dict[str, torch.Tensor], variants: list[Variant]) -> None:
    """Fill ratios and output differences against transformers' fp32 variant (the first one)."""
    hf_names = [v.name for v in variants if v.is_transformers]
    ref_name = hf_names[0]
    ref = outputs[ref_name]
    by_name = {r.name: r for r in results}
    best_hf = max(by_name[n].items_per_s for n in hf_names)
    for r in results:
        r.vs_transformers_fp32 = r.items_per_s / by_name[ref_name].items_per_s
        r.vs_transformers_best = r.items_per_s / best_hf
        out = outputs[r.name]
        if out.shape != ref.shape:
            continue  # another architecture (timm): speed only
        r.max_abs_diff = (out - ref).abs().max().item()
        r.max_rel_diff = r.max_abs_diff / ref.abs().max().item()
        r.min_cosine = F.cosine_similarity(out, ref, dim=-1).min().item()


def compiled(module: torch.nn.Module, args: argparse.Namespace, **kw: object) -> torch.nn.Module:
    return torch.compile(module, backend=args.compile_backend, **kw)


# --- the groups ---------------------------------------------------------------------------------------
def image_variants(hf, ours: AlignModel, args: argparse.Namespace, device: torch.device) -> list[Variant]:
    from tests.helpers.hf_reference import smooth_images

    # Photo-like pixels: white noise drives the randomly initialised towers far outside their BN statistics.
    pixels = smooth_images(args.batch_images, ours.config.vision.image_size).to(device)
    pixels_cl = pixels.contiguous(memory_format=torch.channels_last)
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16)
    hf_cl = copy.deepcopy(hf).to(memory_format=torch.channels_last)
    fused = fuse_for_inference(copy.deepcopy(ours))  # the default: NCHW on the CPU, channels_last on CUDA
    fused_cl = fuse_for_inference(copy.deepcopy(ours), channels_last=True)
    fused_plain = fuse_for_inference(copy.deepcopy(ours), onednn=False)
    v = [
        Variant("transformers fp32", lambda: _features(hf.get_image_features(pixel_values=pixels)), True),
        Variant(
            "transformers fp32 channels_last", lambda: _features(hf_cl.get_image_features(pixel_values=pixels_cl)), True
        ),
        Variant("align_torch fp32", lambda: ours.encode_image(pixels)),
        Variant("align_torch fused", lambda: fused.encode_image(pixels)),
        Variant("align_torch fused channels_last", lambda: fused_cl.encode_image(pixels)),
        Variant("align_torch fused, oneDNN off", lambda: fused_plain.encode_image(pixels)),
    ]
    if args.bf16:

        def hf_bf16(model, x):
            with bf16:
                return _features(model.get_image_features(pixel_values=x))

        def ours_bf16(model, x):
            with bf16:
                return model.encode_image(x)

        v += [
            Variant("transformers bf16", lambda: hf_bf16(hf, pixels), True),
            Variant("transformers bf16 channels_last", lambda: hf_bf16(hf_cl, pixels_cl), True),
            Variant("align_torch fused bf16", lambda: ours_bf16(fused_cl, pixels_cl)),
        ]
    if args.compile:
        dtype_ctx = bf16 if args.bf16 else nullcontext()
        # Freezing lets inductor treat the weights as constants: on the CPU it then prepacks them for oneDNN
        # and fuses conv + bias + activation; CPU inference without it leaves most of compile's gain behind.
        freeze = {"options": {"freezing": True}} if args.compile_backend == "inductor" else {}
        hf_vision = compiled(hf_cl.vision_model, args, **freeze)
        ours_vision = compiled(fused_cl.vision_model, args, fullgraph=True, **freeze)

        def hf_compiled():
            with dtype_ctx:
                return hf_vision(pixel_values=pixels_cl).pooler_output

        def ours_compiled():
            with dtype_ctx:
                return ours_vision(pixels_cl).pooler_output

        tag = "bf16 channels_last compile" if args.bf16 else "channels_last compile"
        v += [Variant(f"transformers {tag}", hf_compiled, True), Variant(f"align_torch fused {tag}", ours_compiled)]
        if device.type == "cuda":
            # CUDA graphs replay the whole tower as one launch: they pay when kernels are short.
            graphed = compiled(fused_cl.vision_model, args, fullgraph=True, mode="reduce-overhead")

            def ours_graphed():
                with dtype_ctx:
                    return graphed(pixels_cl).pooler_output.clone()

            v.append(Variant(f"align_torch fused {tag} cudagraphs", ours_graphed))
    v += timm_variants(pixels_cl, args, device)
    return v


def timm_variants(pixels_cl: torch.Tensor, args: argparse.Namespace, device: torch.device) -> list[Variant]:
    """timm's tf_efficientnet_b7 (a different padding, so a speed reference only), when timm is installed."""
    try:
        import timm
    except ImportError:
        print("  timm not installed: no timm reference", file=sys.stderr)
        return []
    model = timm.create_model("tf_efficientnet_b7", pretrained=False, num_classes=0).eval()
    model = model.to(device, memory_format=torch.channels_last)
    dtype_ctx = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    tag = "bf16 channels_last" if args.bf16 else "channels_last"
    note = "different weights and padding: speed only"

    def eager():
        with dtype_ctx:
            return model(pixels_cl)

    v = [Variant(f"timm tf_efficientnet_b7 {tag}", eager, note=note)]
    if args.compile:
        timm_compiled = compiled(model, args)

        def comp():
            with dtype_ctx:
                return timm_compiled(pixels_cl)

        v.append(Variant(f"timm tf_efficientnet_b7 {tag} compile", comp, note=note))
    return v


def text_variants(hf, ours: AlignModel, batch: dict, args: argparse.Namespace, device: torch.device) -> list[Variant]:
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16)
    fused = fuse_for_inference(copy.deepcopy(ours))
    trimmed = fuse_for_inference(copy.deepcopy(ours))
    trimmed.pack_text = False  # the padded tower on the batch cut to its longest caption
    v = [
        Variant("transformers fp32, 64 tokens", lambda: _features(hf.get_text_features(**batch)), True),
        Variant("align_torch fp32, 64 tokens", lambda: ours.encode_text(**batch)),
        Variant("align_torch fused, trimmed", lambda: trimmed.encode_text(**batch)),
        Variant("align_torch fused (packed)", lambda: fused.encode_text(**batch)),
    ]
    if args.bf16:

        def hf_bf16():
            with bf16:
                return _features(hf.get_text_features(**batch))

        def ours_bf16():
            with bf16:
                return fused.encode_text(**batch)

        v += [
            Variant("transformers bf16, 64 tokens", hf_bf16, True),
            Variant("align_torch fused bf16 (packed)", ours_bf16),
        ]
    if args.compile:
        dtype_ctx = bf16 if args.bf16 else nullcontext()
        tower = compiled(fused.text_model, args, fullgraph=True, dynamic=True)

        def ours_compiled():
            # The data-dependent cut stays in eager mode, outside the compiled graph.
            ids, mask, types = trim_padding(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            with dtype_ctx:
                return fused.text_projection(tower(ids, mask, types).last_hidden_state[:, 0])

        v.append(Variant("align_torch fused compile, trimmed", ours_compiled))
    return v


# --- the train step -----------------------------------------------------------------------------------
def train_step_fn(model, batch: dict, pixels: torch.Tensor, bf16: bool, fused_adamw: bool):
    """One contrastive step: forward with the loss, backward, AdamW. Returns a closure giving the loss."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused_adamw or None)
    ctx = torch.autocast(pixels.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> torch.Tensor:
        with ctx:
            out = model(pixel_values=pixels, return_loss=True, **batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    return step


def train_results(hf, ours: AlignModel, args: argparse.Namespace, device: torch.device) -> list[Result]:
    """Each variant on its own fresh copy, one after the other, so peak memory is each one's own."""
    n = args.train_batch
    size = ours.config.vision.image_size
    from tests.helpers.hf_reference import smooth_images

    pixels = smooth_images(n, size, seed=1).to(device)
    pixels_cl = pixels.contiguous(memory_format=torch.channels_last)
    batch = make_texts(n, ours.config.text.vocab_size, full=False, device=device)
    tag = "bf16" if args.bf16 else "fp32"
    specs: list[tuple[str, bool, dict]] = [
        (f"transformers {tag}", False, {}),
        (f"align_torch {tag}", True, {}),
    ]
    if device.type == "cuda":
        specs += [
            (f"transformers {tag} channels_last", False, {"cl": True}),
            (f"align_torch {tag} channels_last fused-AdamW", True, {"cl": True, "fused": True}),
            (
                f"align_torch {tag} channels_last fused-AdamW checkpointing",
                True,
                {"cl": True, "fused": True, "ckpt": True},
            ),
        ]
        if args.compile:
            specs.append(
                (
                    f"align_torch {tag} channels_last fused-AdamW compile",
                    True,
                    {"cl": True, "fused": True, "compile": True},
                )
            )
    if args.train_variants:
        specs = [spec for spec in specs if any(part in spec[0] for part in args.train_variants)]
    results = []
    for name, is_ours, opts in specs:
        base = allocated(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            results.append(train_one(name, is_ours, opts, hf, ours, batch, pixels, pixels_cl, args, device, base))
        except torch.OutOfMemoryError:
            # A batch too large for this variant is a figure too: it is what checkpointing is for.
            results.append(Result("train", name, float("nan"), float("nan"), float("nan"), note="out of memory"))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # here, once the failed variant's frames are gone
        print(f"  train: {name} done", file=sys.stderr, flush=True)
    ran = [r for r in results if r.items_per_s == r.items_per_s]  # not NaN
    ref = next((r for r in ran if r.name.startswith("transformers")), None)
    for r in ran:
        if ref is not None:
            r.vs_transformers_fp32 = r.items_per_s / ref.items_per_s  # the first transformers variant
            r.vs_transformers_best = r.items_per_s / max(
                x.items_per_s for x in ran if x.name.startswith("transformers")
            )
    return results


def train_one(name, is_ours, opts, hf, ours, batch, pixels, pixels_cl, args, device, base) -> Result:
    """One train variant on its own fresh copy of its model; best and median step time, peak memory."""
    n = args.train_batch
    model = copy.deepcopy(ours if is_ours else hf)
    x = pixels_cl if opts.get("cl") else pixels
    if opts.get("cl"):
        model.vision_model.to(memory_format=torch.channels_last)
    if opts.get("ckpt"):
        model.set_grad_checkpointing(True)
    if opts.get("compile"):
        model = torch.compile(model, backend=args.compile_backend)
    step = train_step_fn(model, batch, x, args.bf16, opts.get("fused", False) and device.type == "cuda")
    step()  # warm-up (and compile)
    sync(device)
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return Result(
        "train", name, n / min(times), min(times), statistics.median(times), peak_mem_gib=peak_gib(device, base)
    )


def table(results: list[Result]) -> str:
    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    head = "| group | variant | items/s | vs transformers fp32 | vs transformers best | max abs diff | max rel diff | min cosine | peak GiB |"
    rows = [head, "|" + "---|" * 9]
    for r in results:
        rows.append(
            f"| {r.group} | {r.name} | {r.items_per_s:.2f} | {fmt(r.vs_transformers_fp32, '.2f')}x "
            f"| {fmt(r.vs_transformers_best, '.2f')}x | {fmt(r.max_abs_diff, '.1e')} | {fmt(r.max_rel_diff, '.1e')} "
            f"| {fmt(r.min_cosine, '.6f')} | {fmt(r.peak_mem_gib, '.2f')} |"
        )
    return "\n".join(rows)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--preset", default="align-base", choices=["align-base", "tiny"], help="tiny: check the script")
    p.add_argument("--batch-images", type=int, default=None, help="default 4 on CPU, 128 on CUDA")
    p.add_argument("--batch-texts", type=int, default=None, help="default 32 on CPU, 512 on CUDA")
    p.add_argument("--train-batch", type=int, default=None, help="default 2 on CPU, 64 on CUDA")
    p.add_argument("--iters", type=int, default=None, help="timed calls per variant; default 3 on CPU, 20 on CUDA")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument(
        "--train-variants",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="run only the train variants whose name contains one of these (e.g. checkpointing)",
    )
    p.add_argument("--groups", nargs="+", default=["image", "text", "train"], choices=["image", "text", "train"])
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    for name, cpu_default, cuda_default in (
        ("batch_images", 4, 128),
        ("batch_texts", 32, 512),
        ("train_batch", 2, 64),
        ("iters", 3, 20),
        ("bf16", False, True),
        ("compile", False, True),
    ):
        if getattr(args, name) is None:
            setattr(args, name, cuda_default if cuda else cpu_default)
    for name in ("batch_images", "batch_texts", "train_batch", "iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
        torch.backends.cudnn.allow_tf32 = False
    load_before = os.getloadavg()
    t0 = time.time()
    hf, ours = build_models(args.preset, device)
    print(f"models built in {time.time() - t0:.0f} s", file=sys.stderr)

    results: list[Result] = []
    if "image" in args.groups:
        variants = image_variants(hf, ours, args, device)
        r, outs = run_group("image", variants, args.batch_images, args.iters, device)
        compare(r, outs, variants)
        print(table(r), file=sys.stderr, flush=True)  # each group as soon as it is done
        results += r
        del variants, outs
    text_inputs = (("text 64 real tokens", True), ("text captions padded to 64", False))
    for group, full in text_inputs if "text" in args.groups else ():
        batch = make_texts(args.batch_texts, ours.config.text.vocab_size, full, device)
        variants = text_variants(hf, ours, batch, args, device)
        r, outs = run_group(group, variants, args.batch_texts, args.iters, device)
        compare(r, outs, variants)
        print(table(r), file=sys.stderr, flush=True)  # each group as soon as it is done
        results += r
        del variants, outs
    if "train" in args.groups and not args.skip_train:
        results += train_results(hf, ours, args, device)

    report = {
        "device": describe(device),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "caption_lengths": list(CAPTION_LENGTHS),
        "results": [asdict(r) for r in results],
    }
    print(f"\n{report['device']}, torch {report['torch']}, transformers {report['transformers']}")
    print(table(results))
    if args.json is not None:
        from align_torch.util.fileio import atomic_file

        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
