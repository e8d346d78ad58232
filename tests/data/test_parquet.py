"""Parquet with the images inside (the Hub's datasets layout and img2dataset's) and Python rows, read by one
reader for `embed`, `finetune`, `eval --retrieval` and the Python API; real photos, the tiny checkpoint, CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from align_torch.data import read_pairs
from align_torch.data.parquet import ParquetError
from align_torch.retrieval.partitions import plan_input
from align_torch.train import TrainConfig, Trainer
from align_torch.train.state import load_checkpoint
from tests.helpers.cli import run_cli
from tests.helpers.parquet_data import (
    captions_of,
    photo_jpegs,
    write_files,
    write_hub_layout,
    write_img2dataset_layout,
)

ROOT = Path(__file__).resolve().parents[2]
N = 12  # photos


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The same 12 photos as files, as the Hub's layout in two shards (row groups of 4), as img2dataset's."""
    root = tmp_path_factory.mktemp("parquet")
    jpegs = photo_jpegs(N)
    write_files(root / "files", jpegs)
    write_hub_layout(root / "hub" / "data" / "test-00000-of-00002.parquet", jpegs[:8])
    write_hub_layout(root / "hub" / "data" / "test-00001-of-00002.parquet", jpegs[8:])
    write_img2dataset_layout(root / "i2d" / "00000.parquet", jpegs)
    return {"root": root, "files": root / "files", "hub": root / "hub", "i2d": root / "i2d" / "00000.parquet"}


def _embed(*args) -> None:
    status, _, stderr = run_cli("embed", *map(str, args), "--workers", "0", "--quiet", "--dtype", "float32")
    assert status == 0, stderr


def _read(folder: Path) -> tuple[np.ndarray, pd.DataFrame]:
    img = np.concatenate([np.load(f) for f in sorted((folder / "img_emb").glob("*.npy"))])
    meta = pd.concat([pd.read_parquet(f) for f in sorted((folder / "metadata").glob("*.parquet"))], ignore_index=True)
    return img, meta


def test_embed_of_both_parquet_layouts_equals_embed_of_the_files(data, model_dir, tmp_path):
    _embed(data["files"], "--out", tmp_path / "files", "--model", model_dir)
    _embed(data["hub"], "--out", tmp_path / "hub", "--model", model_dir, "--partition-size", 6)
    _embed(data["i2d"], "--out", tmp_path / "i2d", "--model", model_dir, "--partition-size", 8)
    files, _ = _read(tmp_path / "files")
    hub, hub_meta = _read(tmp_path / "hub")
    i2d, i2d_meta = _read(tmp_path / "i2d")
    assert files.shape == (N, 80)
    np.testing.assert_allclose(hub, files, atol=1e-5, rtol=0)  # same rows, same order
    np.testing.assert_allclose(i2d, files, atol=1e-5, rtol=0)
    assert np.abs(files[0] @ files[1:].T).max() < 0.999  # distinct photos give distinct rows: order would show
    # The other columns are carried into the metadata; the caption is a row's first.
    assert hub_meta["img_id"].tolist() == [str(1000 + i) for i in range(8)] + [str(1000 + i) for i in range(4)]
    assert hub_meta["caption"].tolist()[:2] == ["photo 0 caption 0", "photo 1 caption 0"]
    assert {"split", "filename"} <= set(hub_meta.columns)
    assert hub_meta["image_path"].tolist()[8] == f"{data['hub']}/data/test-00001-of-00002.parquet:0"
    assert i2d_meta["url"].tolist() == [f"https://example.com/{i}.jpg" for i in range(N)]
    assert i2d_meta["key"].tolist() == [f"{i:09d}" for i in range(N)] and "width" in i2d_meta
    # Partitions are cut at row groups (of 4): up to 6 rows -> one row group each; up to 8 -> two.
    info = json.loads((tmp_path / "hub" / "embeddings.json").read_text())
    assert (info["input_kind"], info["partitions"], info["partition_unit"]) == ("parquet", 3, "row groups")
    assert len(list((tmp_path / "i2d" / "done").glob("*.json"))) == 2
    status, out, _ = run_cli("embed", "--status", str(tmp_path / "hub"))
    assert status == 0 and "3/3 partitions finished (row groups, up to 6 rows each), 12 rows" in out, out


