"""align-torch finetune --model M --train MANIFEST --out DIR [...]: contrastive fine-tuning, resumable.

For several GPUs run the same arguments through `torchrun --nproc-per-node N -m align_torch finetune`.
"""

from __future__ import annotations

import argparse
import sys

from ..train.args import add_config_arguments, add_recipe_argument, config_from_args

HELP = "fine-tune a model on image-caption pairs (manifest or WebDataset shards), with resumable checkpoints"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    add_recipe_argument(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.safetensors")
    p.add_argument(
        "--model-class",
        metavar="MODULE:CLASS",
        help="fine-tune this AlignModel subclass from your code (importable), built from --model's config and "
        "weights (default: align_torch.AlignModel)",
    )


def run(args: argparse.Namespace) -> int:
    from ..train import NonFiniteLossError, Trainer

    cfg = config_from_args(args)
    trainer = Trainer(cfg, resume=args.resume, model_class=args.model_class)
    try:
        result = trainer.fit()
    except NonFiniteLossError as e:
        print(f"align-torch finetune: error: {e}", file=sys.stderr)
        return 1
    p = result.progress
    if not trainer.dist.is_main:
        return 0
    print(
        f"trained {p.step} steps ({p.epoch} epochs) on {len(trainer.dataset)} pairs; skipped {p.skipped_images} unreadable images and "
        f"{trainer.skipped_empty_captions} empty captions; {trainer.trainable}; model and processor in "
        f"{result.final_dir}"
    )
    return 0
