"""Inputs that lie: files whose numbers, sizes or bytes are not what they claim, two runs claiming one folder,
clients that misbehave. Each test is named after the problem it guards; every refusal names the file (and the
field or row) it is about."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from tests.helpers.cli import run_cli
from tests.helpers.retrieval_data import normalise, photo_collection, write_folder
from tests.helpers.train_data import CLASSES, shape_image

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


# --- 1. two `embed --out NEW` runs claiming one folder -------------------------------------------------------
def _info(inputs: list[str], fingerprint: str):
    from align_torch.retrieval.layout import FolderInfo

    return FolderInfo(
        model="/models/m",
        model_fingerprint="f",
        fused=True,
        compute="float32",
        dim=4,
        dtype="float16",
        captions=False,
        input_kind="images",
        inputs=inputs,
        input_items=3,
        input_fingerprint=fingerprint,
        partition_unit="images",
        partition_size=10,
        partitions=1,
    )


def test_two_embed_runs_claiming_one_new_folder_one_is_refused(tmp_path, monkeypatch):
    """Run A checks the folder (empty), then, before A writes its embeddings.json, run B claims the folder with other
    inputs. Exactly one may own the folder; the other is refused, told the folder and who holds it."""
    from align_torch.retrieval.layout import EmbeddingsFolderError, FolderInfo
    from align_torch.retrieval.writer import prepare_folder

    out = tmp_path / "emb"
    a, b = _info(["/photos/a"], "aaa"), _info(["/photos/b"], "bbb")
    outcome: dict[str, object] = {}
    real_to_json = FolderInfo.to_json

    def a_writes(self: FolderInfo) -> str:
        if self.inputs == a.inputs and "b" not in outcome:  # B's whole claim happens inside A's claim
            try:
                prepare_folder(out, b)
                outcome["b"] = "ok"
            except EmbeddingsFolderError as e:
                outcome["b"] = e
        return real_to_json(self)

    monkeypatch.setattr(FolderInfo, "to_json", a_writes)
    try:
        prepare_folder(out, a)
        outcome["a"] = "ok"
    except EmbeddingsFolderError as e:
        outcome["a"] = e
    assert sorted(k for k, v in outcome.items() if v == "ok") in (["a"], ["b"]), outcome
    refused = next(v for v in outcome.values() if v != "ok")
    assert str(out) in str(refused) and f"pid {os.getpid()}" in str(refused), refused
    owner = FolderInfo.load(out)
    assert owner.identity() in (a.identity(), b.identity())


def test_embeddings_json_and_completion_markers_with_numbers_out_of_range_are_refused_by_file_and_field(tmp_path):
    from align_torch.retrieval.layout import EmbeddingsFolderError, FolderInfo
    from align_torch.retrieval.status import folder_status
    from align_torch.retrieval.writer import prepare_folder

    out = prepare_folder(tmp_path / "emb", _info(["/photos/a"], "aaa"))
    (out / "done").mkdir()
    (out / "done" / "done_0.json").write_text(json.dumps({"rows": "many", "skipped": [], "seconds": 1, "rank": 0}))
    with pytest.raises(EmbeddingsFolderError, match=r"done_0\.json.*rows"):
        folder_status(out)
    described = json.loads((out / "embeddings.json").read_text())
    (out / "embeddings.json").write_text(json.dumps({**described, "partitions": -3}))
    with pytest.raises(EmbeddingsFolderError, match=r"embeddings\.json.*partitions"):
        FolderInfo.load(out)


# --- 2. the resume fingerprint sees every byte of the weights -------------------------------------------------
def test_model_fingerprint_notices_a_change_in_the_middle_of_a_weight_file(tmp_path):
    from align_torch.retrieval.embed_folder import model_fingerprint

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 5 * 2**20, dtype=np.uint8).tobytes())
    weights.write_bytes(bytes(data))
    before = model_fingerprint(str(model))
    stat = weights.stat()
    data[len(data) // 2] ^= 0xFF  # one byte in the middle, same size, same mtime
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model_fingerprint(str(model)) != before


# --- 3. a truncated tar shard ------------------------------------------------------------------------------
def _shard(path: Path, first: int, count: int) -> list[tuple[str, int, int]]:
    """An img2dataset-style shard; returns (member name, data offset, size) per member."""
    rng = random.Random(first)
    with tarfile.open(path, "w") as tar:
        for j in range(first, first + count):
            buf = io.BytesIO()
            label = CLASSES[j % len(CLASSES)]
            shape_image(*label.split(), rng, size=40).save(buf, "JPEG")
            for name, payload in ((f"{j:05d}.jpg", buf.getvalue()), (f"{j:05d}.txt", f"a {label}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar]


def test_truncated_tar_shard_is_reported_by_name_recorded_and_never_blocks_a_rerun(model_dir, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "00000.tar", 0, 3)
    members = _shard(shards / "00001.tar", 10, 3)  # cut inside its second image: read as 1 sample before
    name, offset, size = members[2]
    assert name.endswith(".jpg")
    os.truncate(shards / "00001.tar", offset + size // 2)
    members = _shard(shards / "00002.tar", 20, 3)  # cut inside its second caption: stopped every run before
    name, offset, size = members[3]
    assert name.endswith(".txt")
    os.truncate(shards / "00002.tar", offset + 2)
    out = tmp_path / "emb"
    args = ("embed", shards, "--out", out, "--model", model_dir, "--workers", 0, "--quiet")
    for attempt in range(2):
        status, _, stderr = run_cli(*args)
        assert status == 0, stderr
        if attempt == 0:
            for cut in ("00001.tar", "00002.tar"):
                assert any(cut in line and "truncated" in line for line in stderr.splitlines()), stderr
    for n, rows in ((1, 1), (2, 1)):
        done = json.loads((out / "done" / f"done_{n}.json").read_text())
        assert done["rows"] == rows
        assert any(s["image_path"].endswith(f"0000{n}.tar") and "truncated" in s["error"] for s in done["skipped"])
    assert json.loads((out / "done" / "done_0.json").read_text())["rows"] == 3
    from align_torch.data import read_shards  # fine-tuning's reader: the same samples, and a warning per shard

    with pytest.warns(UserWarning, match=r"\.tar: truncated tar shard") as caught:
        listing = read_shards(sorted(shards.glob("*.tar")))
    assert len(listing.pairs) == 5 and len(listing.damaged) == 2
    assert sorted(Path(str(w.message).split(":")[0]).name for w in caught) == ["00001.tar", "00002.tar"]


# --- 4. serve: lying Content-Length, a burst of connections, Ctrl-C after clients hang up ----------------------
@pytest.fixture(scope="module")
def served_folder(model_dir, tmp_path_factory) -> Path:
    return photo_collection(tmp_path_factory.mktemp("served"), model_dir)


@contextlib.contextmanager
def _server(folder: Path, start: bool = True):
    from align_torch.retrieval.collection import Collection
    from align_torch.retrieval.serve import serve

    server = serve(Collection(folder), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    if start:
        thread.start()
    try:
        yield server, thread
    finally:
        if not thread.is_alive():
            thread.start()
        server.shutdown()
        server.server_close()


def _png() -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_serve_refuses_a_negative_content_length(served_folder):
    with _server(served_folder) as (server, _):
        with socket.create_connection(server.server_address[:2], timeout=20) as client:
            body = _png()
            head = "POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: -1\r\n\r\n"
            client.sendall(head.encode() + body)  # and the connection stays open, as a slow client's would
            reply = client.recv(65536).decode("latin-1")
    assert reply.startswith("HTTP/1.0 400") or reply.startswith("HTTP/1.1 400"), reply[:200]
    assert "Content-Length" in reply


def test_serve_answers_a_burst_of_50_connections(served_folder):
    """50 clients connect while the server is busy (not accepting): all must be queued, none dropped."""
    with _server(served_folder, start=False) as (server, thread):
        clients = []
        for _ in range(50):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(server.server_address[:2])
            clients.append(s)
        deadline = time.monotonic() + 3
        pending = set(clients)
        while pending and time.monotonic() < deadline:
            _, ready, _ = select.select([], list(pending), [], 0.2)
            pending -= set(ready)
        connected = [s for s in clients if s not in pending and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0]
        thread.start()
        answered = 0
        for s in connected:
            s.setblocking(True)
            s.settimeout(30)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answered += s.recv(64).startswith(b"HTTP/1.0 200")
        for s in clients:
            s.close()
    assert len(connected) == 50 and answered == 50, (len(connected), answered)


def test_serve_ctrl_c_right_after_clients_hang_up_exits_130(served_folder, model_dir):
    """A query still running in a daemon thread when the interpreter exits aborted the process (C++ terminate, about
    half the time): a few tries, each stopped with SIGINT while the hung-up clients' queries are being answered."""
    cmd = [sys.executable, "-m", "align_torch", "serve", str(served_folder), "--port", "0", "--model", str(model_dir)]
    for _ in range(5):
        status, stderr = _serve_interrupted(cmd)
        assert status == 130, stderr[-2000:]


