"""Export each tower as its own graph: ONNX (torch's dynamo exporter) or a torch.export program (.pt2).

`export_towers(model, tokenizer, out, towers=("image", "text"), fmt="onnx")` writes one folder, atomically:

    image.onnx  image.json      pixel_values (batch, 3, H, W) -> image_embeds (batch, P); H, W fixed
    image_224.onnx  ...         one more graph per extra image size asked for
    text.onnx   text.json       input_ids, attention_mask[, token_type_ids] (batch, tokens) -> text_embeds
    image.int8.onnx ...         with int8=True: static int8 calibrated on real images (quantize.py), written
    text.int8.onnx ...          only when its mean cosine to the fp32 graph is at least 0.99 (text: dynamic)

Batch is dynamic in every graph and the token count in the text graph (1 to max_position_embeddings). Each
JSON names the model, tower, inputs and outputs with their shapes, the opset, and the parity measured at export:
the graph run in ONNX Runtime (or the .pt2 loaded back with torch.export.load) against the eager tower on a
few inputs. The traced towers are inference/towers.py's: the plain padded text path, no value-dependent checks.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..model.align import AlignModel
from ..model.input_checks import min_image_size
from ..preprocess.tokenizer import AlignTokenizer
from ..util.fileio import atomic_dir, check_destination
from .quantize import batches, calibration_at, mean_cosine, quantize_image_static, quiet, require_quality
from .towers import TOWERS, tower, uses_token_types

FORMATS = ("onnx", "pt2")
META_FORMAT = "align-torch-export"
EXPORT_WHAT = "folder written by align-torch export"
# Held-out captions of assorted lengths for the parity check at export (none is a training template).
CHECK_TEXTS = (
    "a",
    "a photo of a cat",
    "two red bicycles leaning against a stone wall near the harbour at dusk",
    "Ein Hund läuft über eine grüne Wiese.",
    "the quick brown fox jumps over the lazy dog " * 12,
)
CHECK_BATCHES = (1, 3)


def export_towers(
    model: AlignModel,
    tokenizer: AlignTokenizer | None,
    out: str | os.PathLike,
    *,
    towers: Sequence[str] = TOWERS,
    fmt: str = "onnx",
    image_sizes: Sequence[tuple[int, int]] = (),
    normalize: bool = False,
    int8: bool = False,
    calibration: torch.Tensor | None = None,
    calibration_names: Sequence[str] = (),
    model_id: str = "",
    overwrite: bool = False,
    opset: int | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Export the asked towers of `model` into folder `out` (written atomically); returns {graph name: metadata}.

    `image_sizes`: the (height, width) of each image graph, the first one named `image`, the others
    `image_{H}` (or `image_{H}x{W}`); empty: the model config's image size. `tokenizer` makes the held-out
    captions of the text parity check (required for the text tower). `int8` (ONNX only) adds an int8 copy of
    each graph (quantize.py), measured against fp32 and refused (Int8Refused, nothing written) below a mean
    cosine of 0.99: the image graphs calibrated and measured on `calibration`, (N, 3, H, W) preprocessed real
    images (`calibration_names` records which). `overwrite` replaces an earlier export folder, nothing else.
    `progress`: a bar on stderr, one step per graph.
    """
    plan = _export_plan(model, _check_towers(towers), fmt, image_sizes, int8, tokenizer, calibration)
    _check_opset(opset, fmt)
    check_destination(out, overwrite=overwrite, replaceable=is_export_dir, what=EXPORT_WHAT)  # before any work
    written: dict[str, dict[str, Any]] = {}
    was_training = model.training
    model.eval()  # BatchNorm's running statistics, no dropout; the caller's mode comes back after
    try:
        with atomic_dir(out, overwrite=overwrite, replaceable=is_export_dir, what=EXPORT_WHAT) as tmp:
            for name, which, hw in tqdm(plan, desc="export", unit="graph", disable=not progress, file=sys.stderr):
                module = tower(model, which, normalize)
                example, check = _inputs(model, which, hw, tokenizer)
                path = tmp / f"{name}.{fmt}"
                opset_used, run = _export_graph(module, example, path, which, opset)
                meta = _metadata(model, which, name, fmt, hw, normalize, model_id, opset_used)
                meta["parity"] = parity(module, run, check)
                _write_json(tmp / f"{name}.json", meta)
                written[name] = meta
                if int8:
                    calib = None if calibration is None or hw is None else calibration_at(calibration, hw)
                    q_meta = _write_int8(module, path, run, meta, check, calib, list(calibration_names))
                    written[f"{name}.int8"] = q_meta
    finally:
        model.train(was_training)
    return written


