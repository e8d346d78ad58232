"""align-torch finetune --model M --train MANIFEST --out DIR [...]: contrastive fine-tuning, resumable.

For several GPUs run the same arguments through `torchrun --nproc-per-node N -m align_torch finetune`.
"""

from __future__ import annotations

import argparse
import sys

from ..train.args import add_config_arguments, add_recipe_argument, config_from_args, resumed_config

HELP = "fine-tune a model on image-caption pairs (manifest or WebDataset shards), with resumable checkpoints"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, optional=("train",))
    add_recipe_argument(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint.safetensors with the options it recorded (model and "
        "--model-class included): other options are refused, except --epochs/--max-steps (extend the run) and "
        "--workers, --device, --log-every, --save-every, --quiet",
    )


def run(args: argparse.Namespace) -> int:
    from ..train import NonFiniteLossError, Trainer

    cfg = _resumed_config(args) if args.resume else config_from_args(args)
    trainer = Trainer(cfg, resume=args.resume)
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


def _resumed_config(args: argparse.Namespace):
    """The recorded run's config, checked against the given options from the checkpoint's header alone, before
    any weights load; the model class recorded is checked too (a changed module source is refused)."""
    from pathlib import Path

    from ..inference.model_class import follow_model_class
    from ..train.state import CHECKPOINT_FILE, read_run_record

    path = Path(args.out) / CHECKPOINT_FILE
    recorded, model_class = read_run_record(path)
    cfg, notes = resumed_config(args, recorded, str(path))
    built = follow_model_class(cfg.model_class, model_class, f"the run in {args.out!r}")
    if cfg.model_class is None and built is not None:  # the class came from the model folder's record
        cfg = cfg.replace(model_class=model_class["class"])
    for note in notes:
        print(f"align-torch finetune: resuming with {note}", file=sys.stderr)
    return cfg
