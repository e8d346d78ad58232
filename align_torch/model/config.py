"""Frozen dataclass configs for the two towers and the joint model, with presets. Nothing else lives here."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Stage(NamedTuple):
    """One EfficientNet stage before width/depth scaling: `repeats` MBConv blocks."""

    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int
    repeats: int


# The EfficientNet-B0 stage table (Tan & Le 2019, table 1); B1-B7 only rescale it.
EFFICIENTNET_STAGES: tuple[Stage, ...] = (
    Stage(kernel=3, stride=1, expand=1, in_ch=32, out_ch=16, repeats=1),
    Stage(kernel=3, stride=2, expand=6, in_ch=16, out_ch=24, repeats=2),
    Stage(kernel=5, stride=2, expand=6, in_ch=24, out_ch=40, repeats=2),
    Stage(kernel=3, stride=2, expand=6, in_ch=40, out_ch=80, repeats=3),
    Stage(kernel=5, stride=1, expand=6, in_ch=80, out_ch=112, repeats=3),
    Stage(kernel=5, stride=2, expand=6, in_ch=112, out_ch=192, repeats=4),
    Stage(kernel=3, stride=1, expand=6, in_ch=192, out_ch=320, repeats=1),
)


def _check_int(owner: str, name: str, value: Any, low: int = 1, high: int | None = None) -> None:
    """`value` must be an int (not a bool or float) in [low, high]; the error names owner.name."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f", at most {high}"
        raise ValueError(f"{owner}.{name} must be at least {low}{upper}, got {value}")


