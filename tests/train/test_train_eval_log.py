"""What a fine-tuning run writes about itself: one epoch convention in metrics.jsonl, each unreadable image
named once in skipped.jsonl, progress bars on evaluation, and evaluation on every rank of a DDP run."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from align_torch import AlignModel, AlignProcessor
from align_torch.data import Pair, TarMember
from align_torch.evaluate import retrieval_recall, zero_shot_accuracy
from align_torch.train import TrainConfig, Trainer
from align_torch.train.data import read_pairs
from align_torch.train.skipped import SkippedLog, skipped_record
from tests.helpers.ports import free_port
from tests.helpers.train_data import write_shapes_classes, write_shapes_manifest


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    train = write_shapes_manifest(root, 8)
    (root / "images" / "train_0005.png").write_bytes(b"not a png")
    val = write_shapes_manifest(root, 6, seed=5, name="val.csv")
    classes = write_shapes_classes(root / "classes", per_class=1)
    return {"train": train, "val": val, "classes": classes, "bad": root / "images" / "train_0005.png"}


def _cfg(model: Path, data: dict[str, Path], out: Path, **changes) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, lr=1e-3, warmup=1, log_every=1, progress=False, templates="simple")
    return TrainConfig(
        model=str(model),
        train=str(data["train"]),
        val=str(data["val"]),
        zero_shot_dir=str(data["classes"]),
        out=str(out),
        **{**base, **changes},
    )


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_epochs_skipped_files_and_progress_bars(tiny_native_dir: Path, data: dict[str, Path], tmp_path: Path, capfd):
    out = tmp_path / "run"
    Trainer(_cfg(tiny_native_dir, data, out, progress=True)).fit()
    err = capfd.readouterr().err
    assert "img/s" in err  # the evaluation sets' images
    assert "text" in err  # the class prompts and the captions
    # One convention: `epoch` is the 0-based epoch the step belongs to, in train and eval records alike.
    records = _records(out)
    train = {r["step"]: r["epoch"] for r in records if r["type"] == "train"}
    evals = [(r["step"], r["epoch"]) for r in records if r["type"] == "eval"]
    assert train == {1: 0, 2: 0, 3: 1, 4: 1}
    assert evals == [(2, 0), (4, 1)]
    # The unreadable image, met in both epochs, is named once; the per-step counter counts it each epoch.
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [r["path"] for r in skipped] == [str(data["bad"])]
    assert "train_0005.png" in skipped[0]["error"]
    assert [r["skipped_images"] for r in records if r["type"] == "train"][-1] == 2

    # Extended by a resume: no repeated step or evaluation, the file still named once, and no bars.
    Trainer(_cfg(tiny_native_dir, data, out, epochs=3), resume=True).fit()
    err = capfd.readouterr().err
    assert "img" not in err and "text" not in err
    records = _records(out)
    assert [(r["step"], r["epoch"]) for r in records if r["type"] == "eval"] == [(2, 0), (4, 1), (6, 2)]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert len((out / "skipped.jsonl").read_text().splitlines()) == 1


def test_resume_at_the_end_of_an_epoch_before_its_evaluation(tiny_native_dir: Path, data, tmp_path: Path):
    """A checkpoint saved after an epoch's last step but before its evaluation (save_every): the evaluation
    logged after it is dropped on resume and runs again, once."""
    out = tmp_path / "run"

    def stop_in_evaluation(trainer: Trainer, record) -> None:
        if record.step == 2:
            trainer.callbacks.clear()
            original = trainer._evaluate

            def log_then_die(result):
                original(result)
                raise KeyboardInterrupt  # after the record was written, before the end-of-epoch checkpoint

            trainer._evaluate = log_then_die

    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(tiny_native_dir, data, out, save_every=2), callbacks=[stop_in_evaluation]).fit()
    assert [r["step"] for r in _records(out) if r["type"] == "eval"] == [2]
    Trainer(_cfg(tiny_native_dir, data, out, save_every=2), resume=True).fit()
    assert [(r["step"], r["epoch"]) for r in _records(out) if r["type"] == "eval"] == [(2, 0), (4, 1)]


def test_skipped_log_names_each_file_once_across_a_torn_line(tmp_path: Path):
    odd = Pair(Path(os.fsdecode(b"images/\xff.png")), "a cat")
    member = Pair(TarMember("shards/00001.tar", "000017.jpg", 512, 100), "a dog")
    assert skipped_record(odd, "bad") == {"path": "file:images/%FF.png", "error": "bad"}
    assert skipped_record(member, "bad") == {"path": "shards/00001.tar", "member": "000017.jpg", "error": "bad"}
    log = tmp_path / "skipped.jsonl"
    log.write_text(json.dumps(skipped_record(odd, "bad")) + '\n{"path": "torn by a ki')
    skipped = SkippedLog(tmp_path)
    assert skipped.add([skipped_record(odd, "again"), skipped_record(member, "bad"), skipped_record(member, "x")]) == 1
    skipped.close()
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        skipped_record(odd, "bad"),
        skipped_record(member, "bad"),
    ]


# --- evaluation on every rank -----------------------------------------------------------------------------


def _rank_main(rank: int, cfg: TrainConfig, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        trainer = Trainer(cfg)
        result = trainer.fit()
        # The statistics the evaluation ran with (nothing changes them after it).
        buffers = hashlib.sha256(b"".join(b.numpy().tobytes() for b in trainer.model.buffers())).hexdigest()
        report = {"evaluations": result.evaluations, "buffers": buffers}
        (Path(cfg.out) / f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_both_evaluate_and_equal_one_process(tiny_native_dir: Path, data, tmp_path: Path):
    train = write_shapes_manifest(tmp_path / "train", 8)
    bad = [tmp_path / "train" / "images" / f"train_{i:04d}.png" for i in (1, 4, 6)]  # some on each rank
    for path in bad:
        path.write_bytes(b"")
    # Batch size 1: the validation images and captions are embedded one at a time on either side, so the
    # embeddings do not depend on how the ranks share them and retrieval must match to the last digit.
    cfg = _cfg(tiny_native_dir, {**data, "train": train}, tmp_path / "run", epochs=1, batch_size=1)
    mp.spawn(_rank_main, args=(cfg, free_port()), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in range(2)]
    final = tmp_path / "run" / "final"
    model, processor = AlignModel.from_pretrained(final), AlignProcessor.from_pretrained(final)
    pairs = [(p.image, p.caption) for p in read_pairs(str(data["val"])).pairs]
    retrieval = retrieval_recall(model, processor, pairs, batch_size=1).as_dict("val/")
    zero_shot = zero_shot_accuracy(model, processor, data["classes"], "simple")
    for report in ranks:  # rank 1 ran the evaluation too, on the same weights and statistics
        record = report["evaluations"][-1]  # on the weights saved as final/
        assert {k: v for k, v in record.items() if k.startswith("val/")} == retrieval
        # Zero-shot embeds batches of 32 images and 256 prompts, which the ranks cut differently; this nearly
        # untrained model's class scores are ~1e-5 apart, so float32 rounding may move one image of the 9.
        assert record["zero_shot/num_images"] == zero_shot.num_images
        assert abs(record["zero_shot/top1"] - zero_shot.top1) <= 100 / zero_shot.num_images + 1e-9
    assert ranks[0]["evaluations"] == ranks[1]["evaluations"]
    evals = [r for r in _records(tmp_path / "run") if r["type"] == "eval"]
    assert evals == ranks[0]["evaluations"]  # rank 0 alone wrote them
    assert ranks[0]["buffers"] == ranks[1]["buffers"]
    # Every rank's unreadable images reach the log, once each.
    skipped = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in skipped) == [str(path) for path in bad]
