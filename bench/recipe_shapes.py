"""Which training settings let a randomly initialised tiny model learn: zero-shot top-1 on held-out coloured
shapes (9 classes, chance 11%) after the same steps, for ALIGN's fine-tuning settings and `--recipe scratch`.

    python bench/recipe_shapes.py [--steps 200] [--lr 1e-3] [--seeds 0 1 2] [--settings 0 2] [--loss sigmoid]
        [--batch 18] [--bias-init B] [--duplicate-captions positive|negative]

The model starts at temperature 0.1 (SigLIP's t' = log 10); with --loss sigmoid the trainer gives it its logit
bias, at log(1/(N-1)) for the batch N unless --bias-init says otherwise. The 180 training captions name 9
classes, so every caption repeats in a batch (about N/9 times).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the package and tests.helpers

SETTINGS = {
    "ALIGN (bn 0.01, drop-path 0.2, clip 1, crop 0.5-1)": ("finetune", {"crop_scale": (0.5, 1.0)}),
    "--recipe finetune (crop 0.9-1)": ("finetune", {}),
    "--recipe scratch (bn 0.1, drop-path 0, no clip, crop 0.5-1)": ("scratch", {}),
}


def main() -> None:
    import torch

    from align_torch import AlignModel, AlignProcessor
    from align_torch.evaluate import zero_shot_accuracy
    from align_torch.inference.convert import convert
    from align_torch.train import TrainConfig, Trainer
    from tests.helpers.checkpoints import tiny_hf_checkpoint
    from tests.helpers.train_data import write_shapes_classes, write_shapes_manifest

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--loss", choices=("softmax", "sigmoid"), default="softmax", help="ALIGN's loss or SigLIP's")
    p.add_argument(
        "--bias-init", type=float, default=None, help="--loss sigmoid: the logit bias to start from (log(1/(N-1)))"
    )
    p.add_argument("--batch", type=int, default=18, help="pairs per contrastive batch")
    p.add_argument("--duplicate-captions", choices=("positive", "negative"), default="positive")
    p.add_argument("--settings", type=int, nargs="+", default=list(range(len(SETTINGS))), help="rows to run (0-based)")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = convert(tiny_hf_checkpoint(tmp / "hf")[0], tmp / "tiny")
        processor = AlignProcessor.from_pretrained(model_dir)
        train = write_shapes_manifest(tmp / "train", 180)
        held_out = write_shapes_classes(tmp / "held_out", per_class=6)
        bias = "log(1/(N-1))" if args.bias_init is None else f"{args.bias_init:g}"
        print(
            f"{args.steps} steps, batch {args.batch}, lr {args.lr}, {args.loss} loss"
            f"{f' (bias init {bias})' if args.loss == 'sigmoid' else ''}, duplicate captions "
            f"{args.duplicate_captions}, tiny preset from random init; zero-shot top-1 %"
        )
        for row, (name, (recipe, changes)) in enumerate(SETTINGS.items()):
            if row not in args.settings:
                continue
            scores = []
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = AlignModel(AlignModel.from_pretrained(model_dir).config)  # the trainer adds a sigmoid bias
                with torch.no_grad():
                    model.temperature.fill_(0.1)
                cfg = TrainConfig.from_recipe(
                    recipe,
                    model=str(model_dir),
                    train=str(train),
                    out=str(tmp / f"run-{row}-{seed}"),
                    epochs=1000,
                    max_steps=args.steps,
                    batch_size=args.batch,
                    lr=args.lr,
                    warmup=10,
                    seed=seed,
                    loss=args.loss,
                    logit_bias_init=args.bias_init,
                    duplicate_captions=args.duplicate_captions,
                    progress=False,
                    save_every=10**6,
                    **changes,
                )
                Trainer(cfg, model=model, processor=processor).fit()
                scores.append(zero_shot_accuracy(model, processor, held_out, ["a {}"]).top1)
            print(f"| {name} | {' / '.join(f'{s:.0f}' for s in scores)} |", flush=True)


if __name__ == "__main__":
    main()
