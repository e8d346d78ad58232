"""TrainConfig: every choice a fine-tuning run makes, in one frozen dataclass saved with each checkpoint.

Each field carries its help text, and `align-torch finetune`'s options are derived from the fields
(train/args.py), so a knob is written once. What defines the model (BN momentum, drop-path, label
smoothing) lives in the model config: the fields here of that kind only override it for a run, and the
trainer writes the override into the model's config, which `final/config.json` records.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .. import defaults
from ..data.transforms import CROP_RATIO, CROP_SCALE, HFLIP
from ..defaults import TEMPLATES, TEXT_LENGTH
from ..model.config import KNOB_RANGES, LOSSES, check_knob
from ..model.hf_image import IMAGE_POOLINGS
from ..model.hf_text import HF_PREFIX
from ..model.loss import DUPLICATE_CAPTIONS, EXCHANGES
from ..preprocess.templates import TEMPLATE_SETS
from ..util.device import DEVICES
from .lora import DEFAULT_TARGETS

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16")

# Fields that must not change between a checkpoint and `--resume`: they decide which sample is next.
RESUME_FIXED = (
    "train",
    "batch_size",
    "grad_accum",
    "seed",
    "loss",
    "text_tower",
    "image_tower",
    "image_column",
    "caption_column",
    "train_split",
    "model_class",
)
# Fields `align-torch finetune --resume` may change: the run's length and how it is watched, not what it computes.
RESUME_CHANGEABLE = ("epochs", "max_steps", "workers", "device", "log_every", "save_every", "progress")

# Presets for `--recipe`: fields they set unless given explicitly. "finetune" is the dataclass defaults
# (ALIGN's BN momentum and drop-path from the checkpoint, clipping at 1); "scratch" is what a randomly
# initialised or modified small model needs to learn in few steps (measured in docs/finetuning.md, "Recipes").
RECIPES: dict[str, dict[str, Any]] = {
    "finetune": {},
    # Crops of half the area up: the 0.9-1 default suits a trained model; one learning from scratch needs more.
    "scratch": {"bn_momentum": 0.1, "drop_path_rate": 0.0, "clip_grad": 0.0, "crop_scale": (0.5, 1.0)},
}


def renamed_fields(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded train config under today's field names, so that run folders written before a rename resume."""
    out = dict(recorded)
    if "lora_head" in out and "lora_freeze_head" not in out:  # "lora_head": True meant the head trains
        out["lora_freeze_head"] = not out.pop("lora_head")
    return out


def opt(default: Any = dataclasses.MISSING, help: str = "", kw_only: bool = False, **cli: Any) -> Any:
    """A TrainConfig field: its default, its help text and options for its command-line flag. `kw_only` lets a
    field with a default come before fields without one."""
    return field(default=default, kw_only=kw_only, metadata={"help": help, **cli})


def model_knob(what: str) -> Any:
    """A TrainConfig field that overrides a knob of the model config (checked against the model config's own
    range); None keeps the model's value."""
    return opt(None, f"override the model config's {what}", default_text="the model config's")


