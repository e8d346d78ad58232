"""`finetune --text-tower hf:FOLDER` with small random transformers encoders (a BERT with its own WordPiece vocab,
a RoBERTa without a tokenizer): two steps, an interrupted run resumed to the same weights, final/ loaded by
AlignModel.from_pretrained with the tower's weights, and embedded through the CLI (fused path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align_torch import AlignModel, AlignProcessor
from align_torch.preprocess.tokenizer import AlignTokenizer
from align_torch.train import TrainConfig, Trainer
from align_torch.train.guards import Interrupted
from align_torch.train.starter import starter_vocab
from tests.helpers.train_data import write_shapes_manifest

transformers = pytest.importorskip("transformers")

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _bert(folder: Path) -> Path:
    vocab = starter_vocab()
    model = transformers.BertModel(
        transformers.BertConfig(vocab_size=len(vocab) + 5, max_position_embeddings=64, **SIZES)
    )
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def _roberta(folder: Path, vocab_size: int = 2400) -> Path:
    config = transformers.RobertaConfig(vocab_size=vocab_size, max_position_embeddings=80, pad_token_id=1, **SIZES)
    transformers.RobertaModel(config).save_pretrained(folder)
    return folder


def _cfg(model_dir: Path, manifest: Path, out: Path, tower: Path, **changes) -> TrainConfig:
    fields = dict(
        model=str(model_dir),
        train=str(manifest),
        out=str(out),
        text_tower=f"hf:{tower}",
        batch_size=4,
        max_steps=2,
        lr=1e-3,
        lock_image=True,
        progress=False,
        save_every=1,
    )
    return TrainConfig(**{**fields, **changes})


def _stop_after_first_step(trainer: Trainer, record) -> None:
    trainer.request_stop()


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_hf_text_tower_trains_resumes_loads_and_embeds(kind: str, model_dir: Path, tmp_path: Path):
    torch.set_num_threads(1)
    tower = (_bert if kind == "bert" else _roberta)(tmp_path / kind)
    manifest = write_shapes_manifest(tmp_path / "data", 8)
    whole = Trainer(_cfg(model_dir, manifest, tmp_path / "whole", tower)).fit()
    assert len(whole.losses) == 2

    with pytest.raises(Interrupted):
        Trainer(_cfg(model_dir, manifest, tmp_path / "cut", tower), callbacks=[_stop_after_first_step]).fit()
    resumed = Trainer(_cfg(model_dir, manifest, tmp_path / "cut", tower), resume=True).fit()
    assert resumed.losses == whole.losses[1:]
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    final = AlignModel.from_pretrained(tmp_path / "whole" / "final")
    assert final.config.text_tower == f"hf:{tower}"
    assert type(final.text_model.encoder).__name__ == ("BertModel" if kind == "bert" else "RobertaModel")
    # The tower started from the folder's weights; the locked image tower is the starting model's.
    source = transformers.AutoModel.from_pretrained(tower)
    start = AlignModel.from_pretrained(model_dir)
    moved = (
        final.text_model.encoder.embeddings.word_embeddings.weight - source.embeddings.word_embeddings.weight
    ).abs()
    assert 0 < moved.max() <= 5e-3  # two Adam steps of lr 1e-3 from the folder's weights
    assert torch.equal(final.vision_model.stem.conv.weight, start.vision_model.stem.conv.weight)
    processor = AlignProcessor.from_pretrained(tmp_path / "whole" / "final")
    # BERT: the tower folder's WordPiece vocab; RoBERTa (no tokenizer files): the starting model's tokenizer
    expected = AlignTokenizer.from_pretrained(tower if kind == "bert" else model_dir).vocab_size
    assert processor.tokenizer.vocab_size == expected

    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\na small blue square on the beach\n")  # lengths differ: padding
    out = tmp_path / f"{kind}.safetensors"
    cmd = [sys.executable, "-m", "align_torch", "embed-text", str(texts), "--out", str(out)]
    subprocess.run([*cmd, "--model", str(tmp_path / "whole" / "final")], check=True, capture_output=True)
    vectors = load_file(out)["embeddings"]  # (2, P)
    with torch.no_grad():
        inputs = processor(
            text=["a red circle", "a small blue square on the beach"], padding="max_length", max_length=64
        )
        direct = final.encode_text(
            inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"), normalize=True
        )
    assert torch.allclose(vectors.float(), direct, atol=1e-3), (vectors - direct).abs().max()


def test_a_tokenizer_that_does_not_fit_the_tower_is_refused(model_dir: Path, tmp_path: Path):
    tower = _roberta(tmp_path / "small", vocab_size=50)
    manifest = write_shapes_manifest(tmp_path / "data", 8)
    with pytest.raises(ValueError, match=r"has \d+ tokens but the text tower .* embeds only 50"):
        Trainer(_cfg(model_dir, manifest, tmp_path / "run", tower)).fit()
