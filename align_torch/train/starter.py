"""A random-weight checkpoint with processor files, to try the commands, notebooks and fine-tuning offline.

The weights are random, initialised as the towers' papers' code does (AlignModel.init_weights), with the
BatchNorm statistics measured on a few generated images so that activations keep their scale through every
stage: the embeddings carry no meaning, but different images embed differently and fine-tuning can start from
it. Everything else (folder layout, processor files, shapes, the code paths) is what a converted align-base gives. The tokenizer's
vocab is a small WordPiece vocab in BERT's layout built here, not bert-base-uncased's (that one comes with
the real checkpoint): lower-case ASCII characters and their `##` pieces, so any English text tokenizes.
"""

from __future__ import annotations

import math
import os
import string
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ..checkpoint.weights import save_native
from ..defaults import TEXT_LENGTH
from ..model.align import AlignModel
from ..model.config import PRESETS, SIGLIP_BIAS_INIT, SIGLIP_TEMPERATURE_INIT, AlignConfig, preset
from ..preprocess.image_processing import AlignImageProcessor
from ..preprocess.processor import AlignProcessor
from ..preprocess.tokenizer import AlignTokenizer

STARTER_PRESETS = ("align-tiny", "align-base", "align-l2", *(n for n in PRESETS if n.count("-") == 3))  # + the grid
CALIBRATION_IMAGES = 16  # generated images the BatchNorm statistics are measured on, in batches of 8

# A few whole words so that common captions are not all single characters.
_WORDS = (
    "a an the of and in on with to at by for from is are photo picture image drawing painting "
    "cat dog bird horse car truck plane boat ship rocket cup coffee tea red green blue black white "
    "yellow small large man woman child people street city house tree flower sky water sea beach "
    "mountain snow food table chair book phone computer circle square triangle shape"
).split()


def starter_vocab() -> list[str]:
    """BERT's layout: [PAD] 0, [unused0..98], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, then pieces."""
    special = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [c for c in string.printable if not c.isspace() and not c.isupper()]
    return special + chars + [f"##{c}" for c in chars if c.isalnum()] + list(_WORDS)


def starter_processor(image_size: int, max_length: int) -> AlignProcessor:
    """align-base's preprocessing scaled to `image_size` (resize to 346/289 of it, centre crop to it)."""
    vocab = {token: i for i, token in enumerate(starter_vocab())}
    resize = math.ceil(image_size * 346 / 289)
    images = AlignImageProcessor(size=(resize, resize), crop_size=(image_size, image_size))
    return AlignProcessor(images, AlignTokenizer(vocab, model_max_length=min(TEXT_LENGTH, max_length)))


def calibration_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Photo-like stand-ins, made here so `init` needs no data: smooth random colour fields (8x8 noise
    upsampled) with a few solid shapes for edges."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        field = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        image = Image.fromarray(field).resize((size, size), Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            (x0, y0), (w, h) = rng.integers(0, size * 3 // 4, 2), rng.integers(size // 8, size // 2, 2)
            x1, y1 = x0 + w, y0 + h
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((int(x0), int(y0), int(x1), int(y1)), fill=colour)
        images.append(image)
    return images


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, pixel_values: torch.Tensor, batch_size: int = 8) -> None:
    """Set every BatchNorm's running statistics to their average over `pixel_values` (B, 3, H, W): a pass in
    batches with only the BatchNorms in train mode and momentum None (PyTorch's cumulative average), so
    drop-path and dropout stay off. Each layer's statistics are those of its input in this pass."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta, was_training = [m.momentum for m in norms], model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for chunk in pixel_values.split(batch_size):
            model(chunk)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


def starter_model(preset_name: str = "align-tiny", seed: int = 0, config: AlignConfig | None = None) -> AlignModel:
    """A random-weight `preset_name` model, initialised by AlignModel.init_weights and with BatchNorm
    statistics calibrated on generated images, in eval mode. `config`: the preset's, changed (e.g. its loss)."""
    config = config or preset(preset_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AlignModel(config)
        model.init_weights()
    size = config.vision.image_size
    processor = starter_processor(size, config.text.max_position_embeddings)
    pixels = processor(images=calibration_images(CALIBRATION_IMAGES, size, seed))["pixel_values"]  # (N, 3, S, S)
    calibrate_batchnorm(model.vision_model, pixels)
    return model.eval()


def memory_needed(config) -> int:
    """Bytes `init` needs for a model of `config`: its float32 weights, held once by the model and once more by
    safetensors while it writes them."""
    with torch.device("meta"):
        model = AlignModel(config)
    return 2 * sum(t.numel() * 4 for t in (*model.parameters(), *model.buffers()))


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def write_starter_checkpoint(
    folder: str | os.PathLike, preset_name: str = "align-tiny", seed: int = 0, loss: str = "softmax"
) -> Path:
    """Write a random-weight `preset_name` model and its processor files to `folder`, all or nothing.

    Refuses a folder that already holds anything (an empty one is filled). `loss="sigmoid"` gives a model for
    SigLIP's loss with SigLIP's initial temperature and logit bias."""
    if preset_name not in STARTER_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(STARTER_PRESETS)}, got {preset_name!r}")
    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{str(folder)!r} is not an empty folder; choose a new one")
    config = preset(preset_name)
    if loss == "sigmoid":  # SigLIP's start for training from scratch: t' = log 10 (temperature 0.1), bias -10
        config = config.replace(
            loss="sigmoid", temperature_init=SIGLIP_TEMPERATURE_INIT, logit_bias_init=SIGLIP_BIAS_INIT
        )
    elif loss != "softmax":
        raise ValueError(f"loss must be 'softmax' or 'sigmoid', got {loss!r}")
    need, free = memory_needed(config), available_memory()
    if free is not None and free < need:
        # Refused here with the figures, rather than killed by the OOM killer half-way through.
        raise MemoryError(
            f"{preset_name} needs about {need / 2**30:.1f} GiB of free memory to initialise and write "
            f"(float32 weights, held twice while writing); {free / 2**30:.1f} GiB is available"
        )
    if len(starter_vocab()) > config.text.vocab_size:
        raise ValueError(f"the starter vocab does not fit {preset_name}'s {config.text.vocab_size} token ids")
    model = starter_model(preset_name, seed, config)
    processor = starter_processor(config.vision.image_size, config.text.max_position_embeddings)
    with tempfile.TemporaryDirectory(prefix=".align-torch-init-") as files:
        save_native(model, folder, processor_from=processor.save_pretrained(files))
    return folder
