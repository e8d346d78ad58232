"""Inference backends: each tower of a loaded model runs in PyTorch or, swapped in under the recipe, as an ONNX
graph in ONNX Runtime (`--backend torch|onnxruntime|auto`).

`use_backend(model, "onnxruntime")` replaces `model.vision_model` (and `model.text_model`) by an `OnnxTower`
that holds the PyTorch module it replaces. On its first input of a new shape the tower exports that module, as it
is (a `--model-class` variant, an edited layer, the fused path), with torch's dynamo exporter, caches the graph
under a cache folder keyed by the tower's fingerprint (its weights and the code of every module class in it),
and checks the graph against the PyTorch module on that first batch (inference.graph_check: to 1e-4, or, where
the model itself is ill-conditioned, as near a float64 run as PyTorch's own float32): a graph that disagrees is
exported again once, then refused. A graph that passed is recorded beside it by the sha256 of its bytes, so a
later process opening the same file does not check it again. Everything around the tower (`encode_image`, the projection, pooling,
normalising) stays the model's own code, so an override of `encode_text` is still followed.

`auto` picks per tower what measured fastest on this kind of device (bench/bench_export.py): on the CPU ONNX
Runtime for the image tower and the packed PyTorch path for text (which ONNX Runtime's padded graph does not
match); on a GPU PyTorch for both. Without the export extra installed, `auto` is PyTorch.
"""

from __future__ import annotations

import hashlib
import marshal
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.align import AlignModel
from ..model.bert import TextOutput, trim_padding
from ..model.efficientnet import VisionOutput
from ..util.fileio import atomic_file
from .graph_check import check_graph

BACKENDS = ("torch", "onnxruntime", "auto")
ONNX = "onnxruntime"
CACHE_ENV = "ALIGN_TORCH_CACHE"


def onnxruntime_ready() -> bool:
    """Whether the export extra (onnx, onnxscript, onnxruntime) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backends(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """{"image": ..., "text": ...}: the backend each tower runs on for `--backend backend` on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return {"image": "torch", "text": "torch"}
    if backend == ONNX:
        if device.type != "cpu" or dtype != torch.float32:
            raise ValueError(f"--backend onnxruntime runs float32 on the CPU, not {_dtype_name(dtype)} on {device}")
        if not onnxruntime_ready():
            raise ValueError("--backend onnxruntime needs the export extra: pip install 'align-torch[export]'")
        return {"image": ONNX, "text": ONNX}
    if device.type == "cpu" and dtype == torch.float32 and onnxruntime_ready():
        return {"image": ONNX, "text": "torch"}
    return {"image": "torch", "text": "torch"}


def use_backend(model: AlignModel, backend: str = "auto", cache_dir: str | os.PathLike | None = None) -> AlignModel:
    """Run `model`'s towers on `backend` (BACKENDS), in place; returns the model. Inference only."""
    p = next(model.parameters())
    chosen = choose_backends(backend, p.device, p.dtype)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if chosen["image"] == ONNX and not isinstance(model.vision_model, OnnxTower):
        model.vision_model = OnnxTower(model.vision_model, "image", cache)
    if chosen["text"] == ONNX and not isinstance(model.text_model, OnnxTower):
        trim = model.config.text.pooling == "cls"  # mean pooling reads the full-length mask after the tower
        longest = model.config.text.max_position_embeddings
        model.text_model = OnnxTower(model.text_model, "text", cache, trim=trim, max_tokens=longest)
        model.pack_text = False  # packing is PyTorch's own path; the graph runs the padded batch
    return model.eval()


def backend_of(model: nn.Module) -> str:
    """What runs the towers: "torch", "onnxruntime", or per tower ("image onnxruntime, text torch")."""
    names = {
        w: ONNX if isinstance(getattr(model, f"{w}_model", None), OnnxTower) else "torch" for w in ("vision", "text")
    }
    if names["vision"] == names["text"]:
        return names["text"]
    return f"image {names['vision']}, text {names['text']}"


