"""CLIP_benchmark on align_torch's loader: its own zero-shot classification and retrieval metric functions over
a generated class-per-folder set and a generated caption set agree with `align-torch eval`; its CLI runs ALIGN
through the registering wrapper (with the torchvision- and open_clip-dependent modules stubbed)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from align_torch.cli import main
from align_torch.data.images import load_image
from align_torch.evaluate import read_class_folder, read_karpathy
from align_torch.evaluate.clip_benchmark import fix_numpy_accuracy, load_align
from align_torch.preprocess.templates import IMAGENET_TEMPLATES, SIMPLE_TEMPLATES
from tests.helpers.train_data import CLASSES, shape_image, write_shapes_classes

zeroshot_classification = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")

CB_IMAGENET = [t.replace("{}", "{c}") for t in IMAGENET_TEMPLATES]  # CLIP_benchmark formats with {c}
CB_SIMPLE = [t.replace("{}", "{c}") for t in SIMPLE_TEMPLATES]
CAPTIONS = ("a {}", "a photo of a {}", "a picture of a {}", "a {} on a light background", "an image showing a {}")


class FolderDataset(Dataset):
    """A class-per-folder set as CLIP_benchmark's datasets give it: (transform(image), label), .classes."""

    def __init__(self, root: Path, transform, templates=None) -> None:
        data = read_class_folder(root)
        self.items, self.classes, self.transform = (
            list(zip(data.paths, data.labels, strict=True)),
            data.classes,
            transform,
        )
        self.templates = templates

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        return self.transform(load_image(path)), label


def _eval_json(capsys, model_dir: Path, *args: str) -> dict:
    base = ["eval", "--model", str(model_dir), "--device", "cpu", "--workers", "0", "--quiet", "--json", "--no-fuse"]
    assert main([*base, *args]) == 0
    return json.loads(capsys.readouterr().out)


def _write_caption_set(root: Path) -> Path:
    """A Karpathy-style test split: 12 shape images (more than CLIP_benchmark's largest K, 10) with 5 distinct
    captions each."""
    import random

    rng, entries = random.Random(0), []
    root.mkdir(parents=True, exist_ok=True)
    for i, label in enumerate(CLASSES + ["big " + c for c in CLASSES[:3]]):
        shape_image(*label.split()[-2:], rng, size=96 if "big" in label else 64).save(root / f"{i}.png")
        sentences = [{"raw": c.format(label)} for c in CAPTIONS]
        entries.append({"filename": f"{i}.png", "split": "test", "sentences": sentences})
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries}))
    return path


def test_zero_shot_classification_agrees_with_align_torch_eval(model_dir: Path, tmp_path: Path, capsys):
    root = write_shapes_classes(tmp_path / "classes", per_class=2)
    model, transform, tokenizer = load_align("align-base", str(model_dir), None, "cpu")
    dataset = FolderDataset(root, transform)
    loader = DataLoader(dataset, batch_size=5)
    fix_numpy_accuracy()  # as the wrapper does: CLIP_benchmark 1.6.2's accuracy() fails on NumPy 2.4
    metrics = zeroshot_classification.evaluate(model, loader, tokenizer, dataset.classes, CB_SIMPLE, "cpu", amp=False)
    ours = _eval_json(capsys, model_dir, "--zero-shot-dir", str(root), "--templates", "simple")["zero_shot"]
    assert ours["num_images"] == len(dataset) == 18
    assert 100 * metrics["acc1"] == pytest.approx(ours["top1"], abs=1e-9)
    assert 100 * metrics["acc5"] == pytest.approx(ours["top5"], abs=1e-9)
    # Per image, not only in total: the same predicted class.
    classifier = zeroshot_classification.zero_shot_classifier(
        model, tokenizer, dataset.classes, CB_SIMPLE, "cpu", amp=False
    )
    logits, _ = zeroshot_classification.run_classification(model, classifier, loader, "cpu", amp=False)
    from align_torch.evaluate.classification import embed_class_folder
    from align_torch.evaluate.zero_shot import build_classifier, classify_embeddings
    from align_torch.preprocess.processor import AlignProcessor

    processor = AlignProcessor.from_pretrained(model_dir)
    data = embed_class_folder(model, processor, root)
    classifier_ours = build_classifier(model, processor, data.classes, "simple")
    ours_logits = classify_embeddings(model, classifier_ours, data.vectors).logits
    assert torch.equal(logits.argmax(1), ours_logits.argmax(1))
    assert len(set(logits.argmax(1).tolist())) > 1  # the predictions differ between images: a real comparison


