"""align_torch: ALIGN (EfficientNet + BERT, contrastive image-text) in native PyTorch."""

from .config import AlignConfig, Stage, TextConfig, VisionConfig, preset
from .evaluate.open_clip import create_model_and_transforms, get_tokenizer
from .model import AlignModel, AlignOutput
from .processor import AlignProcessor
from .weights import CheckpointError, LoadReport

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
