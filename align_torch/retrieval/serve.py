"""A small local search page over a Collection, on the standard library's HTTP server.

Routes:
    GET  /                          the search page (static/search.html)
    GET  /search?q=TEXT&k=10        JSON: text -> image (or text, &target=text) results
    POST /search?k=10               JSON: image -> image results for an uploaded image (multipart field "image",
                                    or the raw image bytes with an image/* content type)
    GET  /image/ID                  a JPEG thumbnail of collection row ID
Only rows of the collection are ever opened, by row id; no path from a request reaches the file system. Bad input
gets a 400 with a JSON error, an unknown route or row a 404, anything unexpected a 500 with no traceback.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import socket
import sys
import threading
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .collection import TARGETS, Collection

MAX_K = 1000
MAX_UPLOAD_BYTES = 20 * 2**20
THUMBNAIL_PX = 256


class RequestError(ValueError):
    """A request the server refuses; carries the HTTP status to answer with."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


def parse_k(values: list[str] | None, default: int = 10) -> int:
    """The k of a query string: an integer in [1, MAX_K]."""
    if not values:
        return default
    try:
        k = int(values[0])
    except ValueError:
        raise RequestError(f"k must be an integer between 1 and {MAX_K}, got {values[0]!r}") from None
    if not 1 <= k <= MAX_K:
        raise RequestError(f"k must be an integer between 1 and {MAX_K}, got {k}")
    return k


def parse_target(values: list[str] | None, collection: Collection) -> str | None:
    if not values:
        return None
    if values[0] not in TARGETS or values[0] not in collection.targets:
        raise RequestError(f"target must be one of {collection.targets}, got {values[0]!r}")
    return values[0]


def read_upload(content_type: str, body: bytes) -> Any:
    """The uploaded image as a PIL RGB image, from a multipart form (field "image") or a raw image body."""
    import PIL.Image
    import PIL.ImageOps

    data = body
    if content_type.startswith("multipart/form-data"):
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        parts = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "image"]
        if not parts:
            raise RequestError('the form has no "image" file field')
        data = parts[0].get_payload(decode=True) or b""
    elif not content_type.startswith("image/"):
        raise RequestError(f"POST /search takes multipart/form-data or an image/* body, got {content_type or 'none'!r}")
    if not data:
        raise RequestError("the uploaded image is empty")
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            image.load()
            return PIL.ImageOps.exif_transpose(image).convert("RGB")
    except Exception as e:  # PIL raises many types on malformed data
        raise RequestError(f"the upload is not an image PIL can read ({type(e).__name__})") from None