def _check_float(owner: str, name: str, value: Any, low: float, high: float, open_low: bool, open_high: bool) -> None:
    """`value` must be a finite number in the interval (open or closed at each end); the error names it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number, got {type(value).__name__} {value!r}")
    if value < low or value > high or (open_low and value == low) or (open_high and value == high):
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"{owner}.{name} must lie in {interval}, got {value}")


# The ranges of the model's training knobs, which a fine-tuning run may override: checked here for the configs,
# and by TrainConfig through check_knob, so a run's bad value is refused before any model loads.
KNOB_RANGES = {
    "bn_momentum": (0.0, 1.0, False, False),
    "drop_path_rate": (0.0, 1.0, False, True),
    "label_smoothing": (0.0, 1.0, False, True),
}


def check_knob(owner: str, name: str, value: Any) -> None:
    """`value` must be in the range KNOB_RANGES gives `name`; the error names `owner`.`name`."""
    _check_float(owner, name, value, *KNOB_RANGES[name])


def _check_str(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{owner}.{name} must be {' or '.join(repr(c) for c in choices)}, got {value!r}")


_INF = math.inf

# ALIGN's label smoothing of the contrastive loss (the paper's 0.1): the model config's default, and the default
# of the loss functions in loss.py, which take it from here.
LABEL_SMOOTHING = 0.1
LOSSES = ("softmax", "sigmoid")
# SigLIP's initialisation for training from scratch (Zhai et al. 2023): logit scale exp(t') with t' = log 10,
# i.e. temperature 1/10 in ALIGN's parametrisation (logits = cosine / temperature), and logit bias -10.
SIGLIP_TEMPERATURE_INIT = 0.1
SIGLIP_BIAS_INIT = -10.0


@dataclass(frozen=True)
class VisionConfig:
    """EfficientNet as ALIGN uses it: no top conv, the image embedding is the pooled last block."""

    image_size: int = 289
    in_chans: int = 3
    width_mult: float = 2.0
    depth_mult: float = 3.1
    divisor: int = 8
    stem_ch: int = 32  # before width scaling
    stages: tuple[Stage, ...] = EFFICIENTNET_STAGES
    se_ratio: float = 0.25  # of the block's *input* channels, as in the original
    act: str = "silu"
    bn_eps: float = 1e-3
    # PyTorch convention (weight of the new batch): 0.01 == TensorFlow decay 0.99 of the original.
    bn_momentum: float = 0.01
    # Per-sample stochastic depth, linearly increased: block i drops with drop_path_rate * i / num_blocks.
    drop_path_rate: float = 0.2
    # Blocks whose stride-2 depthwise conv pads symmetrically instead of (k//2 - 1, k//2) (transformers
    # lists them as `depthwise_padding`).
    symmetric_pad: tuple[int, ...] = ()
    pooling: str = "mean"  # "mean" or "max" over the final feature map

    def __post_init__(self) -> None:
        owner = "VisionConfig"
        if not isinstance(self.stages, (list, tuple)) or not self.stages:
            raise ValueError(f"{owner}.stages must be a non-empty list of stages, got {self.stages!r}")
        for i, s in enumerate(self.stages):
            if not isinstance(s, (list, tuple)) or len(s) != len(Stage._fields):
                raise ValueError(f"{owner}.stages[{i}] must list {', '.join(Stage._fields)}, got {s!r}")
        object.__setattr__(self, "stages", tuple(Stage(*s) for s in self.stages))
        if not isinstance(self.symmetric_pad, (list, tuple)):
            raise ValueError(f"{owner}.symmetric_pad must be a list of block indices, got {self.symmetric_pad!r}")
        object.__setattr__(self, "symmetric_pad", tuple(self.symmetric_pad))
        for name in ("image_size", "in_chans", "divisor", "stem_ch"):
            _check_int(owner, name, getattr(self, name))
        for name in ("width_mult", "depth_mult"):
            _check_float(owner, name, getattr(self, name), 0.0, _INF, open_low=True, open_high=True)
        _check_float(owner, "se_ratio", self.se_ratio, 0.0, 1.0, open_low=True, open_high=False)
        _check_float(owner, "bn_eps", self.bn_eps, 0.0, _INF, open_low=True, open_high=True)
        check_knob(owner, "bn_momentum", self.bn_momentum)
        check_knob(owner, "drop_path_rate", self.drop_path_rate)
        _check_str(owner, "act", self.act, ("silu", "swish", "relu", "gelu"))
        _check_str(owner, "pooling", self.pooling, ("mean", "max"))
        for i, s in enumerate(self.stages):
            for name in Stage._fields:
                _check_int(f"{owner}.stages[{i}]", name, getattr(s, name))
            if s.stride not in (1, 2):
                raise ValueError(f"stage strides must be 1 or 2, got {s.stride} in {s}")
            if s.kernel % 2 != 1:
                raise ValueError(f"depthwise kernels must be odd, got {s.kernel} in {s}")
        for i, block in enumerate(self.symmetric_pad):
            _check_int(owner, f"symmetric_pad[{i}]", block, low=0, high=self.num_blocks - 1)

    def channels(self, ch: int) -> int:
        """Scale a channel count by `width_mult`, rounded to `divisor` but never down by more than 10%."""
        scaled = ch * self.width_mult
        rounded = max(self.divisor, int(scaled + self.divisor / 2) // self.divisor * self.divisor)
        if rounded < 0.9 * scaled:
            rounded += self.divisor
        return int(rounded)

    def repeats(self, n: int) -> int:
        return int(math.ceil(self.depth_mult * n))

    @property
    def num_blocks(self) -> int:
        return sum(self.repeats(s.repeats) for s in self.stages)

    @property
    def num_features(self) -> int:
        return self.channels(self.stages[-1].out_ch)


@dataclass(frozen=True)
class TextConfig:
    """BERT encoder (post-LayerNorm)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    act: str = "gelu"  # exact (erf) GELU, as BERT
    pad_token_id: int = 0
    # How the text embedding is read off the last hidden states: "cls" (ALIGN) or "mean" over real tokens.
    pooling: str = "cls"

    def __post_init__(self) -> None:
        owner = "TextConfig"
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            _check_int(owner, name, getattr(self, name))
        _check_int(owner, "pad_token_id", self.pad_token_id, low=0, high=self.vocab_size - 1)
        _check_float(owner, "layer_norm_eps", self.layer_norm_eps, 0.0, _INF, open_low=True, open_high=True)
        for name in ("hidden_dropout", "attention_dropout"):
            _check_float(owner, name, getattr(self, name), 0.0, 1.0, open_low=False, open_high=True)
        _check_str(owner, "act", self.act, ("gelu",))
        _check_str(owner, "pooling", self.pooling, ("cls", "mean"))
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"TextConfig.hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})"
            )


