"""TrainConfig is the one list of a run's options: `finetune --help` shows every field with help and its
default, the parsed options build the config, recipes fill what is not given, and the model-defining knobs
live in the model config (an override is written there, so final/config.json records what trained)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from align_torch import AlignModel
from align_torch.model.efficientnet import DropPath
from align_torch.train import TrainConfig, Trainer
from align_torch.train.args import add_config_arguments, add_recipe_argument, config_from_args
from tests.helpers.train_data import write_shapes_manifest


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune")
    add_config_arguments(p, optional=("train",))  # as finetune does: a resume finds --train recorded
    add_recipe_argument(p)
    return p


REQUIRED = ["--model", "m", "--train", "t.csv", "--out", "o"]


# Every field's `finetune` flag, written out: the field name with dashes, except the switches whose flag says
# what giving it does. A new TrainConfig field adds its flag here, which is the command line users type.
FLAGS = {
    **{
        name: "--" + name
        for name in (
            "model train out val templates epochs optimizer lr betas eps warmup schedule hflip precision device "
            "workers seed"
        ).split()
    },
    "model_class": "--model-class",
    "image_column": "--image-column",
    "caption_column": "--caption-column",
    "train_split": "--train-split",
    "val_split": "--val-split",
    "zero_shot_dir": "--zero-shot-dir",
    "max_steps": "--max-steps",
    "batch_size": "--batch-size",
    "grad_accum": "--grad-accum",
    "micro_batch_size": "--micro-batch-size",
    "max_length": "--max-length",
    "crop_scale": "--crop-scale",
    "crop_ratio": "--crop-ratio",
    "augment": "--no-augment",
    "max_unreadable_fraction": "--max-unreadable-fraction",
    "weight_decay": "--weight-decay",
    "clip_grad": "--clip-grad",
    "temperature_min": "--temperature-min",
    "label_smoothing": "--label-smoothing",
    "bn_momentum": "--bn-momentum",
    "drop_path_rate": "--drop-path-rate",
    "freeze_bn": "--freeze-bn",
    "lock_image": "--lock-image",
    "lock_text": "--lock-text",
    "lora_rank": "--lora-rank",
    "loss": "--loss",
    "sigmoid_exchange": "--sigmoid-exchange",
    "logit_bias_init": "--logit-bias-init",
    "temperature_init": "--temperature-init",
    "duplicate_captions": "--duplicate-captions",
    "text_tower": "--text-tower",
    "image_tower": "--image-tower",
    "image_pooling": "--image-pooling",
    "fsdp": "--fsdp",
    "lora_alpha": "--lora-alpha",
    "lora_targets": "--lora-targets",
    "lora_freeze_head": "--lora-freeze-head",
    "grad_checkpointing": "--grad-checkpointing",
    "log_every": "--log-every",
    "save_every": "--save-every",
    "progress": "--quiet",
}


def test_help_lists_every_field_with_its_default():
    parser = _parser()
    text = parser.format_help()
    actions = {a.dest: a for a in parser._actions}
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(FLAGS)
    for f in dataclasses.fields(TrainConfig):
        flag = FLAGS[f.name]
        assert flag in text and actions[f.name].option_strings == [flag], f.name
        assert actions[f.name].help.startswith(f.metadata["help"].replace("%", "%%")), f.name
        if f.default is not dataclasses.MISSING:
            assert "(default: " in actions[f.name].help, f.name
        else:  # no default to show, even where a resume frees the option from being required
            assert "(default: " not in actions[f.name].help, f.name
    assert "_MISSING_TYPE" not in text
    assert "(default: 0.9 1)" in " ".join(text.split())  # crop scale, open_clip's fine-tuning default


def test_parsed_options_build_the_config():
    args = _parser().parse_args(
        REQUIRED
        + [
            "--crop-scale",
            "0.5",
            "1",
            "--clip-grad",
            "0",
            "--no-augment",
            "--quiet",
            "--micro-batch-size",
            "4",
            "--betas",
            "0.8",
            "0.9",
            "--drop-path-rate",
            "0",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.crop_scale == (0.5, 1.0) and cfg.betas == (0.8, 0.9)
    assert cfg.clip_grad is None and cfg.augment is False and cfg.progress is False
    assert cfg.micro_batch_size == 4 and cfg.drop_path_rate == 0.0
    assert cfg.bn_momentum is None and cfg.lr == 1e-5  # the default peak learning rate, written out
    assert config_from_args(_parser().parse_args(REQUIRED)) == TrainConfig(model="m", train="t.csv", out="o")


def test_recipe_fills_what_is_not_given():
    scratch = config_from_args(_parser().parse_args(REQUIRED + ["--recipe", "scratch"]))
    assert (scratch.bn_momentum, scratch.drop_path_rate, scratch.clip_grad) == (0.1, 0.0, None)
    given = config_from_args(_parser().parse_args(REQUIRED + ["--recipe", "scratch", "--bn-momentum", "0.05"]))
    assert given.bn_momentum == 0.05 and given.drop_path_rate == 0.0
    finetune = config_from_args(_parser().parse_args(REQUIRED))
    assert (finetune.bn_momentum, finetune.drop_path_rate, finetune.clip_grad) == (None, None, 1.0)
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig.from_recipe("fast", model="m", train="t", out="o")


@pytest.mark.parametrize("override", [None, 0.3], ids=["model-config", "override"])
def test_training_uses_and_records_the_model_configs_knobs(tiny_native_dir: Path, tmp_path: Path, override):
    loaded = AlignModel.from_pretrained(tiny_native_dir)
    vision = dataclasses.replace(loaded.config.vision, drop_path_rate=0.0, bn_momentum=0.05)
    model = AlignModel(loaded.config.replace(vision=vision, label_smoothing=0.0))
    model.load_state_dict(loaded.state_dict())
    cfg = TrainConfig(
        model=str(tiny_native_dir),
        train=str(write_shapes_manifest(tmp_path / "data", 4)),
        out=str(tmp_path / "run"),
        batch_size=4,
        max_steps=1,
        progress=False,
        drop_path_rate=override,
    )
    Trainer(cfg, model=model).fit()
    blocks = model.vision_model.blocks
    expected = override or 0.0
    rates = [(i, b.drop_path.p) for i, b in enumerate(blocks) if isinstance(b.drop_path, DropPath)]
    assert len(rates) > 2 and all(p == pytest.approx(expected * i / len(blocks)) for i, p in rates), rates
    momenta = {m.momentum for m in model.modules() if hasattr(m, "running_mean")}
    assert momenta == {0.05}
    saved = AlignModel.from_pretrained(tmp_path / "run" / "final").config
    assert saved.vision.drop_path_rate == expected and saved.vision.bn_momentum == 0.05
    assert saved.label_smoothing == 0.0
    checkpoint_config = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert json.dumps(expected) in json.dumps(checkpoint_config)


def test_finetune_model_and_workers_default_as_every_other_command():
    """`finetune` without --model / --workers uses the model and worker count the other commands default to."""
    from align_torch.cli import build_parser
    from align_torch.train.args import config_from_args

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    defaults = {
        name: {a.dest: a.default for a in p._actions if a.dest in ("model", "workers")}
        for name, p in commands.items()
        if name in ("zero-shot", "embed", "eval")
    }
    cfg = config_from_args(commands["finetune"].parse_args(["--train", "t.csv", "--out", "run"]))
    for name, default in defaults.items():
        assert (cfg.model, cfg.workers) == (default["model"], default["workers"]), name


def test_recipe_scratch_crops_half_the_area_up():
    """--recipe scratch crops 0.5-1 of the area (a model learning from scratch needs it; docs/finetuning.md, "Recipes");
    finetune keeps the gentle 0.9-1, and an explicit --crop-scale still wins."""
    scratch = config_from_args(_parser().parse_args(REQUIRED + ["--recipe", "scratch"]))
    assert scratch.crop_scale == (0.5, 1.0)
    assert config_from_args(_parser().parse_args(REQUIRED)).crop_scale == (0.9, 1.0)
    given = ["--recipe", "scratch", "--crop-scale", "0.8", "1"]
    assert config_from_args(_parser().parse_args(REQUIRED + given)).crop_scale == (0.8, 1.0)


@pytest.mark.parametrize("old, frozen", [(True, False), (False, True)])
def test_a_run_recorded_under_the_old_lora_head_key_resumes_with_its_head_setting(old, frozen):
    # Runs written before the rename stored "lora_head" (True: the head trains); resuming one must keep that.
    from align_torch.train.args import resumed_config

    recorded = {**TrainConfig(train="t.csv", out="run").to_dict(), "lora_head": old}
    del recorded["lora_freeze_head"]
    args = _parser().parse_args(["--train", "t.csv", "--out", "run"])
    config, notes = resumed_config(args, recorded, "run")
    assert config.lora_freeze_head is frozen and notes == []


@pytest.mark.parametrize("side", ["text", "image"])
def test_a_tower_is_named_with_the_one_hf_prefix(side):
    """TrainConfig checks --text-tower/--image-tower with model/hf_text.HF_PREFIX, the prefix tower_source strips."""
    from align_torch.model.hf_text import HF_PREFIX, tower_source

    spec = f"{HF_PREFIX}some/encoder"
    assert getattr(TrainConfig(train="t.csv", out="o", **{f"{side}_tower": spec}), f"{side}_tower") == spec
    assert tower_source(spec) == "some/encoder"
    with pytest.raises(ValueError, match=rf"{side}_tower must be {HF_PREFIX}PATH_OR_ID .*'some/encoder'"):
        TrainConfig(train="t.csv", out="o", **{f"{side}_tower": "some/encoder"})
