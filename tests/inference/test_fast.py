"""The inference fast path: fused models compute what the reference computes, and refuse to train."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from align_torch import AlignModel
from align_torch.inference.fast import (
    FusedConv2d,
    InPlaceGate,
    SlicedBatch,
    _fold_pairs,
    fold_bn,
    fuse_for_inference,
    is_fused,
    trim_padding,
)
from align_torch.model.bert import Bert
from align_torch.model.efficientnet import MBConv, SqueezeExcite
from tests.helpers.hf_reference import smooth_images


@pytest.fixture(scope="module")
def tiny(tiny_native_dir) -> AlignModel:
    """The tiny checkpoint (randomised BN statistics), never fused itself: tests fuse copies."""
    return AlignModel.from_pretrained(tiny_native_dir)


def _inputs(vocab: int, batch: int = 3, length: int = 16, pad_to: int = 24, seed: int = 0):
    """Pixels and texts padded to `pad_to` the way the processor pads: real lengths `length`, 9 and 4."""
    g = torch.Generator().manual_seed(seed)
    # Photo-like pixels: on white noise the calibrated random towers blow up to ~1e7 and amplify rounding.
    pixels = smooth_images(batch, 64, seed)
    ids = torch.randint(1, vocab, (batch, pad_to), generator=g)
    mask = torch.zeros(batch, pad_to, dtype=torch.long)
    for row, n in enumerate([length, 9, 4][:batch]):
        mask[row, :n] = 1
    ids = ids * mask  # pad id 0 after each text
    return pixels, ids, mask


@pytest.mark.parametrize("channels_last", [False, True, None])
def test_fused_equals_reference(tiny, channels_last):
    pixels, ids, mask = _inputs(tiny.config.text.vocab_size)
    if channels_last is None:  # the default: NCHW on the CPU
        fused, channels_last = fuse_for_inference(copy.deepcopy(tiny)), False
    else:
        fused = fuse_for_inference(copy.deepcopy(tiny), channels_last=channels_last)
    with torch.no_grad():
        ref = tiny(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        out = fused(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    torch.testing.assert_close(out.image_embeds, ref.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.text_embeds, ref.text_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits_per_image, ref.logits_per_image, atol=1e-4, rtol=1e-5)
    first = fused.vision_model.stem.conv.weight
    assert first.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_fused_keeps_blocks_hooks_and_intermediates(tiny):
    pixels, _, _ = _inputs(tiny.config.text.vocab_size)
    fused = copy.deepcopy(tiny)
    seen: list[tuple[int, ...]] = []
    fused.vision_model.blocks[3].register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    fuse_for_inference(fused)
    assert is_fused(fused) and not is_fused(tiny)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.vision_model.modules())
    assert not any("bn" in k for k in fused.vision_model.state_dict())
    with torch.no_grad():
        ref = tiny.vision_model.forward_intermediates(pixels)
        out = fused.vision_model.forward_intermediates(pixels)
    assert len(seen) == 1, "a hook registered before fusing must still fire"
    assert len(out.hidden_states) == len(tiny.vision_model.blocks) + 1
    for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states, strict=True)):
        rel = ((a - b).abs().max() / b.abs().max()).item()  # maps grow to ~100s deep in the tower
        assert rel <= 1e-5, f"hidden state {i}: max difference {rel:.1e} of the largest value"


def test_silu_moves_into_the_convs(tiny):
    fused = fuse_for_inference(copy.deepcopy(tiny))
    vision = fused.vision_model
    assert vision.stem.conv.act == "silu" and isinstance(vision.stem.act, nn.Identity)
    for block in vision.blocks:
        if block.expand_conv is not None:
            assert block.expand_conv.act == "silu" and isinstance(block.expand_act, nn.Identity)
        assert block.dw_conv.act == "silu" and isinstance(block.dw_act, nn.Identity)
        assert block.project_conv.act == "", "project has no activation: the residual follows"
        assert isinstance(block.se.act, nn.SiLU), "the squeeze-excite's own SiLU stays"
    assert not any(isinstance(m, nn.SiLU) for m in vision.modules() if m not in {b.se.act for b in vision.blocks})


def test_fold_keeps_an_activation_that_is_not_silu():
    conv, bn, act = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4).eval(), nn.ReLU()
    holder = nn.Module()
    holder.conv, holder.bn, holder.act = conv, bn, act
    _fold_pairs(holder, (("conv", "bn", "act"),))
    assert isinstance(holder.conv, FusedConv2d) and holder.conv.act == "" and holder.act is act


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


@needs_onednn
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # mkldnn.flags() sets TF32 too, for Intel GPUs
def test_cpu_convs_run_through_onednn_and_agree_with_plain_convs(tiny):
    """The fp32 CPU path is one oneDNN call per conv with cached reordered weights; switching oneDNN off
    (the plain conv + SiLU path) gives the same maps."""
    pixels, _, _ = _inputs(tiny.config.text.vocab_size)
    fast = fuse_for_inference(copy.deepcopy(tiny))
    plain = copy.deepcopy(fast)
    convs = [m for m in fast.vision_model.modules() if isinstance(m, FusedConv2d)]
    with torch.no_grad():
        out = fast.vision_model.forward_intermediates(pixels)
        assert all("_onednn_weight" in c.__dict__ for c in convs), "every folded conv ran through oneDNN"
        with torch.backends.mkldnn.flags(enabled=False):
            ref = plain.vision_model.forward_intermediates(pixels)
        assert not any("_onednn_weight" in m.__dict__ for m in plain.vision_model.modules())
    for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states, strict=True)):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel <= 1e-5, f"hidden state {i}: oneDNN and plain paths differ by {rel:.1e}"
    # One conv on its own, NCHW input, against the textbook conv + SiLU.
    conv = fast.vision_model.blocks[1].dw_conv
    x = torch.randn(2, conv.in_channels, 11, 7)
    with torch.no_grad():
        expect = F.silu(F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, groups=conv.groups))
        torch.testing.assert_close(conv(x), expect, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_reordered_weights_follow_input_sizes_and_weight_changes(tiny):
    fast = fuse_for_inference(copy.deepcopy(tiny))
    with torch.no_grad():
        for batch, size in [(3, 64), (1, 80), (2, 33)]:
            pixels = smooth_images(batch, size, seed=size)
            ref, out = tiny.encode_image(pixels), fast.encode_image(pixels)
            rel = ((out - ref).abs().max() / ref.abs().max()).item()
            assert rel <= 1e-5, f"batch {batch} at {size} px: {rel:.1e}"
        conv = fast.vision_model.blocks[0].dw_conv
        x = torch.randn(2, conv.in_channels, 9, 9)
        before = conv(x)
        conv.weight.mul_(2.0)  # the cached reorder must not survive a change of the weight
        after = conv(x)
        expect = F.silu(F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, groups=conv.groups))
        torch.testing.assert_close(after, expect, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(before, after)


@needs_onednn
def test_a_failing_onednn_call_falls_back_once_with_a_warning(tiny, monkeypatch):
    import align_torch.inference.fast as fast

    conv = fuse_for_inference(copy.deepcopy(tiny)).vision_model.blocks[0].dw_conv
    x = torch.randn(2, conv.in_channels, 9, 9)
    with torch.no_grad():
        expect = F.silu(F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, groups=conv.groups))
        # A bad input is the caller's error, in PyTorch's words, and does not switch oneDNN off.
        with pytest.raises(RuntimeError, match="channels"):
            conv(torch.randn(2, conv.in_channels + 1, 9, 9))
        assert conv.onednn
        calls = []

        def broken(*args):
            calls.append(1)
            raise RuntimeError("unsupported by this oneDNN build")

        monkeypatch.setattr(fast, "_onednn_conv", broken)
        with pytest.warns(RuntimeWarning, match="unsupported by this oneDNN build"):
            torch.testing.assert_close(conv(x), expect, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(conv(x), expect, atol=1e-5, rtol=1e-5)
    assert calls == [1], "after one failure the layer stays on the plain path"


@needs_onednn
def test_onednn_self_check_falls_back_to_plain_convs_once(tiny, monkeypatch):
    """If the private op disagrees with the plain conv (a changed torch), fusing warns once and every conv
    of every fused model runs the plain way; `onednn=False` asks for that without a check."""
    import align_torch.inference.fast as fast

    pixels, _, _ = _inputs(tiny.config.text.vocab_size)
    real = fast._onednn_conv
    monkeypatch.setattr(fast, "_onednn_conv", lambda conv, x: real(conv, x) * 1.01)
    fast.onednn_agrees.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="does not agree with the plain conv"):
            first = fuse_for_inference(copy.deepcopy(tiny))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = fuse_for_inference(copy.deepcopy(tiny))
        with torch.no_grad():
            ref = tiny.encode_image(pixels)
            for model in (first, second):
                out = model.encode_image(pixels)
                assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-5
                convs = [m for m in model.vision_model.modules() if isinstance(m, FusedConv2d)]
                assert not any(c.onednn or "_onednn_weight" in c.__dict__ for c in convs)
    finally:
        fast.onednn_agrees.cache_clear()
    monkeypatch.undo()
    assert fast.onednn_agrees(), "the real op agrees with the plain conv in this torch"
    plain = fuse_for_inference(copy.deepcopy(tiny), onednn=False)
    with torch.no_grad():
        plain.encode_image(pixels)
    assert not any("_onednn_weight" in m.__dict__ for m in plain.vision_model.modules())


def test_used_fused_model_copies_and_pickles(tiny, tmp_path):
    """The cached oneDNN weights are opaque tensors: copying or saving a model that has run must drop them."""
    pixels, _, _ = _inputs(tiny.config.text.vocab_size)
    fast = fuse_for_inference(copy.deepcopy(tiny))
    with torch.no_grad():
        expect = fast.encode_image(pixels)
        twin = copy.deepcopy(fast)
        torch.save(fast, tmp_path / "fused.pt")
        loaded = torch.load(tmp_path / "fused.pt", weights_only=False)
        torch.testing.assert_close(twin.encode_image(pixels), expect, atol=0, rtol=0)
        torch.testing.assert_close(loaded.encode_image(pixels), expect, atol=0, rtol=0)


def test_squeeze_excite_gates_in_place_only_without_gradients(tiny):
    se = fuse_for_inference(copy.deepcopy(tiny)).vision_model.blocks[0].se
    assert isinstance(se, InPlaceGate)
    x = torch.rand(2, se.reduce.in_channels, 5, 5)
    with torch.no_grad():
        expect = tiny.vision_model.blocks[0].se(x.clone())
        y = se(x)
    assert y.data_ptr() == x.data_ptr(), "gated in place"
    torch.testing.assert_close(y, expect, atol=1e-6, rtol=1e-6)
    x = torch.rand(2, se.reduce.in_channels, 5, 5, requires_grad=True)
    y = se(x)
    assert y.data_ptr() != x.data_ptr() and y.grad_fn is not None
    assert type(tiny.vision_model.blocks[0].se) is SqueezeExcite, "an unfused model never gates in place"


def test_cpu_batches_are_sliced_to_the_chunk_budget_without_changing_results(tiny):
    pixels = smooth_images(5, 64, seed=3)
    whole = fuse_for_inference(copy.deepcopy(tiny), cpu_chunk_mb=None)
    sliced = fuse_for_inference(copy.deepcopy(tiny), cpu_chunk_mb=0.05)  # 52 KB: a few samples per slice
    blocks = sliced.vision_model.blocks
    size = blocks[0].chunk_size(sliced.vision_model.stem(pixels))
    assert all(b.cpu_chunk_bytes == int(0.05 * 2**20) for b in blocks)
    assert 1 <= size < 5, f"the budget must split the first block's batch of 5, got slices of {size}"
    calls: list[int] = []
    blocks[0].register_forward_hook(lambda _m, _i, out: calls.append(out.shape[0]))
    inner: list[int] = []
    blocks[0].dw_conv.register_forward_hook(lambda _m, _i, out: inner.append(out.shape[0]))
    with torch.no_grad():
        ref = whole.vision_model.forward_intermediates(pixels)
        out = sliced.vision_model.forward_intermediates(pixels)
    assert calls == [5], "a block hook sees the whole batch once"
    assert len(inner) > 1 and sum(inner) == 5, "the block's insides ran on slices"
    for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"hidden state {i}")
    assert out.hidden_states[-1].is_contiguous(memory_format=torch.channels_last)


def test_chunk_budget_never_splits_training_or_bad_values(tiny):
    assert all(type(b) is MBConv for b in tiny.vision_model.blocks), "unfused blocks are the plain recipe"
    block = fuse_for_inference(copy.deepcopy(tiny), cpu_chunk_mb=None).vision_model.blocks[0]
    assert isinstance(block, SlicedBatch)
    x = torch.randn(4, block.dw_conv.in_channels, 8, 8)
    assert block.chunk_size(x) == 4, "no budget: never split"
    block.cpu_chunk_bytes = 1
    assert block.chunk_size(x) == 1
    block.training = True  # set behind train()'s back, which a fused block refuses
    assert block.chunk_size(x) == 4, "BatchNorm's batch statistics need the whole batch"
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="cpu_chunk_mb"):
            fuse_for_inference(copy.deepcopy(tiny), cpu_chunk_mb=bad)


def test_fusing_twice_changes_nothing(tiny):
    pixels, _, _ = _inputs(tiny.config.text.vocab_size)
    once = fuse_for_inference(copy.deepcopy(tiny))
    with torch.no_grad():
        a = once.encode_image(pixels)
        b = fuse_for_inference(once).encode_image(pixels)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert len(once.text_model._forward_pre_hooks) == 1


def test_fused_model_refuses_to_train(tiny):
    pixels, _, _ = _inputs(tiny.config.text.vocab_size)
    fused = fuse_for_inference(copy.deepcopy(tiny))
    for module in (fused, fused.vision_model, fused.vision_model.blocks[0]):
        with pytest.raises(RuntimeError, match="fused for inference; reload the model to train"):
            module.train()
    fused.eval()
    fused.vision_model.stem.conv.training = True  # set behind train()'s back
    with pytest.raises(RuntimeError, match="training mode"):
        fused.encode_image(pixels)
    fused.eval()
    fused.requires_grad_(True)
    with pytest.raises(RuntimeError, match="gradients for folded weights"):
        fused.encode_image(pixels)


def test_fused_model_still_gives_input_gradients(tiny):
    """Saliency maps need d(embedding)/d(pixels) even from a fused model."""
    pixels, _, _ = _inputs(tiny.config.text.vocab_size)
    pixels.requires_grad_(True)
    fused = fuse_for_inference(copy.deepcopy(tiny))
    fused.encode_image(pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_fold_bn_matches_conv_then_bn():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
    bn = nn.BatchNorm2d(6, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    bn.eval()
    x = torch.randn(2, 6, 9, 9)
    fused = fold_bn(conv, bn)
    assert isinstance(fused, FusedConv2d) and fused.bias is not None
    with torch.no_grad():
        torch.testing.assert_close(fused(x), bn(conv(x)), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="output channels"):
        fold_bn(conv, nn.BatchNorm2d(5))
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(conv, nn.BatchNorm2d(6, track_running_stats=False))


def test_trim_padding_cuts_to_longest_text():
    ids = torch.tensor([[101, 5, 6, 102, 0, 0], [101, 7, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    t_ids, t_mask, t_types = trim_padding(ids, mask, types)
    assert t_ids.tolist() == [[101, 5, 6, 102], [101, 7, 102, 0]]
    assert t_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert t_types.shape == (2, 4)
    # All texts equally long: nothing left to mask, so the mask is dropped.
    same_ids, same_mask, _ = trim_padding(ids[:1], mask[:1])
    assert same_ids.tolist() == [[101, 5, 6, 102]] and same_mask is None
    assert trim_padding(ids, None)[0] is ids
    with pytest.raises(ValueError, match="attention_mask shape"):
        trim_padding(ids, mask[:, :3])


def test_trimmed_text_gives_identical_embeddings(tiny):
    _, ids, mask = _inputs(tiny.config.text.vocab_size, pad_to=32)
    fused = fuse_for_inference(copy.deepcopy(tiny))
    lengths: list[int] = []
    fused.text_model.embeddings.register_forward_hook(lambda _m, _i, out: lengths.append(out.shape[1]))
    with torch.no_grad():
        ref = tiny.encode_text(ids, mask)
        out = fused.encode_text(ids, mask, torch.zeros_like(ids))
        by_name = fused.text_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    assert lengths[0] == 16, "the padded batch must be cut to its longest real text"
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fused.text_projection(by_name), ref, atol=1e-6, rtol=1e-6)


def test_mean_pooled_text_is_neither_trimmed_nor_packed(tiny, monkeypatch):
    _, ids, mask = _inputs(tiny.config.text.vocab_size, pad_to=32)
    model = AlignModel(tiny.config.replace(text=dataclasses.replace(tiny.config.text, pooling="mean"))).eval()
    model.load_state_dict(tiny.state_dict(), strict=False)
    fused = fuse_for_inference(copy.deepcopy(model))
    packed = _count_packed(monkeypatch)
    lengths: list[int] = []
    fused.text_model.embeddings.register_forward_hook(lambda _m, _i, out: lengths.append(out.shape[1]))
    with torch.no_grad():
        torch.testing.assert_close(fused.encode_text(ids, mask), model.encode_text(ids, mask), atol=1e-6, rtol=1e-6)
    assert lengths == [32], "a mean-pooled tower sees the caller's full-length batch"
    assert packed == []


def _count_packed(monkeypatch) -> list[int]:
    """Record the batch size of every packed text-tower call (`Bert.forward(packed=True)`) from now on."""
    calls: list[int] = []
    real = Bert.forward

    def counting(bert, input_ids, *args, packed=False, **kwargs):
        if packed:
            calls.append(input_ids.shape[0])
        return real(bert, input_ids, *args, packed=packed, **kwargs)

    monkeypatch.setattr(Bert, "forward", counting)
    return calls


def encode_text_packed(model, ids, mask, types=None, normalize=False):
    """The text embeddings through the tower's packed path (what a fused model's encode_text runs)."""
    return model.project_text(model.text_model(ids, mask, types, packed=True).last_hidden_state[:, 0], normalize)


def test_fused_text_features_take_the_packed_path(tiny, monkeypatch):
    """A fused model's `get_text_features` (the model-card call), `encode_text` and forward all pack
    [CLS]-pooled text and equal the unfused model's; the unfused model never packs."""
    pixels, ids, mask = _inputs(tiny.config.text.vocab_size, pad_to=32)
    fused = fuse_for_inference(copy.deepcopy(tiny))
    calls = _count_packed(monkeypatch)
    with torch.no_grad():
        ref = tiny.get_text_features(input_ids=ids, attention_mask=mask)
        assert calls == [], "the unfused model keeps the padded path"
        out = fused.get_text_features(input_ids=ids, attention_mask=mask)
        assert calls == [3]
        both = fused(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        assert calls == [3, 3]
        # Left-padded texts cannot be packed: the trimmed padded path takes them, still exact.
        left = fused.encode_text(ids.flip(1), mask.flip(1))
        assert calls == [3, 3]
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(both.text_embeds, F.normalize(ref, dim=-1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(left, tiny.encode_text(ids.flip(1), mask.flip(1)), atol=1e-5, rtol=1e-5)


def test_packed_text_equals_padded(tiny):
    _, ids, mask = _inputs(tiny.config.text.vocab_size, pad_to=32)
    with torch.no_grad():
        ref = tiny.encode_text(ids, mask, normalize=True)
        out = encode_text_packed(tiny, ids, mask, torch.zeros_like(ids), normalize=True)
        # Equal lengths leave nothing to pack: the plain tower runs on the trimmed batch.
        same = encode_text_packed(tiny, ids[:1], mask[:1])
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(same, tiny.encode_text(ids[:1], mask[:1]), atol=1e-6, rtol=1e-6)


def test_packed_text_rejects_bad_inputs(tiny):
    _, ids, mask = _inputs(tiny.config.text.vocab_size)
    left_padded = mask.flip(1)
    with torch.no_grad(), pytest.raises(ValueError, match="pad on the right"):
        tiny.text_model(ids.flip(1), left_padded, packed=True)
    model = copy.deepcopy(tiny).train()
    with pytest.raises(RuntimeError, match="inference"):
        model.text_model(ids, mask, packed=True)


def test_bf16_autocast_stays_close(tiny):
    pixels, ids, mask = _inputs(tiny.config.text.vocab_size)
    fused = fuse_for_inference(copy.deepcopy(tiny))
    with torch.no_grad():
        ref_img, ref_txt = tiny.encode_image(pixels), tiny.encode_text(ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img, txt = fused.encode_image(pixels), fused.encode_text(ids, mask)
    assert img.dtype == torch.bfloat16, "autocast must reach the convolutions"
    assert F.cosine_similarity(img.float(), ref_img).min() >= 0.999
    assert F.cosine_similarity(txt.float(), ref_txt).min() >= 0.999


def test_fused_towers_compile_without_graph_breaks(tiny):
    """fullgraph=True fails on any graph break; the eager backend checks tracing without inductor's
    minutes of C++ compilation on a small CPU (bench/bench.py --compile runs inductor)."""
    pixels, ids, mask = _inputs(tiny.config.text.vocab_size)
    fused = fuse_for_inference(copy.deepcopy(tiny))
    torch._dynamo.reset()
    vision = torch.compile(fused.vision_model, fullgraph=True, backend="eager")
    text = torch.compile(fused.text_model, fullgraph=True, backend="eager")
    with torch.no_grad():
        # Under compile the trimming hook steps aside, so trim in eager mode first.
        img = vision(pixels).pooler_output
        cls = text(*trim_padding(ids, mask)).last_hidden_state[:, 0]
        ref = tiny.encode_image(pixels)
        assert ((img - ref).abs().max() / ref.abs().max()).item() <= 1e-5
        torch.testing.assert_close(fused.text_projection(cls), tiny.encode_text(ids, mask), atol=1e-6, rtol=1e-6)
    torch._dynamo.reset()


@pytest.mark.slow
def test_fused_full_size_matches_reference(native_full):
    """align-base size, randomised BN: the fused fp32 model within 1e-4 relative of the unfused one."""
    g = torch.Generator().manual_seed(1)
    pixels = smooth_images(1, 289, seed=1)
    ids = torch.randint(1000, 30000, (2, 64), generator=g)
    mask = torch.zeros_like(ids)
    mask[0, :17], mask[1, :9] = 1, 1
    ids = ids * mask
    fused = fuse_for_inference(copy.deepcopy(native_full))
    with torch.no_grad():
        ref = native_full(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        out = fused(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    for name in ("image_embeds", "text_embeds", "logits_per_image"):
        a, b = getattr(out, name), getattr(ref, name)
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel <= 1e-4, f"{name}: max difference {rel:.2e} of the largest value"
