"""align_torch: ALIGN (EfficientNet + BERT, contrastive image-text) in native PyTorch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import AlignConfig, Stage, TextConfig, VisionConfig, preset
    from .evaluate.open_clip import create_model_and_transforms, get_tokenizer
    from .model import AlignModel, AlignOutput
    from .processor import AlignProcessor
    from .weights import CheckpointError, LoadReport

# Imported on first use, so that the parts that need no model (reading an embeddings folder, building a FAISS
# index) start without loading PyTorch: about 190 MB of resident memory and seconds of start-up.
_EXPORTS = {
    "AlignConfig": "config",
    "Stage": "config",
    "TextConfig": "config",
    "VisionConfig": "config",
    "preset": "config",
    "AlignModel": "model",
    "AlignOutput": "model",
    "AlignProcessor": "processor",
    "CheckpointError": "weights",
    "LoadReport": "weights",
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
    "VisionConfig",
    "create_model_and_transforms",
    "get_tokenizer",
    "preset",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
