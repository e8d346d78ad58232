"""`align-torch embed INPUT --out DIR`: the clip-retrieval folder, partitions, resume after kill -9, refusal of
a changed model, torchrun ranks writing what one process writes; on the tiny checkpoint, CPU only."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from align_torch import AlignModel, AlignProcessor, preset
from align_torch.inference.embed import embed_texts
from align_torch.inference.fast import fuse_for_inference
from align_torch.retrieval.layout import FolderInfo
from tests.helpers.cli import run_cli
from tests.helpers.train_data import CLASSES, shape_image

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
N_IMAGES = 200


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """200 generated shapes in nested folders, plus two unreadable files."""
    folder = tmp_path_factory.mktemp("images")
    rng = random.Random(0)
    for i in range(N_IMAGES):
        colour, shape = CLASSES[i % len(CLASSES)].split()
        sub = folder / f"g{i % 3}"
        sub.mkdir(exist_ok=True)
        shape_image(colour, shape, rng, size=48).save(sub / f"{i:04d}.png")
    (folder / "g0" / "0007b.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (folder / "g1" / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """3 img2dataset-style shards: per key .jpg/.png/.webp + .txt + .json (key, url); one corrupt image."""
    folder = tmp_path_factory.mktemp("shards")
    rng = random.Random(1)
    n = 0
    for s in range(3):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for j in range(12 + s):
                label = CLASSES[n % len(CLASSES)]
                key = f"{s:05d}{j:04d}"
                buf = io.BytesIO()
                fmt = ("JPEG", "PNG", "WEBP")[n % 3]
                shape_image(*label.split(), rng, size=48).save(buf, fmt)
                data = b"corrupt" if (s, j) == (1, 3) else buf.getvalue()
                files = {
                    f"{key}.{fmt.lower().replace('jpeg', 'jpg')}": data,
                    f"{key}.txt": f"a {label}".encode(),
                    f"{key}.json": json.dumps({"key": key, "url": f"https://example.com/{key}"}).encode(),
                }
                for name, payload in files.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                n += 1
    return folder


def embed(*args, torchrun: int = 0) -> str:
    """`align-torch embed ARGS` in this process, or `torchrun --nproc-per-node N -m align_torch embed ARGS`
    (CPU, no GPU needed); returns stderr after checking the exit status."""
    args = [*map(str, args), "--workers", "1", "--quiet"]
    if not torchrun:
        status, _, stderr = run_cli("embed", *args)
        assert status == 0, stderr
        return stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun)]
    env = {**ENV, "OMP_NUM_THREADS": "1"}  # two processes on a shared CPU
    argv = [*launcher, "--master-port", "0", "-m", "align_torch", "embed", *args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame]:
    """The folder with numpy and pandas alone, as docs/collections.md tells users to read it."""
    img = np.concatenate([np.load(f) for f in sorted((folder / "img_emb").glob("*.npy"))])
    texts = sorted((folder / "text_emb").glob("*.npy"))
    text = np.concatenate([np.load(f) for f in texts]) if texts else None
    meta = pd.concat([pd.read_parquet(f) for f in sorted((folder / "metadata").glob("*.parquet"))], ignore_index=True)
    return img, text, meta


@pytest.fixture(scope="module")
def one_process(images, model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "emb"
    embed(images, "--out", out, "--model", model_dir, "--partition-size", 32)
    return out


def test_folder_layout_rows_and_skipped_files(one_process, images):
    info = FolderInfo.load(one_process)
    assert (info.partitions, info.dtype, info.dim, info.captions) == (7, "float16", 80, False)  # 202 files / 32
    img, text, meta = read_folder(one_process)
    assert text is None and list(meta.columns) == ["image_path"]
    assert img.dtype == np.float16 and img.shape == (N_IMAGES, 80)
    np.testing.assert_allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1.0, atol=2e-3)
    listed = sorted(str(p) for p in images.rglob("*.png") if p.stat().st_size)
    assert meta["image_path"].tolist() == listed  # input order, unreadable files left out
    assert [p.name for p in sorted((one_process / "img_emb").glob("*"))] == [f"img_emb_{i}.npy" for i in range(7)]
    skipped = [s for f in sorted((one_process / "done").glob("*.json")) for s in json.loads(f.read_text())["skipped"]]
    assert sorted(Path(s["image_path"]).name for s in skipped) == ["0007b.jpg", "empty.png"]
    # Different images give different rows (the input-sensitive checkpoint), so a row order bug would show.
    assert np.abs(img[0].astype(np.float32) @ img[1:].astype(np.float32).T).max() < 0.999


def test_embedding_reader_reads_the_folder(one_process):
    from embedding_reader import EmbeddingReader

    img, _, meta = read_folder(one_process)
    reader = EmbeddingReader(
        str(one_process / "img_emb"),
        file_format="parquet_npy",  # npy rows with the aligned parquet rows
        metadata_folder=str(one_process / "metadata"),
        meta_columns=["image_path"],
    )
    assert reader.count == len(img) and reader.dimension == 80
    parts = list(reader(batch_size=64, start=0, end=reader.count, parallel_pieces=1, show_progress=False))
    vectors = np.concatenate([v for v, _ in parts])
    paths = [p for _, m in parts for p in m["image_path"]]
    np.testing.assert_array_equal(vectors, img)
    assert paths == meta["image_path"].tolist()


def test_torchrun_two_processes_write_what_one_process_writes(one_process, images, model_dir, tmp_path):
    out = tmp_path / "emb"
    stderr = embed(images, "--out", out, "--model", model_dir, "--partition-size", 32, torchrun=2)
    assert "rank 0/2: 4 of 7 partitions" in stderr and "rank 1/2: 3 of 7 partitions" in stderr
    ranks = {json.loads(f.read_text())["rank"] for f in (out / "done").glob("*.json")}
    assert ranks == {0, 1}
    img1, _, meta1 = read_folder(one_process)
    img2, _, meta2 = read_folder(out)
    pd.testing.assert_frame_equal(meta1, meta2)
    # Equal up to float16 rounding (the processes may run with other thread counts than the reference).
    np.testing.assert_allclose(img2.astype(np.float32), img1.astype(np.float32), rtol=0, atol=1e-3)
    assert FolderInfo.load(out) == FolderInfo.load(one_process)


def test_torchrun_over_webdataset_shards_with_captions(shards, model_dir, tmp_path):
    spec = str(shards / "{00000..00002}.tar")
    one, two = tmp_path / "one", tmp_path / "two"
    embed(spec, "--out", one, "--model", model_dir, "--dtype", "float32")
    embed(spec, "--out", two, "--model", model_dir, "--dtype", "float32", torchrun=2)
    info = FolderInfo.load(one)
    assert (info.partitions, info.partition_unit, info.captions, info.input_items) == (3, "shard", True, 3)
    img1, text1, meta1 = read_folder(one)
    img2, text2, meta2 = read_folder(two)
    assert img1.dtype == np.float32 and img1.shape == text1.shape == (12 + 13 + 14 - 1, 80)
    pd.testing.assert_frame_equal(meta1, meta2)
    assert list(meta1.columns) == ["image_path", "caption", "key", "url"]
    assert "000010003" not in set(meta1["key"])  # the corrupt image is skipped, with its caption
    assert meta1["key"].tolist()[:2] == ["000000000", "000000001"]
    assert meta1["url"][0] == "https://example.com/000000000" and meta1["caption"][0] == f"a {CLASSES[0]}"
    assert meta1["image_path"][0] == f"{shards / '00000.tar'}:000000000.jpg"
    np.testing.assert_allclose(img2, img1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(text2, text1, rtol=0, atol=1e-5)
    # Each text row is its own caption's embedding (the tiny text tower's captions differ by ~1e-3).
    model, processor = AlignModel.from_pretrained(model_dir), AlignProcessor.from_pretrained(model_dir)
    expected = embed_texts(fuse_for_inference(model), processor.tokenizer, meta1["caption"].tolist()).numpy()
    np.testing.assert_allclose(text1, expected, rtol=0, atol=1e-5)
    assert np.abs(expected - np.roll(expected, 1, axis=0)).max() > 1e-3


KILLER = """
import os, signal, sys
import align_torch.retrieval.embed_folder as ef
from align_torch.retrieval.layout import partition_files
real, calls = ef.write_partition, []
def write_partition(folder, info, result):
    calls.append(result.index)
    if len(calls) == 4:  # die in the middle of the 4th partition's files: npy written, no marker
        partition_files(folder, result.index, info)["img_emb"].write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    real(folder, info, result)
