"""A model whose image tower is a transformers encoder (a random tiny ConvNeXt, a ViT with its own 32 px
preprocessing) through the tools beyond training: `search` and `serve` over a folder it embedded (an image query
finds itself at cosine 1, text queries rank as the Python API does), and `capture`/`patch` at a site inside the
tower named by its `named_modules()` path (the captured value is the tower's own hidden state; the source's value
patched in gives the source's cosine exactly)."""

from __future__ import annotations

import json
import threading

import PIL.Image
import pytest
import torch

from align_torch import AlignModel, AlignProcessor
from align_torch.inspect.hooks import capture, patch_from
from align_torch.retrieval.collection import Collection
from align_torch.retrieval.serve import serve
from tests.helpers.cli import run_cli
from tests.helpers.hf_towers import hf_image_model
from tests.helpers.retrieval_data import photo_collection
from tests.retrieval.test_retrieval_serve import get

pytest.importorskip("transformers")

# The tower's last layer or stage, as model.named_modules() names it.
LAST = {"convnext": "vision_model.encoder.encoder.stages.1", "vit": "vision_model.encoder.layers.1"}


@pytest.fixture(scope="module", params=["convnext", "vit"])
def tower(request, model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"hf_{request.param}")
    model = hf_image_model(request.param, model_dir, root)
    return request.param, model, photo_collection(root / "photos", model)


def test_search_and_serve_follow_the_tower(tower):
    _, model_folder, folder = tower
    photo = folder.parent / "images" / "rocket.jpg"
    status, stdout, stderr = run_cli("search", folder, "--image", photo, "-k", 2, "--json")
    assert status == 0, stderr
    top = json.loads(stdout)["results"][0]
    assert top["image_path"] == str(photo) and top["score"] == pytest.approx(1.0, abs=2e-3)
    expected = [h.id for h in Collection(folder).search(text="a red rocket", k=3)[0]]
    status, stdout, _ = run_cli("search", folder, "a red rocket", "-k", 3, "--json")
    assert status == 0 and [r["id"] for r in json.loads(stdout)["results"]] == expected

    running = serve(Collection(folder), "127.0.0.1", 0)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{running.server_address[1]}"
        jpeg = (folder.parent / "images" / "astronaut.jpg").read_bytes()
        status, _, body = get(f"{url}/search?k=2", data=jpeg, headers={"Content-Type": "image/jpeg"})
        top = json.loads(body)["results"][0]
        assert status == 200 and top["image_path"].endswith("astronaut.jpg") and top["score"] > 0.99
        status, _, body = get(f"{url}/search?q=a+red+rocket&k=3")
        assert status == 200 and [r["id"] for r in json.loads(body)["results"]] == expected
    finally:
        running.shutdown()
        running.server_close()


def test_capture_and_patch_at_a_site_inside_the_tower(tower):
    kind, model_folder, folder = tower
    model, processor = AlignModel.from_pretrained(model_folder), AlignProcessor.from_pretrained(model_folder)
    assert LAST[kind] in dict(model.named_modules())
    images = [PIL.Image.open(folder.parent / "images" / f"{name}.jpg") for name in ("rocket", "horse")]
    inputs = processor(text=["a red rocket"] * 2, images=images)
    with torch.no_grad(), capture(model, [LAST[kind], "vision_model"]) as cache:
        out = model.forward_intermediates(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
        model(**inputs)
    assert torch.equal(cache[LAST[kind]], out.image_hidden_states[-1])  # the tower's own last hidden state
    assert cache["vision_model"].shape == (2, model.vision_model.num_features)  # the pooled features

    source = {k: v[:1] for k, v in inputs.items()}  # the rocket
    target = {k: v[1:] for k, v in inputs.items()}  # the horse, with the rocket's caption
    effect = patch_from(model, source, [LAST[kind]], target_inputs=target)
    assert not torch.allclose(effect.clean, effect.source, atol=1e-4)
    assert torch.allclose(effect.patched, effect.source, atol=1e-6)  # everything after the site is the source's
