"""align-torch finetune --model M --train MANIFEST --out DIR [...]: contrastive fine-tuning, resumable.

For several GPUs run the same arguments through `torchrun --nproc-per-node N -m align_torch.train`.
"""

from __future__ import annotations

import argparse
import sys

from ..templates import TEMPLATE_SETS
from ..train.config import TrainConfig
from ._common import DEVICES

HELP = "fine-tune a model on image-caption pairs (manifest or WebDataset shards), with resumable checkpoints"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig.__dataclass_fields__
    p.add_argument("--model", required=True, help="model folder (native or Hugging Face layout) or Hub repo id")
    p.add_argument(
        "--train",
        required=True,
        help="manifest (.csv/.tsv/.jsonl with image, caption) or .tar shards (file/folder/glob/{a..b})",
    )
    p.add_argument("--val", help="manifest for retrieval recall@1/5/10 after each epoch")
    p.add_argument("--zero-shot-dir", help="folder with one sub-folder per class, for zero-shot top-1 after each epoch")
    p.add_argument(
        "--templates",
        choices=sorted(TEMPLATE_SETS),
        default=d["templates"].default,
        help=f"prompt template set for --zero-shot-dir (default: {d['templates'].default}, as zero-shot and eval)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="run folder: checkpoint.safetensors, metrics.jsonl, final/ (one run at a time: run.lock)",
    )
    p.add_argument("--epochs", type=int, default=d["epochs"].default)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--batch-size", type=int, default=d["batch_size"].default, help="pairs per rank per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--micro-batch-size", type=int, help="GradCache: embed the batch in chunks of this many pairs")
    p.add_argument("--lr", type=float, default=d["lr"].default)
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"].default)
    p.add_argument("--optimizer", choices=("adamw", "lamb"), default="adamw")
    p.add_argument("--warmup", type=int, default=0, help="linear warmup steps")
    p.add_argument("--schedule", choices=("cosine", "linear", "constant"), default="cosine")
    p.add_argument("--clip-grad", type=float, default=d["clip_grad"].default, help="max gradient norm; 0 disables")
    p.add_argument("--temperature-min", type=float, help="clamp the learned temperature from below")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward (both towers)")
    p.add_argument("--freeze-bn", action="store_true", help="BatchNorm uses and keeps its running statistics")
    p.add_argument("--lock-image", action="store_true", help="freeze the image tower (LiT)")
    p.add_argument("--lock-text", action="store_true", help="freeze the text tower and projection")
    p.add_argument("--bn-momentum", type=float, default=d["bn_momentum"].default, help="PyTorch convention")
    p.add_argument("--drop-path-rate", type=float, default=d["drop_path_rate"].default)
    p.add_argument("--hflip", action="store_true", help="random horizontal flips in training")
    p.add_argument(
        "--max-unreadable-fraction",
        type=float,
        default=d["max_unreadable_fraction"].default,
        help="stop when more than this fraction of an epoch's images cannot be read (default: %(default)s)",
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes (0: load in the main process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=d["log_every"].default)
    p.add_argument("--save-every", type=int, default=d["save_every"].default, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.safetensors")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model,
        train=args.train,
        out=args.out,
        val=args.val,
        zero_shot_dir=args.zero_shot_dir,
        templates=args.templates,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        micro_batch_size=args.micro_batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        schedule=args.schedule,
        clip_grad=args.clip_grad or None,
        temperature_min=args.temperature_min,
        bn_momentum=args.bn_momentum,
        drop_path_rate=args.drop_path_rate,
        freeze_bn=args.freeze_bn,
        lock_image=args.lock_image,
        lock_text=args.lock_text,
        hflip=args.hflip,
        max_unreadable_fraction=args.max_unreadable_fraction,
        precision=args.precision,
        grad_checkpointing=args.grad_checkpointing,
        device=args.device,
        workers=args.workers,
        seed=args.seed,
        log_every=args.log_every,
        save_every=args.save_every,
        progress=not args.quiet,
    )


def run(args: argparse.Namespace) -> int:
    from ..train import NonFiniteLossError, Trainer

    trainer = Trainer(config_from_args(args), resume=args.resume)
    try:
        result = trainer.fit()
    except NonFiniteLossError as e:
        print(f"align-torch finetune: error: {e}", file=sys.stderr)
        return 1
    p = result.progress
    if not trainer.dist.is_main:
        return 0
    print(
        f"trained {p.step} steps ({p.epoch} epochs); skipped {p.skipped_images} unreadable images and "
        f"{trainer.skipped_empty_captions} empty captions; model and processor in {result.final_dir}"
    )
    return 0
