"""`finetune --preset NAME`, `--image-preset NAME`, `--text-preset NAME`: train the ALIGN paper's encoder grid from
scratch. `--preset` builds the whole model of a preset as `align-torch init` does (random weights, BatchNorm
statistics calibrated on generated images, the starter processor) in place of loading `--model`;
`--image-preset efficientnet-b3` or `--text-preset bert-mini` puts a random tower of that size in place of one
tower of `--model` (a new projection where the widths differ), keeping the other tower, as `--image-tower` and
`--text-tower` do with a pretrained one.

Each is recorded in the run's config, so `--resume` builds the same model before the checkpoint's weights load.
"""

from __future__ import annotations

import torch

from ..model.align import AlignModel
from ..model.bert import init_linear_and_norms
from ..model.config import IMAGE_PRESETS, TEXT_PRESETS, bert, grid_image_tower
from ..preprocess.processor import AlignProcessor
from .starter import CALIBRATION_IMAGES, calibrate_batchnorm, calibration_images, starter_model, starter_processor
from .text_tower import rebuild_around


def preset_model(name: str, seed: int) -> tuple[AlignModel, AlignProcessor]:
    """The random-weight model of preset `name` and its processor, as `align-torch init --preset name --seed`."""
    model = starter_model(name, seed).train()
    config = model.config
    return model, starter_processor(config.vision.image_size, config.text.max_position_embeddings)


def swap_image_preset(model: AlignModel, name: str, processor: AlignProcessor) -> tuple[AlignModel, AlignProcessor]:
    """`model` with a random EfficientNet of the grid (`name`: "efficientnet-b3") as its image tower, its
    BatchNorm statistics calibrated on generated images, and ALIGN's preprocessing at the tower's resolution."""
    vision = grid_image_tower(IMAGE_PRESETS[name])
    config = model.config.replace(vision=vision, image_tower=None, hf_image_config=None)
    swapped = rebuild_around(model, config, ("vision_model.", "image_projection."))
    _init_new(swapped.vision_model, swapped.image_projection)
    image_processor = starter_processor(vision.image_size, config.text.max_position_embeddings).image_processor
    swapped_processor = AlignProcessor(image_processor, processor.tokenizer)
    pixels = swapped_processor(images=calibration_images(CALIBRATION_IMAGES, vision.image_size))["pixel_values"]
    calibrate_batchnorm(swapped.vision_model, pixels.to(swapped.temperature))  # (N, 3, S, S)
    return swapped, swapped_processor


def swap_text_preset(model: AlignModel, name: str, processor: AlignProcessor) -> tuple[AlignModel, AlignProcessor]:
    """`model` with a random BERT of the grid (`name`: "bert-mini") as its text tower, embedding the model's
    tokenizer's ids (its vocabulary size) and pooling as the model's text tower did."""
    old = model.config.text
    text = bert(
        TEXT_PRESETS[name],
        vocab_size=processor.tokenizer.vocab_size,
        max_position_embeddings=old.max_position_embeddings,
        pooling=old.pooling,
    )
    config = model.config.replace(text=text, text_tower=None, hf_text_config=None)
    swapped = rebuild_around(model, config, ("text_model.", "text_projection."))
    _init_new(swapped.text_model, swapped.text_projection)
    return swapped, processor


@torch.no_grad()
def _init_new(tower: torch.nn.Module, projection: torch.nn.Module | None) -> None:
    """A new tower as its paper's code initialises it, its projection as BERT's linear layers (init_weights)."""
    tower.init_weights()
    if projection is not None:
        init_linear_and_norms(projection)
