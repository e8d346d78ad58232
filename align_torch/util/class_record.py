"""What model class made an output, as the output records it: `{"class": "module:Class", "source": "sha256:..."}`.

A researcher's AlignModel subclass (`--model-class my_variants:PreLN`) computes other numbers than the stock
model from the same weights, so embeddings files and folders, run folders and `final/config.json` record it,
and the commands that read them follow it (inference/model_class.py). The source fingerprint is the sha256 of
the file of the module that defines the class: an edit to the variant after the output was made is noticed.
align_torch's own classes are recorded as STOCK, without a fingerprint: they come with the package, whatever its
version. None is "not recorded" (outputs written before classes were, model folders of the stock class): any
class may read those.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

PACKAGE = __name__.split(".")[0]
STOCK = f"{PACKAGE}:AlignModel"


def class_spec(cls: type) -> str:
    """'module:Class' of a class, the form `--model-class` takes."""
    return f"{cls.__module__}:{cls.__qualname__}"


def source_fingerprint(module_name: str) -> str | None:
    """'sha256:' + the hash of the module's source file; None for a module without one (a notebook's __main__)."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def class_record(cls: type) -> dict[str, Any]:
    """The record of the model class `cls`: STOCK for align_torch's own, else its spec and source fingerprint."""
    if cls.__module__.split(".")[0] == PACKAGE:
        return {"class": STOCK, "source": None}
    return {"class": class_spec(cls), "source": source_fingerprint(cls.__module__)}


def is_stock(record: dict[str, Any] | None) -> bool:
    return record is not None and record["class"] == STOCK


def check_record(record: Any, where: str) -> dict[str, Any] | None:
    """A record read from a file, checked: None, or {"class": "module:Class", "source": text or None}."""
    if record is None:
        return None
    spec = record.get("class") if isinstance(record, dict) else None
    source = record.get("source") if isinstance(record, dict) else None
    if not isinstance(spec, str) or spec.count(":") != 1 or not isinstance(source, (str, type(None))):
        raise ValueError(
            f"{where}: model_class must be null or {{'class': 'module:Class', 'source': ...}}, got {record!r}"
        )
    return {"class": spec, "source": source}
