"""Fine-tuning learns: a randomly initialised tiny model, trained on the CPU on coloured shapes captioned
"a red circle", classifies held-out shapes zero-shot far above chance (9 classes, chance 11%)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from align_torch import AlignModel, AlignProcessor
from align_torch.evaluate import zero_shot_accuracy
from align_torch.train import TrainConfig, Trainer
from tests.helpers.train_data import write_shapes_classes, write_shapes_manifest


@pytest.mark.slow
def test_finetuning_a_random_tiny_model_learns_shapes(tiny_native_dir: Path, tmp_path: Path):
    processor = AlignProcessor.from_pretrained(tiny_native_dir)  # its vocabulary covers the captions
    torch.manual_seed(0)
    model = AlignModel(AlignModel.from_pretrained(tiny_native_dir).config)  # fresh random weights
    with torch.no_grad():
        model.temperature.fill_(0.1)  # a trained-like start; from 1.0 the logits span only [-1, 1]
    held_out = write_shapes_classes(tmp_path / "held_out", per_class=6)
    before = zero_shot_accuracy(model, processor, held_out, ["a {}"])
    cfg = TrainConfig(
        model=str(tiny_native_dir),
        train=str(write_shapes_manifest(tmp_path / "train", 180)),
        out=str(tmp_path / "run"),
        epochs=30,  # 10 steps per epoch; over 4 seeds, 120 steps ended anywhere between 35% and 59%
        batch_size=18,
        lr=3e-3,
        warmup=10,
        crop_scale=(0.8, 1.0),
        bn_momentum=0.1,  # running statistics must catch up with a random model within 120 steps
        drop_path_rate=0.0,
        progress=False,
        save_every=1000,
    )
    result = Trainer(cfg, model=model, processor=processor).fit()
    after = zero_shot_accuracy(model, processor, held_out, ["a {}"])
    print(
        f"zero-shot top-1 {before.top1:.1f}% -> {after.top1:.1f}%; loss {result.losses[0]:.3f} -> "
        f"{sum(result.losses[-10:]) / 10:.3f}"
    )
    # Three times chance. Over seeds 0-2 this run ends at 100%, 78% and 46%: the bar is set for any seed,
    # not tuned to the one used here.
    assert after.top1 > 3 * 100 / 9
    assert sum(result.losses[-10:]) / 10 < result.losses[0] - 0.5
