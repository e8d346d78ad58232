"""int8 graphs that are measured before they are written.

The image tower: ONNX Runtime's static QDQ quantization, calibrated on real images the caller names, int8
weights per output channel, and only the 1x1 expand and project convolutions quantized (most of the tower's
arithmetic). The stem, every depthwise convolution and the squeeze-excite convolutions stay float: their few
channels each carry a whole feature, and one scale per channel over a 3x3 or 5x5 window or a 1x1 squeeze
loses too much (with them quantized the embeddings measured mean cosine 0.12 to fp32 on photos).

The text tower: ONNX Runtime's dynamic quantization (int8 weights, activations quantized per batch).

Either graph is then run beside its fp32 graph on the images (or held-out captions) and refused, with the
measured figure, when its embeddings' mean cosine to fp32 is below `MIN_MEAN_COSINE`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

MIN_MEAN_COSINE = 0.99
CALIBRATION_BATCH = 4
# Weights of the convolutions that stay float in the image graph (name parts in the exported graph).
KEEP_FLOAT = (".stem.", ".se.")


class Int8Refused(ValueError):
    """An int8 graph whose embeddings are too far from fp32's: nothing is written (the CLI exits 2)."""


def quantize_image_static(src: str | os.PathLike, dst: str | os.PathLike, pixels: torch.Tensor) -> None:
    """Static QDQ int8 of the image graph `src` into `dst`, calibrated on `pixels` (N, 3, H, W)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(pixels.split(CALIBRATION_BATCH))

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": batch.float().contiguous().numpy()}

    graph = onnx.load(str(src))
    with quiet():
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=float_convs(graph),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )


def float_convs(graph: Any) -> list[str]:
    """Names of the Conv nodes that stay float: grouped (depthwise) ones, the stem's, squeeze-excite's."""
    weights = {i.name for i in graph.graph.initializer}
    keep = []
    for node in graph.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = next((i for i in node.input[1:2] if i in weights), "")
        if group > 1 or any(part in weight for part in KEEP_FLOAT):
            keep.append(node.name)
    return keep


def mean_cosine(
    fp32: Callable[..., torch.Tensor], int8: Callable[..., torch.Tensor], inputs: Sequence[tuple]
) -> dict[str, float]:
    """Mean and lowest cosine between the two graphs' embeddings over every row of every input tuple."""
    cosines = torch.cat([F.cosine_similarity(int8(*x).float(), fp32(*x).float(), dim=-1) for x in inputs])
    return {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min()), "rows": len(cosines)}


def require_quality(quality: dict[str, float], what: str) -> None:
    """Int8Refused when the measured mean cosine is below MIN_MEAN_COSINE."""
    if quality["mean_cosine"] < MIN_MEAN_COSINE:
        raise Int8Refused(
            f"int8 {what}: mean cosine to fp32 {quality['mean_cosine']:.4f} (lowest {quality['min_cosine']:.4f}) "
            f"over {quality['rows']} rows, below {MIN_MEAN_COSINE}; nothing written (export without --int8)"
        )


def batches(pixels: torch.Tensor, size: int = CALIBRATION_BATCH) -> Iterator[tuple[torch.Tensor]]:
    """(N, 3, H, W) -> input tuples of `size` images, for `mean_cosine`."""
    for chunk in pixels.split(size):
        yield (chunk,)


def calibration_at(pixels: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The calibration pixels at another graph's size (bilinear, antialiased), unchanged at their own."""
    if tuple(pixels.shape[-2:]) == tuple(hw):
        return pixels
    return F.interpolate(pixels, size=hw, mode="bilinear", align_corners=False, antialias=True)


def describe(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The calibration images as recorded in the graph's JSON: their file names."""
    return [Path(p).name for p in paths]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporter's and the quantizer's notes (torchvision ops absent, axis renames, "consider
    pre-processing"): the parity check is what tells whether a graph is right."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