@dataclass(frozen=True)
class AlignConfig:
    """The joint model: two towers, a projection of the pooled text state, a learnable temperature.

    ALIGN has no image projection: the pooled image map is the embedding. When `projection_dim` differs from
    the image tower's width, AlignModel adds a linear `image_projection` (a key align-base does not have).
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 640
    temperature_init: float = 1.0
    label_smoothing: float = LABEL_SMOOTHING
    # The training objective: "softmax" (ALIGN's contrastive cross-entropy) or "sigmoid" (SigLIP: each pair a
    # binary decision on cosine / temperature + bias). Only "sigmoid" gives the model a `logit_bias` parameter,
    # so ALIGN's checkpoints keep their keys.
    loss: str = "softmax"
    logit_bias_init: float = SIGLIP_BIAS_INIT
    # A text tower from transformers in place of the native BERT (`--text-tower hf:PATH_OR_ID`): where it came
    # from, and its transformers config (so the model rebuilds from its own folder). `text` then mirrors the
    # tower's sizes for the input checks and the pooling.
    text_tower: str | None = None
    hf_text_config: dict[str, Any] | None = field(default=None, hash=False)
    # The same for the image tower (`--image-tower hf:PATH_OR_ID`), pooled by `image_pooling` ("pooler": the
    # tower's own pooler_output; "mean": over its last hidden state) and always projected by `image_projection`.
    # `vision` then mirrors the tower's input size and channels.
    image_tower: str | None = None
    hf_image_config: dict[str, Any] | None = field(default=None, hash=False)
    image_pooling: str = "pooler"

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            object.__setattr__(self, "vision", VisionConfig(**self.vision))
        if isinstance(self.text, dict):
            object.__setattr__(self, "text", TextConfig(**self.text))
        _check_int("AlignConfig", "projection_dim", self.projection_dim)
        _check_float("AlignConfig", "temperature_init", self.temperature_init, 0.0, _INF, True, True)
        check_knob("AlignConfig", "label_smoothing", self.label_smoothing)
        _check_str("AlignConfig", "loss", self.loss, LOSSES)
        _check_float("AlignConfig", "logit_bias_init", self.logit_bias_init, -_INF, _INF, True, True)
        _check_str("AlignConfig", "image_pooling", self.image_pooling, ("pooler", "mean"))
        for side in ("text", "image"):
            tower, hf_config = getattr(self, f"{side}_tower"), getattr(self, f"hf_{side}_config")
            if (tower is None) != (hf_config is None):
                raise ValueError(f"AlignConfig.{side}_tower and AlignConfig.hf_{side}_config are given together or not")
            if hf_config is not None and not (
                isinstance(hf_config, dict) and isinstance(hf_config.get("model_type"), str)
            ):
                raise ValueError(f"AlignConfig.hf_{side}_config must be a transformers config object with a model_type")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["vision"]["stages"] = [list(s) for s in self.vision.stages]
        d["vision"]["symmetric_pad"] = list(self.vision.symmetric_pad)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlignConfig:
        for name, value in (("config", d), ("vision", d.get("vision", {})), ("text", d.get("text", {}))):
            if not isinstance(value, dict):
                raise ValueError(f"AlignConfig {name} must be a JSON object, got {type(value).__name__}")
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown AlignConfig fields: {sorted(unknown)}")
        vision = dict(d.pop("vision", {}))
        text = dict(d.pop("text", {}))
        for name, sub, sub_cls in (("vision", vision, VisionConfig), ("text", text, TextConfig)):
            bad = set(sub) - {f.name for f in dataclasses.fields(sub_cls)}
            if bad:
                raise ValueError(f"unknown {name} config fields: {sorted(bad)}")
        return cls(vision=VisionConfig(**vision), text=TextConfig(**text), **d)

    def replace(self, **changes: Any) -> AlignConfig:
        return dataclasses.replace(self, **changes)


def align_base() -> AlignConfig:
    """kakaobrain/align-base: EfficientNet-B7 scaling (55 blocks, 640 channels) + BERT-base, 640-d space."""
    return AlignConfig()


def align_tiny() -> AlignConfig:
    """A few-block, few-layer model for fast tests; same code paths as align-base."""
    return AlignConfig(
        vision=VisionConfig(image_size=64, width_mult=0.25, depth_mult=0.5),
        text=TextConfig(
            vocab_size=1000, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64
        ),
        projection_dim=80,  # = the tiny tower's final width: ALIGN has no image projection
    )


# EfficientNet compound scaling (Tan & Le 2019): name -> (width_mult, depth_mult, resolution).
EFFICIENTNET_SCALING: dict[str, tuple[float, float, int]] = {
    "b0": (1.0, 1.0, 224),
    "b1": (1.0, 1.1, 240),
    "b2": (1.1, 1.2, 260),
    "b3": (1.2, 1.4, 300),
    "b4": (1.4, 1.8, 380),
    "b5": (1.6, 2.2, 456),
    "b6": (1.8, 2.6, 528),
    "b7": (2.0, 3.1, 600),
    # Noisy Student's EfficientNet-L2 (Xie et al. 2020): B7 widened and deepened further, tested at 800 px.
    "l2": (4.3, 5.3, 800),
}

# BERT sizes of Turc et al. 2019 ("Well-Read Students Learn Better"): name -> (layers, hidden size).
# Heads are hidden / 64 and the MLP is 4 x hidden, as in BERT-base.
BERT_SIZES: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


def efficientnet(name: str, **overrides: Any) -> VisionConfig:
    """An EfficientNet-B0..B7 image tower ("b0".."b7") at the paper's width, depth and resolution.

    ALIGN's towers end at the last MBConv stage: the paper's 1x1 top conv to 1280 x width channels is not
    there, so the tower's width is round(320 x width). `overrides` replace any VisionConfig field.
    """
    try:
        width, depth, resolution = EFFICIENTNET_SCALING[name.lower()]
    except KeyError:
        raise ValueError(f"unknown EfficientNet {name!r}; choose from {sorted(EFFICIENTNET_SCALING)}") from None
    return VisionConfig(**{"image_size": resolution, "width_mult": width, "depth_mult": depth, **overrides})


def bert(name: str, **overrides: Any) -> TextConfig:
    """A BERT text tower by size name ("tiny", "mini", "small", "medium", "base"); `overrides` replace any
    TextConfig field (e.g. vocab_size)."""
    try:
        layers, hidden = BERT_SIZES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown BERT size {name!r}; choose from {sorted(BERT_SIZES)}") from None
    sizes = {"num_layers": layers, "hidden_size": hidden, "num_heads": hidden // 64, "intermediate_size": 4 * hidden}
    return TextConfig(**{**sizes, **overrides})


def align_efficientnet(name: str, text: str = "base") -> AlignConfig:
    """EfficientNet-`name` + BERT-`text`, embedding in the image tower's width as ALIGN does (so no image
    projection, only the text projection to that width)."""
    vision = efficientnet(name)
    return AlignConfig(vision=vision, text=bert(text), projection_dim=vision.num_features)


def align_l2() -> AlignConfig:
    """The ALIGN paper's largest model: EfficientNet-L2 + BERT-large, trained (as align-base) at 289 px, embedding
    in the image tower's width (1376)."""
    return align_efficientnet("l2", text="large").replace(vision=efficientnet("l2", image_size=289))