def _export_plan(
    model: AlignModel,
    towers: Sequence[str],
    fmt: str,
    image_sizes: Sequence[tuple[int, int]],
    int8: bool,
    tokenizer: AlignTokenizer | None,
    calibration: torch.Tensor | None,
) -> list[tuple[str, str, tuple[int, int] | None]]:
    """The options checked, and the graphs to write: (name, tower, (height, width) or None for text)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if int8 and fmt != "onnx":
        raise ValueError("int8 needs format 'onnx' (ONNX Runtime's quantization)")
    if int8 and "image" in towers and (calibration is None or len(calibration) == 0):
        raise ValueError("int8 of the image tower needs calibration images (real photos: --calibration-images)")
    if "text" in towers and tokenizer is None:
        raise ValueError("exporting the text tower needs the model's tokenizer (for the parity check)")
    if fmt == "onnx" or int8:
        _require_onnx()
    sizes = _check_sizes(model, image_sizes)
    plan: list[tuple[str, str, tuple[int, int] | None]] = []
    if "image" in towers:
        plan += [(_image_name(i, hw), "image", hw) for i, hw in enumerate(sizes)]
    if "text" in towers:
        plan.append(("text", "text", None))
    return plan


def _write_int8(
    module: torch.nn.Module,
    path: Path,
    run: Callable[..., torch.Tensor],
    meta: dict[str, Any],
    check: list[tuple],
    calibration: torch.Tensor | None,
    calibration_names: list[str],
) -> dict[str, Any]:
    """NAME.int8.onnx beside the fp32 graph at `path`, measured against it (Int8Refused below 0.99 mean cosine);
    returns its metadata. Images: static QDQ calibrated on `calibration`; text: dynamic, on the check captions."""
    q_path = path.with_name(f"{path.stem}.int8.onnx")
    if meta["tower"] == "image":
        quantize_image_static(path, q_path, calibration)
        measured_on: list[tuple] = list(batches(calibration))
        what = {"calibration_images": calibration_names or len(calibration), "quantization": "static QDQ"}
    else:
        quantize_int8(path, q_path)
        measured_on = check
        what = {"measured_on": "held-out captions", "quantization": "dynamic"}
    quality = mean_cosine(run, _onnx_runner(q_path), measured_on)
    require_quality(quality, f"{meta['tower']} graph {q_path.name}")
    q_meta = {
        **meta,
        "file": q_path.name,
        "int8": True,
        **what,
        "quality": {"reference": "the fp32 graph", **quality},
        "parity": parity(module, _onnx_runner(q_path), check),
    }
    _write_json(path.with_name(f"{path.stem}.int8.json"), q_meta)
    return q_meta


def is_export_dir(path: Path) -> bool:
    """A folder this module wrote: only graphs and their JSON files, at least one JSON of ours."""
    files = list(path.iterdir())
    if not files or any(not f.is_file() or f.suffix not in (".onnx", ".pt2", ".json", ".data") for f in files):
        return False
    for f in files:
        if f.suffix == ".json":
            try:
                return json.loads(f.read_text()).get("format_name") == META_FORMAT
            except (OSError, ValueError, AttributeError):
                return False
    return False


# --- inputs ---------------------------------------------------------------------------------------------
def _check_towers(towers: Sequence[str]) -> list[str]:
    if isinstance(towers, str):
        towers = [towers]
    bad = [t for t in towers if t not in TOWERS]
    if bad or not towers:
        raise ValueError(f"towers must be among {TOWERS}, got {list(towers)}")
    return [t for t in TOWERS if t in towers]


# torch's dynamo exporter writes opset 18 and newer; asked for an older one it writes 18 anyway.
MIN_OPSET = 18


def _export_graph(
    module: torch.nn.Module, example: tuple, path: Path, which: str, opset: int | None
) -> tuple[int | None, Callable[..., torch.Tensor]]:
    """Write one graph (its format from `path`'s suffix); (the ONNX opset written or None, a runner of it)."""
    if path.suffix == ".pt2":
        _export_pt2(module, example, path, which)
        return None, _pt2_runner(path)
    written = _export_onnx(module, example, path, which, opset)
    if opset is not None and written != opset:  # the exporter may fall back silently
        raise ValueError(f"--opset {opset}: the exporter wrote opset {written} instead")
    return written, _onnx_runner(path)


def _check_opset(opset: int | None, fmt: str) -> None:
    if opset is None:
        return
    if fmt != "onnx":
        raise ValueError(f"--opset {opset}: an opset applies to --format onnx only, not {fmt}")
    if opset < MIN_OPSET:
        raise ValueError(f"--opset {opset}: torch's dynamo exporter writes opset {MIN_OPSET} or newer, not {opset}")


def _check_sizes(model: AlignModel, image_sizes: Sequence[int | tuple[int, int]]) -> list[tuple[int, int]]:
    """Each asked (height, width), refused below the smallest input the image tower takes; default: the
    config's image size."""
    size = model.config.vision.image_size
    sizes = [_check_size(s) for s in image_sizes] or [(size, size)]
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"image sizes repeat: {sizes}")
    smallest = min_image_size(model.config.vision)
    for h, w in sizes:
        if min(h, w) < smallest:
            raise ValueError(f"--image-size {h}x{w}: the image tower needs at least {smallest}x{smallest}")
    return sizes


