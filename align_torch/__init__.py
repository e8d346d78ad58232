"""align_torch: ALIGN (EfficientNet + BERT, contrastive image-text) in native PyTorch."""

# ruff: noqa: F401 - the TYPE_CHECKING imports are the public names; __all__ is derived from them at run time

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the public names, listed once: `_EXPORTS` and `__all__` below are read from these imports
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


def _public_names() -> dict[str, str]:
    """Public name -> its module (relative to the package): the imports of the TYPE_CHECKING block above, the one
    list of the package's names. Type checkers read those imports; at run time they are read from this file."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    (block,) = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    return {alias.asname or alias.name: node.module for node in block.body for alias in node.names}


# Imported on first use, so that the parts that need no model (reading an embeddings folder, building a FAISS
# index) start without loading PyTorch: about 190 MB of resident memory and seconds of start-up.
_EXPORTS = _public_names()
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
