"""SigLIP's sigmoid loss: the pure function against the formula written out pair by pair, and the training step
on 2 and 3 gloo ranks, with both exchanges (all-gather of the texts, and the ring pass) and with GradCache,
against one process holding the whole batch (float64, frozen BatchNorm, no dropout or drop-path). Ranks hold
uneven numbers of rows, so a positive placed at the wrong offset would show."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from align_torch import AlignModel, sigmoid_loss
from align_torch.model.config import align_tiny
from align_torch.model.loss import global_sigmoid_loss
from align_torch.train.data import Batch
from align_torch.train.gradcache import gradcache_backward
from align_torch.train.trainer import forward_loss
from tests.helpers.ports import free_port
from tests.helpers.ranks import one_thread, run_gloo_rank
from tests.helpers.tiny_models import calibrated_tiny, grads_of

SPLITS = {2: (5, 3), 3: (3, 1, 4)}  # rows per rank; 8 pairs in all
MICRO = 2


pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def _formula(text: torch.Tensor, image: torch.Tensor, scale: float, bias: float) -> float:
    """sum over all pairs of -log sigmoid(z_ij (t x_i.y_j + b)), z = +1 for i == j else -1, over the batch."""
    n, total = len(text), 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            v = z * (scale * float(text[i] @ image[j]) + bias)
            total += math.log1p(math.exp(-v))  # -log sigmoid(v)
    return total / n


def test_sigmoid_loss_equals_the_pairwise_formula():
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(7, 16, generator=g, dtype=torch.float64), dim=-1)
    image = F.normalize(torch.randn(7, 16, generator=g, dtype=torch.float64), dim=-1)
    temperature, bias = 0.25, -2.0
    expected = _formula(text, image, 1 / temperature, bias)
    assert abs(float(sigmoid_loss(text @ image.t() / temperature + bias)) - expected) <= 1e-12
    got = global_sigmoid_loss(text, image, torch.tensor(temperature), torch.tensor(bias))
    assert abs(float(got) - expected) <= 1e-12
    # the model's own loss on embeddings it made
    model = AlignModel(align_tiny().replace(loss="sigmoid")).eval()
    assert model.logit_bias is not None and float(model.logit_bias.detach()) == -10.0
    ids = torch.randint(1, 1000, (4, 6), generator=g)
    pixels = torch.randn(4, 3, 64, 64, generator=g)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, return_loss=True)
    t, b = float(model.temperature), float(model.logit_bias)
    assert abs(float(out.loss) - _formula(out.text_embeds, out.image_embeds, 1 / t, b)) <= 1e-5


def test_align_configs_have_no_logit_bias():
    assert "logit_bias" not in AlignModel(align_tiny()).state_dict()
    with pytest.raises(ValueError, match="AlignConfig.loss"):
        align_tiny().replace(loss="hinge")


def _model() -> AlignModel:
    """Tiny float64 sigmoid-loss model, calibrated frozen BatchNorm, no dropout or drop-path."""
    model = calibrated_tiny("sigmoid")
    with torch.no_grad():
        model.temperature.fill_(0.2)
        model.logit_bias.fill_(-3.0)  # off SigLIP's -10, so both signs of every term matter
    return model


def _batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (8, 10), generator=g)
    pixels = torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64)
    return Batch(pixels, ids, torch.ones_like(ids), torch.zeros_like(ids), [])


def _step(model: AlignModel, net: torch.nn.Module, batch: Batch, exchange: str, micro: int | None) -> dict:
    model.zero_grad(set_to_none=True)
    if micro is None:
        loss = forward_loss(net, batch, model.temperature, 0.0, logit_bias=model.logit_bias, exchange=exchange)
        loss.backward()
    else:
        loss = gradcache_backward(
            net, batch, model.temperature, 0.0, micro, logit_bias=model.logit_bias, exchange=exchange
        )
    grads = grads_of(model)
    return {"loss": loss.detach().clone(), "grads": grads}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    run_gloo_rank(rank, world, port, out, SPLITS, _batch(), _exchanges)


def _exchanges(local: Batch):
    for exchange in ("gather", "ring"):
        for micro in (None, MICRO):
            model = _model()
            yield f"{exchange}-{micro}", _step(model, DistributedDataParallel(model), local, exchange, micro)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_and_exchanges_equal_one_process(world: int, tmp_path: Path):
    out = tmp_path / "results.pt"
    mp.spawn(_worker, args=(world, free_port(), str(out)), nprocs=world, join=True)
    results = torch.load(out, weights_only=True)
    model = _model()
    single = _step(model, model, _batch(), "gather", None)
    assert single["grads"]["logit_bias"].abs() > 1e-3 and single["grads"]["temperature"].abs() > 1e-3
    # The other ranks' texts reach the image tower only through the exchange's gradient.
    assert single["grads"]["vision_model.stem.conv.weight"].abs().max() > 1e-4
    for name, result in results.items():
        assert abs(result["loss"] - float(single["loss"])) <= 1e-9, name
        assert result["grads"].keys() == single["grads"].keys(), name
        worst = max((result["grads"][k] - g).abs().max().item() for k, g in single["grads"].items())
        print(f"{world} ranks, {name}: worst gradient difference {worst:.1e}")
        assert worst <= 1e-6, (name, worst)


def test_finetune_switches_an_align_model_to_the_sigmoid_loss(tiny_native_dir: Path, tmp_path: Path):
    """--loss sigmoid on an ALIGN checkpoint: the temperature starts from the checkpoint's, a logit bias at -10
    is added and trains (with LoRA too, as part of the head), and final/ records both."""
    pytest.importorskip("peft")
    from align_torch.train import TrainConfig, Trainer
    from tests.helpers.train_data import write_shapes_manifest

    manifest = write_shapes_manifest(tmp_path / "data", 8)
    start = AlignModel.from_pretrained(tiny_native_dir)
    for lora in (None, 4):
        cfg = TrainConfig(
            model=str(tiny_native_dir),
            train=str(manifest),
            out=str(tmp_path / f"run{lora}"),
            batch_size=4,
            max_steps=1,
            lr=1e-2,
            loss="sigmoid",
            lora_rank=lora,
            progress=False,
        )
        trainer = Trainer(cfg)
        trainer.fit()
        # from the checkpoint's temperature (one step of lr 1e-2 away from it), not SigLIP's 0.1
        assert abs(float(trainer.model.temperature) - float(start.temperature)) <= 0.02
        final = AlignModel.from_pretrained(tmp_path / f"run{lora}" / "final")
        assert final.config.loss == "sigmoid"
        assert float(final.logit_bias) != -10.0  # it trained
        saved = json.loads((tmp_path / f"run{lora}" / "final" / "config.json").read_text())
        assert saved["config"]["loss"] == "sigmoid"


def test_init_writes_a_sigmoid_model_with_siglips_start(tmp_path: Path):
    from align_torch.cli import main

    assert main(["init", str(tmp_path / "m"), "--loss", "sigmoid"]) == 0
    model = AlignModel.from_pretrained(tmp_path / "m")
    assert model.config.loss == "sigmoid"
    assert float(model.temperature.detach()) == pytest.approx(0.1)  # SigLIP's t' = log 10
    assert float(model.logit_bias.detach()) == -10.0


def test_resume_refuses_another_loss(tiny_native_dir: Path, tmp_path: Path):
    from align_torch.train import TrainConfig, Trainer
    from tests.helpers.train_data import write_shapes_manifest

    manifest = write_shapes_manifest(tmp_path / "data", 8)
    cfg = TrainConfig(model=str(tiny_native_dir), train=str(manifest), out=str(tmp_path / "run"), batch_size=4)
    Trainer(cfg.replace(max_steps=1, progress=False)).fit()
    with pytest.raises(ValueError, match="cannot resume .* loss: None -> 'sigmoid'"):
        Trainer(cfg.replace(max_steps=2, progress=False, loss="sigmoid"), resume=True).fit()


def test_finetune_starts_a_new_bias_at_the_batch_prior(tiny_native_dir: Path, tmp_path: Path, capsys):
    """A model that gets its bias now starts it at log(1/(N-1)) for the global batch N, not SigLIP's -10; the
    flags set bias and temperature explicitly; the log says where they start and final/config.json records it."""
    from align_torch.cli import main
    from tests.helpers.train_data import write_shapes_manifest

    manifest = write_shapes_manifest(tmp_path / "data", 8)
    common = ["finetune", "--model", str(tiny_native_dir), "--train", str(manifest), "--batch-size", "4"]
    common += ["--max-steps", "1", "--lr", "1e-9", "--loss", "sigmoid", "--workers", "0"]  # the start line: not --quiet
    for name, extra, bias, temperature in (
        ("prior", [], -math.log(3), float(AlignModel.from_pretrained(tiny_native_dir).temperature.detach())),
        ("given", ["--logit-bias-init", "-2.5", "--temperature-init", "0.3"], -2.5, 0.3),
    ):
        assert main([*common, "--out", str(tmp_path / name), *extra]) == 0
        log = capsys.readouterr().err
        assert f"logit bias {bias:.4g}" in log and f"temperature {temperature:.4g}" in log, log
        saved = json.loads((tmp_path / name / "final" / "config.json").read_text())["config"]
        assert saved["logit_bias_init"] == pytest.approx(bias) and saved["temperature_init"] == pytest.approx(
            temperature
        )
        final = AlignModel.from_pretrained(tmp_path / name / "final")
        assert float(final.logit_bias) == pytest.approx(bias, abs=1e-4)  # one step of lr 1e-9 from the start
        assert ("(log 1/(N-1), global batch N = 4)" in log) == (name == "prior")
    softmax = [a for a in common if a not in ("--loss", "sigmoid")]
    assert main([*softmax, "--out", str(tmp_path / "softmax"), "--logit-bias-init", "-2"]) == 2
    assert "a logit bias start needs the sigmoid loss" in capsys.readouterr().err
