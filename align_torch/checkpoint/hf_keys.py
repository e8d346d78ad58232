"""The one map between Hugging Face `AlignModel` names and ours, used in both directions, plus the config
translation. Only this file and weights.py know about Hugging Face's layout."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch

from ..model.config import AlignConfig, Stage, TextConfig, VisionConfig

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# HF name -> native name; `{}` is a block or layer index.
_HF_TO_NATIVE: dict[str, str] = {
    "temperature": "temperature",
    "text_projection.weight": "text_projection.weight",
    "text_projection.bias": "text_projection.bias",
    "vision_model.embeddings.convolution.weight": "vision_model.stem.conv.weight",
    **{f"vision_model.embeddings.batchnorm.{p}": f"vision_model.stem.bn.{p}" for p in _BN},
    "vision_model.encoder.blocks.{}.expansion.expand_conv.weight": "vision_model.blocks.{}.expand_conv.weight",
    **{
        f"vision_model.encoder.blocks.{{}}.expansion.expand_bn.{p}": f"vision_model.blocks.{{}}.expand_bn.{p}"
        for p in _BN
    },
    "vision_model.encoder.blocks.{}.depthwise_conv.depthwise_conv.weight": "vision_model.blocks.{}.dw_conv.weight",
    **{
        f"vision_model.encoder.blocks.{{}}.depthwise_conv.depthwise_norm.{p}": f"vision_model.blocks.{{}}.dw_bn.{p}"
        for p in _BN
    },
    **{
        f"vision_model.encoder.blocks.{{}}.squeeze_excite.{conv}.{p}": f"vision_model.blocks.{{}}.se.{conv}.{p}"
        for conv in ("reduce", "expand")
        for p in ("weight", "bias")
    },
    "vision_model.encoder.blocks.{}.projection.project_conv.weight": "vision_model.blocks.{}.project_conv.weight",
    **{
        f"vision_model.encoder.blocks.{{}}.projection.project_bn.{p}": f"vision_model.blocks.{{}}.project_bn.{p}"
        for p in _BN
    },
    "text_model.embeddings.word_embeddings.weight": "text_model.embeddings.word_embeddings.weight",
    "text_model.embeddings.position_embeddings.weight": "text_model.embeddings.position_embeddings.weight",
    "text_model.embeddings.token_type_embeddings.weight": "text_model.embeddings.token_type_embeddings.weight",
    "text_model.embeddings.LayerNorm.weight": "text_model.embeddings.norm.weight",
    "text_model.embeddings.LayerNorm.bias": "text_model.embeddings.norm.bias",
    **{
        f"text_model.encoder.layer.{{}}.attention.self.{hf}.{p}": f"text_model.layers.{{}}.attn.{ours}.{p}"
        for hf, ours in (("query", "q"), ("key", "k"), ("value", "v"))
        for p in ("weight", "bias")
    },
    **{
        f"text_model.encoder.layer.{{}}.{hf}.{p}": f"text_model.layers.{{}}.{ours}.{p}"
        for hf, ours in (
            ("attention.output.dense", "attn.out"),
            ("attention.output.LayerNorm", "attn_norm"),
            ("intermediate.dense", "mlp.fc1"),
            ("output.dense", "mlp.fc2"),
            ("output.LayerNorm", "mlp_norm"),
        )
        for p in ("weight", "bias")
    },
    "text_model.pooler.dense.weight": "text_model.pooler.weight",
    "text_model.pooler.dense.bias": "text_model.pooler.bias",
}
_NATIVE_TO_HF = {v: k for k, v in _HF_TO_NATIVE.items()}

# In HF checkpoints but deliberately not ours: a constant arange(512) buffer. Regenerated on export,
# because kakaobrain/align-base's pytorch_model.bin carries it.
DROPPED_HF_KEYS = ("text_model.embeddings.position_ids",)

_INDEX = re.compile(r"\.(\d+)\.")


class KeyMapError(KeyError):
    """A state-dict key that the map does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; print it plainly
        return str(self.args[0])


def _convert_key(key: str, table: dict[str, str]) -> str:
    m = _INDEX.search(key)
    template = key if m is None else key[: m.start()] + ".{}." + key[m.end() :]
    if template not in table:
        raise KeyMapError(key)
    return table[template] if m is None else table[template].format(m.group(1))


