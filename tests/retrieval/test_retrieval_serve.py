"""`align-torch search` on a folder and `align-torch serve`: real photos embedded with the tiny model, queried over
HTTP and in headless Chromium."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid

import numpy as np
import PIL.Image
import pytest

from align_torch.retrieval.collection import Collection
from align_torch.retrieval.serve import serve
from tests.helpers.cli import run_cli
from tests.helpers.retrieval_data import PHOTOS, photo_collection

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def folder(model_dir, tmp_path_factory):
    return photo_collection(tmp_path_factory.mktemp("served"), model_dir)


@pytest.fixture(scope="module")
def server(folder):
    """The search server in a thread of this process, on a free loopback port."""
    running = serve(Collection(folder), "127.0.0.1", 0)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{running.server_address[1]}"
    running.shutdown()
    running.server_close()


def get(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_search_command_on_a_folder_text_image_and_batched_queries(folder, tmp_path):
    collection = Collection(folder)
    expected = collection.search(text="a cat", k=3)[0]
    status, stdout, _ = run_cli("search", folder, "a cat", "-k", 3, "--json")
    assert status == 0
    results = json.loads(stdout)["results"]
    assert [r["id"] for r in results] == [h.id for h in expected]
    assert [r["score"] for r in results] == pytest.approx([h.score for h in expected], abs=1e-5)
    assert results[0]["image_path"].endswith(".jpg") and results[0]["caption"] in PHOTOS.values()

    photo = folder.parent / "images" / "rocket.jpg"  # image -> image: the photo itself first, cosine 1
    status, stdout, _ = run_cli("search", folder, "--image", photo, "-k", 2, "--json")
    top = json.loads(stdout)["results"][0]
    assert status == 0 and top["image_path"] == str(photo) and top["score"] == pytest.approx(1.0, abs=2e-3)

    # text -> text searches the caption embeddings (the tiny model's texts are near-identical, so compare with
    # the API rather than expect the caption itself first)
    queries = [PHOTOS["horse"], PHOTOS["astronaut"]]
    expected = [[(h.id, h.caption) for h in hits] for hits in collection.search(text=queries, k=2, target="text")]
    status, stdout, _ = run_cli("search", folder, queries[0], "--target", "text", "-k", 2)
    assert status == 0 and [line.split(maxsplit=2)[2] for line in stdout.splitlines()] == [c for _, c in expected[0]]
    (tmp_path / "q.txt").write_text(f"{queries[0]}\n\n{queries[1]}\n")
    status, stdout, _ = run_cli(
        "search", folder, "--queries", tmp_path / "q.txt", "--target", "text", "-k", 2, "--json"
    )
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert status == 0 and [line["query"] for line in lines] == queries
    assert [[(r["id"], r["caption"]) for r in line["results"]] for line in lines] == expected
    assert all(r["image_path"] is not None for line in lines for r in line["results"])

    status, _, stderr = run_cli("search", folder, "a cat", "--image", photo)
    assert status == 2 and "exactly one of QUERY, --image or --queries" in stderr


def test_http_text_and_image_queries(server, folder):
    status, kind, body = get(f"{server}/search?q=a+photo+of+a+cat&k=4")
    assert status == 200 and kind.startswith("application/json")
    data = json.loads(body)
    expected = Collection(folder).search(text="a photo of a cat", k=4)[0]
    assert [r["id"] for r in data["results"]] == [h.id for h in expected]
    assert all(r["image"] == f"/image/{r['id']}" for r in data["results"])

    jpeg = (folder.parent / "images" / "astronaut.jpg").read_bytes()
    for body_, headers in (multipart("image", "a.jpg", jpeg), (jpeg, {"Content-Type": "image/jpeg"})):
        status, _, body = get(f"{server}/search?k=2", data=body_, headers=headers)
        top = json.loads(body)["results"][0]
        assert status == 200 and top["image_path"].endswith("astronaut.jpg") and top["score"] > 0.99

    status, kind, body = get(f"{server}/image/{expected[0].id}")
    assert status == 200 and kind == "image/jpeg"
    with PIL.Image.open(io.BytesIO(body)) as thumbnail:
        assert max(thumbnail.size) == 256


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/search?q=cat&k=0", 400, "k must be an integer between 1 and 1000, got 0"),
        ("/search?q=cat&k=ten", 400, "k must be an integer"),
        ("/search?q=cat&k=100000", 400, "k must be an integer"),
        ("/search?q=%20%20&k=3", 400, "the query q is empty"),
        ("/search", 400, "the query q is empty"),
        ("/search?q=cat&target=audio", 400, "target must be one of"),
        ("/image/6", 404, "no row '6'"),
        ("/image/-1", 404, "no row"),
        ("/image/..%2F..%2Fetc%2Fpasswd", 404, "no row"),
        ("/etc/passwd", 404, "no such page"),
    ],
)
def test_http_bad_requests_get_a_json_error_not_a_traceback(server, path, status, message):
    got, kind, body = get(server + path)
    assert got == status and kind.startswith("application/json")
    assert message in json.loads(body)["error"] and b"Traceback" not in body


def test_http_bad_uploads_get_a_400(server):
    for data, headers, message in [
        (b"not an image", {"Content-Type": "image/png"}, "not an image PIL can read"),
        (*multipart("photo", "a.jpg", b"x"), 'no "image" file field'),
        (b"{}", {"Content-Type": "application/json"}, "takes multipart/form-data"),
        (b"", {"Content-Type": "image/jpeg"}, "empty"),
    ]:
        status, _, body = get(f"{server}/search?k=3", data=data, headers=headers)
        assert status == 400 and message in json.loads(body)["error"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_the_page_in_headless_chromium_shows_k_thumbnails(folder, model_dir, tmp_path):
    """`align-torch serve` in a subprocess; Chromium loads the page with a query, runs its script, and the DOM
    holds k figures with thumbnails, scores and captions; the screenshot stays in the test's temporary folder."""
    command = [sys.executable, "-m", "align_torch", "serve", str(folder), "--port", "0", "--model", str(model_dir)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stderr.readline()
        assert "http://127.0.0.1:" in line, line
        url = line.split()[2] + "?q=a+photo+of+a+cat&k=5"
        browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000"]
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=300).stdout
        screenshot = tmp_path / "search_page.png"
        subprocess.run(
            [*browser, f"--screenshot={screenshot}", "--window-size=1100,800", url], capture_output=True, timeout=300
        )
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert dom.count('<figure class="hit">') == 5
    assert dom.count('<img src="/image/') == 5 and "5 results for a photo of a cat" in dom
    assert any(caption in dom for caption in PHOTOS.values())
    with PIL.Image.open(screenshot) as shot:
        assert shot.size == (1100, 800)
        pixels = np.asarray(shot.convert("RGB"))
    assert pixels.std() > 20  # photos drawn, not a blank page
    print(f"\nscreenshot: {screenshot}")


