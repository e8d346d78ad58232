"""Training-time semantics: gradient checkpointing, frozen BatchNorm, locked towers, BN momentum,
drop-path, parameter groups, LAMB and the learning-rate schedule. Tiny random models only."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from align_torch import AlignModel
from align_torch.model.config import align_tiny
from align_torch.model.efficientnet import DropPath
from align_torch.train.modes import freeze_batchnorm, lock_tower, prepare_model
from align_torch.train.optim import Lamb, lr_factor, param_groups


def _model(seed: int = 0, drop_path_rate: float = 0.2) -> AlignModel:
    torch.manual_seed(seed)
    cfg = align_tiny()
    cfg = cfg.replace(vision=type(cfg.vision)(**{**cfg.vision.__dict__, "drop_path_rate": drop_path_rate}))
    return AlignModel(cfg).train()


def _inputs(batch: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        input_ids=torch.randint(0, 1000, (batch, 12), generator=g),
        pixel_values=torch.randn(batch, 3, 64, 64, generator=g),
    )


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers() if "running" in k or "num_batches" in k}


def _step(model: AlignModel, inputs: dict, seed: int = 2) -> None:
    torch.manual_seed(seed)  # the same drop-path and dropout masks in both models
    model(**inputs, return_loss=True).loss.backward()


def test_grad_checkpointing_same_gradients_and_bn_statistics():
    plain = _model()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    inputs = _inputs()
    _step(plain, inputs)
    _step(ckpt, inputs)
    worst = 0.0
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            worst = max(worst, (a.grad - b.grad).abs().max().item())
    assert worst <= 1e-6
    # The recompute in backward must not update the running statistics a second time.
    before = _bn_buffers(_model())
    after_plain, after_ckpt = _bn_buffers(plain), _bn_buffers(ckpt)
    for k in after_plain:
        torch.testing.assert_close(after_ckpt[k], after_plain[k], rtol=0, atol=0, msg=k)
    assert int(after_ckpt["vision_model.stem.bn.num_batches_tracked"]) == 1
    assert not torch.equal(
        after_plain["vision_model.stem.bn.running_mean"], before["vision_model.stem.bn.running_mean"]
    )


def _saved_activation_bytes(model: AlignModel, inputs: dict) -> int:
    """Bytes autograd keeps for the backward pass: what gradient checkpointing is meant to lower."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs, return_loss=True).loss.backward()
    return total


def test_grad_checkpointing_lowers_saved_activation_memory():
    inputs = _inputs(batch=8)
    plain = _model()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    full, checkpointed = _saved_activation_bytes(plain, inputs), _saved_activation_bytes(ckpt, inputs)
    print(f"saved for backward: {full / 2**20:.2f} MiB plain, {checkpointed / 2**20:.2f} MiB checkpointed")
    assert checkpointed < 0.5 * full


def test_frozen_batchnorm_keeps_statistics_and_survives_train():
    model = _model()
    freeze_batchnorm(model)
    model.train()  # a trainer or user calling .train() must not undo the freeze
    before = _bn_buffers(model)
    model(**_inputs(), return_loss=True).loss.backward()
    for k, v in _bn_buffers(model).items():
        assert torch.equal(v, before[k]), k
    # Affine parameters still learn; batch statistics are not used (output equals eval mode's).
    assert model.vision_model.stem.bn.weight.grad is not None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        train_out = model.vision_model.stem(x)
        model.eval()
        eval_out = model.vision_model.stem(x)
    torch.testing.assert_close(train_out, eval_out)


def test_lock_image_tower_lit():
    model = _model()
    lock_tower(model.vision_model)
    model.train()
    before = _bn_buffers(model.vision_model)
    model(**_inputs(), return_loss=True).loss.backward()
    assert all(p.grad is None for p in model.vision_model.parameters())
    assert model.text_projection.weight.grad is not None
    assert not model.vision_model.training
    for k, v in _bn_buffers(model.vision_model).items():
        assert torch.equal(v, before[k]), k


def test_lock_text_tower_freezes_projection_and_dropout():
    model = _model()
    prepare_model(model, lock_text=True)
    model.train()
    model(**_inputs(), return_loss=True).loss.backward()
    assert all(p.grad is None for p in model.text_model.parameters())
    assert model.text_projection.weight.grad is None
    assert model.vision_model.stem.conv.weight.grad is not None
    ids = _inputs()["input_ids"]
    with torch.no_grad():
        assert torch.equal(model.encode_text(ids), model.encode_text(ids))  # no dropout in a locked tower


def test_bn_momentum_pytorch_convention():
    model = _model()
    prepare_model(model, bn_momentum=0.01)
    bn = model.vision_model.stem.bn
    x = torch.randn(8, 3, 64, 64)
    old = bn.running_mean.clone()
    with torch.no_grad():
        z = model.vision_model.stem.conv(nn.functional.pad(x, (0, 1, 0, 1)))
        model.vision_model.stem(x)
    batch_mean = z.mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, 0.99 * old + 0.01 * batch_mean)


def test_drop_path_rate_and_per_sample_masks():
    model = _model()
    prepare_model(model, drop_path_rate=0.2)
    blocks = model.vision_model.blocks
    n = len(blocks)
    for i, block in enumerate(blocks):
        if isinstance(block.drop_path, DropPath):
            assert block.drop_path.p == pytest.approx(0.2 * i / n)
    # Per sample: each sample's branch is kept whole (scaled by 1/keep) or zeroed, never element-wise.
    drop = DropPath(0.5).train()
    torch.manual_seed(0)
    out = drop(torch.ones(64, 4, 3, 3))
    per_sample = out.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])
    assert set(per_sample[:, 0].tolist()) == {0.0, 2.0}
    assert torch.equal(drop.eval()(torch.ones(2, 3)), torch.ones(2, 3))


def test_no_weight_decay_on_norms_biases_and_temperature():
    model = _model()
    prepare_model(model)
    decay, no_decay = param_groups(model, 0.1)
    ids = {id(p) for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert id(model.temperature) in ids
    assert id(model.vision_model.stem.bn.weight) in ids
    assert id(model.text_model.layers[0].attn_norm.weight) in ids
    assert id(model.text_projection.bias) in ids
    decayed = {id(p) for p in decay["params"]}
    assert id(model.text_projection.weight) in decayed and id(model.vision_model.stem.conv.weight) in decayed
    assert id(model.text_model.pooler.weight) not in decayed | ids  # unused by ALIGN: frozen, left out


def test_lamb_matches_hand_computation():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    b = nn.Parameter(torch.tensor([1.0]))
    opt = Lamb([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=0.5, eps=1e-6)
    w.grad, b.grad = torch.tensor([1.0, -2.0]), torch.tensor([0.5])
    opt.step()
    # First step: m_hat = g, v_hat = g^2, so the Adam direction is sign(g) (up to eps).
    update = torch.sign(torch.tensor([1.0, -2.0])) + 0.1 * torch.tensor([3.0, 4.0])
    trust = 5.0 / update.norm()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.5 * trust * update, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.detach(), torch.tensor([0.5]), atol=1e-5, rtol=0)  # no decay: no trust ratio


def test_lr_schedule_warmup_then_decay():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(80, 100, 10, "constant") == 1.0