class SearchServer(ThreadingHTTPServer):
    """The HTTP server: one Collection, queries embedded one at a time (the model is not thread-safe).

    Request threads are not daemons: `server_close` hangs up on the open connections and waits for the threads,
    so a query still running when the server stops (Ctrl-C) ends before the interpreter does. A daemon thread
    inside the model at exit aborted the process (C++ `terminate`) instead of letting it exit with 130."""

    request_queue_size = 128  # the listen backlog: a burst of page loads (thumbnails) is queued, not reset

    def __init__(self, collection: Collection, host: str = "127.0.0.1", port: int = 8000) -> None:
        self._open: set[socket.socket] = set()
        self._running: list[threading.Thread] = []
        self._open_lock = threading.Lock()
        super().__init__((host, port), SearchHandler)
        self.collection = collection
        self.model_lock = threading.Lock()
        self.page = files("align_torch.retrieval").joinpath("static/search.html").read_bytes()
        self.thumbnail = functools.lru_cache(maxsize=1024)(self._thumbnail)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        """One thread per request, as ThreadingMixIn's, but listed only once started: a Ctrl-C between creating
        and starting it must not leave server_close joining a thread that never ran."""
        with self._open_lock:
            self._open.add(request)
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address))
        thread.start()
        with self._open_lock:
            self._running = [t for t in self._running if t.is_alive()] + [thread]

    def shutdown_request(self, request: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Stop listening, hang up on open connections (a slow client's read ends at once) and wait for the
        request threads (a running query finishes first)."""
        with self._open_lock:
            for request in self._open:
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)
            running = list(self._running)
        super().server_close()
        for thread in running:
            thread.join()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):  # the client hung up or stalled: not our failure
            sys.stderr.write(f"align-torch serve: {client_address[0]} hung up ({type(error).__name__})\n")
            return
        super().handle_error(request, client_address)

    def results(self, hits: list, query: str, target: str | None) -> dict[str, Any]:
        rows = []
        for h in hits:
            row = h.to_dict()
            row["image"] = f"/image/{h.id}" if h.image_path is not None else None
            rows.append(row)
        return {"query": query, "target": target or self.collection.resolve_target(None), "results": rows}

    def _image_file(self, row: int) -> Path | None:
        collection = self.collection
        if collection.folder is not None:
            path = collection.folder.metadata([row])[0].get("image_path")
        else:
            path = collection.file.items[row] if collection.file.kind == "image" else None
        if not path:
            return None
        path = Path(path)
        for candidate in (path, collection.path.parent / path) if not path.is_absolute() else (path,):
            if candidate.is_file():
                return candidate
        return None

    def _thumbnail(self, row: int) -> bytes | None:
        from ..data.images import ImageLoadError, load_image

        path = self._image_file(row)
        if path is None:
            return None
        try:
            image = load_image(path)
        except ImageLoadError:
            return None
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        return out.getvalue()


class SearchHandler(BaseHTTPRequestHandler):
    server: SearchServer
    server_version = "align-torch-serve"
    timeout = 60  # seconds a client may stall mid-request before its connection is dropped

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        sys.stderr.write(f"align-torch serve: {self.address_string()} {format % args}\n")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _guarded(self, route) -> None:
        try:
            route()
        except (ConnectionError, TimeoutError):
            raise  # nobody to answer: handle_error notes it in one line
        except RequestError as e:
            self._json(e.status, {"error": str(e)})
        except (ValueError, OSError) as e:  # e.g. a query the collection refuses; the message names the problem
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except Exception as e:
            self.log_message("internal error: %s: %s", type(e).__name__, e)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        if url.path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif url.path == "/search":
            query = (params.get("q") or [""])[0].strip()
            if not query:
                raise RequestError("the query q is empty; ask /search?q=a+photo+of+a+cat&k=10")
            k = parse_k(params.get("k"))
            target = parse_target(params.get("target"), self.server.collection)
            with self.server.model_lock:
                hits = self.server.collection.search(text=query, k=k, target=target)[0]
            self._json(HTTPStatus.OK, self.server.results(hits, query, target))
        elif url.path.startswith("/image/"):
            self._image(url.path[len("/image/") :])
        else:
            raise RequestError(f"no such page {url.path!r}", HTTPStatus.NOT_FOUND)

    def _image(self, row_text: str) -> None:
        collection = self.server.collection
        count = collection.count("image") if "image" in collection.targets else 0
        if not row_text.isdigit() or int(row_text) >= count:
            raise RequestError(f"no row {row_text!r} in the collection (rows 0..{count - 1})", HTTPStatus.NOT_FOUND)
        thumbnail = self.server.thumbnail(int(row_text))
        if thumbnail is None:
            raise RequestError(f"row {row_text} has no readable image file", HTTPStatus.NOT_FOUND)
        self._send(HTTPStatus.OK, thumbnail, "image/jpeg")

    def _post(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/search":
            raise RequestError(f"no such page {url.path!r}", HTTPStatus.NOT_FOUND)
        params = parse_qs(url.query)
        k = parse_k(params.get("k"))
        target = parse_target(params.get("target"), self.server.collection)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError("POST /search needs a Content-Length", HTTPStatus.LENGTH_REQUIRED) from None
        if length < 0:  # rfile.read(-1) would read until the client closes, past the upload limit
            raise RequestError(f"Content-Length must be 0 or more, got {length}")
        if length > MAX_UPLOAD_BYTES:
            raise RequestError(
                f"uploads are limited to {MAX_UPLOAD_BYTES >> 20} MB", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            )
        image = read_upload(self.headers.get("Content-Type", ""), self.rfile.read(length))
        with self.server.model_lock:
            hits = self.server.collection.search(image=image, k=k, target=target)[0]
        self._json(HTTPStatus.OK, self.server.results(hits, "(uploaded image)", target))


def serve(collection: Collection, host: str = "127.0.0.1", port: int = 8000) -> SearchServer:
    """A SearchServer bound to host:port (port 0: a free one), not yet serving; call serve_forever()."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"align-torch serve: listening on {host}: other machines can reach the page", file=sys.stderr)
    return SearchServer(collection, host, port)
