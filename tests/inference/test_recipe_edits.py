"""Edit the recipe, every path follows: a patched `Layer.forward` or `MBConv.forward`, an AlignModel subclass
overriding `encode_text`, a block replaced by a module of one's own. The fast path (`fuse_for_inference`,
packed text) and every job (embed, embed-text, zero-shot, eval), in Python and through the CLI with
`--model-class`, give the modified unfused model's numbers."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import align_torch
from align_torch.evaluate import zero_shot_accuracy
from align_torch.evaluate.zero_shot import build_classifier, classify_embeddings
from align_torch.inference.embed import embed_images, embed_texts
from align_torch.inference.fast import fuse_for_inference, is_fused
from align_torch.inference.loader import import_model_class, load_for_inference, load_model
from align_torch.model.bert import Layer
from align_torch.model.efficientnet import MBConv
from align_torch.retrieval.embeddings_file import EmbeddingIndex
from tests.helpers.cli import run_cli
from tests.helpers.hf_reference import smooth_images
from tests.helpers.job_data import photo
from tests.helpers.train_data import write_shapes_classes
from tests.helpers.variants import mbconv_plus_forward, naive_pre_ln_forward, pre_ln_forward

TOL = 1e-5
TEXTS = ["a photo of a cat", "a cup of coffee on a table", "an astronaut", "a red rocket on the launch pad"]
LABELS = ["a cat", "a cup of coffee", "an astronaut in a suit"]
# name -> (class attribute patched, or None; --model-class, or None)
EDITS = {
    "Layer.forward pre-LN": ((Layer, "forward", pre_ln_forward), None),
    "MBConv.forward + op": ((MBConv, "forward", mbconv_plus_forward), None),
    "Layer subclass pre-LN": (None, "tests.helpers.variants:PreLN"),
    "encode_text override": (None, "tests.helpers.variants:FlippedText"),
    "custom block": (None, "tests.helpers.variants:CustomBlock"),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("edit_photos")
    paths = []
    for name in ("chelsea", "coffee", "astronaut"):
        paths.append(folder / f"{name}.png")
        photo(name).resize((96, 72)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def classes(tmp_path_factory) -> Path:
    return write_shapes_classes(tmp_path_factory.mktemp("edit_classes") / "classes", per_class=1)


@pytest.fixture(params=list(EDITS))
def edit(request, monkeypatch):
    """(name, --model-class or None) with the edit in force; the reference is the edited model, unfused."""
    patch, spec = EDITS[request.param]
    if patch is not None:
        monkeypatch.setattr(*patch)
    return request.param, spec


def _reference(model_dir: Path, spec: str | None, photos: list[Path], classes: Path) -> dict:
    model, processor = load_for_inference(model_dir, "cpu", fuse=False, model_class=spec)
    assert not is_fused(model)
    return _numbers(model, processor, photos, classes)


def _numbers(model, processor, photos: list[Path], classes: Path) -> dict:
    images = embed_images(model, processor.image_processor, photos).vectors
    texts = embed_texts(model, processor.tokenizer, TEXTS)
    classifier = build_classifier(model, processor, LABELS, "simple")
    probs = classify_embeddings(model, classifier, images).probs
    acc = zero_shot_accuracy(model, processor, classes, "simple")
    return {"images": images, "texts": texts, "probs": probs, "top": (acc.top1, acc.top5)}


def test_edits_reach_every_job_in_python(edit, model_dir, photos, classes):
    name, spec = edit
    ref = _reference(model_dir, spec, photos, classes)
    plain = _reference(model_dir, None, photos, classes) if spec else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the custom block is left unfused, with a warning
        fused, processor = load_for_inference(model_dir, "cpu", model_class=spec)
    assert is_fused(fused) and type(fused) is (import_model_class(spec) if spec else align_torch.AlignModel)
    got = _numbers(fused, processor, photos, classes)
    for key in ("images", "texts", "probs"):
        torch.testing.assert_close(got[key], ref[key], atol=TOL, rtol=0, msg=f"{name}: {key}")
    assert got["top"] == ref["top"]
    if plain is not None:  # the edit changes the numbers, so the comparison above means something
        assert any((plain[k] - ref[k]).abs().max() > 1e-3 for k in ("images", "texts"))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_edits_reach_every_command(edit, backend, model_dir, photos, classes, tmp_path):
    """Every command follows the edit, in PyTorch and in ONNX Runtime (the graph exported from the edited model)."""
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    name, spec = edit
    ref = _reference(model_dir, spec, photos, classes)
    common = ["--model", model_dir, "--device", "cpu", "--quiet", "--backend", backend]
    common += ["--model-class", spec] if spec else []
    images = ["--workers", "0"]

    status, _, err = run_cli("embed", *photos, "--out", tmp_path / "img.safetensors", *common, *images)
    assert status == 0, err
    torch.testing.assert_close(
        EmbeddingIndex.load(tmp_path / "img.safetensors").vectors, ref["images"], atol=TOL, rtol=0
    )

    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    status, _, err = run_cli("embed-text", tmp_path / "texts.txt", "--out", tmp_path / "txt.safetensors", *common)
    assert status == 0, err
    torch.testing.assert_close(
        EmbeddingIndex.load(tmp_path / "txt.safetensors").vectors, ref["texts"], atol=TOL, rtol=0
    )

    status, out, err = run_cli("zero-shot", *photos, "--labels", *LABELS, "--templates", "simple", "--json", *common)
    assert status == 0, err
    for row, result in zip(ref["probs"], json.loads(out)["results"], strict=True):
        got = {p["label"]: p["prob"] for p in result["predictions"]}
        assert [got[label] for label in LABELS] == pytest.approx(row.tolist(), abs=TOL), name

    status, out, err = run_cli("eval", "--zero-shot-dir", classes, "--templates", "simple", "--json", *common, *images)
    assert status == 0, err
    zs = json.loads(out)["zero_shot"]
    assert (zs["top1"], zs["top5"]) == ref["top"]


def test_model_class_through_a_new_process(model_dir, tmp_path):
    """`python -m align_torch embed-text --model-class` imports the user's module from PYTHONPATH."""
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    repo = Path(__file__).resolve().parents[2]  # where tests.helpers.variants is importable from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "txt.safetensors"
    argv = ["embed-text", tmp_path / "texts.txt", "--out", out, "--model", model_dir, "--device", "cpu", "--quiet"]
    argv += ["--model-class", "tests.helpers.variants:PreLN"]
    done = subprocess.run(
        [sys.executable, "-m", "align_torch", *map(str, argv)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    model, processor = load_for_inference(model_dir, "cpu", fuse=False, model_class="tests.helpers.variants:PreLN")
    torch.testing.assert_close(
        EmbeddingIndex.load(out).vectors, embed_texts(model, processor.tokenizer, TEXTS), atol=TOL, rtol=0
    )


def test_model_class_errors_name_the_problem(model_dir, tmp_path):
    for spec, match in [
        ("no_colon", "expected module:Class"),
        ("no_such_module_xyz:Model", "cannot import 'no_such_module_xyz'"),
        ("tests.helpers.variants:Missing", "has no 'Missing'"),
        ("tests.helpers.variants:NoSE", "not a subclass of align_torch.AlignModel"),
    ]:
        with pytest.raises(ValueError, match=match):
            import_model_class(spec)
    (tmp_path / "texts.txt").write_text("a cat\n")
    argv = ["embed-text", tmp_path / "texts.txt", "--out", tmp_path / "x.safetensors", "--model", model_dir]
    status, _, err = run_cli(*argv, "--model-class", "nope")
    assert status == 2 and "expected module:Class" in err


def test_an_unfusable_block_is_left_unfused_with_one_warning(model_dir):
    """A block whose forward the swaps would change (NoSE applies GELU where the fused conv would add SiLU):
    fusing warns once naming it, gives it back its modules, fuses the rest, and the answers stay exact."""
    reference = load_model(model_dir, "cpu", model_class="tests.helpers.variants:CustomBlock")
    model = load_model(model_dir, "cpu", model_class="tests.helpers.variants:CustomBlock")
    with pytest.warns(RuntimeWarning) as caught:
        fuse_for_inference(model)
    messages = [str(w.message) for w in caught if "unfused" in str(w.message)]
    assert len(messages) == 1 and "vision_model.blocks.1 (NoSE)" in messages[0]
    assert "blocks.0" not in messages[0] and "text_model" not in messages[0]
    blocks = model.vision_model.blocks
    assert type(blocks[1]).__name__ == "NoSE" and isinstance(blocks[1].dw_bn, torch.nn.BatchNorm2d)
    assert isinstance(blocks[1].dw_act, torch.nn.SiLU) and type(blocks[1].dw_conv) is torch.nn.Conv2d
    assert is_fused(blocks[0]) and is_fused(blocks[2])
    pixels = smooth_images(2, 64)
    with torch.no_grad():
        got, expected = model.encode_image(pixels), reference.encode_image(pixels)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= TOL


def test_a_layer_edit_the_packed_path_cannot_run_leaves_text_padded(model_dir, monkeypatch):
    """A Layer.forward written without `layout.queries` fails on the [CLS]-only last layer: fusing warns,
    runs text padded (still trimmed), and the embeddings are the edited model's."""
    monkeypatch.setattr(Layer, "forward", naive_pre_ln_forward)
    reference = load_model(model_dir, "cpu")
    model = load_model(model_dir, "cpu")
    with pytest.warns(RuntimeWarning, match=r"text_model \(Bert\), packed text"):
        fuse_for_inference(model)
    assert not model.pack_text
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [5, 6, 7, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids, mask), reference.encode_text(ids, mask), atol=TOL, rtol=0)


def test_no_class_rebinding_in_the_package():
    """No `x.__class__ = ...` anywhere: a speed trick swaps modules, so overrides keep running."""
    root = Path(align_torch.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                for t in targets:
                    if isinstance(t, ast.Attribute) and t.attr == "__class__":
                        found.append(f"{path.relative_to(root)}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr" and len(node.args) > 1:
                if isinstance(node.args[1], ast.Constant) and node.args[1].value == "__class__":
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert found == []


def test_attention_sites_reach_the_packed_path(model_dir):
    """A hook on `heads_site` (silencing head 0 of every layer) acts on the fused, packed text path exactly as
    on the padded one; `probs_site` sees the eager softmax probabilities."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [5, 6, 7, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    model = load_model(model_dir, "cpu")
    with torch.no_grad():
        plain = model.encode_text(ids, mask)

    def silence_head_0(_module, _args, heads):
        heads = heads.clone()
        heads[:, 0] = 0  # (B, heads, T, d_head)
        return heads

    for layer in model.text_model.layers:
        layer.attn.heads_site.register_forward_hook(silence_head_0)
    seen = []
    model.text_model.layers[0].attn.probs_site.register_forward_hook(lambda _m, _a, probs: seen.append(probs))
    with torch.no_grad():
        edited = model.encode_text(ids, mask)
        out = model.text_model(ids, mask, output_attentions=True)
        fused = fuse_for_inference(model)
        assert fused.pack_text
        packed = fused.encode_text(ids, mask)
    assert (edited - plain).abs().max() > 1e-3
    torch.testing.assert_close(packed, edited, atol=TOL, rtol=0)
    assert len(seen) == 1 and seen[0] is out.attentions[0]
    torch.testing.assert_close(seen[0].sum(-1), torch.ones(2, seen[0].shape[1], 7))