def align_grid(image: str, text: str) -> AlignConfig:
    """One cell of the ALIGN paper's encoder grid (its ablation of EfficientNet B1-B7/L2 against BERT Mini to
    Large): EfficientNet-`image` + BERT-`text`, embedding in the image tower's width; L2 at 289 px as `align-l2`."""
    config = align_efficientnet(image, text=text)
    return config.replace(vision=grid_image_tower(image))


def grid_image_tower(name: str) -> VisionConfig:
    """The grid's EfficientNet-`name` image tower: the paper's resolution, but L2 at 289 px as `align-l2`."""
    return efficientnet(name, image_size=289) if name == "l2" else efficientnet(name)


GRID_IMAGE = ("b1", "b2", "b3", "b4", "b5", "b6", "b7", "l2")
GRID_TEXT = ("mini", "small", "medium", "base", "large")
# One tower of the grid by name, for `finetune --image-preset/--text-preset` (B0 and BERT-tiny beside it, small
# towers to try a run on): "efficientnet-b3" -> "b3", "bert-mini" -> "mini".
IMAGE_PRESETS = {f"efficientnet-{name}": name for name in ("b0", *GRID_IMAGE)}
TEXT_PRESETS = {f"bert-{name}": name for name in ("tiny", *GRID_TEXT)}

