"""A random-weight checkpoint with processor files, to try the commands, notebooks and fine-tuning offline.

The weights are PyTorch's default initialisation, so embeddings carry no meaning; everything else (folder
layout, processor files, shapes, the code paths) is what a converted align-base gives. The tokenizer's
vocab is a small WordPiece vocab in BERT's layout built here, not bert-base-uncased's (that one comes with
the real checkpoint): lower-case ASCII characters and their `##` pieces, so any English text tokenizes.
"""

from __future__ import annotations

import math
import os
import string
import tempfile
from pathlib import Path

import torch

from ..checkpoint.weights import save_native
from ..model.align import AlignModel
from ..model.config import SIGLIP_BIAS_INIT, SIGLIP_TEMPERATURE_INIT, preset
from ..preprocess.image_processing import AlignImageProcessor
from ..preprocess.processor import AlignProcessor
from ..preprocess.tokenizer import AlignTokenizer

STARTER_PRESETS = ("align-tiny", "align-base", "align-l2")

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
    return AlignProcessor(images, AlignTokenizer(vocab, model_max_length=min(64, max_length)))


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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AlignModel(config).eval()
    processor = starter_processor(config.vision.image_size, config.text.max_position_embeddings)
    with tempfile.TemporaryDirectory(prefix=".align-torch-init-") as files:
        save_native(model, folder, processor_from=processor.save_pretrained(files))
    return folder
