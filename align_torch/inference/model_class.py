"""Following the model class an output records (util/class_record.py): a command that reads an embeddings file or
folder, a run folder or a model folder uses the class that made it unless `--model-class` is given, and refuses a
different one with both named, as it refuses a different model. The recorded class is imported by its module
path, as `--model-class` imports it: never code from the output itself.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from ..model.align import AlignModel
from ..util.class_record import class_record, is_stock


def import_model_class(spec: str) -> type[AlignModel]:
    """'package.module:ClassName' -> that class, which must be AlignModel or a subclass of it."""
    module_name, sep, class_name = spec.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"--model-class {spec!r}: expected module:Class, e.g. my_variants:PreLNAlign")
    if module_name.startswith("."):  # relative to what? A command has no package to resolve it against
        raise ValueError(
            f"--model-class {spec!r}: give the module's full name (importable from PYTHONPATH), not a relative one"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--model-class {spec!r}: cannot import {module_name!r} ({err})") from err
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"--model-class {spec!r}: module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, AlignModel)):
        raise ValueError(f"--model-class {spec!r}: {class_name} is not a subclass of align_torch.AlignModel")
    return cls


def print_note(message: str) -> None:
    print(f"align-torch: note: {message}", file=sys.stderr)


def follow_model_class(
    given: type[AlignModel] | str | None,
    recorded: dict[str, Any] | None,
    where: str,
    on_changed_source: Callable[[str], None] | None = None,
) -> type[AlignModel] | None:
    """The class to build: `given` (a class or 'module:Class') or, when None, the one `recorded` names (None when
    nothing is recorded: the stock AlignModel). A given class other than a recorded one is refused, naming both. A
    recorded class whose module source has changed since is passed to `on_changed_source` as a sentence, or
    refused when that is None."""
    if given is None:
        if recorded is None or is_stock(recorded):
            return None
        try:
            cls = import_model_class(recorded["class"])
        except ValueError as e:
            raise ValueError(
                f"{where} was made with model class {recorded['class']}, which cannot be used: {e}"
            ) from None
    else:
        cls = import_model_class(given) if isinstance(given, str) else given
    mine = class_record(cls)
    if recorded is None:
        return cls
    if mine["class"] != recorded["class"]:
        raise ValueError(
            f"{where} was made with model class {recorded['class']}, not {mine['class']} (--model-class); "
            "leave --model-class out to use the recorded one"
        )
    if not is_stock(recorded) and recorded["source"] != mine["source"]:
        module = sys.modules[cls.__module__]
        message = (
            f"{where} was made with model class {recorded['class']} from a different source: "
            f"{getattr(module, '__file__', cls.__module__)} has changed since (recorded {recorded['source']}, "
            f"now {mine['source']})"
        )
        if on_changed_source is None:
            raise ValueError(message)
        on_changed_source(message)
    return cls