def _captions_collate(batch):
    images, texts = zip(*batch, strict=True)
    return torch.stack(images), list(texts)


def test_zero_shot_retrieval_agrees_with_align_torch_eval(model_dir: Path, tmp_path: Path, capsys):
    path = _write_caption_set(tmp_path / "flickr")
    model, transform, tokenizer = load_align("align-base", str(model_dir), None, "cpu")
    by_image: dict[Path, list[str]] = {}
    for image, caption in read_karpathy(path, path.parent):
        by_image.setdefault(image, []).append(caption)
    items = [(transform(load_image(p)), captions) for p, captions in by_image.items()]
    loader = DataLoader(items, batch_size=3, collate_fn=_captions_collate)
    metrics = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    ours = _eval_json(capsys, model_dir, "--retrieval", str(path))["retrieval"]
    assert (ours["num_images"], ours["num_texts"]) == (12, 60)
    figures = []
    for k in (1, 5, 10):
        # CLIP_benchmark: image_retrieval = text->image, per caption; text_retrieval = image->text, per image.
        assert 100 * metrics[f"image_retrieval_recall@{k}"] == pytest.approx(ours[f"t2i_r{k}"], abs=1e-4)
        assert 100 * metrics[f"text_retrieval_recall@{k}"] == pytest.approx(ours[f"i2t_r{k}"], abs=1e-4)
        figures += [ours[f"t2i_r{k}"], ours[f"i2t_r{k}"]]
    assert len(set(figures)) > 2  # not all 0 or all 100: the rankings were compared


def _stub_clip_benchmark_cli(monkeypatch, dataset: Dataset) -> None:
    """Stand-ins for the modules CLIP_benchmark's CLI imports that need torchvision or open_clip; its dataset
    builder hands back `dataset`."""
    for name in [m for m in sys.modules if m == "clip_benchmark.cli" or m.startswith("clip_benchmark.models")]:
        monkeypatch.delitem(sys.modules, name)
    open_clip = types.ModuleType("open_clip")
    builder = types.ModuleType("clip_benchmark.datasets.builder")
    builder.build_dataset = lambda **kwargs: dataset
    builder.dataset_collection = {}
    builder.get_dataset_collate_fn = lambda name: None
    builder.get_dataset_collection_from_file = lambda path: []
    builder.get_dataset_default_task = lambda name: "zeroshot_classification"
    collection = types.ModuleType("clip_benchmark.model_collection")
    collection.model_collection, collection.get_model_collection_from_file = {}, lambda path: []
    captioning = types.ModuleType("clip_benchmark.metrics.captioning")
    stubs = {
        "open_clip": open_clip,
        "clip_benchmark.datasets.builder": builder,
        "clip_benchmark.model_collection": collection,
        "clip_benchmark.metrics.captioning": captioning,
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_clip_benchmark_cli_runs_align_through_the_wrapper(model_dir: Path, tmp_path: Path, capsys, monkeypatch):
    root = write_shapes_classes(tmp_path / "classes", per_class=1)
    _, transform, _ = load_align("align-base", str(model_dir), None, "cpu")
    _stub_clip_benchmark_cli(monkeypatch, FolderDataset(root, transform, CB_IMAGENET))
    out = tmp_path / "result.json"
    args = ["eval", "--dataset", "shapes", "--model", "align-base", "--pretrained", str(model_dir), "--no_amp"]
    args += ["--num_workers", "0", "--batch_size", "4", "--output", str(out), "--quiet"]
    assert main(["clip-benchmark", *args]) == 0  # no --model_type: the wrapper adds align_torch
    result = json.loads(out.read_text())
    import clip_benchmark.models

    assert "align_torch" in clip_benchmark.models.MODEL_TYPES
    assert result["task"] == "zeroshot_classification" and result["pretrained"] == str(model_dir)
    capsys.readouterr()
    ours = _eval_json(capsys, model_dir, "--zero-shot-dir", str(root))["zero_shot"]  # default: the 80 templates
    assert ours["num_templates"] == 80
    assert 100 * result["metrics"]["acc1"] == pytest.approx(ours["top1"], abs=1e-9)


def test_wrapper_without_clip_benchmark_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "clip_benchmark", None)  # import fails as if not installed
    assert main(["clip-benchmark", "eval", "--dataset", "cifar10"]) == 1
    assert 'pip install -e ".[clip-benchmark]" in the clone' in capsys.readouterr().err
