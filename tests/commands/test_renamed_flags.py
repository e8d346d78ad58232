"""Flags named so that one name means one thing, and their first spellings still read from older scripts (hidden
from --help): --no-fuse (was --unfused); eval's and probe's class-per-folder --train-classes/--val-classes (were
--train-dir/--val-dir and --knn-train/--knn-val), apart from finetune's caption manifests --train/--val; probe's
--model (was a positional MODEL; both at once are refused, naming both)."""

from __future__ import annotations

import argparse

import pytest

from align_torch.cli import build_parser
from align_torch.defaults import MODEL
from tests.helpers.cli import run_cli

FUSING = ("zero-shot", "embed", "embed-text", "search", "eval", "serve")
REQUIRED = {"zero-shot": ["x.jpg", "--labels", "a"], "embed": ["x.jpg", "--out", "o"], "embed-text": ["t.txt"]}
REQUIRED |= {"search": ["emb", "q"], "serve": ["emb"], "eval": []}


def _commands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("name", FUSING)
def test_no_fuse_and_its_first_spelling_unfused(name):
    parser = _commands()[name]
    base = [*REQUIRED[name], *(["--out", "o.safetensors"] if name == "embed-text" else [])]
    assert parser.parse_args(base).fuse is True
    assert parser.parse_args([*base, "--no-fuse"]).fuse is False
    assert parser.parse_args([*base, "--unfused"]).fuse is False
    assert "--no-fuse" in parser.format_help() and "--unfused" not in parser.format_help()


@pytest.mark.parametrize("name", ["eval", "probe"])
def test_class_folders_are_train_classes_and_val_classes_and_the_first_spellings_still_read(name):
    parser = _commands()[name]
    out = ["--out", "o"] if name == "probe" else []
    for train, val in (
        ("--train-classes", "--val-classes"),
        ("--train-dir", "--val-dir"),
        ("--knn-train", "--knn-val"),
    ):
        args = parser.parse_args([train, "tr", val, "va", *out])
        assert (args.train_classes, args.val_classes) == ("tr", "va"), train
    text = parser.format_help()
    assert "--train-classes" in text and not any(old in text for old in ("--train-dir", "--knn-train", "--val-dir"))
    # finetune's --train is a caption manifest, a different flag of a different command
    assert "--train-classes" not in _commands()["finetune"].format_help()


def test_probe_takes_model_like_every_one_model_command_and_still_the_positional_form(tmp_path):
    from align_torch.commands.probe import _check_options

    parser = _commands()["probe"]
    folders = ["--train-classes", "tr", "--val-classes", "va", "--out", "o"]
    for argv, model in ((["--model", "m"], "m"), (["old"], "old"), ([], MODEL)):
        args = parser.parse_args([*argv, *folders])
        _check_options(args)
        assert args.model == model, argv
    status, _, err = run_cli("probe", "old", "--model", "new", *folders[:4], "--out", tmp_path / "p")
    assert status == 2 and "--model 'new'" in err and "positional MODEL 'old'" in err, err
    status, _, err = run_cli("probe", "--model", "m", "--out", tmp_path / "p")
    assert status == 2 and "--train-classes and --val-classes" in err, err
