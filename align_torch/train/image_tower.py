"""`finetune --image-tower hf:PATH_OR_ID`: put a pretrained transformers vision encoder (ConvNeXt, ViT, Dinov2...)
in place of the model's image tower, with a new image projection to the embedding size; the text side (and the
temperature, and a sigmoid model's bias) stay as they were. With `--lock-image` this is LiT on that tower.

The image processor comes from the tower's folder when it has a preprocessor_config.json (its size, crop, mean
and std); otherwise the starting model's is kept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..checkpoint.config_files import field_error, read_json_object
from ..model.align import AlignModel
from ..model.hf_image import IMAGE_POOLINGS, vision_config_from_hf
from ..model.hf_text import tower_source
from ..preprocess.image_processing import AlignImageProcessor, tower_image_processor
from ..preprocess.processor import PREPROCESSOR_CONFIG, AlignProcessor
from .text_tower import load_tower, rebuild_around


def swap_image_tower(
    model: AlignModel, spec: str, processor: AlignProcessor, pooling: str | None = None
) -> tuple[AlignModel, AlignProcessor]:
    """A new AlignModel with `model`'s text side and the vision encoder `spec` ("hf:PATH_OR_ID") as its image
    tower, pooled by `pooling` ("pooler" or "mean"; None: the tower's pooler_output where it has one), and the
    processor whose images fit it."""
    source = tower_source(spec)
    encoder = load_tower(spec, source, "image")
    image_processor = _image_processor(source) or processor.image_processor
    hf_config = encoder.config.to_dict()
    crop = image_processor.crop_size if image_processor.do_center_crop else image_processor.size
    vision = vision_config_from_hf(hf_config, image_size=crop[0])
    if crop != (vision.image_size, vision.image_size):  # the kept processor, resized for a patch tower's size
        ratio = vision.image_size / crop[0]
        size = tuple(round(side * ratio) for side in image_processor.size)
        image_processor = dataclasses.replace(image_processor, size=size, crop_size=(vision.image_size,) * 2)
    if pooling is None:
        pooling = "pooler" if _has_pooler(encoder, vision) else "mean"
    elif pooling not in IMAGE_POOLINGS:
        raise ValueError(f"image pooling must be one of {IMAGE_POOLINGS}, got {pooling!r}")
    config = model.config.replace(vision=vision, image_tower=spec, hf_image_config=hf_config, image_pooling=pooling)
    swapped = rebuild_around(model, config, ("vision_model.", "image_projection."))
    swapped.vision_model.encoder.load_state_dict(encoder.state_dict())
    return swapped, AlignProcessor(image_processor, processor.tokenizer)


def _image_processor(source: str) -> AlignImageProcessor | None:
    """The tower folder's own preprocessing, if it has a preprocessor_config.json."""
    path = Path(source).expanduser() / PREPROCESSOR_CONFIG
    if not path.is_file():
        return None
    try:
        return tower_image_processor(read_json_object(path))
    except (TypeError, ValueError) as e:
        raise field_error(path, e) from None


@torch.no_grad()
def _has_pooler(encoder: torch.nn.Module, vision) -> bool:
    """Whether the tower's output carries a pooler_output (one forward of a blank image at its size)."""
    training = encoder.training
    pixels = torch.zeros(1, vision.in_chans, vision.image_size, vision.image_size)
    out = encoder.eval()(pixel_values=pixels.to(next(encoder.parameters()).dtype))
    encoder.train(training)
    return getattr(out, "pooler_output", None) is not None
