"""Evaluation protocols with answers known by construction: retrieval recall@K on a Karpathy-split JSON and
k-NN through the real image reading (a model stub puts every caption and image at a chosen rank), k-NN voting
and the linear probe on constructed features, two gloo ranks equal to one process, and `align-torch eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from align_torch import evaluate
from align_torch.cli import main
from align_torch.evaluate.knn import knn_predict
from align_torch.evaluate.linear_probe import fit_logistic, linear_probe
from tests.helpers.eval_stub import (
    StubModel,
    caption,
    stub_processor,
    write_index_classes,
    write_karpathy,
)
from tests.helpers.ports import free_port
from tests.helpers.train_data import write_shapes_classes

NUM_TEST = 12  # Karpathy test images
NUM_ALL = NUM_TEST + 5  # with the train and val images the test split leaves out


def _all_captions() -> list[str]:
    return [caption(i, j) for i in range(NUM_ALL) for j in range(6)]


def t2i_stub() -> tuple[StubModel, object]:
    """Image i is e_i; caption (i, j) is e_i + 2 * (the next r images), so exactly r wrong images score above
    its own: text->image rank r = (i + j) % 12."""
    texts = _all_captions()
    image_vectors = torch.eye(NUM_ALL)
    text_vectors = torch.zeros(len(texts), NUM_ALL)
    for row, text in enumerate(texts):
        i, j = int(text.split()[1]), int(text.split()[3])
        text_vectors[row, i] = 1.0
        if i < NUM_TEST:
            for m in range(1, (i + j) % NUM_TEST + 1):
                text_vectors[row, (i + m) % NUM_TEST] = 2.0
    return StubModel(image_vectors, text_vectors), stub_processor(texts)


def i2t_stub() -> tuple[StubModel, object]:
    """Caption c is f_c; image i is f_(its caption 0) + 2 * (caption 1 of the next i images), so its best
    caption has exactly i wrong captions above it: image->text rank i."""
    texts = _all_captions()
    row = {t: r for r, t in enumerate(texts)}
    image_vectors = torch.zeros(NUM_ALL, len(texts))
    for i in range(NUM_ALL):
        image_vectors[i, row[caption(i, 0)]] = 1.0
        if i < NUM_TEST:
            for m in range(1, i + 1):
                image_vectors[i, row[caption((i + m) % NUM_TEST, 1)]] = 2.0
    return StubModel(image_vectors, torch.eye(len(texts))), stub_processor(texts)


def test_karpathy_retrieval_text_to_image_known_ranks(tmp_path: Path):
    path = write_karpathy(tmp_path, NUM_TEST, extra_caption_of=0)
    model, processor = t2i_stub()
    pairs = evaluate.read_karpathy(path, tmp_path)  # test split, first 5 captions
    assert len(pairs) == 5 * NUM_TEST and pairs[0] == (tmp_path / "val2014" / "00000.png", caption(0, 0))
    assert pairs[5][0] == tmp_path / "00001.png"  # no filepath: directly under the root
    res = evaluate.retrieval_recall(model, processor, pairs)
    assert (res.num_images, res.num_texts, res.skipped) == (NUM_TEST, 60, [])
    # Ranks (i + j) % 12 over i < 12, j < 5: each rank 0..11 occurs 5 times.
    assert res.text_to_image == pytest.approx({1: 100 * 5 / 60, 5: 100 * 25 / 60, 10: 100 * 50 / 60})
    # All captions: image 0's 6th caption (j=5) has rank 5, so R@5 stays, R@10 gains one of 61.
    every = evaluate.retrieval_recall(model, processor, evaluate.read_karpathy(path, tmp_path, captions_per_image=None))
    assert every.num_texts == 61
    assert every.text_to_image == pytest.approx({1: 100 * 5 / 61, 5: 100 * 25 / 61, 10: 100 * 51 / 61})


def test_karpathy_retrieval_image_to_text_known_ranks(tmp_path: Path):
    path = write_karpathy(tmp_path, NUM_TEST)
    model, processor = i2t_stub()
    res = evaluate.retrieval_recall(model, processor, evaluate.read_karpathy(path, tmp_path), ks=(1, 5, 10, 12))
    # Denominator: images, not captions (any of an image's 5 captions in the top K counts once).
    assert res.image_to_text == pytest.approx({1: 100 / 12, 5: 100 * 5 / 12, 10: 100 * 10 / 12, 12: 100.0})


def test_read_karpathy_refuses_bad_input(tmp_path: Path):
    path = write_karpathy(tmp_path, 2)
    assert len(evaluate.read_karpathy(path, tmp_path, split="train")) == 15
    with pytest.raises(ValueError, match="split must be one of"):
        evaluate.read_karpathy(path, tmp_path, split="testing")
    (tmp_path / "bad.json").write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="not a Karpathy-split file"):
        evaluate.read_karpathy(tmp_path / "bad.json", tmp_path)
    (tmp_path / "none.json").write_text('{"images": [{"filename": "a.png", "split": "val", "sentences": []}]}')
    with pytest.raises(ValueError, match="no images with split 'test'"):
        evaluate.read_karpathy(tmp_path / "none.json", tmp_path)


def test_retrieval_ties_count_against_the_model(tmp_path: Path):
    """A collapsed model (every score equal) ranks each right answer after every wrong one: chance, not 100%."""
    path = write_karpathy(tmp_path, 2)
    texts = _all_captions()
    model = StubModel(torch.ones(NUM_ALL, 3), torch.ones(len(texts), 3))
    res = evaluate.retrieval_recall(model, stub_processor(texts), evaluate.read_karpathy(path, tmp_path), (1, 2, 6))
    assert res.text_to_image == {1: 0.0, 2: 100.0, 6: 100.0}  # one wrong image ties each caption
    assert res.image_to_text == {1: 0.0, 2: 0.0, 6: 100.0}  # five wrong captions tie each image


# --- k-NN -------------------------------------------------------------------------------------------------
def _unit(cosine: float) -> list[float]:
    return [cosine, (1 - cosine**2) ** 0.5, 0.0]


def test_knn_k1_and_weighted_k20_exact():
    """Query e0. Gallery: one class-2 image at cos 0.99, five class-0 at 0.95, fifteen class-1 at 0.70, ten
    class-3 at -0.5. k=1: class 2. k=20, weights exp(cos/0.07): 5 e^13.57 beats e^14.14 and 15 e^10 -> class 0
    (a plain majority, or summed cosines, would say class 1)."""
    rows = [(0.99, 2)] + [(0.95, 0)] * 5 + [(0.70, 1)] * 15 + [(-0.5, 3)] * 10
    gallery = torch.tensor([_unit(c) for c, _ in rows])
    labels = torch.tensor([label for _, label in rows])
    query = torch.tensor([[1.0, 0.0, 0.0]])
    assert knn_predict(gallery, labels, query, 4, k=1).tolist() == [2]
    assert knn_predict(gallery, labels, query, 4, k=20).tolist() == [0]
    assert knn_predict(gallery, labels, query, 4, k=20, temperature=10.0).tolist() == [1]  # ~uniform: majority
    with pytest.raises(ValueError, match="k must be at least 1"):
        knn_predict(gallery, labels, query, 4, k=0)


def _knn_stub(root: Path) -> tuple[StubModel, object]:
    """Train: 4 images per class (indices 0..11), each its own direction g_t. Val: 2 per class (100..105),
    0.95 toward its class's train images and 0.1 toward the others; val images 100 and 103 also have a
    decoy of another class at 0.99, the nearest neighbour. k=1: 4/6 right; weighted k=20: 6/6."""
    classes = ["ant", "bee", "cat"]
    train = write_index_classes(root, "train", 4, classes, start=0)
    val = write_index_classes(root, "val", 2, classes, start=100)
    vectors = torch.zeros(106, 12)
    for t in train.values():
        vectors[t, t] = 1.0
    for v in val.values():
        c = (v - 100) // 2
        row = torch.full((12,), 0.1)
        row[4 * c : 4 * c + 4] = 0.95
        if v in (100, 103):
            row[(4 * c + 5) % 12] = 0.99
        vectors[v] = row
    texts = torch.zeros(3, 12)  # zero-shot: class c's name points at its train images
    for c in range(3):
        texts[c, 4 * c : 4 * c + 4] = 1.0
    return StubModel(vectors, texts), stub_processor(classes)


def test_knn_through_class_folders(tmp_path: Path):
    model, processor = _knn_stub(tmp_path)
    res = evaluate.knn_accuracy(model, processor, tmp_path / "train", tmp_path / "val", ks=(1, 20))
    assert (res.num_train, res.num_val, res.num_classes) == (12, 6, 3)
    assert res.top1 == pytest.approx({1: 100 * 4 / 6, 20: 100.0})


def test_zero_shot_with_class_names_for_id_folders(tmp_path: Path):
    """ImageNet-style folders named by id: the prompts are built from --class-names, in sorted folder order."""
    write_index_classes(tmp_path, "val", 2, ["n03", "n01", "n02"], start=0)  # sorted: n01 (2, 3), n02 (4, 5), ...
    images = torch.zeros(6, 3)
    for index, c in enumerate([2, 2, 0, 0, 1, 1]):
        images[index, c] = 1.0
    model, processor = StubModel(images, torch.eye(3)), stub_processor(["ant", "bee", "cat"])
    res = evaluate.zero_shot_accuracy(model, processor, tmp_path / "val", ["{}"], class_names=["ant", "bee", "cat"])
    assert (res.top1, res.num_classes, res.top5) == (100.0, 3, None)
    with pytest.raises(ValueError, match="2 class names for the 3 sub-folders"):
        evaluate.zero_shot_accuracy(model, processor, tmp_path / "val", ["{}"], class_names=["ant", "bee"])


def test_class_folder_errors(tmp_path: Path):
    with pytest.raises(NotADirectoryError):
        evaluate.read_class_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        evaluate.read_class_folder(tmp_path)
    data = evaluate.read_class_folder(write_shapes_classes(tmp_path / "c", per_class=2))
    assert data.classes[0] == "blue circle" and len(data.paths) == 18 and data.labels[:3] == [0, 0, 1]


# --- linear probe -----------------------------------------------------------------------------------------
def _blobs(n_per_class: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(3, 8) * 3
    x = torch.cat([centres[c] + spread * torch.randn(n_per_class, 8, generator=g) for c in range(3)])
    return x, torch.arange(3).repeat_interleave(n_per_class)


@pytest.mark.parametrize("solver", ["torch", "sklearn"])
def test_linear_probe_separates_separable_features(solver):
    x, y = _blobs(30, 0.3, seed=0)
    x_test, y_test = _blobs(10, 0.3, seed=1)
    grid = (1e-2, 1e-1, 1.0)
    res = linear_probe(x, y, x_test, y_test, 3, l2_grid=grid, solver=solver)
    assert res.top1 == 100.0 and res.solver == solver and (res.num_train, res.num_val, res.num_test) == (72, 18, 30)
    assert set(res.val_top1) == set(grid)
    # The chosen strength is the best held-out score, the larger l2 among equals.
    best = max(res.val_top1.values())
    assert res.l2 == max(l2 for l2, v in res.val_top1.items() if v == best)


def test_linear_probe_solvers_reach_the_same_optimum():
    """The objective (mean cross-entropy + l2/2 ||W||^2) is strictly convex: torch's L-BFGS and sklearn
    (C = 1 / (l2 n)) must give the same probabilities on overlapping classes."""
    x, y = _blobs(40, 2.0, seed=2)
    for l2 in (1e-3, 1e-1):
        a, b = fit_logistic(x, y, 3, l2, "torch"), fit_logistic(x, y, 3, l2, "sklearn")
        pa = (x.double() @ a.weight.t() + a.bias).softmax(-1)
        pb = (x.double() @ b.weight.t() + b.bias).softmax(-1)
        torch.testing.assert_close(pa, pb, atol=1e-4, rtol=0)


# --- distributed: two gloo ranks equal one process --------------------------------------------------------


def _run_protocols(root: Path, distributed: bool) -> dict:
    model, processor = t2i_stub()
    retrieval = evaluate.retrieval_recall(
        model,
        processor,
        evaluate.read_karpathy(root / "coco" / "dataset_coco.json", root / "coco"),
        distributed=distributed,
    )
    retrieval_seen = model.images_seen
    knn_model, knn_processor = _knn_stub(root / "knn")
    knn = evaluate.knn_accuracy(
        knn_model, knn_processor, root / "knn" / "train", root / "knn" / "val", distributed=distributed
    )
    knn_images = knn_model.images_seen
    zero_shot = evaluate.zero_shot_accuracy(
        knn_model, knn_processor, root / "knn" / "val", ["{}"], distributed=distributed
    )
    return {
        "zero_shot": zero_shot.as_dict(),
        "zero_shot_texts_embedded_here": knn_model.texts_seen,
        "retrieval": retrieval.as_dict(),
        "knn": {str(k): v for k, v in knn.top1.items()},
        "knn_skipped": [str(p) for p, _ in knn.skipped],
        "images_embedded_here": [retrieval_seen, knn_images],
    }


def _rank_main(rank: int, root: Path, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out = _run_protocols(root, distributed=True)
        (root / f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path: Path):
    write_karpathy(tmp_path / "coco", NUM_TEST)
    _knn_stub(tmp_path / "knn")
    (tmp_path / "knn" / "val" / "ant" / "broken.png").write_bytes(b"not a png")
    single = _run_protocols(tmp_path, distributed=False)
    mp.spawn(_rank_main, args=(tmp_path, free_port()), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for out in ranks:
        assert out["retrieval"] == single["retrieval"] and out["knn"] == single["knn"]
        assert out["knn_skipped"] == single["knn_skipped"] and len(single["knn_skipped"]) == 1
        assert out["zero_shot"] == single["zero_shot"] and single["zero_shot"]["top1"] == 100.0
    # Each rank embedded its share only: 6 of the 12 test images; 6 of the 12 train images and 3 of the 7 val
    # files (ant/0, ant/1, ant/broken) or the other 4.
    assert single["images_embedded_here"] == [12, 18]
    assert [r["images_embedded_here"] for r in ranks] == [[6, 8], [6, 10]]
    # The 3 class prompts are split too (1 + 2), not embedded on every rank.
    assert single["zero_shot_texts_embedded_here"] == 3
    assert [r["zero_shot_texts_embedded_here"] for r in ranks] == [1, 2]


# --- the command ------------------------------------------------------------------------------------------
def test_one_template_default_for_zero_shot_eval_and_finetune():
    from align_torch.cli import build_parser
    from align_torch.defaults import TEMPLATES
    from align_torch.preprocess.templates import get_templates
    from align_torch.train import TrainConfig
    from align_torch.train.args import config_from_args

    parser = build_parser()
    zero_shot = parser.parse_args(["zero-shot", "x.jpg", "--labels", "cat"]).templates
    eval_ = parser.parse_args(["eval"]).templates
    # finetune's options not given stay out of the namespace; the run's config fills them in.
    finetune = config_from_args(parser.parse_args(["finetune", "--model", "m", "--train", "t.csv", "--out", "o"]))
    finetune = finetune.templates
    config = TrainConfig(model="m", train="t.csv", out="o").templates
    assert zero_shot == eval_ == finetune == config == TEMPLATES == "imagenet"
    # ...and "imagenet" is the prompt ensemble of the published zero-shot figures: CLIP's 80 ImageNet prompts
    # (Radford et al. 2021, the notebook "Prompt_Engineering_for_ImageNet"), which the ALIGN paper reuses.
    prompts = get_templates(zero_shot)
    assert len(prompts) == 80 and len(set(prompts)) == 80
    assert prompts[0] == "a bad photo of a {}." and prompts[-1] == "a tattoo of the {}."


def test_eval_command_json(model_dir: Path, tmp_path: Path, capsys):
    classes = write_shapes_classes(tmp_path / "classes", per_class=1)
    karpathy = write_karpathy(tmp_path / "coco", 4)
    args = ["eval", "--model", str(model_dir), "--device", "cpu", "--workers", "0", "--quiet", "--json"]
    args += ["--zero-shot-dir", str(classes), "--templates", "simple", "--retrieval", str(karpathy)]
    args += [
        "--train-classes",
        str(classes),
        "--val-classes",
        str(classes),
        "--linear-probe",
        "--probe-solver",
        "torch",
    ]
    args += ["--probe-l2", "1e-2", "1"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == str(model_dir) and out["world_size"] == 1
    zs = out["zero_shot"]
    assert (zs["num_classes"], zs["num_images"], zs["templates"], zs["num_templates"]) == (9, 9, "simple", 1)
    ret = out["retrieval"]
    assert (ret["format"], ret["split"], ret["num_images"], ret["num_texts"]) == ("karpathy", "test", 4, 20)
    assert {"protocol", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"} <= set(ret)
    knn = out["knn"]
    # The gallery is the val set itself here: every image finds itself at k=1.
    assert knn["k"] == [1, 20] and knn["top1"]["1"] == 100.0 and (knn["num_train"], knn["num_val"]) == (9, 9)
    probe = out["linear_probe"]
    assert probe["solver"] == "torch" and probe["num_test"] == 9 and set(probe["val_top1"]) == {"0.01", "1"}
    assert main(["eval", "--model", str(model_dir)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    knn_zero = ["--train-classes", str(classes), "--val-classes", str(classes), "--knn-k", "0"]
    assert main(["eval", "--model", str(model_dir), *knn_zero]) == 2
    assert "--knn-k values must be at least 1" in capsys.readouterr().err
