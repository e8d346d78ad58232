"""The defaults the commands and the library share, each written once.

What defines the model (label smoothing, BN momentum, drop-path) lives in the model config
(align_torch.model.config) and what defines a fine-tuning run in TrainConfig; these are the rest: the knobs
that `zero-shot`, `embed`, `eval`, `finetune`, `summary` and the Python functions behind them must agree on.
This module imports nothing, so every floor of the package may read it.
"""

from __future__ import annotations

import os

# The Hub repo every command loads when no --model is given: Kakao Brain's public ALIGN.
MODEL = "kakaobrain/align-base"

# Text length in tokens: what ALIGN was trained with and what transformers' processor pads to. The tokenizer
# pads and truncates to it, fine-tuning cuts captions to it, and `summary` counts a text of this length.
TEXT_LENGTH = 64

# Prompt templates of zero-shot classification (`zero-shot`, `eval`, fine-tuning's per-epoch zero-shot), so a
# model gets the same score from each: "imagenet", the 80 prompts behind the published zero-shot figures.
TEMPLATES = "imagenet"

IMAGE_BATCH = 32  # images per forward pass of the commands and the embedding functions
TEXT_BATCH = 256  # texts per forward pass (texts are cheap beside images)
PARTITION_SIZE = 10_000  # images per partition of an embeddings folder (clip-retrieval's order of size)


def image_workers() -> int:
    """Image-loading DataLoader processes of the commands that read many images (embed, eval, zero-shot):
    up to 4, fewer on a machine with fewer cores."""
    return min(4, os.cpu_count() or 1)


def backend() -> str:
    """--backend of the commands that only infer (inference.backend): "torch", unless the environment variable
    ALIGN_TORCH_BACKEND names another. Measured in `embed` on a 2-core CPU at align-base, ONNX Runtime's image
    tower is no faster than the fused PyTorch path once files are decoded beside it (and costs a one-minute export
    and a first-batch check on first use); docs/deploying.md has the figures."""
    return os.environ.get("ALIGN_TORCH_BACKEND") or "torch"
