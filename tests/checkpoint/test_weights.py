"""Loading, saving and converting checkpoints: strict key checks, clear errors, atomic writes, Hub stub."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import align_torch.checkpoint.hub as hub
from align_torch import AlignModel, CheckpointError
from align_torch.checkpoint.hf_keys import hf_to_native, native_to_hf
from align_torch.checkpoint.weights import read_tensor_file
from align_torch.cli import main as cli


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 2000, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(2, 3, 64, 64, generator=g)}


def _same_outputs(ours: AlignModel, ref) -> None:
    with torch.no_grad():
        a = ours(**_inputs()).logits_per_image
        b = ref(**_inputs()).logits_per_image
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_hf_dir_loads_and_matches(tiny_hf):
    folder, ref = tiny_hf
    model = AlignModel.from_pretrained(folder)
    assert not model.training
    _same_outputs(model, ref)


def test_native_roundtrip(tiny_hf, tiny_native_dir, tmp_path):
    model = AlignModel.from_pretrained(tiny_native_dir)
    assert json.loads((tiny_native_dir / "config.json").read_text())["format"] == "align_torch"
    assert (tiny_native_dir / "vocab.txt").is_file()  # processor files travel with the weights
    _same_outputs(model, tiny_hf[1])
    model.save_pretrained(tmp_path / "again")
    again = AlignModel.from_pretrained(tmp_path / "again")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert again.config == model.config


def test_key_map_covers_both_directions(tiny_hf):
    sd = tiny_hf[1].state_dict()
    native = hf_to_native(sd)
    assert set(native) == set(AlignModel(AlignModel.from_pretrained(tiny_hf[0]).config).state_dict())
    back = native_to_hf(native)
    assert set(back) == set(sd)
    with pytest.raises(KeyError, match="vision_model.encoder.blocks.0.mystery.weight"):
        hf_to_native({**sd, "vision_model.encoder.blocks.0.mystery.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="not_a_layer"):
        native_to_hf({"not_a_layer.weight": torch.zeros(1)})
    # align-base's .bin carries position_ids, a buffer of 0..T-1 with no native counterpart: dropped on the way
    # in, written back (as transformers expects) on the way out when asked.
    positions = torch.arange(64).expand((1, -1))
    assert set(hf_to_native({**sd, "text_model.embeddings.position_ids": positions})) == set(native)
    assert torch.equal(native_to_hf(native, max_positions=64)["text_model.embeddings.position_ids"], positions)


def test_hf_native_hf_is_bit_exact_and_transformers_loads_it(tmp_path):
    """`.bin` as align-base ships it (with position_ids) -> native -> HF: every tensor identical."""
    from transformers import AlignModel as HFAlignModel

    from tests.helpers.checkpoints import tiny_hf_checkpoint

    src, ref = tiny_hf_checkpoint(tmp_path / "src", seed=1, fmt="bin")
    assert cli(["convert", str(src), str(tmp_path / "native")]) == 0
    assert cli(["convert", str(tmp_path / "native"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    original = torch.load(src / "pytorch_model.bin", weights_only=True)
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    assert set(exported) == set(original)
    for k, v in original.items():
        assert exported[k].dtype == v.dtype and torch.equal(exported[k], v), k
    assert (tmp_path / "hf" / "vocab.txt").read_bytes() == (src / "vocab.txt").read_bytes()
    reloaded = HFAlignModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**_inputs()).logits_per_image, ref(**_inputs()).logits_per_image, rtol=0, atol=0
        )


def test_sharded_checkpoint(tiny_hf, tmp_path):
    folder, ref = tiny_hf
    ref.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    _same_outputs(AlignModel.from_pretrained(tmp_path), ref)


# --- bad checkpoints ----------------------------------------------------------------------------------
@pytest.fixture
def bad_dir(tiny_hf, tmp_path):
    """A writable copy of the tiny HF checkpoint (safetensors)."""
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_hf[0], dst)
    return dst


def _edit_weights(folder, edit):
    sd = load_file(folder / "model.safetensors")
    edit(sd)
    save_file(sd, folder / "model.safetensors")


def test_truncated_safetensors(bad_dir):
    data = (bad_dir / "model.safetensors").read_bytes()
    (bad_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        AlignModel.from_pretrained(bad_dir)


def test_truncated_bin(tiny_hf, tmp_path):
    from tests.helpers.checkpoints import tiny_hf_checkpoint

    folder, _ = tiny_hf_checkpoint(tmp_path / "b", fmt="bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*truncated or corrupt"):
        AlignModel.from_pretrained(folder)


def test_wrong_shape(bad_dir):
    _edit_weights(bad_dir, lambda sd: sd.update({"text_projection.weight": torch.zeros(3, 3)}))
    with pytest.raises(CheckpointError, match=r"text_projection\.weight: checkpoint \(3, 3\) vs model \(80, 32\)"):
        AlignModel.from_pretrained(bad_dir)


def test_missing_key(bad_dir):
    _edit_weights(bad_dir, lambda sd: sd.pop("vision_model.encoder.blocks.3.projection.project_bn.running_var"))
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: vision_model\.blocks\.3\.project_bn"):
        AlignModel.from_pretrained(bad_dir)


def test_extra_key(bad_dir):
    _edit_weights(bad_dir, lambda sd: sd.update({"text_model.encoder.layer.7.output.dense.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"unexpected in the checkpoint: text_model\.layers\.7\.mlp\.fc2"):
        AlignModel.from_pretrained(bad_dir)
    _edit_weights(bad_dir, lambda sd: sd.update({"lm_head.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"not part of an ALIGN model: lm_head\.weight"):
        AlignModel.from_pretrained(bad_dir)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_more_than_tensors(bad_dir, capsys):
    (bad_dir / "model.safetensors").unlink()
    with open(bad_dir / "pytorch_model.bin", "wb") as f:
        pickle.dump({"text_projection.weight": torch.zeros(2), "x": _Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"refusing to load .*objects other than tensors.*weights_only=True"):
        AlignModel.from_pretrained(bad_dir)
    assert "must never run" not in capsys.readouterr().out


def test_config_not_matching_weights(bad_dir):
    cfg = json.loads((bad_dir / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 3
    cfg["vision_config"]["width_coefficient"] = 0.5
    (bad_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match the model's config") as e:
        AlignModel.from_pretrained(bad_dir)
    assert "text_model.layers.2" in str(e.value) and "with the wrong shape" in str(e.value)


def test_no_weights_and_bad_json(bad_dir, tmp_path):
    (bad_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights in"):
        AlignModel.from_pretrained(bad_dir)
    (bad_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        AlignModel.from_pretrained(bad_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AlignModel.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        AlignModel.from_pretrained(empty)


def test_state_dict_must_hold_tensors(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "x.bin")
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_tensor_file(tmp_path / "x.bin")


def test_strict_false_reports_what_did_not_load(tiny_hf_dir):
    base = AlignModel.from_pretrained(tiny_hf_dir)
    smaller = base.config.replace(text=base.config.text.__class__(**{**base.config.text.__dict__, "num_layers": 1}))
    with pytest.raises(CheckpointError):
        AlignModel.from_pretrained(tiny_hf_dir, config=smaller)
    with pytest.warns(UserWarning, match="partial load"):
        model = AlignModel.from_pretrained(tiny_hf_dir, config=smaller, strict=False)
    assert model.load_report.unexpected and all(
        k.startswith("text_model.layers.1.") for k in model.load_report.unexpected
    )
    assert not model.load_report.missing
    assert torch.equal(model.text_model.layers[0].attn.q.weight, base.text_model.layers[0].attn.q.weight)


# --- atomic writes ------------------------------------------------------------------------------------
def test_failed_convert_leaves_destination_untouched(tiny_hf_dir, tmp_path, monkeypatch):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("align_torch.checkpoint.weights.save_file", boom)
    assert cli(["convert", str(tiny_hf_dir), str(dst)]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folders left behind
    assert (dst / "keep.txt").read_text() == "old"


def test_convert_errors_are_messages(tmp_path, capsys):
    assert cli(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["convert", "a", "b", "--to", "onnx"])


# --- Hub ----------------------------------------------------------------------------------------------
def test_hub_id_downloads_through_huggingface_hub(tiny_hf, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs["allow_patterns"], kwargs["local_files_only"]))
        return str(tiny_hf[0])

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = AlignModel.from_pretrained("kakaobrain/align-base")
    _same_outputs(model, tiny_hf[1])
    assert calls and all(c[0] == "kakaobrain/align-base" and c[2] is False for c in calls)
    assert any("*.safetensors" in c[1] for c in calls)


def test_offline_and_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE is set.*not in the local Hugging Face cache"):
        AlignModel.from_pretrained("kakaobrain/align-base", cache_dir=str(tmp_path))


def test_align_base_config_json_maps_to_the_preset():
    """transformers' config for align-base (image_size 289, hidden_dim 640) is our `align-base` preset, and
    the export writes it back to the same config."""
    from align_torch.checkpoint.hf_keys import config_from_hf, config_to_hf
    from align_torch.model.config import preset
    from tests.helpers.hf_reference import hf_align_config

    cfg = config_from_hf(hf_align_config().to_dict())
    assert cfg == preset("align-base")
    assert config_from_hf(config_to_hf(cfg)) == cfg
    with pytest.raises(ValueError, match="model_type 'clip'"):
        config_from_hf({"model_type": "clip"})


def test_written_files_follow_the_umask(tiny_native_dir, tmp_path):
    """Atomic writes go through private temp files; the results must not stay private."""
    import os
    import stat

    from align_torch.util.fileio import atomic_file

    old = os.umask(0o022)
    try:
        AlignModel.from_pretrained(tiny_native_dir).save_pretrained(tmp_path / "m")
        with atomic_file(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
