"""align-base size (random weights, calibrated BatchNorm): both towers exported to ONNX agree with the eager model in
ONNX Runtime, and the int8 text graph keeps the fp32 embeddings. Minutes on a 2-core CPU."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from align_torch import AlignProcessor
from align_torch.inference.export import export_towers
from align_torch.inference.fast import fuse_for_inference
from tests.helpers.export_data import captions, photos
from tests.helpers.hf_reference import smooth_images

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])


def test_align_base_towers_in_onnx_runtime_and_int8_text(native_full, hf_full_dir, tmp_path):
    processor = AlignProcessor.from_pretrained(hf_full_dir)
    out = tmp_path / "exported"
    export_towers(native_full, processor.tokenizer, out, model_id="random align-base")
    export_towers(native_full, processor.tokenizer, tmp_path / "int8", towers=["text"], int8=True)
    # Photo-like pixels, the range the random tower's BatchNorm statistics were measured on: on real photos its
    # activations reach 1e4 and amplify every rounding difference (printed below beside fused vs unfused eager).
    pixels = smooth_images(3, native_full.config.vision.image_size)  # (3, 3, 289, 289)
    with torch.no_grad():
        ref = native_full.encode_image(pixels)
    got = _run(out / "image.onnx", {"pixel_values": pixels})
    image_diff = float((got - ref).abs().max())
    photo_pixels = processor(images=photos(3))["pixel_values"]
    with torch.no_grad():
        photo_ref = native_full.encode_image(photo_pixels)
        fused_gap = float(
            (fuse_for_inference(copy.deepcopy(native_full)).encode_image(photo_pixels) - photo_ref).abs().max()
        )
    photo_diff = float((_run(out / "image.onnx", {"pixel_values": photo_pixels}) - photo_ref).abs().max())
    texts = processor.tokenizer(
        ["a dog", *captions(16, seed=5)], padding="max_length", truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        ref_t = native_full.encode_text(**texts)
    text_diff = float((_run(out / "text.onnx", texts) - ref_t).abs().max())
    corpus = processor.tokenizer(captions(300, seed=7), padding=True, truncation=True, return_tensors="pt")
    cos = F.cosine_similarity(
        _run(tmp_path / "int8" / "text.int8.onnx", corpus), _run(out / "text.onnx", corpus), dim=-1
    )
    print(
        f"\nalign-base: image max abs {image_diff:.2e} (largest value {float(ref.abs().max()):.2f}), text max abs "
        f"{text_diff:.2e}; int8 text cosine mean {float(cos.mean()):.5f} min {float(cos.min()):.5f}; photos: ONNX max abs {photo_diff:.2e}, fused eager {fused_gap:.2e} "
        f"(largest value {float(photo_ref.abs().max()):.0f})"
    )
    assert image_diff <= 1e-4 * max(1.0, float(ref.abs().max()))
    assert text_diff <= 1e-4
    assert float(cos.mean()) >= 0.98