ef.write_partition = write_partition
from align_torch import AlignModel, AlignProcessor
from align_torch.cli import main
from align_torch.inference.embed import embed_texts
sys.exit(main(["embed", *sys.argv[1:]]))
"""


def test_kill_9_then_rerun_redoes_only_unfinished_partitions(one_process, images, model_dir, tmp_path):
    out = tmp_path / "emb"
    args = [images, "--out", out, "--model", model_dir, "--partition-size", 32, "--workers", "1", "--quiet"]
    killed = subprocess.run([sys.executable, "-c", KILLER, *map(str, args)], env=ENV, capture_output=True, timeout=300)
    assert killed.returncode == -9
    markers = {f.name: f.stat().st_mtime_ns for f in (out / "done").glob("*.json")}
    assert sorted(markers) == ["done_0.json", "done_1.json", "done_2.json"]
    status, stdout, _ = run_cli("embed", "--status", out)
    assert status == 0 and "3/7 partitions finished (32 images each, the last 10), 95 rows, 1 unreadable" in stdout
    stderr = embed(images, "--out", out, "--model", model_dir, "--partition-size", 32)
    assert "7 of 7 partitions: 3 already finished, embedded 4 (" in stderr
    assert {f.name: f.stat().st_mtime_ns for f in (out / "done").glob("*.json") if f.name in markers} == markers
    for a, b in zip(read_folder(one_process), read_folder(out), strict=True):
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b)
        elif a is not None:
            np.testing.assert_array_equal(a, b)
    assert "7 already finished, embedded 0 (" in embed(
        images, "--out", out, "--model", model_dir, "--partition-size", 32
    )


def test_a_changed_model_or_argument_is_refused(one_process, images, model_dir, tiny_native_dir):
    before = {f: f.stat().st_mtime_ns for f in one_process.rglob("*")}
    for extra, what in (
        (["--model", tiny_native_dir], "model:"),
        (["--model", model_dir, "--dtype", "float32"], "dtype:"),
        (["--model", model_dir, "--partition-size", 16], "partition_size:"),
        (["--model", model_dir, "--no-fuse"], "fused:"),  # --no-fuse reaches the folder's record
    ):
        status, _, stderr = run_cli("embed", images, "--out", one_process, "--partition-size", 32, *extra, "--quiet")
        assert status == 2 and f"different model or arguments ({what}" in stderr, stderr
    assert {f: f.stat().st_mtime_ns for f in one_process.rglob("*")} == before


def test_status_reports_progress(one_process):
    status, stdout, _ = run_cli("embed", "--status", one_process)
    assert status == 0
    assert "7/7 partitions finished (32 images each, the last 10), 200 rows, 2 unreadable images skipped" in stdout


def test_single_files_record_a_relative_model_folder_as_an_absolute_path(images, model_dir, tmp_path, monkeypatch):
    from align_torch.retrieval.embeddings_file import EmbeddingFile

    monkeypatch.chdir(model_dir.parent)
    photo = next(images.rglob("*.png"))
    status, _, stderr = run_cli(
        "embed", photo, "--out", tmp_path / "e.safetensors", "--model", model_dir.name, "--quiet"
    )
    assert status == 0, stderr
    assert EmbeddingFile.load(tmp_path / "e.safetensors").model == str(model_dir.resolve())
    (tmp_path / "t.txt").write_text("a red circle\n")
    status, _, stderr = run_cli(
        "embed-text", tmp_path / "t.txt", "--out", tmp_path / "t.safetensors", "--model", model_dir.name
    )
    assert status == 0, stderr
    assert EmbeddingFile.load(tmp_path / "t.safetensors").model == str(model_dir.resolve())


def test_image_batches_are_pinned_by_the_dataloader(monkeypatch):
    """DataLoader(pin_memory=True) pins only tensors, mappings and sequences; a dataclass batch must pin
    itself or the GPU copy is silently unpinned."""
    import torch
    from torch.utils.data._utils.pin_memory import pin_memory

    from align_torch.data.images import ImageBatch

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pinned.append(self) or self.clone())
    batch = ImageBatch([0, 1], torch.zeros(2, 3, 4, 4), [])
    out = pin_memory(batch)
    assert len(pinned) == 1 and out.pixel_values is not pinned[0] and out.pixel_values.shape == (2, 3, 4, 4)


def test_a_file_name_that_is_not_utf8_is_written_with_its_bytes_escaped(model_dir, tmp_path):
    from align_torch.util.fileio import text_to_path

    folder = tmp_path / "photos"
    folder.mkdir()
    shape_image("red", "circle", random.Random(0), size=32).save(os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    status, _, stderr = run_cli("embed", folder, "--out", tmp_path / "emb", "--model", model_dir, "--quiet")
    assert status == 0, stderr
    _, _, meta = read_folder(tmp_path / "emb")
    assert meta["image_path"].tolist() == [f"file:{folder}/caf%E9.png"]
    assert os.fsencode(text_to_path(meta["image_path"][0])) == os.path.join(os.fsencode(folder), b"caf\xe9.png")


def test_manifests_csv_jsonl_parquet_with_optional_captions_and_input_kinds(tmp_path, shards):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from align_torch.data import read_pairs
    from align_torch.retrieval.partitions import plan_input

    (tmp_path / "img").mkdir()
    for i in range(5):
        shape_image("red", "circle", random.Random(i), size=32).save(tmp_path / "img" / f"{i}.png")
    rows = [{"image": f"img/{i}.png", "caption": f"red circle {i}" if i != 2 else ""} for i in range(5)]
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in ("image", "caption")}), tmp_path / "m.parquet")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "bare.csv").write_text("image\n" + "".join(f"img/{i}.png\n" for i in range(5)))
    for name in ("m.parquet", "m.jsonl"):
        train = read_pairs(tmp_path / name)  # fine-tuning: a caption is required
        assert [p.image for p in train.pairs] == [tmp_path / f"img/{i}.png" for i in (0, 1, 3, 4)]
        assert train.skipped_empty_captions == 1
        every = read_pairs(tmp_path / name, require_caption=False).pairs  # embedding: every image
        assert [p.caption for p in every] == ["red circle 0", "red circle 1", None, "red circle 3", "red circle 4"]
    with pytest.raises(ValueError, match="no caption column"):
        read_pairs(tmp_path / "bare.csv")
    plan = plan_input([tmp_path / "bare.csv"], partition_size=2)
    assert (plan.kind, plan.partitions, plan.captions) == ("manifest", 3, False)
    assert [p.image for p in plan.partition(2)] == [tmp_path / "img/4.png"]
    plan = plan_input([str(tmp_path / "m.parquet")], partition_size=4)  # Parquet: cut at row groups (one here)
    assert (plan.kind, plan.partitions, plan.captions) == ("parquet", 1, True)
    assert [p.image for p in plan.partition(0)] == [tmp_path / f"img/{i}.png" for i in range(5)]
    plan = plan_input([shards])  # a folder of .tar
    assert (plan.kind, plan.partitions, plan.captions) == ("shards", 3, True)
    assert plan.partition(1)[0].url == "https://example.com/000010000"
    assert plan_input([tmp_path / "img"], partition_size=2).partitions == 3
    with pytest.raises(ValueError, match="cannot be mixed"):
        plan_input([str(shards / "00000.tar"), tmp_path / "img"])


def test_a_transparent_png_reads_the_same_from_a_shard_as_from_a_file(tmp_path):
    import PIL.Image

    from align_torch.data import load_image, load_pair_image, read_pairs

    image = PIL.Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # transparent, with red behind the transparency
    image.paste((0, 0, 255, 255), (4, 4, 12, 12))
    image.save(tmp_path / "k.png")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        tar.add(tmp_path / "k.png", arcname="k.png")
    (pair,) = read_pairs(tmp_path / "s.tar", require_caption=False).pairs
    from_shard, from_file = np.asarray(load_pair_image(pair.image)), np.asarray(load_image(tmp_path / "k.png"))
    np.testing.assert_array_equal(from_shard, from_file)
    assert from_file[0, 0].tolist() == [255, 255, 255]  # transparency on white


@pytest.mark.parametrize("compute", ["float32", "bf16-autocast"])
def test_the_file_and_the_folder_writer_give_the_same_vectors(model_dir, tmp_path, monkeypatch, compute):
    """`embed --out x.safetensors` and `embed --out DIR` go through one embedding mapper with one precision
    policy, so the two writers store bit-equal rows for the same images: in float32 on the CPU, and under the
    bf16 autocast a GPU gets (forced here on the CPU, whose autocast runs the same way)."""
    from align_torch.inference import embed as mapper
    from align_torch.retrieval.embeddings_file import EmbeddingFile

    monkeypatch.setattr(mapper, "compute_mode", lambda model: compute)

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = random.Random(3)
    for i, label in enumerate(CLASSES[:6]):
        shape_image(*label.split(), rng, size=40 + 4 * i).save(folder / f"{i}.png")
    common = ["--model", model_dir, "--batch-size", 4, "--workers", 0, "--quiet"]
    status, _, stderr = run_cli("embed", folder, "--out", tmp_path / "e.safetensors", *common)
    assert status == 0, stderr
    status, _, stderr = run_cli("embed", folder, "--out", tmp_path / "emb", "--dtype", "float32", *common)
    assert status == 0, stderr
    from_file = EmbeddingFile.load(tmp_path / "e.safetensors")
    img, _, meta = read_folder(tmp_path / "emb")
    assert from_file.items == meta["image_path"].tolist() and len(img) == 6
    assert img.dtype == np.float32
    np.testing.assert_array_equal(from_file.vectors.numpy(), img)
    if compute == "bf16-autocast":  # the policy took effect in both: their rows are not the float32 ones
        monkeypatch.undo()
        status, _, stderr = run_cli("embed", folder, "--out", tmp_path / "f32.safetensors", *common)
        assert status == 0, stderr
        f32 = EmbeddingFile.load(tmp_path / "f32.safetensors").vectors
        assert not torch.equal(f32, from_file.vectors)
        assert (f32 * from_file.vectors).sum(dim=1).min() > 0.99  # the same directions (measured: 0.998)


def test_the_mapper_runs_a_float32_model_as_it_is_off_cuda():
    from align_torch.inference.embed import compute_mode

    model = AlignModel(preset("align-tiny"))
    assert compute_mode(model) == "float32"
    assert compute_mode(model.to(torch.bfloat16)) == "bfloat16"
