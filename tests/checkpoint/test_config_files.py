"""Configuration files are validated on load: one error that names the file and the field; transformers 5's
processor layout (processor_config.json + tokenizer.json) is read and written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from align_torch.checkpoint.weights import CheckpointError, read_config, read_hf_state_dict, save_native
from align_torch.model.config import AlignConfig, TextConfig, VisionConfig, align_tiny
from align_torch.preprocess.processor import AlignProcessor
from align_torch.preprocess.tokenizer import AlignTokenizer
from tests.helpers.proc_data import ALIGN_BASE_PREPROCESSOR, SMALL_PREPROCESSOR, texts, write_checkpoint

transformers = pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory):
    from align_torch import AlignModel

    folder = tmp_path_factory.mktemp("native") / "model"
    save_native(AlignModel(align_tiny()), folder)
    return folder


def _native_with(tmp_path, native_dir, edit) -> str:
    folder = tmp_path / "edited"
    shutil.copytree(native_dir, folder)
    raw = json.loads((folder / "config.json").read_text())
    edit(raw)
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda c: c["config"]["text"].update(hidden_size="32"), r"TextConfig.hidden_size must be an int, got str"),
        (
            lambda c: c["config"]["text"].update(num_heads=5),
            r"hidden_size \(32\) must be a multiple of num_heads \(5\)",
        ),
        (lambda c: c["config"]["text"].update(vocab_size=0), r"TextConfig.vocab_size must be at least 1, got 0"),
        (lambda c: c["config"]["vision"].update(image_size=-64), r"VisionConfig.image_size must be at least 1"),
        (lambda c: c["config"].update(projection_dim=0), r"AlignConfig.projection_dim must be at least 1"),
        (lambda c: c["config"]["vision"].update(drop_path_rate=1.5), r"drop_path_rate must lie in \[0.0, 1.0\)"),
        (
            lambda c: c["config"]["vision"].update(stages=[[3, 1, 1, 32, -16, 1]]),
            r"stages\[0\].out_ch must be at least",
        ),
        (lambda c: c["config"].update(text=[1, 2]), "text must be a JSON object, got list"),
        (lambda c: c.update(version=2), r"field 'version' is 2; this align_torch reads version 1"),
        # The name symmetric_pad had for a few days before 0.1.0 (transformers' own config.json keeps it).
        (
            lambda c: c["config"]["vision"].update(depthwise_padding=[]),
            r"unknown vision config fields: \['depthwise_padding'\]",
        ),
        (lambda c: c.pop("version"), r"field 'version' is None"),
    ],
)
def test_bad_native_config_names_file_and_field(tmp_path, native_dir, edit, words):
    folder = _native_with(tmp_path, native_dir, edit)
    with pytest.raises(CheckpointError, match=words) as info:
        read_config(folder)
    assert str(folder / "config.json") in str(info.value)


@pytest.mark.parametrize(
    "contents,words",
    [
        (b'{"format": "align_torch", "version": 1, "config": {"text": {"\xff": 1}}}', "is not UTF-8 text"),
        (b"[1, 2, 3]", "must hold a JSON object, got a JSON list"),
        (b'"config"', "got a JSON str"),
        (b"{not json", "is not valid JSON"),
    ],
)
def test_config_json_that_is_not_an_object_is_named(tmp_path, contents, words):
    (tmp_path / "config.json").write_bytes(contents)
    with pytest.raises(CheckpointError, match=words) as info:
        read_config(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


@pytest.mark.parametrize(
    "hf,words",
    [
        ({"model_type": "align", "text_config": {"num_attention_heads": 7}}, r"multiple of num_attention_heads \(7\)"),
        ({"model_type": "align", "vision_config": [1]}, "field 'vision_config' must be a JSON object"),
        ({"model_type": "align", "vision_config": {"strides": 2}}, r"'vision_config.strides' must be a list"),
        ({"model_type": "align", "text_config": {"vocab_size": -5}}, "vocab_size must be at least 1"),
    ],
)
def test_bad_hf_config_names_file_and_field(tmp_path, hf, words):
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match=words) as info:
        read_config(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)


@pytest.mark.parametrize(
    "index,words",
    [
        ({"weight_map": []}, "field 'weight_map' must be a non-empty object"),
        ({"metadata": {}}, "field 'weight_map' must be a non-empty object"),
        ({"weight_map": {"temperature": "../outside.safetensors"}}, "expected a file name in the folder"),
        ({"weight_map": {"temperature": 3}}, "maps 'temperature' to 3"),
        ([1], "must hold a JSON object"),
    ],
)
@pytest.mark.parametrize("name", ["model.safetensors.index.json", "pytorch_model.bin.index.json"])
def test_malformed_shard_index_is_named(tmp_path, index, words, name):
    (tmp_path / name).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=words) as info:
        read_hf_state_dict(tmp_path)
    assert name in str(info.value)


def test_config_constructors_refuse_bad_values_by_field():
    with pytest.raises(ValueError, match="TextConfig.num_layers must be at least 1, got 0"):
        TextConfig(num_layers=0)
    with pytest.raises(ValueError, match=r"TextConfig.pad_token_id must be at least 0, at most 999"):
        TextConfig(vocab_size=1000, pad_token_id=1000)
    with pytest.raises(ValueError, match="VisionConfig.width_mult must lie in"):
        VisionConfig(width_mult=0.0)
    with pytest.raises(ValueError, match=r"symmetric_pad\[0\] must be at least 0"):
        VisionConfig(symmetric_pad=(-1,))
    assert AlignConfig.from_dict(align_tiny().to_dict()) == align_tiny()


@pytest.mark.parametrize(
    "file,edit,words",
    [
        ("preprocessor_config.json", {"crop_size": {"height": 0, "width": 5}}, "crop_size must be a positive int"),
        ("preprocessor_config.json", {"size": "346"}, "size must be a positive int"),
        ("preprocessor_config.json", {"do_resize": "yes"}, "do_resize must be true or false"),
        ("preprocessor_config.json", {"image_std": [0.5, 0, 0.5]}, "image_std must not be 0"),
        ("preprocessor_config.json", {"image_mean": [0.5, 0.5]}, "image_mean must be 3 finite numbers"),
        ("preprocessor_config.json", {"resample": 9}, "resample must be a PIL resampling filter"),
        ("tokenizer_config.json", {"model_max_length": 1}, "field 'model_max_length' must be an int >= 2, got 1"),
        ("tokenizer_config.json", {"model_max_length": "64"}, "field 'model_max_length' must be an int"),
        ("tokenizer_config.json", {"do_lower_case": "true"}, "field 'do_lower_case' must be true or false"),
        ("tokenizer_config.json", {"pad_token": 0}, "field 'pad_token' must be a token string"),
        ("special_tokens_map.json", {"cls_token": {"text": "[CLS]"}}, "field 'cls_token' must be a token string"),
    ],
)
def test_bad_processor_files_name_file_and_field(tmp_path, file, edit, words):
    folder = write_checkpoint(tmp_path, ALIGN_BASE_PREPROCESSOR)
    raw = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**raw, **edit}))
    with pytest.raises(ValueError, match=words) as info:
        AlignProcessor.from_pretrained(folder)
    assert str(folder / file) in str(info.value)


@pytest.mark.parametrize("file", ["preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json"])
def test_processor_files_that_are_not_json_objects_are_named(tmp_path, file):
    folder = write_checkpoint(tmp_path, ALIGN_BASE_PREPROCESSOR)
    (folder / file).write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="is not UTF-8 text") as info:
        AlignProcessor.from_pretrained(folder)
    assert str(folder / file) in str(info.value)
    (folder / file).write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        AlignProcessor.from_pretrained(folder)


# --- transformers 5's processor layout -----------------------------------------------------------------
@pytest.fixture(scope="module", params=[ALIGN_BASE_PREPROCESSOR, SMALL_PREPROCESSOR], ids=["align_base", "small"])
def v5_folder(request, tmp_path_factory):
    """What the installed transformers' AlignProcessor.save_pretrained writes for a checkpoint's processor."""
    v4 = write_checkpoint(tmp_path_factory.mktemp("v4"), request.param)
    v5 = tmp_path_factory.mktemp("v5")
    transformers.AlignProcessor.from_pretrained(v4).save_pretrained(v5)
    return v5


def _inputs():
    import PIL.Image

    photos = [PIL.Image.fromarray(getattr(skimage_data, n)()) for n in ("chelsea", "coffee")]
    return texts(30, seed=4), photos


def _assert_same(got, expected) -> None:
    assert set(got) == set(expected.keys())
    for key in expected.keys():
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key


def test_transformers5_layout_is_read_and_equals_transformers(v5_folder):
    assert (v5_folder / "processor_config.json").is_file() and not (v5_folder / "preprocessor_config.json").exists()
    text, images = _inputs()
    expected = transformers.AlignProcessor.from_pretrained(v5_folder)(
        text=text, images=images, truncation=True, return_tensors="pt"
    )
    _assert_same(AlignProcessor.from_pretrained(v5_folder)(text=text, images=images), expected)


@pytest.mark.parametrize("layout", ["transformers4", "transformers5"])
def test_both_layouts_are_written_and_transformers_reads_them(v5_folder, tmp_path, layout):
    ours = AlignProcessor.from_pretrained(v5_folder)
    out = ours.save_pretrained(tmp_path / "saved", layout=layout)
    names = {p.name for p in out.iterdir()}
    expected_files = {"processor_config.json", "tokenizer.json"} if layout == "transformers5" else {"vocab.txt"}
    assert expected_files <= names
    assert ("preprocessor_config.json" in names) == (layout == "transformers4")
    text, images = _inputs()
    expected = transformers.AlignProcessor.from_pretrained(v5_folder)(
        text=text, images=images, truncation=True, return_tensors="pt"
    )
    reread = transformers.AlignProcessor.from_pretrained(out)
    _assert_same(reread(text=text, images=images, truncation=True, return_tensors="pt"), expected)
    _assert_same(AlignProcessor.from_pretrained(out)(text=text, images=images), expected)
    assert AlignTokenizer.from_pretrained(out).model_max_length == 64


def test_convert_keeps_the_transformers5_processor_files(tiny_hf_dir, v5_folder, tmp_path):
    from align_torch.inference.convert import convert

    src = tmp_path / "src"
    shutil.copytree(tiny_hf_dir, src)
    for name in ("preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (src / name).unlink(missing_ok=True)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(v5_folder / name, src / name)
    dst = convert(src, tmp_path / "native")
    assert (dst / "processor_config.json").read_bytes() == (src / "processor_config.json").read_bytes()
    text, images = _inputs()
    _assert_same(
        AlignProcessor.from_pretrained(dst)(text=text, images=images),
        transformers.AlignProcessor.from_pretrained(src)(
            text=text, images=images, truncation=True, return_tensors="pt"
        ),
    )
