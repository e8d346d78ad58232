"""A text tower from any transformers encoder (`finetune --text-tower hf:PATH_OR_ID`): open_clip's HF towers on
ALIGN's image tower. AlignModel pools its last hidden states ([CLS] or mean, as TextConfig.pooling says) and
projects them with its own new `text_projection`.

transformers is an optional extra (`pip install "align-torch[hf-towers]"`), imported only here and only when
such a tower is built. The tower's transformers config is kept in AlignConfig.hf_text_config, so a saved
model is rebuilt from its own folder (config.json + model.safetensors) without the tower's source.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .config import TextConfig

HF_PREFIX = "hf:"


def transformers_module() -> ModuleType:
    try:
        import transformers
    except ImportError as e:
        raise ImportError('a Hugging Face text tower needs transformers: pip install "align-torch[hf-towers]"') from e
    return transformers


def tower_source(spec: str) -> str:
    """ "hf:PATH_OR_ID" -> PATH_OR_ID; anything else is refused, naming the form."""
    if not isinstance(spec, str) or not spec.startswith(HF_PREFIX) or len(spec) == len(HF_PREFIX):
        raise ValueError(f"a tower is named hf:PATH_OR_ID (a transformers model folder or Hub id), got {spec!r}")
    return spec[len(HF_PREFIX) :]


def text_config_from_hf(hf_config: dict[str, Any], pooling: str = "cls") -> TextConfig:
    """The TextConfig the rest of the package reads (input checks, pooling, summaries) for a transformers
    encoder config: its vocabulary, sizes, positions and pad id. `act` keeps TextConfig's default: the tower
    runs its own activation."""

    def get(*names: str, default: Any = None) -> Any:
        for name in names:
            if hf_config.get(name) is not None:
                return hf_config[name]
        if default is None:
            raise ValueError(f"the text tower's config has none of {names}; is it a transformers encoder config?")
        return default

    positions = get("max_position_embeddings", "n_positions", default=512)
    pad = get("pad_token_id", default=0)
    if hf_config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        positions -= pad + 1  # RoBERTa's positions start after the pad id
    hidden = get("hidden_size", "d_model", "dim")
    return TextConfig(
        vocab_size=get("vocab_size"),
        hidden_size=hidden,
        num_layers=get("num_hidden_layers", "num_layers", "n_layers"),
        num_heads=get("num_attention_heads", "num_heads", "n_heads"),
        intermediate_size=get("intermediate_size", "hidden_dim", "d_ff", default=4 * hidden),
        max_position_embeddings=positions,
        type_vocab_size=max(1, get("type_vocab_size", default=1)),
        layer_norm_eps=get("layer_norm_eps", default=1e-12),
        hidden_dropout=get("hidden_dropout_prob", "dropout", default=0.0),
        attention_dropout=get("attention_probs_dropout_prob", "attention_dropout", default=0.0),
        pad_token_id=pad,
        pooling=pooling,
    )


class HFTextTower(nn.Module):
    """A transformers AutoModel built from its config dict (random weights; from_pretrained or the trainer
    fills them), called as the native BERT is: (input_ids, attention_mask, token_type_ids) -> an output with
    `.last_hidden_state` (B, T, D)."""

    def __init__(self, hf_config: dict[str, Any]) -> None:
        super().__init__()
        transformers = transformers_module()
        fields = dict(hf_config)
        model_type = fields.pop("model_type", None)
        if not model_type:
            raise ValueError("AlignConfig.hf_text_config has no model_type")
        config = transformers.AutoConfig.for_model(model_type, **fields)
        self.encoder = transformers.AutoModel.from_config(config)
        self._takes_token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters

    @property
    def pooler(self) -> nn.Module:
        """The encoder's own pooler (never read: AlignModel pools the hidden states), or an empty module."""
        pooler = getattr(self.encoder, "pooler", None)
        return pooler if isinstance(pooler, nn.Module) else nn.Identity()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> Any:
        extra = {"token_type_ids": token_type_ids} if self._takes_token_types else {}
        # Only eager attention keeps its probabilities (SDPA's kernel never forms them).
        output_attentions = output_attentions and self.encoder.config._attn_implementation == "eager"
        flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra, **flags)

    @property
    def num_positions(self) -> int:
        """Entries of the tower's hidden states: the embeddings' output, then one per layer."""
        return int(self.encoder.config.num_hidden_layers) + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_checkpointing(self.encoder, enable)


def set_checkpointing(encoder: nn.Module, enable: bool) -> None:
    """Turn a transformers model's activation checkpointing on or off (non-reentrant)."""
    if not getattr(encoder, "supports_gradient_checkpointing", True):
        if enable:
            raise ValueError(f"{type(encoder).__name__} does not support gradient checkpointing")
        return
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*; 4.x has only the former.
    prefix = "activation" if hasattr(encoder, "activation_checkpointing_enable") else "gradient"
    if enable:
        getattr(encoder, f"{prefix}_checkpointing_enable")(
            **{f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}
        )
    else:
        getattr(encoder, f"{prefix}_checkpointing_disable")()
