"""The fine-tuning loop: one process or DDP, gradient accumulation, clipping, bf16 autocast, periodic
atomic checkpoints with exact resume, evaluation each epoch, and a clean stop on NaN or Ctrl-C."""

from __future__ import annotations

import contextlib
import random
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint.hub import resolve_model
from ..checkpoint.weights import checkpoint_dir, write_native
from ..data import PairList, is_parquet
from ..data.transforms import crop_size
from ..evaluate import retrieval_recall, zero_shot_accuracy
from ..inference.loader import import_model_class, load_model
from ..inference.model_class import follow_model_class
from ..model.align import AlignModel
from ..model.loss import global_loss
from ..preprocess.processor import AlignProcessor
from ..util.class_record import class_record
from ..util.distributed import all_reduce_, barrier, gather_objects, reduce_scalar, setup_distributed
from .config import RESUME_FIXED, TrainConfig
from .data import MANIFEST_SUFFIXES, Batch, Collate, EpochBatches, Pair, PairDataset, TrainTransform, read_pairs
from .fsdp import (
    GatheredModel,
    average_replicated_grads,
    clip_grad_norm,
    full_model_state,
    full_optimizer_state,
    load_full_state,
    local_parameter_count,
    shard_model,
)
from .gradcache import caption_groups, embed_pairs, gradcache_backward
from .guards import (
    EXAMPLES_SHOWN,
    Interrupted,
    NonFiniteLossError,
    StopRequest,
    all_finite,
    check_unreadable,
    ignore_sigint,
)
from .image_tower import swap_image_tower
from .lock import RunLockedError, acquire_run_lock, release_run_lock
from .lora import add_lora, count_trainable, has_lora, merged_copy, save_adapters
from .metrics import MetricsLogger, drop_records_after
from .modes import batch_prior_bias, prepare_model
from .optim import build_optimizer, build_scheduler, resume_schedule
from .presets import preset_model, swap_image_preset, swap_text_preset
from .skipped import SkippedLog, skipped_record
from .state import (
    CHECKPOINT_FILE,
    LEGACY_CHECKPOINT_FILE,
    Checkpoint,
    Progress,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .state_checks import check_model_tensors, check_optimizer, check_run_position, check_scheduler
from .text_tower import swap_text_tower

FINAL_DIR = "final"
ADAPTERS_DIR = "adapters"  # LoRA runs: the adapters alone, beside the merged final/


@dataclass
class StepRecord:
    """What one optimiser step did; passed to callbacks and written (every log_every steps) to metrics.jsonl."""

    step: int
    epoch: int
    loss: float  # mean over the step's micro-batches, of the loss over the global batch
    lr: float
    temperature: float
    pairs_per_s: float
    skipped_images: int


@dataclass
class TrainResult:
    progress: Progress
    losses: list[float] = field(default_factory=list)  # one per optimiser step run in this call
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    final_dir: Path | None = None


def forward_loss(
    model: torch.nn.Module,
    batch: Batch,
    temperature: torch.Tensor,
    label_smoothing: float,
    precision: str = "fp32",
    *,
    logit_bias: torch.Tensor | None = None,
    exchange: str = "gather",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """This rank's share of the loss over the global batch (see global_loss: ALIGN's, or SigLIP's with a
    `logit_bias`; `groups`: the global batch's caption groups, see caption_groups). `model` may be DDP-wrapped;
    the loss itself is computed in float32 (or float64) outside autocast."""
    text, image = embed_pairs(model, batch, precision)
    bias = None if logit_bias is None else logit_bias.to(text.dtype)
    return global_loss(text, image, temperature.to(text.dtype), bias, label_smoothing, exchange, groups)


class Trainer:
    """Fine-tune an AlignModel as `cfg` says. `model`/`processor` default to loading `cfg.model` (the model
    as `model_class`, an AlignModel subclass or 'module:Class', when given, else `cfg.model_class`), resolved once.

    `callbacks` are called as `callback(trainer, record)` after every optimiser step. With `resume=True` the
    run continues from `cfg.out/checkpoint.safetensors` exactly where it stopped (same batches, RNG, schedule).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        model: AlignModel | None = None,
        processor: AlignProcessor | None = None,
        model_class: type[AlignModel] | str | None = None,
        callbacks: Sequence[Callable[[Trainer, StepRecord], None]] = (),
        train_data: Sequence[Mapping] | None = None,
    ) -> None:
        self.cfg = cfg
        self.train_data = train_data  # rows such as a datasets.Dataset, read instead of cfg.train (then a label)
        self.resume = resume
        self.model = model
        self.processor = processor
        # A wrong class name is refused here, before the run folder is locked or anything loads.
        model_class = model_class if model_class is not None else cfg.model_class
        self.model_class = import_model_class(model_class) if isinstance(model_class, str) else model_class
        self.callbacks = list(callbacks)
        self.out = Path(cfg.out)
        self.checkpoint_path = self.out / CHECKPOINT_FILE
        self.progress = Progress()
        self._saved_step: int | None = None
        self.stop = StopRequest()
        self._lock: Path | None = None
        self._last_eval_step: int | None = None
        self._tried, self._unreadable, self._bad_examples = 0, 0, []  # this rank's, since the last sync
        self._skipped: list[dict[str, str]] = []  # this rank's unreadable images since the last sync
        self.logger: MetricsLogger | None = None
        self.skipped_log: SkippedLog | None = None

    def request_stop(self) -> None:
        """Stop at the next step boundary with a checkpoint, as Ctrl-C does (usable from a callback)."""
        self.stop.request()

    # --- setup ----------------------------------------------------------------------------------------
    def _read_data(self) -> tuple[PairList, list[Pair]]:
        """The training pairs (of `train_data` rows when given, else of --train) and the validation pairs."""
        cfg = self.cfg
        columns = dict(image_column=cfg.image_column, caption_column=cfg.caption_column)
        train = read_pairs(
            self.train_data if self.train_data is not None else cfg.train, split=cfg.train_split, **columns
        )
        return train, read_pairs(cfg.val, split=cfg.val_split, **columns).pairs if cfg.val else []

    def _setup(self) -> None:
        """The run's setup as named steps: ranks and lock, model, data, optimiser and schedule, resume, logs."""
        cfg = self.cfg
        self.dist, self.device = setup_distributed(cfg.device)
        self._take_lock()
        checkpoint = self._read_checkpoint()
        seed = cfg.seed + self.dist.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self._setup_model()
        self._setup_data()
        self._setup_optimiser()
        if checkpoint is not None:
            self._load(checkpoint)
        self.ddp = None
        if self.dist.world > 1 and self.replicated is None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self._setup_logs()

    def _read_checkpoint(self) -> Checkpoint | None:
        """The checkpoint to resume from (read, and so checked, before the minutes of loading a model); a
        checkpoint already in --out without --resume is refused."""
        for existing in (self.checkpoint_path, self.out / LEGACY_CHECKPOINT_FILE):
            if not self.resume and existing.exists():
                raise FileExistsError(f"{existing} exists: pass --resume to continue that run, or choose another --out")
        checkpoint = load_checkpoint(self.checkpoint_path) if self.resume else None
        val = self.cfg.val
        if val is not None and not (val.endswith(MANIFEST_SUFFIXES) or is_parquet(val)):
            raise ValueError(f"--val must be a manifest ({', '.join(MANIFEST_SUFFIXES)}) or Parquet, got {val!r}")
        return checkpoint

    def _setup_model(self) -> None:
        """Model and processor (cfg.preset built, else cfg.model resolved once, unless given), towers, training
        modes, LoRA."""
        cfg = self.cfg
        if cfg.preset is not None and (self.model is None or self.processor is None):
            self.model, self.processor = preset_model(cfg.preset, cfg.seed)
        elif self.model is None or self.processor is None:
            source = resolve_model(cfg.model)
            self.model = self.model or load_model(source, "cpu", model_class=self.model_class)
            self.processor = self.processor or AlignProcessor.from_pretrained(source.folder)
        self.model_class = type(self.model)  # the class built, before FSDP wraps it: what checkpoints record
        self._prepare_model(log_start=not self.resume)
        if cfg.lora_rank is not None:
            self.trainable = add_lora(self.model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.lora_freeze_head)
        else:
            self.trainable = count_trainable(self.model)
        self.model.to(self.device).train()

    def _setup_data(self) -> None:
        """Training pairs, their transform and collate, validation pairs, and the run's length in steps."""
        cfg = self.cfg
        pairs, self.val_pairs = self._read_data()
        image_processor = self.processor.image_processor
        crop = crop_size(image_processor)
        transform = (
            TrainTransform(image_processor, size=crop, scale=cfg.crop_scale, ratio=cfg.crop_ratio, hflip=cfg.hflip)
            if cfg.augment
            else None
        )
        self.dataset = PairDataset(pairs.pairs, image_processor, transform, seed=cfg.seed)
        self.collate = Collate(self.processor.tokenizer, cfg.max_length, crop)
        self.skipped_empty_captions = pairs.skipped_empty_captions
        batches = EpochBatches.per_epoch(len(self.dataset), cfg.batch_size, self.dist.world)
        self.steps_per_epoch = batches // cfg.grad_accum
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.dataset)} training pairs give no full optimiser step: batch {cfg.batch_size} x "
                f"{self.dist.world} ranks x {cfg.grad_accum} accumulation"
            )
        # --max-steps is the run's length, over as many epochs as it takes (as transformers' max_steps).
        self.total_steps = cfg.epochs * self.steps_per_epoch if cfg.max_steps is None else cfg.max_steps

    def _setup_optimiser(self) -> None:
        """FSDP sharding when asked (before the optimiser sees the parameters), then optimiser and schedule."""
        self.replicated: list[torch.nn.Parameter] | None = None  # set when FSDP shards the model
        if self.cfg.fsdp and self.dist.world > 1:
            self._shard()
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.total_steps)

    def _setup_logs(self) -> None:
        """metrics.jsonl and skipped.jsonl on rank 0 (records after the resumed step dropped), and on every rank
        whether the final evaluation already ran (it has a barrier, so all ranks must agree)."""
        last_eval = None
        if self.dist.is_main:
            last_eval = drop_records_after(
                self.out, self.progress.step, self.progress.epoch, eval_pending=self._epoch_done()
            )
            self.logger = MetricsLogger(self.out)
            self.skipped_log = SkippedLog(self.out)
        last_eval = int(
            all_reduce_(torch.tensor(-1 if last_eval is None else last_eval, device=self.device), "max").item()
        )
        self._last_eval_step = None if last_eval < 0 else last_eval

    def _prepare_model(self, log_start: bool) -> None:
        """Swap in the run's towers, then apply its training semantics and logit start (prepare_model)."""
        cfg = self.cfg
        if cfg.text_tower is not None and self.model.config.text_tower != cfg.text_tower:
            self.model, self.processor = swap_text_tower(self.model, cfg.text_tower, self.processor)
        if cfg.image_preset is not None:
            self.model, self.processor = swap_image_preset(self.model, cfg.image_preset, self.processor)
        if cfg.text_preset is not None:
            self.model, self.processor = swap_text_preset(self.model, cfg.text_preset, self.processor)
        if cfg.image_tower is not None and self.model.config.image_tower != cfg.image_tower:
            self.model, self.processor = swap_image_tower(
                self.model, cfg.image_tower, self.processor, cfg.image_pooling
            )
        bias_start = self._logit_bias_start()
        from_prior = cfg.logit_bias_init is None and cfg.loss == "sigmoid" and self.model.logit_bias is None
        self._hooks = prepare_model(
            self.model,
            bn_momentum=cfg.bn_momentum,
            drop_path_rate=cfg.drop_path_rate,
            label_smoothing=cfg.label_smoothing,
            freeze_bn=cfg.freeze_bn,
            lock_image=cfg.lock_image,
            lock_text=cfg.lock_text,
            grad_checkpointing=cfg.grad_checkpointing,
            loss=cfg.loss,
            logit_bias_init=bias_start,
            # The start is recorded in the model config (final/config.json) even where it is the model's own.
            temperature_init=cfg.temperature_init or float(self.model.temperature.detach()),
        )
        if log_start and self.dist.is_main and self.cfg.progress:
            print(self._logit_start_line(from_prior), file=sys.stderr, flush=True)

    def _logit_bias_start(self) -> float | None:
        """--logit-bias-init, else for a model that gets its sigmoid bias now the batch prior log(1/(N-1)) of
        the global contrastive batch N (SigLIP's -10 suits only N of ~22,000), else None: the model's own."""
        cfg, bias = self.cfg, self.model.logit_bias
        if cfg.logit_bias_init is not None or (bias is None and cfg.loss != "sigmoid"):
            return cfg.logit_bias_init
        return float(bias.detach()) if bias is not None else batch_prior_bias(cfg.batch_size * self.dist.world)

    def _logit_start_line(self, prior: bool) -> str:
        """Where the logits start, for the log (the model config, saved with every checkpoint, records it)."""
        line = f"logits start at temperature {float(self.model.temperature.detach()):.4g}"
        if self.model.logit_bias is not None:
            line += f", logit bias {float(self.model.logit_bias.detach()):.4g}"
            if prior:
                line += f" (log 1/(N-1), global batch N = {self.cfg.batch_size * self.dist.world})"
        return line + f"; duplicate captions: {self.cfg.duplicate_captions}"

    def _shard(self) -> None:
        """FSDP2 in place of DDP (TrainConfig refuses what it does not combine with yet); every rank prints how
        much of the model it holds."""
        self.replicated = shard_model(self.model, self.device, self.cfg.precision)
        local, total = local_parameter_count(self.model)
        print(f"fsdp: rank {self.dist.rank} holds {local:,} of {total:,} parameters", file=sys.stderr, flush=True)

    def _take_lock(self) -> None:
        """Rank 0 locks the run folder; every rank stops if it could not."""
        error = None
        if self.dist.is_main:
            try:
                self._lock = acquire_run_lock(self.out)
            except RunLockedError as e:
                error = e
        if all_reduce_(torch.tensor(int(error is not None), device=self.device), "max").item():
            raise error or RunLockedError(f"rank 0 could not lock {self.out}")

    def _load(self, checkpoint: Checkpoint) -> None:
        saved = checkpoint.train_config
        changed = [k for k in RESUME_FIXED if saved.get(k) != getattr(self.cfg, k)]
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(self.cfg, k)!r}" for k in changed)
            raise ValueError(f"cannot resume {self.checkpoint_path} with a different {detail}")
        path = self.checkpoint_path
        follow_model_class(self.model_class, checkpoint.model_class, f"the run in {str(self.out)!r}")
        check_run_position(path, checkpoint.progress, self.total_steps, self.cfg.grad_accum)
        check_optimizer(path, checkpoint.optimizer, self.optimizer)
        check_scheduler(path, checkpoint.scheduler, self.scheduler, checkpoint.progress.step)
        check_model_tensors(path, checkpoint.model, self.model)
        if self.replicated is not None:
            load_full_state(self.model, self.optimizer, checkpoint.model, checkpoint.optimizer)
        else:
            self.model.load_state_dict(checkpoint.model)
            self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)
        self.progress = checkpoint.progress
        resume_schedule(self.scheduler, self.progress.step)
        self._say_schedule(checkpoint)
        self._saved_step = self.progress.step
        rng = checkpoint.rng
        if len(rng) == self.dist.world:
            set_rng_state(rng[self.dist.rank])
        else:
            warnings.warn(
                f"checkpoint has RNG states for {len(rng)} ranks, this run has {self.dist.world}: drop-path and "
                "dropout masks are reseeded (the data order is unaffected)",
                stacklevel=2,
            )

    def _say_schedule(self, checkpoint: Checkpoint) -> None:
        """A run extended (more --epochs or --max-steps) goes on as the longer run done in one go: its schedule is
        recomputed for the new length, so the rate changes from the one saved; say so (rank 0)."""
        saved = [g.get("lr") for g in checkpoint.optimizer["param_groups"]]
        now = [g["lr"] for g in self.optimizer.param_groups]
        if self.dist.is_main and saved and saved[0] is not None and abs(saved[0] - now[0]) > 1e-12 * max(now[0], 1):
            print(
                f"align-torch finetune: note: the {self.cfg.schedule} schedule is recomputed for {self.total_steps} "
                f"steps, so the learning rate at step {self.progress.step} is {now[0]:.3g} (the checkpoint saved "
                f"{saved[0]:.3g}); the run goes on as if planned this long from the start",
                file=sys.stderr,
            )

    # --- checkpoints ----------------------------------------------------------------------------------
    def save(self) -> None:
        """Write checkpoint.safetensors (rank 0) with every rank's RNG state. Called at step boundaries only,
        after the step's finiteness checks, so the checkpoint is always one a run can continue from exactly."""
        states = gather_objects(rng_state())
        whole = {}
        if self.replicated is not None:  # collectives: every rank gathers, rank 0 receives
            whole = {
                "model_state": full_model_state(self.model),
                "optimizer_state": full_optimizer_state(self.model, self.optimizer),
            }
        if self.dist.is_main:
            try:
                save_checkpoint(
                    self.checkpoint_path,
                    model=self.model,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                    progress=self.progress,
                    train_config=self.cfg.to_dict(),
                    model_class=class_record(self.model_class),
                    rng_states=states,
                    **whole,
                )
            except OSError as e:
                kept = (
                    f"the previous checkpoint (step {self._saved_step}) is intact"
                    if self._saved_step is not None
                    else "no checkpoint had been written yet"
                )
                raise OSError(
                    f"could not write {self.checkpoint_path} at step {self.progress.step} ({e.strerror or e}); {kept}"
                ) from None
        self._saved_step = self.progress.step
        barrier()

    def save_final(self) -> Path:
        """The trained model in native format with the processor files, at out/final (rank 0)."""
        final = self.out / FINAL_DIR
        model = self.model
        if self.replicated is not None:  # a collective: the shards gathered whole to rank 0
            model = GatheredModel(self.model.config, full_model_state(self.model))
        if self.dist.is_main:
            lora = has_lora(self.model)
            # A final/ from an earlier run on this --out is replaced; a folder that is not a checkpoint is refused.
            with checkpoint_dir(final, overwrite=True) as tmp:
                write_native(merged_copy(self.model) if lora else model, tmp, model_class=self.model_class)
                self.processor.save_pretrained(tmp)
            if lora:
                save_adapters(self.model, self.out / ADAPTERS_DIR)
        barrier()
        return final

    # --- the loop -------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to the end (epochs or max_steps), evaluating each epoch; returns what happened. Ctrl-C stops
        at the next step boundary with a checkpoint and raises `Interrupted` (a KeyboardInterrupt)."""
        try:
            with self.stop.on_sigint():
                self._setup()
                return self._fit()
        finally:
            if self._lock is not None:
                release_run_lock(self._lock)
                self._lock = None

    def _fit(self) -> TrainResult:
        result = TrainResult(progress=self.progress)
        bar = tqdm(
            total=self.total_steps,
            initial=self.progress.step,
            unit="step",
            file=sys.stderr,
            disable=not (self.dist.is_main and self.cfg.progress),
        )
        try:
            while self.progress.step < self.total_steps:
                self._run_epoch(result, bar)
            if self._last_eval_step != self.progress.step:
                self._evaluate(result)
            self.save()
            result.final_dir = self.save_final()
        except Interrupted:
            bar.write(f"interrupted: checkpoint at step {self.progress.step} saved to {self.checkpoint_path}")
            raise
        except KeyboardInterrupt:
            bar.write(f"interrupted mid-step: nothing saved; {self._last_good()}")
            raise
        finally:
            bar.close()
            if self.logger is not None:
                self.logger.close()
            if self.skipped_log is not None:
                self.skipped_log.close()
        result.progress = self.progress
        return result

    def _loader(self) -> DataLoader:
        p, cfg = self.progress, self.cfg
        sampler = EpochBatches(
            len(self.dataset), cfg.batch_size, p.epoch, cfg.seed, self.dist.rank, self.dist.world, start=p.batch
        )
        # Its own generator, so creating the iterator draws nothing from the global RNG (drop-path, dropout).
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + p.epoch)
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=cfg.workers,
            generator=generator,
            worker_init_fn=ignore_sigint,
            pin_memory=self.device.type == "cuda",
        )

    def _run_epoch(self, result: TrainResult, bar: tqdm) -> None:
        cfg, p = self.cfg, self.progress
        batches = iter(self._loader())
        while p.batch < self.steps_per_epoch * cfg.grad_accum and p.step < self.total_steps:
            record = self._step(batches)
            if record is not None:
                result.losses.append(record.loss)
                bar.update(1)
                bar.set_postfix(loss=f"{record.loss:.4f}", epoch=record.epoch)  # 0-based, as metrics.jsonl
                if self.logger is not None and (record.step % cfg.log_every == 0 or record.step == 1):
                    self.logger.log({"type": "train", **asdict(record)})
                for callback in self.callbacks:
                    callback(self, record)
            stop = self._sync_step()
            if record is not None and p.step % cfg.save_every == 0:
                self.save()
            if stop:
                self._stop_here()
        if p.batch >= self.steps_per_epoch * cfg.grad_accum:
            p.epoch, p.batch = p.epoch + 1, 0
            p.epoch_images = p.epoch_unreadable = 0
            self._evaluate(result)
            self.save()
            if all_reduce_(torch.tensor(int(self.stop.requested), device=self.device), "max").item():
                self._stop_here()

    def _sync_step(self) -> bool:
        """After each step, on every rank: add up the images tried and unreadable, stop on too many unreadable,
        and agree on whether any rank was asked to stop (so all ranks stop at the same step boundary)."""
        p, cfg = self.progress, self.cfg
        counts = all_reduce_(
            torch.tensor([self._tried, self._unreadable, int(self.stop.requested)], device=self.device), "sum"
        )
        p.epoch_images += int(counts[0])
        p.epoch_unreadable += int(counts[1])
        self._tried = self._unreadable = 0
        if counts[1]:  # some rank met an unreadable image: name it in skipped.jsonl (once per file)
            gathered = gather_objects(self._skipped)
            if self.skipped_log is not None:
                self.skipped_log.add(record for records in gathered for record in records)
        self._skipped = []
        check_unreadable(
            p,
            source=cfg.train,
            max_fraction=cfg.max_unreadable_fraction,
            epoch_images=self.steps_per_epoch * cfg.grad_accum * cfg.batch_size * self.dist.world,
            examples=self._bad_examples,
        )
        return bool(counts[2])

    def _stop_here(self) -> None:
        if self._saved_step != self.progress.step:
            self.save()
        raise Interrupted

    def _step(self, batches) -> StepRecord | None:
        """One optimiser step: forward, loss and backward over grad_accum micro-batches, then the update and the
        step's record; None when every micro-batch was empty."""
        start = time.perf_counter()
        losses, pairs = self._accumulate(batches)
        self.progress.batch += self.cfg.grad_accum
        if not losses:
            return None
        lr = self._update()
        return self._record(losses, pairs, lr, start)

    def _accumulate(self, batches) -> tuple[list[torch.Tensor], int]:
        """grad_accum micro-batches through forward, loss and backward: (their losses, the pairs they held)."""
        cfg = self.cfg
        losses, pairs, synced = [], 0, False
        for micro in range(cfg.grad_accum):
            batch: Batch = next(batches)
            self._count_failures(batch)
            # Every rank must take part in every collective: skip a micro-batch on all ranks if any is empty.
            if reduce_scalar(len(batch), "min", self.device) == 0:
                self.progress.skipped_batches += 1
                continue
            last = micro == cfg.grad_accum - 1
            losses.append(self._forward_backward(batch.to(self.device), last))
            pairs += len(batch)
            synced = last
        if losses and self.ddp is not None and not synced:
            self._sync_gradients()
        return losses, pairs

    def _count_failures(self, batch: Batch) -> None:
        """A micro-batch's unreadable images: counted, and kept for skipped.jsonl and the unreadable check."""
        self.progress.skipped_images += len(batch.failures)
        self._tried += len(batch) + len(batch.failures)
        self._unreadable += len(batch.failures)
        self._bad_examples += [reason for _, reason in batch.failures][: EXAMPLES_SHOWN - len(self._bad_examples)]
        self._skipped += [skipped_record(self.dataset.pairs[i], reason) for i, reason in batch.failures]

    def _forward_backward(self, batch: Batch, last: bool) -> torch.Tensor:
        """One micro-batch: forward, the loss over the global batch, backward of loss / grad_accum (GradCache's
        chunks with --micro-batch-size); DDP syncs gradients on the last micro-batch only. The loss, detached."""
        cfg, model = self.cfg, self.ddp or self.model
        temperature, smoothing = self.model.temperature, self.model.config.label_smoothing
        groups = caption_groups(batch, cfg.duplicate_captions)  # a collective: every rank, every micro-batch
        loss_options = dict(logit_bias=self.model.logit_bias, exchange=cfg.sigmoid_exchange, groups=groups)
        if cfg.micro_batch_size is not None:
            return gradcache_backward(
                model,
                batch,
                temperature,
                smoothing,
                cfg.micro_batch_size,
                cfg.precision,
                scale=1 / cfg.grad_accum,
                sync=last,
                check_loss=self._check_finite,
                **loss_options,
            )
        with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
            loss = forward_loss(model, batch, temperature, smoothing, cfg.precision, **loss_options)
            self._check_finite(loss)
            (loss / cfg.grad_accum).backward()
        return loss.detach()

    def _update(self) -> float:
        """Gradients averaged, checked and clipped; optimiser and schedule stepped; temperature clamped; weights
        checked. Returns the learning rate the step used."""
        cfg = self.cfg
        if self.replicated is not None:
            average_replicated_grads(self.replicated)
        self._check_tensors("gradients", [q.grad for q in self.model.parameters() if q.grad is not None])
        if cfg.clip_grad is not None:
            if self.replicated is not None:
                clip_grad_norm(self.model, cfg.clip_grad, self.replicated)
            else:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses; the scheduler then moves on
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.temperature_min is not None:
            with torch.no_grad():
                self.model.temperature.clamp_(min=cfg.temperature_min)
        # Before anything can save them: a step that broke the weights must never become "the last good".
        self._check_tensors("weights", [*self.model.parameters(), *self.model.buffers()])
        self.progress.step += 1
        return lr

    def _record(self, losses: list[torch.Tensor], pairs: int, lr: float, start: float) -> StepRecord:
        """The step's record: its loss and pairs/s over all ranks."""
        loss = all_reduce_(torch.stack(losses).mean().float(), "sum").item() / self.dist.world
        pairs = int(reduce_scalar(pairs, "sum", self.device))
        return StepRecord(
            step=self.progress.step,
            epoch=self.progress.epoch,
            loss=loss,
            lr=lr,
            temperature=float(self.model.temperature.detach()),
            pairs_per_s=pairs / (time.perf_counter() - start),
            skipped_images=self.progress.skipped_images,
        )

    def _last_good(self) -> str:
        if self._saved_step is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint is {self.checkpoint_path} (step {self._saved_step}), untouched"

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = all_reduce_((~torch.isfinite(loss.detach())).float(), "max").item() > 0
        if bad:
            raise NonFiniteLossError(
                f"loss is {float(loss.detach())} at step {self.progress.step + 1} (epoch {self.progress.epoch}, 0-based); "
                f"stopping. {self._last_good()}. Try a lower --lr, --precision fp32, or --clip-grad."
            )

    def _check_tensors(self, what: str, tensors: list[torch.Tensor]) -> None:
        bad = reduce_scalar(float(not all_finite(tensors)), "max", self.device) > 0
        if bad:
            raise NonFiniteLossError(
                f"{what} are not finite at step {self.progress.step + 1} (epoch {self.progress.epoch}, 0-based); "
                f"stopping before saving. {self._last_good()}. Try a lower --lr or --clip-grad."
            )

    def _sync_gradients(self) -> None:
        """Average gradients by hand when the micro-batch that would have triggered DDP's sync was skipped."""
        for param in self.model.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad /= self.dist.world

    def _epoch_done(self) -> bool:
        """Whether every batch of the current epoch ran (its end, and evaluation, are still to come)."""
        return self.progress.batch >= self.steps_per_epoch * self.cfg.grad_accum

    def _share_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics): DDP broadcasts them before each forward,
        so after the last one each rank holds its own batch's update, and the evaluation must see one model."""
        for buffer in self.model.buffers():
            dist.broadcast(buffer, src=0)

    def _evaluate(self, result: TrainResult) -> None:
        """Evaluate on every rank, each embedding its share of the images and texts (gathered in input order);
        rank 0 writes the record. A collective: every rank calls it at the same step."""
        cfg, p = self.cfg, self.progress
        if not (self.val_pairs or cfg.zero_shot_dir):
            return
        # `epoch` is the 0-based epoch of the last step evaluated, as in the train records: at the end of an
        # epoch the progress has already moved on to the next one.
        epoch = p.epoch - 1 if p.batch == 0 and p.epoch > 0 else p.epoch
        record: dict[str, Any] = {"type": "eval", "step": p.step, "epoch": epoch}
        distributed = self.dist.world > 1
        if distributed:
            self._share_buffers()
        common = dict(progress=cfg.progress and self.dist.is_main, distributed=distributed)
        if self.val_pairs:
            pairs = [(pair.image, pair.caption) for pair in self.val_pairs]
            res = retrieval_recall(self.model, self.processor, pairs, batch_size=cfg.batch_size, **common)
            record |= res.as_dict("val/")
        if cfg.zero_shot_dir:
            res = zero_shot_accuracy(self.model, self.processor, cfg.zero_shot_dir, cfg.templates, **common)
            record |= res.as_dict("zero_shot/")
        if self.logger is not None:
            self.logger.log(record)
            tqdm.write(
                "eval: " + ", ".join(f"{k}={v:.2f}" for k, v in record.items() if isinstance(v, float)), file=sys.stderr
            )
        result.evaluations.append(record)
        self._last_eval_step = p.step
        barrier()