def test_parquet_partitions_follow_row_groups_and_ranks_split_them(data, tmp_path):
    import shutil

    # A folder of images with a table beside them (datasets' imagefolder layout) stays a folder of images.
    shutil.copy(data["files"] / "000.jpg", tmp_path / "000.jpg")
    shutil.copy(data["i2d"], tmp_path / "metadata.parquet")
    assert plan_input([tmp_path]).kind == "images"
    plan = plan_input([data["hub"]], partition_size=8)
    assert plan.row_groups == [[(0, 0), (0, 1)], [(1, 0)]]
    assert [p.image.index for p in plan.partition(1)] == [0, 1, 2, 3]
    from align_torch.retrieval.partitions import rank_partitions

    assert rank_partitions(plan.partitions, 1, 2) == [1]
    assert plan.fingerprint() == plan_input([str(data["hub"] / "data" / "*.parquet")], 8).fingerprint()


def _cfg(model: Path, train: str, out: Path, **changes) -> TrainConfig:
    base = dict(epochs=1, batch_size=4, lr=1e-3, warmup=1, save_every=2, progress=False, log_every=1)
    return TrainConfig(model=str(model), train=train, out=str(out), **{**base, **changes})


class _StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, trainer, record) -> None:
        if record.step == self.step:
            raise RuntimeError("killed")


@pytest.mark.parametrize("layout", ["hub", "i2d"])
def test_finetune_on_parquet_trains_and_resumes_exactly(layout, data, tiny_native_dir, tmp_path):
    train = str(data[layout])
    pairs = read_pairs(train)
    # A list of 3 captions per row is 3 pairs per image (the Hub layout); img2dataset's `txt` is one.
    assert len(pairs.pairs) == (3 * N if layout == "hub" else N)
    if layout == "hub":
        assert [p.caption for p in pairs.pairs[:3]] == captions_of(0)
        assert len({p.image for p in pairs.pairs}) == N
    full = Trainer(_cfg(tiny_native_dir, train, tmp_path / "full", max_steps=5)).fit()
    assert len(full.losses) == 5 and all(np.isfinite(full.losses))
    killed = _cfg(tiny_native_dir, train, tmp_path / "killed", max_steps=5)
    with pytest.raises(RuntimeError, match="killed"):
        Trainer(killed, callbacks=[_StopAt(3)]).fit()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.safetensors").progress.step == 2
    resumed = Trainer(killed, resume=True).fit()
    assert resumed.losses == full.losses[2:]  # to the bit


def test_finetune_command_counts_one_pair_per_caption_and_takes_a_split(data, tiny_native_dir, tmp_path):
    args = ["finetune", "--model", tiny_native_dir, "--train", data["hub"], "--out", tmp_path / "run"]
    args += ["--train-split", "train", "--batch-size", "4", "--max-steps", "1", "--quiet"]
    status, out, stderr = run_cli(*map(str, args))
    assert status == 0, stderr
    # Splits train, train, val, test repeat: 4 train rows in shard 0 (8 rows), 2 in shard 1; 3 captions each.
    assert "on 18 pairs" in out, out