def _serve_interrupted(cmd: list[str]) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        for _ in range(50):  # the banner is among the first lines
            line = proc.stderr.readline()
            if "http://" in line or not line:
                break
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        for _ in range(30):  # ask for a search and hang up before the answer
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(b"GET /search?q=a+cat&k=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


# --- 5. search: k beyond the collection, vectors that are not finite floats, a corrupt index ---------------------
def _folder(tmp_path: Path, rows: int = 40, dim: int = 8, dtype: str = "float16") -> tuple[Path, np.ndarray]:
    vectors = normalise(np.random.default_rng(3).standard_normal((rows, dim)).astype(np.float32))
    return write_folder(tmp_path / "emb", [vectors[: rows // 2], vectors[rows // 2 :]], dtype=dtype), vectors


def test_search_k_beyond_the_collection_nan_rows_and_corrupt_index_are_refused_by_name(tmp_path):
    pytest.importorskip("faiss")
    from align_torch.retrieval.collection import Collection
    from align_torch.retrieval.embeddings_file import EmbeddingIndex, EmbeddingsFileError
    from align_torch.retrieval.folder import EmbeddingFolderError
    from align_torch.retrieval.index import build_index

    folder, vectors = _folder(tmp_path)
    built = build_index(folder, kind="flat")
    hits = Collection(folder).search_vectors(vectors[0], k=10**12)[0]  # capped at the 40 rows, before FAISS
    assert len(hits) == 40 and hits[0].id == 0

    bad = np.load(folder / "img_emb" / "img_emb_1.npy")
    bad[7, 2] = np.nan
    np.save(folder / "img_emb" / "img_emb_1.npy", bad)
    with pytest.raises(EmbeddingFolderError, match=r"img_emb_1\.npy.*row 7"):
        Collection(folder, use_index=False).search_vectors(vectors[0], k=3)

    file = tmp_path / "e.safetensors"
    EmbeddingIndex(torch.from_numpy(vectors.copy()), [f"{i}.jpg" for i in range(40)], "image", "m").save(file)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(file, "pt") as f:
        metadata = f.metadata()
    for broken, why in (
        (torch.from_numpy(np.where(np.arange(40)[:, None] == 5, np.inf, vectors)), r"row 5 holds NaN or infinite"),
        (torch.ones(40, 8, dtype=torch.int32), r"torch\.int32 of shape \(40, 8\); it must be \(N, D\) floating"),
    ):
        save_file({"embeddings": broken}, file, metadata=metadata)
        with pytest.raises(EmbeddingsFileError, match=r"e\.safetensors.*" + why):
            EmbeddingIndex.load(file)

    np.save(folder / "img_emb" / "img_emb_1.npy", vectors[20:].astype(np.float16))
    built.path.write_bytes(b"\0" * built.path.stat().st_size)  # same size as described, garbage inside
    with pytest.raises(EmbeddingFolderError, match=r"image\.index"):
        Collection(folder).search_vectors(vectors[0], k=3)
    build_index(folder, kind="flat")
    described = json.loads(built.info_path.read_text())
    for field, value in (("layout", 5), ("search", {"efSearch": "many"}), ("count", 10**12)):
        built.info_path.write_text(json.dumps({**described, field: value}))
        with pytest.raises(EmbeddingFolderError, match=rf"image\.index\.json.*{field}"):
            Collection(folder).search_vectors(vectors[0], k=3)


def test_search_json_output_is_strict_json_when_k_exceeds_the_rows(served_folder, model_dir):
    status, out, err = run_cli("search", served_folder, "a cat", "-k", 10**9, "--json", "--model", model_dir)
    assert status == 0, err
    payload = json.loads(out, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert len(payload["results"]) == 6 and "6" in err


# --- 6. a non-floating tensor for a floating parameter -----------------------------------------------------------
def test_int8_tensor_in_a_checkpoint_for_a_float_parameter_is_refused_by_key_and_dtypes(tmp_path):
    from safetensors.torch import load_file, save_file

    from align_torch import AlignModel
    from align_torch.checkpoint.weights import CheckpointError, load_state_dict, save_native
    from align_torch.model.config import preset

    model = AlignModel(preset("align-tiny"))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.ndim == 2)
    sd[key] = sd[key].to(torch.int8)
    with pytest.raises(CheckpointError, match=rf"{key}.*int8.*float32"):
        load_state_dict(model, sd)
    save_native(model, tmp_path / "ckpt")  # the user's path: a checkpoint file whose tensor was stored as int8
    stored = load_file(tmp_path / "ckpt" / "model.safetensors")
    name = next(k for k, v in stored.items() if v.is_floating_point() and v.ndim == 2)
    stored[name] = stored[name].to(torch.int8)
    save_file(stored, tmp_path / "ckpt" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"int8.*float32"):
        AlignModel.from_pretrained(tmp_path / "ckpt")


# --- 7. files in the wrong encoding or damaged: the error names the file ------------------------------------------
def test_latin1_manifest_damaged_parquet_and_malformed_karpathy_json_errors_name_the_file(tmp_path):
    from align_torch.data import read_manifest
    from align_torch.evaluate import read_karpathy
    from align_torch.retrieval.folder import EmbeddingFolder, EmbeddingFolderError

    manifest = tmp_path / "m.csv"
    manifest.write_bytes("image,caption\na.jpg,a caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"m\.csv.*(line|byte)"):
        read_manifest(manifest)

    folder, _ = _folder(tmp_path)
    meta = folder / "metadata"
    meta.mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i in range(2):
        pq.write_table(pa.table({"image_path": [f"{j}.jpg" for j in range(20)]}), meta / f"metadata_{i}.parquet")
    damaged = meta / "metadata_1.parquet"
    damaged.write_bytes(damaged.read_bytes()[:-20])
    with pytest.raises(EmbeddingFolderError, match=r"metadata_1\.parquet"):
        EmbeddingFolder(folder)

    karpathy = tmp_path / "dataset_coco.json"
    for images in (
        [{"filename": "a.jpg", "split": "test", "sentences": ["a cat"]}],  # sentences not objects
        [{"filename": 7, "split": "test", "sentences": [{"raw": "a cat"}]}],  # filename not text
        [{"filename": "a.jpg", "split": "test", "sentences": {"raw": "a cat"}}],  # sentences not a list
    ):
        karpathy.write_text(json.dumps({"images": images}))
        with pytest.raises(ValueError, match=r"dataset_coco\.json.*images\[0\]"):
            read_karpathy(karpathy, tmp_path)
    karpathy.write_bytes(json.dumps({"images": []}).encode().replace(b"[]", '["\u00e9"]'.encode("latin-1")))
    with pytest.raises(ValueError, match=r"dataset_coco\.json"):
        read_karpathy(karpathy, tmp_path)


# --- 8. a cosine never exceeds 1 ----------------------------------------------------------------------------------
def test_image_to_image_cosine_of_a_float16_row_with_itself_does_not_exceed_1(tmp_path):
    """Rows stored as float16 are unit vectors rounded (length 1 to ~1e-4): a score is their cosine with the query,
    computed on the row divided by its length (not a dot product that passes 1 for a row longer than 1)."""
    pytest.importorskip("faiss")
    from align_torch.retrieval.collection import Collection
    from align_torch.retrieval.index import build_index

    rng = np.random.default_rng(0)
    centre = rng.standard_normal(640).astype(np.float32)
    vectors = normalise(centre + 0.05 * np.linalg.norm(centre) * normalise(rng.standard_normal((400, 640))))
    stored = vectors.astype(np.float16).astype(np.float64)  # (400, 640) what the folder holds
    row = int(np.argmax(np.linalg.norm(stored, axis=1)))
    assert np.linalg.norm(stored[row]) > 1 + 1e-5  # a float16 rounding of a unit row that is longer than 1
    folder = write_folder(tmp_path / "emb", [vectors])
    query = stored[row].astype(np.float32)  # the stored row itself, as image->image finds it
    cosines = stored @ stored[row] / np.linalg.norm(stored, axis=1) / np.linalg.norm(stored[row])  # (400,) exact
    build_index(folder, kind="flat")
    for use_index in (False, True):
        hits = Collection(folder, use_index=use_index).search_vectors(query, k=20)[0]
        assert hits[0].id == row and hits[0].score <= 1.0
        assert max(abs(h.score - cosines[h.id]) for h in hits) < 1e-6, use_index
    # float32 rows (an embeddings file): a row's dot product with itself passes 1 by float32 rounding for some rows
    from align_torch.retrieval.embeddings_file import EmbeddingIndex

    file = EmbeddingIndex(torch.from_numpy(vectors), [f"{i}.jpg" for i in range(400)], "image", "m")
    file.save(tmp_path / "e.safetensors")
    best = [h[0] for h in Collection(tmp_path / "e.safetensors").search_vectors(vectors, k=1)]
    assert [h.id for h in best] == list(range(400)) and max(h.score for h in best) <= 1.0
