"""Fine-tuning data: manifests, WebDataset shards, the train transform and the resumable batch order."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from align_torch.data import TarMember, expand_shards, read_pairs
from align_torch.preprocess.image_processing import AlignImageProcessor
from align_torch.train.data import Collate, EpochBatches, PairDataset, TrainTransform, sample_rng
from tests.helpers.train_data import shape_image, write_shapes_manifest


def _processor() -> AlignImageProcessor:
    return AlignImageProcessor(size=(72, 72), crop_size=(64, 64))


def test_manifest_formats_relative_paths_and_empty_captions(tmp_path: Path):
    (tmp_path / "img").mkdir()
    shape_image("red", "circle", random.Random(0)).save(tmp_path / "img" / "a.png")
    (tmp_path / "m.csv").write_text("image,caption\nimg/a.png,a red circle\nimg/a.png,\n")
    (tmp_path / "m.tsv").write_text("caption\timage\na red circle\timg/a.png\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "img/a.png", "caption": "a red circle"}) + "\n\n")
    for name in ("m.csv", "m.tsv", "m.jsonl"):
        pairs = read_pairs(tmp_path / name)
        assert [(p.image, p.caption) for p in pairs.pairs] == [(tmp_path / "img" / "a.png", "a red circle")]
    assert read_pairs(tmp_path / "m.csv").skipped_empty_captions == 1


def test_manifest_errors_name_the_problem(tmp_path: Path):
    (tmp_path / "bad.csv").write_text("path,caption\nx.png,hello\n")
    with pytest.raises(ValueError, match="no image column"):
        read_pairs(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        read_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "empty.csv").write_text("image,caption\nx.png,\n")
    with pytest.raises(ValueError, match="no rows with both"):
        read_pairs(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_pairs(tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="neither a manifest"):
        read_pairs(tmp_path / "nothing-{00..03}.tar")


def _write_shard(path: Path, samples: list[tuple[str, bytes | None, str | None]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, image, caption in samples:
            for ext, data in (("jpg", image), ("txt", None if caption is None else caption.encode())):
                if data is not None:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def _jpeg(colour: str) -> bytes:
    buf = io.BytesIO()
    shape_image(colour, "square", random.Random(0)).save(buf, format="JPEG")
    return buf.getvalue()


def test_webdataset_shards_brace_range_and_bad_samples(tmp_path: Path):
    _write_shard(tmp_path / "s-000.tar", [("000/a", _jpeg("red"), "a red square"), ("000/b", _jpeg("blue"), " ")])
    _write_shard(tmp_path / "s-001.tar", [("c", b"not a jpeg", "broken"), ("d", _jpeg("green"), None)])
    assert expand_shards(str(tmp_path / "s-{000..001}.tar")) == [tmp_path / "s-000.tar", tmp_path / "s-001.tar"]
    pairs = read_pairs(str(tmp_path / "s-{000..001}.tar"))
    assert [p.caption for p in pairs.pairs] == ["a red square", "broken"]  # d has no caption: not a sample
    assert pairs.skipped_empty_captions == 1
    assert isinstance(pairs.pairs[0].image, TarMember)
    dataset = PairDataset(pairs.pairs, _processor())
    good, bad = dataset[(0, 0)], dataset[(0, 1)]
    assert good.pixels.shape == (3, 64, 64) and good.pixels[0].mean() > good.pixels[2].mean()  # red
    assert bad.pixels is None and "s-001.tar:c.jpg" in bad.error


def test_train_transform_is_a_function_of_seed_epoch_index():
    image = shape_image("blue", "triangle", random.Random(1), size=96)
    t = TrainTransform(_processor(), size=(64, 64), scale=(0.3, 1.0), hflip=True)
    a, b = t(image, sample_rng(0, 1, 5)), t(image, sample_rng(0, 1, 5))
    assert a.shape == (3, 64, 64) and np.array_equal(a, b)
    assert -1.0 <= a.min() and a.max() <= 1.0  # the processor's rescale: [0, 255] -> [-1, 1]
    assert not np.array_equal(a, t(image, sample_rng(0, 2, 5)))  # another epoch, another crop


def test_epoch_batches_ranks_concatenate_to_one_process_and_resume_skips():
    single = list(EpochBatches(20, batch_size=4, epoch=3, seed=7))
    ranks = [list(EpochBatches(20, batch_size=2, epoch=3, seed=7, rank=r, world=2)) for r in range(2)]
    assert len(single) == 5 and all(len(b) == 2 for b in ranks[0])
    assert [r0 + r1 for r0, r1 in zip(*ranks, strict=True)] == single
    assert list(EpochBatches(20, batch_size=4, epoch=3, seed=7, start=2)) == single[2:]
    assert single != list(EpochBatches(20, batch_size=4, epoch=4, seed=7))
    assert sorted(i for b in single for _, i in b) == list(range(20))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochBatches(3, batch_size=2, epoch=0, seed=0, world=2)


def test_unreadable_images_are_dropped_and_reported(tmp_path: Path, tiny_native_dir: Path):
    from align_torch.preprocess.processor import AlignProcessor

    manifest = write_shapes_manifest(tmp_path, 4)
    (tmp_path / "images" / "train_0001.png").write_bytes(b"truncated")
    processor = AlignProcessor.from_pretrained(tiny_native_dir)
    pairs = read_pairs(manifest).pairs
    dataset = PairDataset(pairs, processor.image_processor, TrainTransform(processor.image_processor, (64, 64)))
    batch = Collate(processor.tokenizer, max_length=64, image_size=(64, 64))([dataset[(0, i)] for i in range(4)])
    assert len(batch) == 3 and batch.input_ids.shape == (3, 64)
    assert [i for i, _ in batch.failures] == [1] and "train_0001.png" in batch.failures[0][1]
    assert batch.input_ids.dtype == torch.long