def test_eval_retrieval_on_parquet_split_equals_the_csv_manifest(data, model_dir, tmp_path):
    hub = read_pairs(data["hub"], split="test")
    rows = [(p.image.shard, p.image.index) for p in hub.pairs]
    # The test split: row i % 4 == 3 of each shard; the same photos as files, with the same captions.
    names = {
        (str(data["hub"] / "data" / "test-00000-of-00002.parquet"), 3): 3,
        (str(data["hub"] / "data" / "test-00000-of-00002.parquet"), 7): 7,
    }
    names[(str(data["hub"] / "data" / "test-00001-of-00002.parquet"), 3)] = 11
    assert sorted(set(rows)) == sorted(names)
    csv = tmp_path / "test.csv"
    lines = [f"{data['files']}/{names[(p.image.shard, p.image.index)]:03d}.jpg,{p.caption}" for p in hub.pairs]
    csv.write_text("image,caption\n" + "\n".join(lines) + "\n")
    common = ["--model", str(model_dir), "--json", "--workers", "0", "--quiet"]
    status, parquet_out, err = run_cli("eval", "--retrieval", str(data["hub"]), "--split", "test", *common)
    assert status == 0, err
    status, csv_out, err = run_cli("eval", "--retrieval", str(csv), *common)
    assert status == 0, err
    a, b = json.loads(parquet_out)["retrieval"], json.loads(csv_out)["retrieval"]
    assert (a["num_images"], a["num_texts"]) == (3, 9)
    assert {k: v for k, v in a.items() if "_r" in k} == {k: v for k, v in b.items() if "_r" in k}
    status, out, err = run_cli("eval", "--retrieval", str(data["hub"]), "--captions-per-image", "2", *common)
    assert status == 0, err
    assert json.loads(out)["retrieval"]["num_texts"] == 2 * N  # every split, the first 2 captions


_MEASURE = """
import sys
from align_torch.data import load_pair_image, read_pairs

def kib(field):  # /proc/self/status: VmRSS (resident now), VmHWM (peak since the last reset)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

pairs = read_pairs(sys.argv[1], require_caption=False).pairs
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the present (ru_maxrss keeps the parent's)
before = kib("VmRSS")
for pair in pairs:
    load_pair_image(pair.image)
print(len(pairs), (kib("VmHWM") - before) * 1024)
"""


def test_reading_a_parquet_file_several_times_larger_than_the_memory_bound(tmp_path):
    """50 MB of incompressible images in row groups of 1.6 MB: reading every image in order raises the peak
    resident memory by a third of the file at most (a reader holding the file's image column adds 122 MB)."""
    import io

    import PIL.Image
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(buf, "PNG")
    noise = buf.getvalue()  # ~790 KB, incompressible
    # Each row its own bytes (a byte changed past the image data), so nothing is shared between rows.
    rows = [noise + i.to_bytes(4, "little") for i in range(64)]
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"jpg": pa.array(rows, pa.binary()), "txt": ["noise"] * 64}), path, row_group_size=2)
    size = path.stat().st_size
    assert size > 45e6
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    count, grown = map(int, done.stdout.split())
    assert count == 64
    # Measured: 13 MB (row groups of 1.6 MB, decoding buffers, allocator pools); 122 MB holding the file's column.
    assert grown < size / 3, f"peak memory grew by {grown / 1e6:.1f} MB reading a {size / 1e6:.1f} MB file"


def _rows(jpegs: list[bytes]) -> list[dict]:
    """A datasets.Dataset-like sequence: PIL images, bytes and paths, a caption string or a list."""
    import io

    import PIL.Image

    rows = []
    for i, data in enumerate(jpegs):
        image = PIL.Image.open(io.BytesIO(data)) if i % 2 else data
        rows.append({"image": image, "caption": captions_of(i, 1 + i % 2), "id": i})
    return rows


def test_python_rows_train_and_embed(data, model_dir, tiny_native_dir, tmp_path):
    from align_torch.retrieval.embed_folder import embed_collection

    jpegs = [p.read_bytes() for p in sorted(data["files"].glob("*.jpg"))]
    rows = _rows(jpegs)
    assert len(read_pairs(rows).pairs) == N + N // 2  # a list of two captions: two pairs
    result = Trainer(_cfg(tiny_native_dir, "rows", tmp_path / "run", max_steps=2), train_data=rows).fit()
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    _embed(data["files"], "--out", tmp_path / "files", "--model", model_dir)
    summary = embed_collection(rows, tmp_path / "rows", source=str(model_dir), dtype="float32", partition_size=5)
    assert (summary.rows, summary.skipped) == (N, 0)
    rows_img, meta = _read(tmp_path / "rows")
    np.testing.assert_allclose(rows_img, _read(tmp_path / "files")[0], atol=1e-5, rtol=0)
    assert meta["id"].tolist() == list(range(N)) and meta["image_path"][1] == "row 1"