PRESETS = {
    "align-base": align_base,
    "align-tiny": align_tiny,
    **{f"align-{b}": functools.partial(align_efficientnet, b) for b in EFFICIENTNET_SCALING if b != "l2"},
    "align-l2": align_l2,
    # The paper's grid by one name each, e.g. "align-b3-bert-mini".
    **{f"align-{i}-bert-{t}": functools.partial(align_grid, i, t) for i in GRID_IMAGE for t in GRID_TEXT},
}

# Published sizes of each tower of the grid, as their papers count them: EfficientNet B1-B7 with their top conv
# and 1000-class head (Tan & Le 2019, table 2: parameters, multiply-adds at their own resolution) and BERT with
# its pooler (Turc et al. 2019; BERT-large: Devlin et al. 2019).
_PUBLISHED_IMAGE = {
    "b1": "7.8M parameters, 0.70B multiply-adds at 240 px",
    "b2": "9.2M parameters, 1.0B multiply-adds at 260 px",
    "b3": "12M parameters, 1.8B multiply-adds at 300 px",
    "b4": "19M parameters, 4.2B multiply-adds at 380 px",
    "b5": "30M parameters, 9.9B multiply-adds at 456 px",
    "b6": "43M parameters, 19B multiply-adds at 528 px",
    "b7": "66M parameters, 37B multiply-adds at 600 px",
    "l2": "480M parameters (Noisy Student, Xie et al. 2020)",
}
_PUBLISHED_TEXT = {"mini": "11.3M", "small": "29.1M", "medium": "41.7M", "base": "110.1M", "large": "340M"}

# Sizes published for the towers of a preset, printed beside `summary`'s own count. Ours leave out what ALIGN
# does not use: EfficientNet's top 1x1 conv and classifier (ALIGN pools the last block), nothing of BERT.
PUBLISHED_SIZES: dict[str, tuple[str, ...]] = {
    "align-l2": (
        "EfficientNet-L2: 480M parameters (Noisy Student, Xie et al. 2020; with its top conv and 1000-class head)",
        "BERT-large: 340M parameters (Devlin et al. 2019)",
    ),
    **{
        f"align-{i}-bert-{t}": (
            f"EfficientNet-{i.upper()}: {_PUBLISHED_IMAGE[i]} (with its top conv and 1000-class head)",
            f"BERT-{t}: {_PUBLISHED_TEXT[t]} parameters (with its pooler)",
        )
        for i in GRID_IMAGE
        for t in GRID_TEXT
    },
}


def published_sizes(config: AlignConfig) -> tuple[str, ...]:
    """The published sizes of whichever of `config`'s towers is a grid tower (its architecture, whatever the
    model folder or run that holds it: `finetune --image-preset` keeps another text tower)."""
    lines = []
    image = next((i for i in GRID_IMAGE if config.image_tower is None and config.vision == grid_image_tower(i)), None)
    if image is not None:
        lines.append(PUBLISHED_SIZES[f"align-{image}-bert-base"][0])
    shape = (config.text.num_layers, config.text.hidden_size, config.text.num_heads, config.text.intermediate_size)
    for name in GRID_TEXT if config.text_tower is None else ():
        grid = bert(name)
        if shape == (grid.num_layers, grid.hidden_size, grid.num_heads, grid.intermediate_size):
            lines.append(PUBLISHED_SIZES[f"align-b1-bert-{name}"][1])
    return tuple(lines)


def preset(name: str) -> AlignConfig:
    """A config by preset name (see `PRESETS`)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
