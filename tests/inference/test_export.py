"""align-torch export: the ONNX graphs in ONNX Runtime and the .pt2 programs loaded back compute what the eager
model's encode_image / encode_text compute, for several batch sizes and text lengths, on real photos."""

from __future__ import annotations

import json

import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from align_torch import AlignModel, AlignProcessor
from align_torch.inference.export import export_towers, is_export_dir
from tests.helpers.cli import run_cli
from tests.helpers.export_data import captions, photos, spread_text_weights_

ort = pytest.importorskip("onnxruntime")

TOL = 1e-4  # max abs, fp32
BATCHES = (1, 3, 17)
LENGTHS = (1, 7, 64)


@pytest.fixture(scope="module")
def tiny(model_dir):
    """The tiny checkpoint with BatchNorm statistics from real photos (different photos, different embeddings)."""
    return AlignModel.from_pretrained(model_dir), AlignProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def onnx_dir(tiny, tmp_path_factory):
    model, processor = tiny
    out = tmp_path_factory.mktemp("export") / "onnx"
    export_towers(model, processor.tokenizer, out, fmt="onnx", model_id="tiny")
    return out


@pytest.fixture(scope="module")
def pt2_dir(tiny, tmp_path_factory):
    model, processor = tiny
    out = tmp_path_factory.mktemp("export") / "pt2"
    export_towers(model, processor.tokenizer, out, fmt="pt2", model_id="tiny")
    return out


@pytest.fixture(scope="module")
def pixels(tiny):
    """(17, 3, 64, 64) real photos through the checkpoint's processor."""
    return tiny[1](images=photos(17))["pixel_values"]