def _rename(state_dict: dict[str, torch.Tensor], table: dict[str, str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Each key renamed by `table`, and the keys it has no name for."""
    out, unknown = {}, []
    for k, v in state_dict.items():
        try:
            out[_convert_key(k, table)] = v
        except KeyMapError:
            unknown.append(k)
    return out, unknown


def hf_to_native(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an HF AlignModel state dict to native names. Unknown keys raise, naming all of them."""
    out, unknown = _rename({k: v for k, v in state_dict.items() if k not in DROPPED_HF_KEYS}, _HF_TO_NATIVE)
    if unknown:
        raise KeyMapError(f"{len(unknown)} checkpoint keys are not part of an ALIGN model: {_names(unknown)}")
    return out


def native_to_hf(state_dict: dict[str, torch.Tensor], max_positions: int | None = None) -> dict[str, torch.Tensor]:
    """Rename a native state dict to HF names (and add back `position_ids` when `max_positions` is given)."""
    out, unknown = _rename(state_dict, _NATIVE_TO_HF)
    if unknown:
        raise KeyMapError(f"{len(unknown)} keys have no Hugging Face name: {_names(unknown)}")
    if max_positions is not None:
        out["text_model.embeddings.position_ids"] = torch.arange(max_positions).expand((1, -1))
    return out


def _names(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# --- configs ------------------------------------------------------------------------------------------
_ACTS = {"swish": "silu", "silu": "silu", "relu": "relu", "gelu": "gelu"}

# (our field, transformers' key) for the fields that carry over as they are; absent keys take our defaults,
# which are transformers' too. What needs more than a rename (stages, image size, activation names, BN
# momentum, pad id) is written out in the two functions below.
_VISION_FIELDS = (
    ("in_chans", "num_channels"),
    ("width_mult", "width_coefficient"),
    ("depth_mult", "depth_coefficient"),
    ("divisor", "depth_divisor"),
    ("se_ratio", "squeeze_expansion_ratio"),
    ("bn_eps", "batch_norm_eps"),
    ("drop_path_rate", "drop_connect_rate"),
    ("symmetric_pad", "depthwise_padding"),  # the blocks whose stride-2 depthwise conv pads symmetrically
    ("pooling", "pooling_type"),
)
_STAGE_FIELDS = (
    ("kernel", "kernel_sizes"),
    ("stride", "strides"),
    ("expand", "expand_ratios"),
    ("in_ch", "in_channels"),
    ("out_ch", "out_channels"),
    ("repeats", "num_block_repeats"),
)
_TEXT_FIELDS = (
    ("vocab_size", "vocab_size"),
    ("hidden_size", "hidden_size"),
    ("num_layers", "num_hidden_layers"),
    ("num_heads", "num_attention_heads"),
    ("intermediate_size", "intermediate_size"),
    ("max_position_embeddings", "max_position_embeddings"),
    ("type_vocab_size", "type_vocab_size"),
    ("layer_norm_eps", "layer_norm_eps"),
    ("hidden_dropout", "hidden_dropout_prob"),
    ("attention_dropout", "attention_probs_dropout_prob"),
    ("act", "hidden_act"),
)
_ALIGN_FIELDS = (("projection_dim", "projection_dim"), ("temperature_init", "temperature_init_value"))


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@contextlib.contextmanager
def _in_hf_terms(owner: str, section: str, fields: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """A field error of our config (`TextConfig.num_layers`) re-raised with the config.json key the user can
    find (`text_config.num_hidden_layers`)."""
    try:
        yield
    except ValueError as e:
        message = str(e)
        for ours, theirs in fields:
            message = re.sub(rf"\b{owner}\.{ours}\b", f"{section}.{theirs}", message)
            message = re.sub(rf"(?<![.\w]){ours} \(", f"{theirs} (", message)  # "... multiple of num_heads (5)"
        raise ValueError(message) from None


def config_from_hf(hf: dict[str, Any]) -> AlignConfig:
    """transformers' AlignConfig dict (config.json) -> AlignConfig. Absent fields take transformers' defaults."""
    if hf.get("model_type") not in (None, "align"):
        raise ValueError(f"config.json is for model_type {hf.get('model_type')!r}, not 'align'")
    v = hf.get("vision_config") or {}
    t = hf.get("text_config") or {}
    for name, sub in (("vision_config", v), ("text_config", t)):
        if not isinstance(sub, dict):
            raise ValueError(f"field {name!r} must be a JSON object, got {type(sub).__name__}")
    columns = {key: v.get(key, [getattr(s, name) for s in VisionConfig().stages]) for name, key in _STAGE_FIELDS}
    for key, col in columns.items():
        if not isinstance(col, list):
            raise ValueError(f"field 'vision_config.{key}' must be a list, got {type(col).__name__} {col!r}")
    if len({len(col) for col in columns.values()}) != 1:
        raise ValueError(f"vision_config stage lists differ in length: { {k: len(c) for k, c in columns.items()} }")
    act = v.get("hidden_act", "swish")
    if act not in _ACTS:
        raise ValueError(f"vision_config.hidden_act {act!r} is not supported; expected one of {sorted(_ACTS)}")
    image_size = v.get("image_size", 600)
    # batch_norm_momentum is deliberately not read: transformers stores the TF decay (0.99) and passes it to
    # PyTorch, where it means the opposite. We keep the original's behaviour (0.01 in PyTorch terms).
    with _in_hf_terms("VisionConfig", "vision_config", _VISION_FIELDS):
        vision = VisionConfig(
            **{name: v[key] for name, key in _VISION_FIELDS if key in v},
            image_size=image_size[0] if isinstance(image_size, (list, tuple)) else int(image_size),
            stages=tuple(Stage(*row) for row in zip(*columns.values(), strict=True)),
            act=_ACTS[act],
        )
    with _in_hf_terms("TextConfig", "text_config", _TEXT_FIELDS):
        text = TextConfig(
            **{name: t[key] for name, key in _TEXT_FIELDS if key in t},
            pad_token_id=t.get("pad_token_id") or 0,
        )
    return AlignConfig(vision=vision, text=text, **{name: hf[key] for name, key in _ALIGN_FIELDS if key in hf})


def config_to_hf(cfg: AlignConfig) -> dict[str, Any]:
    """AlignConfig -> a config.json that transformers' AlignModel.from_pretrained reads."""
    v, t = cfg.vision, cfg.text
    if t.pooling != "cls":
        # transformers always projects the [CLS] state; writing this config would silently change the model.
        raise ValueError(f"text pooling {t.pooling!r} has no Hugging Face equivalent (transformers pools [CLS])")
    if cfg.text_tower is not None:
        raise ValueError(
            f"text tower {cfg.text_tower!r} has no Hugging Face ALIGN equivalent (ALIGN's text tower is BERT)"
        )
    if cfg.image_tower is not None:
        raise ValueError(
            f"image tower {cfg.image_tower!r} has no Hugging Face ALIGN equivalent (ALIGN's image tower is "
            "EfficientNet); the native folder loads with AlignModel.from_pretrained"
        )
    if cfg.loss != "softmax":
        # transformers' AlignModel has no logit bias: the exported model would lose a trained parameter.
        raise ValueError(f"loss {cfg.loss!r} (with its logit_bias) has no Hugging Face ALIGN equivalent")
    return {
        "architectures": ["AlignModel"],
        "model_type": "align",
        "initializer_range": 0.02,
        **{key: getattr(cfg, name) for name, key in _ALIGN_FIELDS},
        "vision_config": {
            "model_type": "align_vision_model",
            **{key: _json(getattr(v, name)) for name, key in _VISION_FIELDS},
            **{key: [getattr(s, name) for s in v.stages] for name, key in _STAGE_FIELDS},
            "image_size": v.image_size,
            "hidden_act": "swish" if v.act == "silu" else v.act,
            # transformers uses hidden_dim as the AvgPool2d kernel; any value >= the final map size is the mean.
            "hidden_dim": max(v.num_features, 640),
            "batch_norm_momentum": 1.0 - v.bn_momentum,  # back to the TF decay transformers stores
        },
        "text_config": {
            "model_type": "align_text_model",
            **{key: getattr(t, name) for name, key in _TEXT_FIELDS},
            "pad_token_id": t.pad_token_id,
        },
    }
