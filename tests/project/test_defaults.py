"""Each default the commands share has one home (align_torch/defaults.py, or the model config for what defines
the model): every command and function that takes it reads the same value, compared here with the figure it
must be, written out."""

from __future__ import annotations

import inspect

from align_torch.cli import build_parser
from align_torch.evaluate.clip_benchmark import load_align
from align_torch.model.config import AlignConfig
from align_torch.model.loss import contrastive_loss, global_contrastive_loss
from align_torch.preprocess.tokenizer import AlignTokenizer
from align_torch.retrieval.embed_folder import embed_collection
from align_torch.train import TrainConfig
from align_torch.train.data import Collate

MODEL = "kakaobrain/align-base"  # Kakao Brain's public checkpoint
TEXT_LENGTH = 64  # ALIGN's text length, and what transformers' processor pads to


def _default(function, name: str):
    return inspect.signature(function).parameters[name].default


def test_every_command_and_function_defaults_to_the_same_model():
    parser = build_parser()
    commands = {
        "zero-shot": ["zero-shot", "x.jpg", "--labels", "cat"],
        "embed": ["embed", "x.jpg", "--out", "o"],
        "embed-text": ["embed-text", "t.txt", "--out", "o.safetensors"],
        "eval": ["eval"],
    }
    models = {name: parser.parse_args(argv).model for name, argv in commands.items()}
    assert models == dict.fromkeys(commands, MODEL)
    assert _default(embed_collection, "source") == _default(load_align, "pretrained") == MODEL


def test_every_text_length_default_is_aligns():
    parser = build_parser()
    assert parser.parse_args(["summary"]).tokens == TEXT_LENGTH
    assert TrainConfig(model="m", train="t", out="o").max_length == TEXT_LENGTH
    assert AlignTokenizer({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}).model_max_length == TEXT_LENGTH
    assert _default(Collate, "max_length") == TEXT_LENGTH


def test_label_smoothing_has_one_default_the_model_configs():
    assert AlignConfig().label_smoothing == 0.1  # the ALIGN paper's
    assert _default(contrastive_loss, "label_smoothing") == _default(global_contrastive_loss, "label_smoothing") == 0.1
