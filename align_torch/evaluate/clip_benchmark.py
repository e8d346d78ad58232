"""CLIP_benchmark support: a loader with its contract and a registration that lets its own CLI run ALIGN.

CLIP_benchmark picks a loader by `--model_type` from `clip_benchmark.models.TYPE2FUNC` (choices from
`MODEL_TYPES`); `register()` adds "align_torch" to both, and `main(argv)` runs its CLI with that model type,
so no fork of CLIP_benchmark is needed:

    python -m align_torch clip-benchmark eval --dataset cifar10 --model align-base \\
        --pretrained kakaobrain/align-base --output result.json
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from .. import defaults
from ..model.align import AlignModel
from .open_clip import ImageTransform, TextTokenizer, create_model_and_transforms, get_tokenizer

MODEL_TYPE = "align_torch"
INSTALL_HINT = (
    'pip install -e ".[clip-benchmark]" in the clone installs it with its dependencies (see docs/evaluation.md)'
)


def load_align(
    model_name: str = "align-base",
    pretrained: str | None = defaults.MODEL,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[AlignModel, ImageTransform, TextTokenizer]:
    """CLIP_benchmark's loader contract: (model, transform, tokenizer). `pretrained` (a folder or Hub repo id)
    names the checkpoint; when it is empty, `model_name` does."""
    name = pretrained or model_name
    model, _, transform = create_model_and_transforms(name, device=device, cache_dir=cache_dir)
    return model, transform, get_tokenizer(name, cache_dir=cache_dir)


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """CLIP_benchmark's top-k accuracy (fractions), with the count read as a 0-dim value."""
    pred = output.topk(max(topk), 1, True, True)[1].t()  # (k, N)
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].sum()) / len(target) for k in topk]


def fix_numpy_accuracy() -> None:
    """CLIP_benchmark 1.6.2's zero-shot `accuracy` calls float() on a 1-element array, which NumPy 2.4 refuses
    (LAION-AI/CLIP_benchmark#147); swap in the same computation when the installed one fails that way."""
    from clip_benchmark.metrics import zeroshot_classification as zc

    try:
        zc.accuracy(torch.eye(2), torch.arange(2), topk=(1,))
    except TypeError:
        zc.accuracy = _accuracy


def register() -> None:
    """Add the "align_torch" model type to CLIP_benchmark's loader table (idempotent), and make its zero-shot
    accuracy work with the installed NumPy."""
    from clip_benchmark import models

    fix_numpy_accuracy()

    models.TYPE2FUNC[MODEL_TYPE] = load_align
    if MODEL_TYPE not in models.MODEL_TYPES:
        # In place: clip_benchmark.cli holds this same list as its --model_type choices.
        models.MODEL_TYPES.append(MODEL_TYPE)


def with_model_type(argv: Sequence[str]) -> list[str]:
    """CLIP_benchmark arguments with `--model_type align_torch` added to an `eval` that names no model type."""
    argv = list(argv)
    if argv[:1] == ["eval"] and not any(a == "--model_type" or a.startswith("--model_type=") for a in argv):
        argv[1:1] = ["--model_type", MODEL_TYPE]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Run CLIP_benchmark's CLI (`eval ...`, `build ...`) with ALIGN registered; 0 on success."""
    try:
        register()
        from clip_benchmark import cli
    except ImportError as e:
        print(
            f"align-torch clip-benchmark: error: CLIP_benchmark's CLI cannot be imported ({e}); {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    saved = sys.argv
    sys.argv = ["clip_benchmark", *with_model_type(sys.argv[1:] if argv is None else argv)]
    try:
        cli.main()
    finally:
        sys.argv = saved
    return 0