def test_a_folder_written_by_embed_is_indexed_and_searched(folder, model_dir, tmp_path):
    """`align-torch embed DIR --out EMB` (two partitions), then `index` and `search` on what it wrote."""
    out = tmp_path / "emb"
    images = folder.parent / "images"
    status, _, stderr = run_cli(
        "embed", images, "--out", out, "--model", model_dir, "--partition-size", 4, "--workers", 0, "--quiet"
    )
    assert status == 0, stderr
    status, _, stderr = run_cli("index", out, "--kind", "flat")
    assert status == 0 and (out / "index" / "image.index").is_file(), stderr
    photo = images / "coffee.jpg"
    answers = []
    for extra in ([], ["--exact"]):
        status, stdout, stderr = run_cli("search", out, "--image", photo, "-k", 6, "--json", *extra)
        assert status == 0, stderr
        answers.append(json.loads(stdout)["results"])
    assert answers[0][0]["image_path"] == str(photo) and answers[0][0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert [r["id"] for r in answers[0]] == [r["id"] for r in answers[1]]
    assert sorted(r["image_path"] for r in answers[0]) == sorted(str(p) for p in images.glob("*.jpg"))
    # A folder of a few photos is refused for its size before any memory plan: PQ codes train on 256 vectors.
    status, _, stderr = run_cli("index", out, "--kind", "ivf-pq", "--max-memory", "1MB")
    assert status == 2 and "--kind ivf-pq needs at least 256 vectors" in stderr
