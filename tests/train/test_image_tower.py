"""`finetune --image-tower hf:FOLDER` with small random transformers vision encoders (a ConvNeXt without its own
preprocessing, a ViT with a preprocessor_config.json), each with ALIGN's BERT and with an hf text tower: two
steps, then resumed to three exactly as three in one go; final/ loaded offline with both towers, run through
the CLI (zero-shot, embed, embed-text, eval, summary), and per-layer intermediates of both towers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align_torch import AlignModel, AlignProcessor
from align_torch.inspect.similarity import similarity_map
from align_torch.train import TrainConfig, Trainer
from align_torch.train.guards import Interrupted
from align_torch.train.starter import starter_vocab
from tests.helpers.cli import run_cli
from tests.helpers.hf_towers import VIT_SIZE, convnext_folder, vit_folder
from tests.helpers.train_data import write_shapes_classes, write_shapes_manifest

transformers = pytest.importorskip("transformers")


def _bert(folder: Path) -> Path:
    vocab = starter_vocab()
    config = transformers.BertConfig(
        vocab_size=len(vocab) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def _stop_after_two(trainer: Trainer, record) -> None:
    if record.step == 2:
        trainer.request_stop()


@pytest.mark.parametrize("image", ["convnext", "vit"])
@pytest.mark.parametrize("text", [None, "bert"])
def test_hf_image_tower_trains_resumes_loads_and_runs_every_command(
    image: str, text: str | None, model_dir: Path, tmp_path: Path
):
    torch.set_num_threads(1)
    image_tower = (convnext_folder if image == "convnext" else vit_folder)(tmp_path / image)
    fields = dict(model=str(model_dir), train=str(write_shapes_manifest(tmp_path / "data", 8)), batch_size=4)
    fields |= dict(max_steps=3, lr=1e-3, progress=False, save_every=1, workers=0, image_tower=f"hf:{image_tower}")
    if text is not None:
        fields["text_tower"] = f"hf:{_bert(tmp_path / text)}"
    whole = Trainer(TrainConfig(out=str(tmp_path / "whole"), **fields)).fit()
    with pytest.raises(Interrupted):
        Trainer(TrainConfig(out=str(tmp_path / "cut"), **fields), callbacks=[_stop_after_two]).fit()
    resumed = Trainer(TrainConfig(out=str(tmp_path / "cut"), **fields), resume=True).fit()
    assert resumed.losses == whole.losses[2:] and len(whole.losses) == 3
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    final_dir = tmp_path / "whole" / "final"
    final = AlignModel.from_pretrained(final_dir)
    assert type(final.vision_model.encoder).__name__ == ("ConvNextModel" if image == "convnext" else "ViTModel")
    assert final.config.image_tower == f"hf:{image_tower}" and final.config.text_tower == fields.get("text_tower")
    source = transformers.AutoModel.from_pretrained(image_tower)
    moved = max((p - source.state_dict()[k]).abs().max() for k, p in final.vision_model.encoder.state_dict().items())
    assert 0 < moved <= 5e-3  # three Adam steps of lr 1e-3 from the folder's weights
    processor = AlignProcessor.from_pretrained(final_dir)
    side = VIT_SIZE if image == "vit" else AlignProcessor.from_pretrained(model_dir).image_processor.crop_size[0]
    assert processor.image_processor.crop_size == (side, side)  # the ViT folder's own preprocessing
    if image == "vit":  # its mean and [0, 1] pixels too, not ALIGN's [-1, 1]
        assert processor.image_processor.image_mean == (0.5,) * 3 and not processor.image_processor.rescale_offset

    _check_intermediates(final, processor, write_shapes_classes(tmp_path / "classes", 1))
    _check_commands(final_dir, tmp_path)


def _check_intermediates(model: AlignModel, processor: AlignProcessor, classes: Path) -> None:
    from PIL import Image

    image = Image.open(next((classes / "red_circle").iterdir()))
    inputs = processor(text=["a red circle"], images=[image])
    with torch.no_grad():
        out = model.forward_intermediates(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
        embeds = model(**inputs)
    assert len(out.image_hidden_states) == model.vision_model.num_positions >= 3  # embeddings + stages or layers
    assert len(out.text_hidden_states) == 3  # embeddings + 2 layers, native or transformers
    assert torch.allclose(out.image_embeds, embeds.image_embeds, atol=1e-5)
    assert torch.allclose(out.text_embeds, embeds.text_embeds, atol=1e-5)
    # The exact map's assumption (ALIGN's mean-pooled map) fails here: Grad-CAM on the last hidden state, said so.
    with pytest.warns(UserWarning, match="Grad-CAM on its last hidden state"):
        maps = similarity_map(model, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
    last = out.image_hidden_states[-1]
    side = last.shape[-1] if last.ndim == 4 else int((last.shape[1] - 1) ** 0.5)  # ViT: the class token left out
    assert maps.shape == (1, side, side) and bool((maps >= 0).all())


def _check_commands(final_dir: Path, tmp_path: Path) -> None:
    image = next((tmp_path / "data" / "images").iterdir())
    (tmp_path / "texts.txt").write_text("a red circle\na blue square\n")
    common = ["--model", final_dir, "--device", "cpu"]
    commands = [
        ["zero-shot", image, "--labels", "red circle", "blue square"],
        ["embed", tmp_path / "data" / "images", "--out", tmp_path / "images.safetensors", "--quiet"],
        ["embed-text", tmp_path / "texts.txt", "--out", tmp_path / "texts.safetensors", "--quiet"],
        ["eval", "--zero-shot-dir", tmp_path / "classes", "--workers", "0", "--quiet", "--json"],
    ]
    if importlib.util.find_spec("onnx") is not None:  # exported, and checked against eager by the command
        commands.append(["export", "--tower", "image", "--format", "onnx", "--out", tmp_path / "onnx"])
    for argv in commands:
        status, stdout, stderr = run_cli(*argv, *common[:2] if argv[0] == "export" else common)
        assert status == 0, (argv[0], stderr)
    assert load_file(tmp_path / "images.safetensors")["embeddings"].shape == (8, 80)
    status, stdout, stderr = run_cli("summary", "--model", final_dir, "--json")
    assert status == 0, stderr
    summary = json.loads(stdout)
    assert summary["vision_params"] > 0 and summary["vision_flops"] > 0 and summary["text_flops"] > 0
    assert any(row["name"] == "image_projection" for row in summary["stages"])


@pytest.mark.parametrize("model_type", ["evil", "vit"])
@pytest.mark.parametrize("side", ["image", "text"])
def test_a_tower_folder_asking_for_remote_code_never_runs_it(model_type: str, side: str, model_dir: Path, tmp_path):
    """A folder whose config maps AutoModel to its own file: an unknown model type is refused, a known one loads
    transformers' own class; the folder's code never runs (it would leave a marker file)."""
    folder = vit_folder(tmp_path / "tower") if model_type == "vit" else tmp_path / "tower"
    folder.mkdir(exist_ok=True)
    config = json.loads((folder / "config.json").read_text()) if model_type == "vit" else {"model_type": "evil"}
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    fields = dict(model=str(model_dir), train=str(write_shapes_manifest(tmp_path / "data", 4)), out=str(tmp_path / "r"))
    cfg = TrainConfig(
        **fields, batch_size=4, max_steps=1, progress=False, workers=0, **{f"{side}_tower": f"hf:{folder}"}
    )
    if model_type == "evil":
        with pytest.raises(ValueError, match=f"cannot load the {side} tower .* without running its own code"):
            Trainer(cfg).fit()
    elif side == "image":
        Trainer(cfg).fit()
        assert type(AlignModel.from_pretrained(tmp_path / "r" / "final").vision_model.encoder).__name__ == "ViTModel"
    assert not marker.exists()
