"""Architecture variants from config alone: EfficientNet B0-B7 and BERT tiny..base presets, another projection
dim or pooling, and loading a checkpoint into a changed architecture with strict=False."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from align_torch import AlignConfig, AlignModel, CheckpointError, preset
from align_torch.checkpoint.hf_keys import config_to_hf, native_to_hf
from align_torch.model.bert import Bert
from align_torch.model.config import BERT_SIZES, EFFICIENTNET_SCALING, PRESETS, bert, efficientnet
from align_torch.model.efficientnet import EfficientNet

# EfficientNet paper (Tan & Le 2019): MBConv blocks and last-stage width of each variant. ALIGN's tower
# stops there: the paper's extra 1x1 top conv to 1280 x width channels is not part of it.
PAPER = {
    "b0": (16, 320, 224),
    "b1": (23, 320, 240),
    "b2": (23, 352, 260),
    "b3": (26, 384, 300),
    "b4": (32, 448, 380),
    "b5": (39, 512, 456),
    "b6": (45, 576, 528),
    "b7": (55, 640, 600),
}
B0_STAGE_WIDTHS = (16, 24, 40, 80, 112, 192, 320)

# Turc et al. 2019 parameter counts (millions, embeddings and pooler included).
BERT_PARAMS_M = {"tiny": 4.4, "mini": 11.3, "small": 29.1, "medium": 41.7, "base": 110.1, "large": 335.1}


def on_meta(module_cls, cfg):
    """Build a module without allocating or initialising weights: shapes and counts only."""
    with torch.device("meta"):
        return module_cls(cfg)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_efficientnet_preset_blocks_and_widths_without_top_conv(name):
    blocks, final, resolution = PAPER[name]
    cfg = efficientnet(name)
    tower = on_meta(EfficientNet, cfg)
    assert (len(tower.blocks), tower.num_features, cfg.image_size) == (blocks, final, resolution)
    assert tower.blocks[-1].project_conv.out_channels == final
    if name == "b0":
        widths = tuple(tower.blocks[end].project_conv.out_channels for end in tower.stage_ends)
        assert widths == B0_STAGE_WIDTHS
        assert tower.stem.conv.out_channels == 32


@pytest.mark.parametrize("name", sorted(PAPER))
def test_efficientnet_preset_matches_transformers_scaling(name):
    """transformers' AlignVisionConfig with the same coefficients agrees on blocks, stem and stage widths."""
    from transformers import AlignVisionConfig
    from transformers.models.align.modeling_align import round_filters

    width, depth, _ = EFFICIENTNET_SCALING[name]
    hf = AlignVisionConfig(width_coefficient=width, depth_coefficient=depth)
    cfg = efficientnet(name)
    tower = on_meta(EfficientNet, cfg)
    assert len(tower.blocks) == hf.num_hidden_layers
    assert tower.stem.conv.out_channels == round_filters(hf, 32)
    ours = [tower.blocks[end].project_conv.out_channels for end in tower.stage_ends]
    assert ours == [round_filters(hf, c) for c in hf.out_channels]


@pytest.mark.parametrize("name", sorted(BERT_SIZES))
def test_bert_sizes(name):
    layers, hidden = BERT_SIZES[name]
    cfg = bert(name)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == (
        layers,
        hidden,
        hidden // 64,
        4 * hidden,
    )
    tower = on_meta(Bert, cfg)
    params = sum(p.numel() for p in tower.parameters()) / 1e6
    assert params == pytest.approx(BERT_PARAMS_M[name], rel=0.015)


def test_every_preset_builds_and_align_presets_embed_at_the_towers_width():
    for name in PRESETS:
        cfg = preset(name)
        model = on_meta(AlignModel, cfg)
        assert model.image_projection is None, f"{name} should need no image projection"
    assert preset("align-b3").projection_dim == 384
    assert preset("align-b7").vision == efficientnet("b7")
    assert preset("align-base").vision.image_size == 289  # align-base is B7 at 289 px, not the paper's 600


def test_bad_preset_names_say_what_exists():
    with pytest.raises(ValueError, match="unknown EfficientNet 'b9'.*b0"):
        efficientnet("b9")
    with pytest.raises(ValueError, match="unknown BERT size 'huge'.*medium"):
        bert("huge")
    with pytest.raises(ValueError, match="unknown preset 'align-b9'.*align-b0"):
        preset("align-b9")
    with pytest.raises(ValueError, match="pooling must be 'cls' or 'mean'"):
        bert("tiny", pooling="max")


def test_align_base_keys_stay_the_checkpoints():
    """No new keys unless the config asks: align-base's state dict still maps one to one onto transformers'."""
    model = on_meta(AlignModel, preset("align-base"))
    sd = model.state_dict()
    assert not any(k.startswith("image_projection") for k in sd)
    assert len(native_to_hf(sd)) == len(sd)


