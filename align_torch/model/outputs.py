"""transformers' output surface of AlignModel, on the recipe's own forward: the per-tower outputs
(`text_model_output`, `vision_model_output`), `return_dict=False` tuples, and the request through which
`AlignModel.forward`'s flags reach the towers.

`forward(..., output_hidden_states=True)` still computes its embeddings with `encode_image` / `encode_text` (so a
subclass's override of either still runs); the request, set for that one call and private to its thread, asks
the tower call inside them for its hidden states and attentions on the full, unpacked input and keeps what the
tower returns. Nothing runs twice, and no second forward exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any

import torch


class TupleOutput:
    """`to_tuple()` as transformers' ModelOutput: the fields that are not None, in order; nested outputs as
    tuples too."""

    def to_tuple(self) -> tuple[Any, ...]:
        values = (getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]
        return tuple(v.to_tuple() if isinstance(v, TupleOutput) else v for v in values if v is not None)


@dataclass
class TowerRequest:
    """What a flagged `AlignModel.forward` asks of its towers, and what they returned."""

    hidden_states: bool
    attentions: bool
    text: Any = None  # the text tower's output (TextOutput), once encode_text ran
    vision: Any = None  # the image tower's output (VisionOutput), once encode_image ran

    def text_kwargs(self) -> dict[str, bool]:
        # Named, so that a fused model's trimming pre-hook sees them and leaves the full length (inference/fast.py).
        return {"output_hidden_states": self.hidden_states, "output_attentions": self.attentions}


_REQUEST: ContextVar[TowerRequest | None] = ContextVar("align_torch_tower_request", default=None)


def current_request() -> TowerRequest | None:
    """The request of the flagged forward running in this thread, or None (always None under torch.compile,
    which then traces the plain path)."""
    return None if torch.compiler.is_compiling() else _REQUEST.get()


@contextlib.contextmanager
def tower_request(hidden_states: bool, attentions: bool) -> Iterator[TowerRequest]:
    request = TowerRequest(hidden_states=hidden_states, attentions=attentions)
    token = _REQUEST.set(request)
    try:
        yield request
    finally:
        _REQUEST.reset(token)
