"""One name per concept in the Python API of embed_folder and the loaders: `source` is a model reference (folder
or Hub id), `model` a loaded AlignModel, `fuse` whether it runs fused. The keywords these had before (`model=` and
`fused=` of embed_collection, `model_name=` and `fused=` of embed_to_folder, `model=` of the loaders) still work,
with a DeprecationWarning; an old and a new spelling of one keyword together are refused, naming both."""

from __future__ import annotations

import warnings

import pytest

from align_torch.retrieval import embed_folder


class Seen(Exception):
    """Raised by the stand-ins below with what they were handed, so nothing past the names runs."""


@pytest.fixture
def stub(monkeypatch, tmp_path):
    """embed_collection's loader and embed_to_folder's folder description, both replaced by a recorder."""

    def load(source, where, *, fuse, model_class, backend):
        raise Seen({"source": source.reference, "fuse": fuse})

    def info(plan, source, model, dtype, fuse, compute):
        raise Seen({"source": source, "model": model, "fuse": fuse})

    monkeypatch.setattr("align_torch.inference.loader.load_for_inference", load)
    monkeypatch.setattr(embed_folder, "folder_info", info)
    monkeypatch.setattr(embed_folder, "compute_mode", lambda model: "float32")
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    return images


def _seen(fn, *args, **kwargs) -> tuple[dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught, pytest.raises(Seen) as seen:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    return seen.value.args[0], [str(w.message) for w in caught if w.category is DeprecationWarning]


def test_embed_collection_takes_source_and_fuse_and_still_model_and_fused(stub, model_dir, tmp_path):
    out = tmp_path / "emb"
    new, warned = _seen(embed_folder.embed_collection, stub, out, source=str(model_dir), fuse=False)
    assert new == {"source": str(model_dir.resolve()), "fuse": False} and warned == []
    old, warned = _seen(embed_folder.embed_collection, stub, out, model=str(model_dir), fused=False)
    assert old == new
    assert warned == [
        "embed_collection(model=...) is now embed_collection(source=...)",
        "embed_collection(fused=...) is now embed_collection(fuse=...)",
    ]
    with pytest.raises(TypeError, match=r"both model= and source="):
        embed_folder.embed_collection(stub, out, model=str(model_dir), source=str(model_dir))


def test_embed_to_folder_takes_source_and_fuse_and_still_model_name_and_fused(stub, tmp_path):
    loaded = object()  # `model` is the loaded model; it reaches folder_info untouched
    args = (loaded, None, None, None, tmp_path / "emb")
    new, warned = _seen(embed_folder.embed_to_folder, *args, source="some/repo", fuse=False)
    assert new == {"source": "some/repo", "model": loaded, "fuse": False} and warned == []
    old, warned = _seen(embed_folder.embed_to_folder, *args, model_name="some/repo", fused=False)
    assert old == new and len(warned) == 2
    with pytest.raises(TypeError, match=r"both fused= and fuse="):
        embed_folder.embed_to_folder(*args, source="some/repo", fused=True, fuse=True)


def test_the_loaders_take_the_reference_as_source_and_still_as_model(model_dir):
    """resolve_model, load_config, load_model and load_for_inference: `source` is the reference; the keyword
    `model=` they had before still works, with a warning."""
    from align_torch.checkpoint.hub import resolve_model
    from align_torch.inference.loader import load_config, load_for_inference

    assert resolve_model(source=str(model_dir)).folder == resolve_model(str(model_dir)).folder
    with pytest.warns(DeprecationWarning, match=r"resolve_model\(model=...\) is now resolve_model\(source=...\)"):
        assert resolve_model(model=str(model_dir)).folder == resolve_model(str(model_dir)).folder
    with pytest.warns(DeprecationWarning, match=r"load_config\(model="):
        assert load_config(model=str(model_dir)) == load_config(source=str(model_dir))
    with pytest.warns(DeprecationWarning, match=r"load_for_inference\(model="):
        loaded, _ = load_for_inference(model=str(model_dir), device="cpu", fuse=False)
    assert not loaded.training
