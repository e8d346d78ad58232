"""The starter model (`align-torch init`) behaves like a trained model's skeleton, not a collapsed one: the
towers are initialised as in their papers' code and the BatchNorm statistics measured on generated images, so
activations keep their scale through every stage, photos embed to distinct unit vectors, and a short
fine-tuning run does not map every image to one vector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from align_torch import AlignModel, AlignProcessor
from align_torch.data import list_images
from align_torch.train import TrainConfig, Trainer
from align_torch.train.starter import write_starter_checkpoint
from tests.helpers.job_data import photo
from tests.helpers.train_data import write_shapes_classes, write_shapes_manifest

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


@pytest.fixture(scope="module")
def starter(tmp_path_factory) -> Path:
    return write_starter_checkpoint(tmp_path_factory.mktemp("starter") / "model")


def _cosine_spread(model: AlignModel, processor: AlignProcessor, images: list) -> tuple[float, float]:
    """(std, max - min) of the pairwise cosine similarities of the images' embeddings."""
    with torch.no_grad():
        emb = model.encode_image(processor(images=images)["pixel_values"], normalize=True)  # (N, P)
    cos = (emb @ emb.T)[~torch.eye(len(images), dtype=torch.bool)]
    return cos.std().item(), (cos.max() - cos.min()).item()


def test_starter_photo_embeddings_are_unit_and_every_stage_keeps_its_scale(starter: Path):
    model, processor = AlignModel.from_pretrained(starter), AlignProcessor.from_pretrained(starter)
    pixels = processor(images=[photo(name) for name in PHOTOS])["pixel_values"]
    with torch.no_grad():
        embeds = model.encode_image(pixels, normalize=True)
        inter = model.forward_intermediates(pixel_values=pixels)
    assert (embeds.norm(dim=-1) - 1).abs().max() <= 1e-5
    stem = inter.image_hidden_states[0].std().item()
    spreads = [s.std().item() for s in inter.image_stage_outputs]
    assert all(stem / 100 <= s <= stem * 100 for s in spreads), (stem, spreads)


@pytest.mark.slow
def test_starter_does_not_collapse_after_20_steps_of_fine_tuning(starter: Path, tmp_path: Path):
    """Notebook 03's settings (batch 8, lr 1e-4, the default finetune recipe) on the shapes task: the held-out
    shapes' pairwise cosine similarities keep a spread (today's starter collapsed to one vector in 6 steps)."""
    cfg = TrainConfig(
        model=str(starter),
        train=str(write_shapes_manifest(tmp_path / "train", 72)),
        out=str(tmp_path / "run"),
        epochs=3,  # 9 steps each: max_steps ends the run
        max_steps=20,
        batch_size=8,
        lr=1e-4,
        warmup=2,
        progress=False,
        workers=0,
        save_every=10**6,
    )
    result = Trainer(cfg).fit()
    assert result.progress.step == 20
    model = AlignModel.from_pretrained(result.final_dir)
    processor = AlignProcessor.from_pretrained(result.final_dir)
    held_out = list_images(write_shapes_classes(tmp_path / "held_out", per_class=2))
    std, span = _cosine_spread(model, processor, [Image.open(path).convert("RGB") for path in held_out])
    print(f"pairwise cosine after 20 steps: std {std:.4f}, max - min {span:.4f}")
    assert std >= 0.02 and span >= 0.1, (std, span)