def _check_size(hw: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (hw, hw) if isinstance(hw, int) else tuple(hw)
    if not all(isinstance(v, int) and v >= 1 for v in (h, w)):
        raise ValueError(f"an image size must be a positive integer (or height, width), got {hw!r}")
    return h, w


def _image_name(i: int, hw: tuple[int, int]) -> str:
    if i == 0:
        return "image"
    return f"image_{hw[0]}" if hw[0] == hw[1] else f"image_{hw[0]}x{hw[1]}"


def check_pixels(batch: int, hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(batch, 3, H, W) photo-like pixels in [-1, 1] (noise upsampled from three scales): on white noise a
    random-weight tower's activations explode and amplify rounding far beyond what real photos show."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(batch, 3, *hw)
    for cells in (2, 8, 32):
        noise = torch.randn(batch, 3, cells, cells, generator=g)
        out += F.interpolate(noise, size=hw, mode="bilinear", align_corners=False)
    return torch.tanh(out / 2)


def text_inputs(model: AlignModel, tokenizer: AlignTokenizer, texts: Sequence[str], length: int | None = None):
    """The text graph's inputs for `texts`, padded to the longest (or to `length`), as a tuple in graph order."""
    padding: bool | str = True if length is None else "max_length"
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=length, return_tensors="pt")
    names = text_input_names(model)
    return tuple(enc[n] for n in names)


def text_input_names(model: AlignModel) -> tuple[str, ...]:
    return (
        ("input_ids", "attention_mask", "token_type_ids")
        if uses_token_types(model)
        else ("input_ids", "attention_mask")
    )


def _inputs(model: AlignModel, which: str, hw: tuple[int, int] | None, tokenizer: AlignTokenizer | None):
    """(example inputs to trace with, [inputs of the parity check])."""
    if which == "image":
        # Batch 2 to trace: a batch of 1 would let the exporter specialise the batch dimension to 1.
        return (check_pixels(2, hw, seed=1),), [(check_pixels(b, hw, seed=b),) for b in CHECK_BATCHES]
    longest = model.config.text.max_position_embeddings
    example = text_inputs(model, tokenizer, CHECK_TEXTS[1:3])  # 2 texts, a few tokens: nothing specialised
    checks = [text_inputs(model, tokenizer, CHECK_TEXTS[:1])]
    checks.append(text_inputs(model, tokenizer, CHECK_TEXTS[1:4]))  # padded to the longest of 3
    checks.append(text_inputs(model, tokenizer, CHECK_TEXTS, length=longest))  # truncated to the maximum
    return example, checks


def _dynamic_shapes(model: AlignModel, which: str) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    if which == "image":
        return {"pixel_values": {0: batch}}
    tokens = torch.export.Dim("tokens", min=1, max=model.config.text.max_position_embeddings)
    return {n: {0: batch, 1: tokens} for n in text_input_names(model)}


def _input_names(model: AlignModel, which: str) -> list[str]:
    return ["pixel_values"] if which == "image" else list(text_input_names(model))


def _output_name(which: str) -> str:
    return f"{which}_embeds"


# --- ONNX -----------------------------------------------------------------------------------------------
def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the export extra: pip install 'align-torch[export]' ({e})") from None


def _export_onnx(module: torch.nn.Module, example: tuple, path: Path, which: str, opset: int | None) -> int:
    """Trace a tower module with torch.export and write it as ONNX (weights inside the file); returns the opset."""
    model = module.model
    names, dims = _input_names(model, which), _dynamic_shapes(model, which)
    return export_onnx(module, example, path, names, _output_name(which), dims, opset)


def export_onnx(
    module: torch.nn.Module,
    example: tuple,
    path: str | os.PathLike,
    input_names: list[str],
    output_name: str,
    dynamic_shapes: dict[str, dict[int, Any]],
    opset: int | None = None,
) -> int:
    """Trace `module` on `example` with torch's dynamo exporter and write one ONNX file (weights inside);
    returns the opset. The inference backend (backend.py) exports its towers through this too."""
    import onnx

    with quiet():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=input_names,
            output_names=[output_name],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _onnx_runner(path: Path) -> Callable[..., torch.Tensor]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})[0])

    return run


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """ONNX Runtime's dynamic quantization: int8 weights, activations quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


# --- torch.export ---------------------------------------------------------------------------------------
def _export_pt2(module: torch.nn.Module, example: tuple, path: Path, which: str) -> None:
    program = torch.export.export(module, example, dynamic_shapes=_dynamic_shapes(module.model, which))
    torch.export.save(program, str(path))


def _pt2_runner(path: Path) -> Callable[..., torch.Tensor]:
    program = torch.export.load(str(path)).module()

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return program(*inputs)

    return run


# --- checks and metadata --------------------------------------------------------------------------------
def parity(module: torch.nn.Module, run: Callable[..., torch.Tensor], checks: list[tuple]) -> dict[str, Any]:
    """The exported graph `run` against the eager `module` on each input tuple: max abs difference and the
    lowest cosine similarity between matching embeddings."""
    cases = []
    for inputs in checks:
        with torch.no_grad():
            ref = module(*inputs).float()  # (B, P)
        got = run(*inputs).float()  # (B, P)
        cases.append(
            {
                "shape": list(inputs[0].shape),
                "max_abs": float((got - ref).abs().max()),
                "min_cosine": float(F.cosine_similarity(got, ref, dim=-1).min()),
            }
        )
    worst = [v for c in cases for v in (c["max_abs"], c["min_cosine"])]
    if not all(math.isfinite(v) for v in worst):  # NaN is not JSON, and no parity at all
        raise ValueError("the parity check gave NaN or infinity: the tower's outputs are not finite numbers")
    return {
        "reference": "eager fp32 tower",
        "max_abs": max(c["max_abs"] for c in cases),
        "min_cosine": min(c["min_cosine"] for c in cases),
        "cases": cases,
    }


def _metadata(
    model: AlignModel,
    which: str,
    name: str,
    fmt: str,
    hw: tuple[int, int] | None,
    normalize: bool,
    model_id: str,
    opset: int | None,
) -> dict[str, Any]:
    P = model.config.projection_dim
    if which == "image":
        inputs = [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", model.config.vision.in_chans, *hw]}]
    else:
        inputs = [{"name": n, "dtype": "int64", "shape": ["batch", "tokens"]} for n in text_input_names(model)]
    dims = {"batch": [1, None]}
    if which == "text":
        dims["tokens"] = [1, model.config.text.max_position_embeddings]
    return {
        "format_name": META_FORMAT,
        "model": model_id,
        "tower": which,
        "file": f"{name}.{fmt}",
        "format": fmt,
        "int8": False,
        "normalized": normalize,
        "inputs": inputs,
        "outputs": [{"name": _output_name(which), "dtype": "float32", "shape": ["batch", P]}],
        "dynamic_dims": dims,
        "opset": opset,
        "torch": torch.__version__,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