def default_cache_dir() -> Path:
    """$ALIGN_TORCH_CACHE/onnx, else $XDG_CACHE_HOME/align_torch/onnx, else ~/.cache/align_torch/onnx."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "align_torch" / "onnx"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _Pooled(nn.Module):
    """What is exported of the image tower: (B, 3, H, W) pixels -> (B, C) pooled features."""

    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values).pooler_output  # (B, C)


class _States(nn.Module):
    """What is exported of the text tower: (B, T) inputs -> (B, T, D) last hidden states (the padded path)."""

    def __init__(self, text: nn.Module):
        super().__init__()
        self.text = text

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        # .forward, not the module call: a fused model's pre-hook would trim by reading the mask's values.
        return self.text.forward(input_ids, attention_mask, token_type_ids).last_hidden_state  # (B, T, D)


class OnnxTower(nn.Module):
    """A tower (`vision_model` or `text_model`) run as an ONNX graph in ONNX Runtime; `eager` is the PyTorch
    module it was exported from, still holding the weights (so the model's device and dtype read as before)."""

    def __init__(self, eager: nn.Module, which: str, cache_dir: Path, trim: bool = True, max_tokens: int = 512):
        super().__init__()
        self.eager = eager
        self.which = which
        self.cache_dir = cache_dir
        self.trim = trim
        self.max_tokens = max_tokens
        self.graphs: dict[str, Path] = {}  # graph name -> the file it was read from (for the record)
        self._sessions: dict[str, Any] = {}
        self._fingerprint: str | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.which == "image":
            return self._run_image(*args, **kwargs)
        return self._run_text(*args, **kwargs)

    def _run_image(self, pixel_values: torch.Tensor, **kwargs: Any) -> VisionOutput:
        if kwargs:  # hidden states: PyTorch's own path
            return self.eager(pixel_values, **kwargs)
        name = f"image_{pixel_values.shape[-2]}x{pixel_values.shape[-1]}"  # the graph's H, W are fixed
        pooled = self._run(name, (pixel_values.float().contiguous(),))  # (B, C)
        # The graph returns the pooled embedding only, all that encode_image reads; the final map stays in PyTorch.
        return VisionOutput(last_hidden_state=None, pooler_output=pooled)

    def _run_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> TextOutput:
        if kwargs:  # hidden states, attentions, packing: PyTorch's own path
            return self.eager(input_ids, attention_mask, token_type_ids, **kwargs)
        if self.trim:
            input_ids, attention_mask, token_type_ids = trim_padding(input_ids, attention_mask, token_type_ids)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        states = self._run("text", (input_ids, mask.to(input_ids.dtype), types.to(input_ids.dtype)))
        return TextOutput(last_hidden_state=states)  # (B, T, D)

    def _run(self, name: str, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        session = self._sessions.get(name)
        if session is None:
            session, checked = self._open(name, inputs)
            self._sessions[name] = session
            if checked is not None:  # the first batch's output, already computed by the check
                return checked
        return _session_run(session, inputs)

    def _open(self, name: str, inputs: tuple[torch.Tensor, ...]) -> tuple[Any, torch.Tensor | None]:
        """The graph for `name`, from the cache or exported now, and its output on `inputs` (the first batch)
        when it was checked against the PyTorch module on them. A cached graph that disagrees is exported again
        once. A graph whose bytes passed the check before (its record beside it names their sha256) is not checked
        again: the check costs a PyTorch forward of the batch, and float64 rows where the tower is ill-conditioned."""
        path = self.cache_dir / self.fingerprint() / f"{name}.onnx"
        fresh = not path.is_file()
        if fresh:
            self._export(path, inputs)
        session = _session(path)
        self.graphs[name] = path
        if not fresh and _passed_before(path):
            return session, None
        got, problem = self._disagreement(session, inputs)
        if problem and not fresh:
            self._export(path, inputs)
            session = _session(path)
            got, problem = self._disagreement(session, inputs)
        if problem:
            raise RuntimeError(f"the ONNX graph of the {self.which} tower ({path}) {problem}; use --backend torch")
        _record_passed(path)
        return session, got

    def _export(self, path: Path, inputs: tuple[torch.Tensor, ...]) -> None:
        from .export import export_onnx

        module = _Pooled(self.eager) if self.which == "image" else _States(self.eager)
        names = ["pixel_values"] if self.which == "image" else ["input_ids", "attention_mask", "token_type_ids"]
        output = "pooled" if self.which == "image" else "last_hidden_state"
        with atomic_file(path) as tmp:
            dims = _dynamic_dims(self.which, names, self.max_tokens)
            export_onnx(module.eval(), _example(inputs), tmp, names, output, dims)

    def _disagreement(self, session: Any, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, str | None]:
        """The graph's output on `inputs`, and None when it agrees with the PyTorch module's
        (inference.graph_check), else what differs."""
        got = _session_run(session, inputs)
        module = _Pooled(self.eager) if self.which == "image" else _States(self.eager)
        agreement = check_graph(got.float(), module.eval(), inputs)
        if agreement.ok:
            return got, None
        return got, f"disagrees with the PyTorch model on the first batch ({agreement.describe()})"

    def fingerprint(self) -> str:
        """sha256 of the tower's weights (names, dtypes, shapes, bytes), the code of each module class in it (and
        any forward set on one module), and torch's version: what the graph depends on."""
        if self._fingerprint is None:
            self._fingerprint = tower_fingerprint(self.eager, self.which)
        return self._fingerprint


def tower_fingerprint(module: nn.Module, which: str) -> str:
    """See OnnxTower.fingerprint; hashing streams the tensors (about a second for align-base's text tower)."""
    h = hashlib.sha256(f"{which}\0torch {torch.__version__}\0".encode())
    for name, t in module.state_dict().items():
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    codes: dict[str, bytes] = {}
    for m in module.modules():
        cls = type(m)
        for fn in (cls.forward, m.__dict__.get("forward")):
            code = getattr(fn, "__code__", None)
            if code is not None:
                codes[f"{cls.__module__}.{cls.__qualname__}.{code.co_name}"] = marshal.dumps(code)
    for key in sorted(codes):
        h.update(key.encode() + b"\0" + codes[key])
    return h.hexdigest()[:32]


def _example(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Inputs to trace with, made from the first batch: its first row repeated to a batch of 2 (3 when the text
    has 2 tokens), so the exporter specialises neither the batch size nor ties it to the token count."""
    size = 3 if inputs[0].dim() == 2 and inputs[0].shape[1] == 2 else 2
    return tuple(x[:1].expand(size, *x.shape[1:]).contiguous() for x in inputs)


def _dynamic_dims(which: str, names: list[str], max_tokens: int) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    if which == "image":
        return {"pixel_values": {0: batch}}
    tokens = torch.export.Dim("tokens", min=1, max=max_tokens)
    return {n: {0: batch, 1: tokens} for n in names}


def _session_run(session: Any, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=False)}
    return torch.from_numpy(session.run(None, feeds)[0])


def _check_record(path: Path) -> Path:
    return path.with_name(path.name + ".checked")


def _graph_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _passed_before(path: Path) -> bool:
    """Whether the graph file holds the very bytes that passed the first-batch check (a replaced or damaged
    graph does not, and is checked again)."""
    try:
        return _check_record(path).read_text().strip() == _graph_sha256(path)
    except OSError:
        return False


def _record_passed(path: Path) -> None:
    with atomic_file(_check_record(path)) as tmp:
        tmp.write_text(_graph_sha256(path) + "\n")


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # As many threads as PyTorch's own (torch.set_num_threads, OMP_NUM_THREADS): one setting governs both backends.
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