def texts_of_length(processor: AlignProcessor, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """`batch` held-out captions padded (or cut) to `length` tokens; the first is always a short one, so every
    batch above one mixes padding and real tokens."""
    lines = ["a dog"] + captions(batch - 1, seed=seed)
    enc = processor.tokenizer(lines, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    return {k: v[:, :length] for k, v in enc.items()}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("batch", BATCHES)
def test_onnx_image_tower_matches_eager_on_photos(tiny, onnx_dir, pixels, batch):
    model, _ = tiny
    x = pixels[:batch]
    with torch.no_grad():
        ref = model.encode_image(x)  # (B, P)
    got = torch.from_numpy(_session(onnx_dir / "image.onnx").run(None, {"pixel_values": x.numpy()})[0])
    assert got.shape == ref.shape
    assert _max_abs(got, ref) <= TOL


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("length", LENGTHS)
def test_onnx_text_tower_matches_eager(tiny, onnx_dir, batch, length):
    model, processor = tiny
    inputs = texts_of_length(processor, batch, length, seed=batch * 100 + length)
    with torch.no_grad():
        ref = model.encode_text(**inputs)  # (B, P)
    session = _session(onnx_dir / "text.onnx")
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
    assert got.shape == ref.shape
    assert _max_abs(got, ref) <= TOL


@pytest.mark.parametrize("batch", BATCHES)
def test_pt2_image_program_matches_eager_on_photos(tiny, pt2_dir, pixels, batch):
    model, _ = tiny
    program = torch.export.load(str(pt2_dir / "image.pt2")).module()
    x = pixels[:batch]
    with torch.no_grad():
        assert _max_abs(program(x), model.encode_image(x)) <= TOL


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("length", LENGTHS)
def test_pt2_text_program_matches_eager(tiny, pt2_dir, batch, length):
    model, processor = tiny
    program = torch.export.load(str(pt2_dir / "text.pt2")).module()
    inputs = texts_of_length(processor, batch, length, seed=batch * 100 + length)
    with torch.no_grad():
        got = program(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
        assert _max_abs(got, model.encode_text(**inputs)) <= TOL


def test_metadata_beside_each_graph_describes_it(tiny, onnx_dir, pt2_dir):
    model, _ = tiny
    assert sorted(p.name for p in onnx_dir.iterdir()) == [
        "image.json",
        "image.onnx",
        "text.json",
        "text.onnx",
    ]
    for folder, fmt in ((onnx_dir, "onnx"), (pt2_dir, "pt2")):
        for tower in ("image", "text"):
            meta = json.loads((folder / f"{tower}.json").read_text())
            assert (meta["tower"], meta["format"], meta["file"], meta["model"]) == (
                tower,
                fmt,
                f"{tower}.{fmt}",
                "tiny",
            )
            assert meta["outputs"][0]["shape"] == ["batch", model.config.projection_dim]
            assert meta["parity"]["max_abs"] <= TOL and len(meta["parity"]["cases"]) == (2 if tower == "image" else 3)
            if fmt == "onnx":
                assert meta["opset"] >= 18
                session = _session(folder / meta["file"])
                assert [i.name for i in session.get_inputs()] == [i["name"] for i in meta["inputs"]]
    text = json.loads((onnx_dir / "text.json").read_text())
    assert text["dynamic_dims"]["tokens"] == [1, model.config.text.max_position_embeddings]
    assert json.loads((onnx_dir / "image.json").read_text())["inputs"][0]["shape"] == ["batch", 3, 64, 64]
    assert is_export_dir(onnx_dir) and is_export_dir(pt2_dir)


@pytest.fixture(scope="module")
def spread_text_dir(model_dir, tmp_path_factory):
    """The tiny text tower with weights that tell captions apart, exported to ONNX with its int8 copy."""
    model, processor = AlignModel.from_pretrained(model_dir), AlignProcessor.from_pretrained(model_dir)
    spread_text_weights_(model)
    out = tmp_path_factory.mktemp("export") / "spread"
    export_towers(model, processor.tokenizer, out, towers=["text"], int8=True)
    return out, processor


def test_int8_text_tower_keeps_the_fp32_embeddings(spread_text_dir):
    """On 300 held-out captions: the int8 graph's text embeddings have mean cosine >= 0.98 to the fp32 graph's,
    and so do their parts that differ between captions (each minus the fp32 corpus mean)."""
    out, processor = spread_text_dir
    enc = processor.tokenizer(captions(300, seed=7), padding=True, truncation=True, return_tensors="pt")
    feeds = {k: v.numpy() for k, v in enc.items()}
    fp32 = torch.from_numpy(_session(out / "text.onnx").run(None, feeds)[0])  # (300, P)
    int8 = torch.from_numpy(_session(out / "text.int8.onnx").run(None, feeds)[0])  # (300, P)
    unit = F.normalize(fp32, dim=-1)
    assert float((unit @ unit.T).mean()) < 0.97  # the captions' embeddings differ: the check below means something
    assert float(F.cosine_similarity(int8, fp32, dim=-1).mean()) >= 0.98
    mean = fp32.mean(dim=0)
    assert float(F.cosine_similarity(int8 - mean, fp32 - mean, dim=-1).mean()) >= 0.98
    import onnx

    ops = {node.op_type for node in onnx.load(str(out / "text.int8.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops  # it is the quantized graph
    meta = json.loads((out / "text.int8.json").read_text())
    assert meta["int8"] is True and meta["parity"]["min_cosine"] >= 0.98


def test_normalize_flag_gives_unit_vectors_and_extra_image_sizes(tiny, tmp_path):
    model, processor = tiny
    out = tmp_path / "norm"
    written = export_towers(model, None, out, towers=["image"], fmt="pt2", image_sizes=[64, 96], normalize=True)
    assert sorted(written) == ["image", "image_96"]
    program = torch.export.load(str(out / "image_96.pt2")).module()
    x = processor(images=photos(2))["pixel_values"]
    x96 = F.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
    with torch.no_grad():
        got = program(x96)
        ref = model.encode_image(x96, normalize=True)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))
    assert _max_abs(got, ref) <= TOL
    with pytest.raises(AssertionError, match=r"Guard failed: pixel_values\.size\(\)\[2\] == 96"):
        program(x)  # the 96 px graph refuses other sizes: torch's own shape guard, naming the size it needs


def test_cli_export_writes_and_refuses(model_dir, tmp_path):
    out = tmp_path / "exported"
    status, stdout, stderr = run_cli("export", "--model", model_dir, "--tower", "text", "--format", "pt2", "--out", out)
    assert status == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["text.json", "text.pt2"]
    assert "text tower, max abs diff to eager" in stdout
    meta = json.loads((out / "text.json").read_text())
    assert meta["model"] == str(model_dir.resolve())
    # An existing export is replaced only with --overwrite; any other folder never.
    status, _, stderr = run_cli("export", "--model", model_dir, "--tower", "text", "--format", "pt2", "--out", out)
    assert status == 2 and "--overwrite" in stderr
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    status, _, stderr = run_cli(
        "export", "--model", model_dir, "--tower", "text", "--format", "pt2", "--out", other, "--overwrite"
    )
    assert status == 2 and "not a folder written by align-torch export" in stderr
    assert (other / "keep.txt").read_text() == "mine"
    status, _, stderr = run_cli("export", "--model", model_dir, "--format", "pt2", "--int8", "--out", tmp_path / "x")
    assert status == 2 and "--int8 needs --format onnx" in stderr
    assert not (tmp_path / "x").exists()


def test_graphs_have_no_int64_argmax(onnx_dir):
    """ONNX Runtime has no int64 ArgMax on some builds (openai/CLIP #219): the graphs must not use one."""
    import onnx

    for name in ("image.onnx", "text.onnx"):
        ops = {node.op_type for node in onnx.load(str(onnx_dir / name)).graph.node}
        assert "ArgMax" not in ops and "NonZero" not in ops, name  # nothing shaped by values, either


def test_cli_int8_image_graph_is_measured_on_the_named_photos_or_refused(model_dir, tmp_path):
    """`export --int8 --tower image` writes a graph whose embeddings have mean cosine >= 0.99 to the fp32 graph's
    on the calibration photos (recomputed here), or exits 2 with the measured figure and writes nothing."""
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, image in enumerate(photos(17)):
        image.save(folder / f"{i:02d}.jpg")
    out = tmp_path / "int8"
    argv = ["export", "--model", model_dir, "--tower", "image", "--int8", "--out", out]
    status, stdout, stderr = run_cli(*argv, "--calibration-images", folder)
    if status == 2:
        figure = float(stderr.split("mean cosine to fp32 ")[1].split()[0])
        assert figure < 0.99 and "nothing written" in stderr, stderr
        assert not out.exists()
        return
    assert status == 0, stderr
    meta = json.loads((out / "image.int8.json").read_text())
    assert len(meta["calibration_images"]) == 17 and meta["quality"]["mean_cosine"] >= 0.99
    assert "int8 against fp32 over 17 rows" in stdout
    pixels = AlignProcessor.from_pretrained(model_dir)(images=[PIL.Image.open(f) for f in sorted(folder.iterdir())])
    feeds = {"pixel_values": pixels["pixel_values"].numpy()}
    fp32 = torch.from_numpy(_session(out / "image.onnx").run(None, feeds)[0])  # (17, P)
    int8 = torch.from_numpy(_session(out / "image.int8.onnx").run(None, feeds)[0])  # (17, P)
    assert float(F.cosine_similarity(int8, fp32, dim=-1).mean()) >= 0.99
    unit = F.normalize(fp32, dim=-1)
    assert float((unit @ unit.T).mean()) < 0.97  # the photos' embeddings differ: the check above means something
    status, _, stderr = run_cli("export", "--model", model_dir, "--tower", "image", "--int8", "--out", tmp_path / "y")
    assert status == 2 and "--calibration-images" in stderr
