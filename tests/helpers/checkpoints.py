"""Checkpoint folders for tests, written by transformers itself (HF layout) with processor files."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.hf_reference import hf_align_model
from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR, build_vocab, write_checkpoint

# align-base's processor settings at a small size.
TINY_PREPROCESSOR = {
    **ALIGN_BASE_PREPROCESSOR,
    "size": {"height": 72, "width": 72},
    "crop_size": {"height": 64, "width": 64},
}


def tiny_hf_config():
    """A transformers AlignConfig small enough for fast tests (10 blocks, 2 text layers), same code paths."""
    from transformers import AlignConfig

    return AlignConfig(
        vision_config=dict(image_size=64, width_coefficient=0.25, depth_coefficient=0.5, hidden_dim=640),
        text_config=dict(
            vocab_size=len(build_vocab()),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        projection_dim=80,
    )


def write_hf_checkpoint(folder: Path, model, *, fmt: str = "safetensors", preprocessor: dict | None = None) -> Path:
    """Save a transformers AlignModel as safetensors (save_pretrained) or as a `.bin` (what align-base
    ships, with position_ids), plus the processor files."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        model.save_pretrained(folder)
    elif fmt == "bin":
        model.config.save_pretrained(folder)
        sd = dict(model.state_dict())
        sd["text_model.embeddings.position_ids"] = torch.arange(model.config.text_config.max_position_embeddings)[None]
        torch.save(sd, folder / "pytorch_model.bin")
    else:
        raise ValueError(fmt)
    write_checkpoint(folder, preprocessor or TINY_PREPROCESSOR)
    return folder


def tiny_hf_checkpoint(folder: Path, seed: int = 0, fmt: str = "safetensors"):
    """A tiny random HF-layout checkpoint folder; returns (folder, transformers model)."""
    model = hf_align_model(seed=seed, config=tiny_hf_config())
    return write_hf_checkpoint(folder, model, fmt=fmt), model