@dataclass(frozen=True)
class TrainConfig:
    """A fine-tuning run. Defaults follow the original ALIGN where it made a choice (see docs/differences.md)."""

    model: str = opt(
        defaults.MODEL, "model folder (native or Hugging Face layout) or Hub repo id to start from", kw_only=True
    )
    model_class: str | None = opt(
        None,
        "fine-tune this AlignModel subclass from your code (importable), built from --model's config and weights",
        kw_only=True,
        metavar="MODULE:CLASS",
        default_text="the class the --model folder records, else align_torch.AlignModel",
    )
    train: str = opt(
        help="manifest (.csv/.tsv/.jsonl with image, caption), Parquet (.parquet file/folder/glob, images inside or "
        "a path column) or .tar shards (file/folder/glob)"
    )
    out: str = opt(help="run folder: checkpoint.safetensors, metrics.jsonl, final/ (one run at a time: run.lock)")
    val: str | None = opt(None, "manifest or Parquet for retrieval recall@1/5/10 after each epoch")
    image_column: str | None = opt(
        None, "Parquet column of the images ({bytes, path} struct, bytes or paths; default: found by name)"
    )
    caption_column: str | None = opt(
        None, "Parquet column of the captions (a string or a list: a pair per caption; default: found by name)"
    )
    train_split: str | None = opt(None, "only the --train rows whose `split` column equals this (Parquet)")
    val_split: str | None = opt(None, "only the --val rows whose `split` column equals this (Parquet)")
    zero_shot_dir: str | None = opt(None, "folder with one sub-folder per class, for zero-shot top-1 after each epoch")
    templates: str = opt(
        TEMPLATES,
        "prompt template set for --zero-shot-dir, the default of `zero-shot` and `eval` too",
        choices=tuple(sorted(TEMPLATE_SETS)),
    )

    epochs: int = opt(
        1,
        "passes over the training data; a finished run resumed with more goes on as the longer run done in one go "
        "(its schedule recomputed for the new length: under cosine or linear decay the rate rises again)",
    )
    max_steps: int | None = opt(
        None,
        "train exactly this many optimiser steps, over as many epochs as that takes (overrides --epochs); "
        "resuming with more extends the run as --epochs does",
    )
    batch_size: int = opt(32, "pairs per rank per contrastive batch; the loss contrasts the batch of all ranks")
    grad_accum: int = opt(1, "contrastive batches per optimiser step (each its own contrastive batch)")
    micro_batch_size: int | None = opt(
        None, "GradCache: embed each batch in chunks of this many pairs (memory grows with it, not the batch)"
    )
    max_length: int = opt(TEXT_LENGTH, "caption tokens, as ALIGN")
    crop_scale: tuple[float, float] = opt(
        CROP_SCALE,
        "random resized crop: range of the area fraction kept (open_clip's fine-tuning default)",
        metavar=("MIN", "MAX"),
    )
    crop_ratio: tuple[float, float] = opt(CROP_RATIO, "random resized crop: aspect-ratio range", metavar=("MIN", "MAX"))
    hflip: bool = opt(HFLIP, "random horizontal flips (off by default: captions may say left or right)")
    augment: bool = opt(
        True, "no random crop or flip: resize and centre-crop as the eval processor", flag="--no-augment"
    )
    max_unreadable_fraction: float = opt(0.5, "stop when more of an epoch's images than this cannot be read")

    optimizer: str = opt("adamw", "optimiser", choices=OPTIMIZERS)
    lr: float = opt(1e-5, "peak learning rate")
    weight_decay: float = opt(1e-5, "ALIGN's; never applied to BN/LN weights, biases or the temperature")
    betas: tuple[float, float] = opt((0.9, 0.999), "Adam/LAMB betas", metavar=("BETA1", "BETA2"))
    eps: float = opt(1e-6, "Adam/LAMB epsilon")
    warmup: int = opt(0, "optimiser steps of linear warmup")
    schedule: str = opt("cosine", "decay after warmup, to 0 at the last step", choices=SCHEDULES)
    clip_grad: float | None = opt(1.0, "max global gradient norm; 0 disables clipping")
    temperature_min: float | None = opt(None, "clamp the learned temperature from below after each step")

    label_smoothing: float | None = model_knob("label smoothing (align-base: 0.1)")
    loss: str | None = opt(
        None,
        "training loss: softmax (ALIGN's contrastive cross-entropy) or sigmoid (SigLIP: each pair a binary "
        "decision; a model without a logit bias gets one starting at log(1/(N-1)) for the global batch N, the "
        "temperature continues from the model)",
        choices=LOSSES,
        default_text="the model config's (align-base: softmax)",
    )
    logit_bias_init: float | None = opt(
        None,
        "start the sigmoid loss's logit bias here (SigLIP: -10)",
        default_text="the model's bias, or log(1/(N-1)) for the global batch N when it has none",
    )
    temperature_init: float | None = opt(
        None, "start the learned temperature here (SigLIP: 0.1)", default_text="the model's"
    )
    duplicate_captions: str = opt(
        "positive",
        "pairs of a global batch whose captions tokenise identically: positive (each other's matches, for both "
        "losses) or negative (only a pair's own image and caption match, as ALIGN and SigLIP)",
        choices=DUPLICATE_CAPTIONS,
    )
    sigmoid_exchange: str = opt(
        "gather",
        "how --loss sigmoid meets other ranks' texts: gather (all-gather them at once) or ring (SigLIP's chunked "
        "exchange: each rank passes its text chunk to the next, world size - 1 times); both exact",
        choices=EXCHANGES,
    )
    bn_momentum: float | None = model_knob("BN momentum, PyTorch convention (ALIGN: 0.01)")
    drop_path_rate: float | None = model_knob("stochastic depth rate (ALIGN: 0.2)")
    freeze_bn: bool = opt(
        False, "BatchNorm normalises with and keeps its running statistics (exact with micro-batches)"
    )
    text_tower: str | None = opt(
        None,
        f"{HF_PREFIX}PATH_OR_ID: a transformers encoder as the text tower ([CLS] or mean pooling as the model config "
        "says, a new projection); its folder's tokenizer if it has one; needs transformers (align-torch[hf-towers])",
        metavar=f"{HF_PREFIX}PATH_OR_ID",
    )
    image_tower: str | None = opt(
        None,
        f"{HF_PREFIX}PATH_OR_ID: a transformers vision encoder (ConvNeXt, ViT, Dinov2...) as the image tower, a new "
        "image projection; its folder's preprocessor_config.json if it has one; needs transformers "
        "(align-torch[hf-towers])",
        metavar=f"{HF_PREFIX}PATH_OR_ID",
    )
    image_pooling: str | None = opt(
        None,
        "how --image-tower pools: pooler (its own pooler_output) or mean (over its last hidden state)",
        choices=IMAGE_POOLINGS,
        default_text="pooler where the tower has one, else mean",
    )
    lock_image: bool = opt(False, "LiT: freeze the image tower")
    lock_text: bool = opt(False, "freeze the text tower and projection")

    lora_rank: int | None = opt(
        None, "LoRA: train rank-R adapters (and the head) instead of the whole model; needs peft"
    )
    lora_alpha: float | None = opt(
        None, "LoRA scale numerator: adapters are scaled by alpha / rank", default_text="rank"
    )
    lora_targets: tuple[str, ...] = opt(DEFAULT_TARGETS, "LoRA: names of the nn.Linear / 1x1 nn.Conv2d layers adapted")
    lora_freeze_head: bool = opt(False, "LoRA: keep the projections and temperature frozen too")

    fsdp: bool = opt(
        False,
        "under torchrun: FSDP2 instead of DDP, each block of both towers sharded across the ranks (bf16 compute "
        "with --precision bf16 on CUDA); checkpoints and final/ hold the whole model",
    )
    precision: str = opt("fp32", "bf16: autocast for the towers; the loss stays float32", choices=PRECISIONS)
    grad_checkpointing: bool = opt(False, "recompute activations in backward (both towers)")
    device: str = opt("auto", "auto picks cuda, then mps, then cpu", choices=DEVICES)
    workers: int = opt(defaults.image_workers(), "DataLoader processes (0: load in the main process)")
    seed: int = opt(0, "seed for data order, augmentation and drop-path/dropout")
    log_every: int = opt(10, "optimiser steps between metrics.jsonl lines")
    save_every: int = opt(500, "optimiser steps between checkpoints (and at each epoch end)")
    progress: bool = opt(True, "no progress bar", flag="--quiet")

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        for name in ("crop_scale", "crop_ratio", "betas"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.clip_grad == 0:
            object.__setattr__(self, "clip_grad", None)
        choices = {
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "precision": PRECISIONS,
            "device": DEVICES,
            "sigmoid_exchange": EXCHANGES,
            "duplicate_captions": DUPLICATE_CAPTIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.loss is not None and self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
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
        for name in ("crop_scale", "crop_ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi or (name == "crop_scale" and hi > 1):
                raise ValueError(
                    f"{name} must satisfy 0 < min <= max{' <= 1' * (name == 'crop_scale')}, got {(lo, hi)}"
                )
        for name in KNOB_RANGES:  # the model config's own ranges, checked before any model loads
            if getattr(self, name) is not None:
                check_knob("TrainConfig", name, getattr(self, name))
        self._check_towers_and_logits()
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"lora_rank must be at least 1, got {self.lora_rank}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if self.lock_image and self.lock_text:
            raise ValueError("lock_image and lock_text together leave nothing to train but the temperature")
        if not 0 <= self.max_unreadable_fraction <= 1:
            raise ValueError(f"max_unreadable_fraction must be in [0, 1], got {self.max_unreadable_fraction}")
        if self.clip_grad is not None and self.clip_grad < 0:
            raise ValueError(f"clip_grad must be > 0 (or 0 for no clipping), got {self.clip_grad}")
        self._check_fsdp()

    def _check_fsdp(self) -> None:
        """What --fsdp does not combine with yet, refused with the run's options, not only under torchrun."""
        given = [flag for flag, value in (("--lora-rank", self.lora_rank), ("--val", self.val)) if value is not None]
        given += ["--zero-shot-dir"] if self.zero_shot_dir is not None else []
        if self.fsdp and given:
            raise ValueError(f"--fsdp does not yet combine with {' or '.join(given)}")

    def _check_towers_and_logits(self) -> None:
        for side in ("text", "image"):
            tower = getattr(self, f"{side}_tower")
            if tower is not None and not tower.startswith(HF_PREFIX):
                raise ValueError(f"{side}_tower must be {HF_PREFIX}PATH_OR_ID (a transformers model), got {tower!r}")
        if self.temperature_init is not None and not 0 < self.temperature_init < math.inf:
            raise ValueError(f"temperature_init must be a finite number > 0, got {self.temperature_init}")
        if self.logit_bias_init is not None and not math.isfinite(self.logit_bias_init):
            raise ValueError(f"logit_bias_init must be a finite number, got {self.logit_bias_init}")

    @classmethod
    def from_recipe(cls, recipe: str, **fields: Any) -> TrainConfig:
        """A config whose unspecified fields come from RECIPES[recipe], then the dataclass defaults."""
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {recipe!r}")
        return cls(**{**RECIPES[recipe], **fields})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
