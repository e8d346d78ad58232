"""torch.compile(fullgraph=True) on each tower, unfused and fused: no graph breaks, and the compiled tower gives
the eager tower's embeddings to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch

from align_torch import AlignModel, AlignProcessor
from align_torch.inference.fast import fuse_for_inference
from align_torch.inference.towers import tower
from tests.helpers.export_data import captions, photos


@pytest.fixture(scope="module")
def models(model_dir):
    model = AlignModel.from_pretrained(model_dir)
    return {"unfused": model, "fused": fuse_for_inference(copy.deepcopy(model))}, AlignProcessor.from_pretrained(
        model_dir
    )


def _inputs(processor: AlignProcessor, which: str) -> tuple[torch.Tensor, ...]:
    if which == "image":
        return (processor(images=photos(3))["pixel_values"],)
    texts = ["a dog", *captions(2, seed=3)]
    enc = processor.tokenizer(texts, padding="max_length", max_length=40, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


@pytest.mark.parametrize("kind", ["unfused", "fused"])
@pytest.mark.parametrize("which", ["image", "text"])
def test_tower_traces_as_one_graph(models, kind, which):
    torch._dynamo.reset()
    module = tower(models[0][kind], which)
    inputs = _inputs(models[1], which)
    with torch.no_grad():
        explained = torch._dynamo.explain(module)(*inputs)
        # explain's count misses a break after which no op remains; its list of reasons does not.
        assert explained.graph_break_count == 0 and not explained.break_reasons, [
            str(b.reason) for b in explained.break_reasons
        ]
        assert explained.graph_count == 1
        torch._dynamo.reset()
        torch.compile(module, fullgraph=True, backend="eager")(*inputs)  # raises at any graph break


# Inductor on a 2-core CPU: seconds for the text tower, a minute or more for the image tower's 10 blocks.
@pytest.mark.parametrize(
    "kind, which",
    [
        ("unfused", "text"),
        ("fused", "text"),
        ("fused", "image"),
        pytest.param("unfused", "image", marks=pytest.mark.slow),
    ],
)
def test_compiled_tower_equals_eager(models, kind, which):
    torch._dynamo.reset()
    module = tower(models[0][kind], which)
    inputs = _inputs(models[1], which)
    compiled = torch.compile(module, fullgraph=True)
    with torch.no_grad():
        ref = module(*inputs)
        got = compiled(*inputs)
    scale = float(ref.abs().max())
    torch.testing.assert_close(got, ref, atol=1e-5 * max(1.0, scale), rtol=1e-4)


@pytest.mark.parametrize("kind", ["unfused", "fused"])
def test_encode_methods_trace_as_one_graph(models, kind):
    """The model's own encode_image / encode_text: their argument checks step aside in a traced graph."""
    model, processor = models[0][kind], models[1]
    with torch.no_grad():
        for method, inputs in (
            (model.encode_image, _inputs(processor, "image")),
            (model.encode_text, _inputs(processor, "text")),
        ):
            torch._dynamo.reset()
            explained = torch._dynamo.explain(method)(*inputs)
            assert not explained.break_reasons, [str(b.reason) for b in explained.break_reasons]
            torch._dynamo.reset()
            got = torch.compile(method, fullgraph=True, backend="eager")(*inputs)
            torch.testing.assert_close(got, method(*inputs), atol=1e-5, rtol=1e-5)
