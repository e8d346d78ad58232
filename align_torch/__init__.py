"""align_torch: ALIGN (EfficientNet + BERT, contrastive image-text) in native PyTorch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint.weights import CheckpointError, LoadReport
    from .evaluate.open_clip import create_model_and_transforms, get_tokenizer
    from .inference.convert import convert
    from .inference.embed import embed_images, embed_texts
    from .inference.fast import fuse_for_inference
    from .inspect.attributions import TokenAttributions, token_attributions
    from .inspect.cka import cka
    from .inspect.faithfulness import deletion_auc, insertion_auc
    from .inspect.heatmap import similarity_heatmap
    from .inspect.hooks import ablate_channels, ablate_heads, capture, patch, patch_from
    from .inspect.similarity import similarity_map
    from .inspect.summary import summarize
    from .model.align import AlignModel, AlignOutput
    from .model.config import AlignConfig, Stage, TextConfig, VisionConfig, preset
    from .model.loss import contrastive_loss, sigmoid_loss
    from .preprocess.processor import AlignProcessor

# Imported on first use, so that the parts that need no model (reading an embeddings folder, building a FAISS
# index) start without loading PyTorch: about 190 MB of resident memory and seconds of start-up.
_EXPORTS = {
    "AlignConfig": "model.config",
    "Stage": "model.config",
    "TextConfig": "model.config",
    "VisionConfig": "model.config",
    "preset": "model.config",
    "contrastive_loss": "model.loss",
    "sigmoid_loss": "model.loss",
    "AlignModel": "model.align",
    "AlignOutput": "model.align",
    "AlignProcessor": "preprocess.processor",
    "CheckpointError": "checkpoint.weights",
    "LoadReport": "checkpoint.weights",
    "convert": "inference.convert",
    "fuse_for_inference": "inference.fast",
    "embed_images": "inference.embed",
    "embed_texts": "inference.embed",
    "similarity_heatmap": "inspect.heatmap",
    "summarize": "inspect.summary",
    "similarity_map": "inspect.similarity",
    "token_attributions": "inspect.attributions",
    "TokenAttributions": "inspect.attributions",
    "capture": "inspect.hooks",
    "patch": "inspect.hooks",
    "ablate_heads": "inspect.hooks",
    "ablate_channels": "inspect.hooks",
    "patch_from": "inspect.hooks",
    "cka": "inspect.cka",
    "deletion_auc": "inspect.faithfulness",
    "insertion_auc": "inspect.faithfulness",
    "create_model_and_transforms": "evaluate.open_clip",
    "get_tokenizer": "evaluate.open_clip",
}
__all__ = [
    "AlignConfig",
    "AlignModel",
    "AlignOutput",
    "AlignProcessor",
    "CheckpointError",
    "LoadReport",
    "Stage",
    "TextConfig",
    "TokenAttributions",
    "VisionConfig",
    "ablate_channels",
    "ablate_heads",
    "capture",
    "cka",
    "contrastive_loss",
    "convert",
    "create_model_and_transforms",
    "deletion_auc",
    "embed_images",
    "embed_texts",
    "fuse_for_inference",
    "get_tokenizer",
    "insertion_auc",
    "patch",
    "patch_from",
    "preset",
    "sigmoid_loss",
    "similarity_heatmap",
    "similarity_map",
    "summarize",
    "token_attributions",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
