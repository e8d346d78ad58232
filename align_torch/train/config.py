"""TrainConfig: every choice a fine-tuning run makes, in one frozen dataclass saved with each checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..templates import DEFAULT_TEMPLATES

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16")

# Fields that must not change between a checkpoint and `--resume`: they decide which sample is next.
RESUME_FIXED = ("train", "batch_size", "grad_accum", "seed", "epochs", "max_steps")


@dataclass(frozen=True)
class TrainConfig:
    """A fine-tuning run. Defaults follow the original ALIGN where it made a choice (see README)."""

    model: str  # folder or Hub id to start from
    train: str  # manifest (.csv/.tsv/.jsonl) or WebDataset shards (.tar file, folder or glob)
    out: str  # run folder: checkpoint.safetensors, metrics.jsonl, final/
    val: str | None = None  # manifest for retrieval recall@K each epoch
    zero_shot_dir: str | None = None  # one sub-folder per class, for zero-shot top-1 each epoch
    templates: str = DEFAULT_TEMPLATES  # template set for zero-shot, the default of `zero-shot` and `eval` too

    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimiser steps (overrides epochs when smaller)
    batch_size: int = 32  # per rank, per micro-batch; the loss contrasts the gathered batch of all ranks
    grad_accum: int = 1  # micro-batches per optimiser step (each micro-batch is its own contrastive batch)
    micro_batch_size: int | None = None  # GradCache: embed the batch in chunks of this many pairs
    max_length: int = 64  # tokens, as ALIGN
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random resized crop: area fraction range
    hflip: bool = False  # off by default: captions may say left or right
    max_unreadable_fraction: float = 0.5  # stop when more of an epoch's images than this cannot be read

    optimizer: str = "adamw"
    lr: float = 1e-5
    weight_decay: float = 1e-5  # ALIGN's; never applied to BN/LN weights, biases or the temperature
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    warmup: int = 0  # optimiser steps of linear warmup
    schedule: str = "cosine"  # decay after warmup, to 0 at the last step
    clip_grad: float | None = 1.0  # max global gradient norm; None: no clipping
    temperature_min: float | None = None  # clamp the learned temperature from below after each step

    label_smoothing: float = 0.1
    bn_momentum: float = 0.01  # PyTorch convention; transformers uses 0.99 (TF's decay, misread)
    drop_path_rate: float = 0.2  # per-sample stochastic depth, block i at rate * i / num_blocks
    freeze_bn: bool = False  # BatchNorm in eval mode throughout: running statistics untouched
    lock_image: bool = False  # LiT: image tower frozen and in eval mode
    lock_text: bool = False

    precision: str = "fp32"
    grad_checkpointing: bool = False
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    log_every: int = 10  # optimiser steps between metrics.jsonl lines
    save_every: int = 500  # optimiser steps between checkpoints (and at each epoch end)
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scale", tuple(float(v) for v in self.crop_scale))
        object.__setattr__(self, "betas", tuple(float(v) for v in self.betas))
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "precision": PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and not 1 <= self.micro_batch_size <= self.batch_size:
            raise ValueError(
                f"micro_batch_size must be between 1 and batch_size ({self.batch_size}), got {self.micro_batch_size}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.warmup < 0 or self.workers < 0:
            raise ValueError("warmup and workers must be 0 or more")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"lr must be > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}"
            )
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 <= self.drop_path_rate < 1 or not 0 <= self.bn_momentum <= 1:
            raise ValueError("drop_path_rate must be in [0, 1) and bn_momentum in [0, 1]")
        if self.lock_image and self.lock_text:
            raise ValueError("lock_image and lock_text together leave nothing to train but the temperature")
        if not 0 <= self.max_unreadable_fraction <= 1:
            raise ValueError(f"max_unreadable_fraction must be in [0, 1], got {self.max_unreadable_fraction}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 (or None for no clipping), got {self.clip_grad}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