def test_bad_parquet_input_is_named_by_shard_row_and_column(data, tiny_native_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from align_torch.data import ImageLoadError, load_pair_image

    jpegs = photo_jpegs(4)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"jpg": [jpegs[0], b"not an image", jpegs[2], None], "txt": list("abcd")}), bad)
    pairs = read_pairs(bad).pairs
    with pytest.raises(ImageLoadError, match=r"bad\.parquet: row 1, column 'jpg': not an image"):
        load_pair_image(pairs[1].image)
    with pytest.raises(ImageLoadError, match=r"bad\.parquet: row 3, column 'jpg': no image"):
        load_pair_image(pairs[3].image)
    with pytest.raises(ParquetError, match=r"bad\.parquet: no column 'picture' \(columns: jpg, txt\)"):
        read_pairs(bad, image_column="picture")
    pq.write_table(pa.table({"image": jpegs[:2], "caption": [1, 2]}), tmp_path / "int.parquet")
    with pytest.raises(ParquetError, match=r"int\.parquet: column 'caption' is int64, not a caption"):
        read_pairs(tmp_path / "int.parquet")
    pq.write_table(pa.table({"image": [1.5], "caption": ["x"]}), tmp_path / "float.parquet")
    with pytest.raises(ParquetError, match=r"float\.parquet: column 'image' is double, not an image"):
        read_pairs(tmp_path / "float.parquet")
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(data["i2d"].read_bytes()[:-100])
    with pytest.raises(ParquetError, match=r"damaged\.parquet: not a readable Parquet file"):
        read_pairs(damaged)
    with pytest.raises(ValueError, match=r"row 0, column .image.: the image must be a PIL image, bytes or a path"):
        read_pairs([{"image": 3, "caption": "x"}])
    # Unreadable images count against --max-unreadable-fraction as a manifest's files do.
    half = tmp_path / "half.parquet"
    pq.write_table(
        pa.table({"jpg": [jpegs[i % 4] if i % 2 else b"x" for i in range(8)], "txt": list("abcdefgh")}), half
    )
    with pytest.raises(Exception, match="could not be read"):
        Trainer(_cfg(tiny_native_dir, str(half), tmp_path / "run", max_unreadable_fraction=0.2)).fit()


def test_a_datasets_dataset_trains_and_embeds_as_rows(data, model_dir, tiny_native_dir, tmp_path):
    """datasets itself (installed under the torch constraint without pulling torch): its Image feature decoded to
    PIL, and undecoded ({bytes, path}), read as rows."""
    datasets = pytest.importorskip("datasets")
    from align_torch.retrieval.embed_folder import embed_collection

    paths = sorted(data["files"].glob("*.jpg"))
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))})
    ds = datasets.Dataset.from_dict(
        {"image": [str(p) for p in paths], "caption": [captions_of(i, 2) for i in range(N)]}, features=features
    )
    assert len(read_pairs(ds).pairs) == 2 * N
    result = Trainer(_cfg(tiny_native_dir, "hub-dataset", tmp_path / "run", max_steps=2), train_data=ds).fit()
    assert len(result.losses) == 2
    _embed(data["files"], "--out", tmp_path / "files", "--model", model_dir)
    undecoded = ds.cast_column("image", datasets.Image(decode=False))
    embed_collection(undecoded, tmp_path / "ds", source=str(model_dir), dtype="float32")
    np.testing.assert_allclose(_read(tmp_path / "ds")[0], _read(tmp_path / "files")[0], atol=1e-5, rtol=0)