def test_combined_towers_with_another_projection_dim():
    cfg = AlignConfig(vision=efficientnet("b0", image_size=64), text=bert("tiny", vocab_size=500), projection_dim=256)
    torch.manual_seed(0)
    model = AlignModel(cfg).eval()
    assert model.image_projection.in_features == 320 and model.image_projection.out_features == 256
    ids = torch.randint(104, 500, (2, 9))
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(2, 3, 64, 64))
    assert out.image_embeds.shape == out.text_embeds.shape == (2, 256)
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(2))
    with pytest.raises(KeyError, match="image_projection"):
        native_to_hf(model.state_dict())  # transformers' ALIGN has no such layer: export refuses loudly


def test_mean_text_pooling_averages_real_tokens_only():
    torch.manual_seed(0)
    model = AlignModel(preset("align-tiny").replace(text=bert("tiny", vocab_size=1000, pooling="mean"))).eval()
    ids = torch.randint(104, 1000, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        short = model.encode_text(ids)
        long = model.encode_text(padded, mask)
        h = model.text_model(ids).last_hidden_state
    assert torch.allclose(short, long, atol=1e-5), "padding changes a mean-pooled embedding"
    assert torch.allclose(short, model.text_projection(h.mean(dim=1)), atol=1e-6)
    assert not torch.allclose(short, model.text_projection(h[:, 0]), atol=1e-3)
    with pytest.raises(ValueError, match="text pooling 'mean' has no Hugging Face equivalent"):
        config_to_hf(model.config)  # transformers would silently pool [CLS] instead


def test_strict_false_loads_what_matches_and_reports_the_rest(tiny_native_dir):
    full = AlignModel.from_pretrained(tiny_native_dir)
    changed = full.config.replace(text=dataclasses.replace(full.config.text, num_layers=1))
    with pytest.raises(CheckpointError, match="unexpected in the checkpoint"):
        AlignModel.from_pretrained(tiny_native_dir, config=changed)
    with pytest.warns(UserWarning, match="partial load"):
        fewer = AlignModel.from_pretrained(tiny_native_dir, config=changed, strict=False)
    report = fewer.load_report
    assert report.missing == [] and report.mismatched == []
    assert report.unexpected and all(k.startswith("text_model.layers.1.") for k in report.unexpected)
    for k, v in fewer.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), f"{k} was not loaded"

    with pytest.warns(UserWarning, match="partial load"):
        reprojected = AlignModel.from_pretrained(
            tiny_native_dir, config=full.config.replace(projection_dim=48), strict=False
        )
    report = reprojected.load_report
    assert report.missing == ["image_projection.bias", "image_projection.weight"]
    assert [m.split(":")[0] for m in report.mismatched] == ["text_projection.bias", "text_projection.weight"]
    assert torch.equal(reprojected.vision_model.blocks[3].dw_conv.weight, full.vision_model.blocks[3].dw_conv.weight)


def test_the_papers_encoder_grid_by_name(tmp_path):
    """EfficientNet B1-B7/L2 x BERT Mini..Large, one preset name each; summary prints the published sizes beside
    its own count, and init writes a grid cell."""
    from align_torch.inspect.summary import summarize
    from align_torch.model.config import GRID_IMAGE, GRID_TEXT
    from tests.helpers.cli import run_cli

    for image in GRID_IMAGE:
        for text in GRID_TEXT:
            cfg = preset(f"align-{image}-bert-{text}")
            layers, hidden = BERT_SIZES[text]
            assert (cfg.text.num_layers, cfg.text.hidden_size) == (layers, hidden)
            width, depth, _ = EFFICIENTNET_SCALING[image]
            assert (cfg.vision.width_mult, cfg.vision.depth_mult) == (width, depth)
            assert cfg.projection_dim == cfg.vision.num_features  # ALIGN's: no image projection
    assert preset("align-l2-bert-large") == preset("align-l2")
    mini = summarize(preset("align-b1-bert-mini"))
    assert 10e6 < mini.text_params < 11.3e6  # BERT-mini's 11.3M with the pooler, less the MLM-free vocab rows
    status, stdout, _ = run_cli("summary", "--model", "align-b3-bert-small", "--stages-only")
    assert status == 0 and "published: EfficientNet-B3: 12M parameters" in stdout and "BERT-small: 29.1M" in stdout
    status, _, stderr = run_cli("init", tmp_path / "m", "--preset", "align-b1-bert-mini")
    assert status == 0, stderr
    assert AlignModel.from_pretrained(tmp_path / "m").config == preset("align-b1-bert-mini")
