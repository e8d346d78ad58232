"""Reading the JSON files of a checkpoint folder: one error that names the file (and the field) for bytes that
are not UTF-8, text that is not JSON, and JSON of the wrong type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ConfigFileError(ValueError):
    """A configuration file that cannot be used: its path and what is wrong, in one line."""


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path`; anything else (not UTF-8, not JSON, a list or a string) raises ConfigFileError."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"{str(path)!r} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigFileError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfigFileError(f"{str(path)!r} must hold a JSON object, got a JSON {type(value).__name__}")
    return value


def field_error(path: str | Path, error: Exception) -> ConfigFileError:
    """A field error from building a config, prefixed with the file it came from."""
    return ConfigFileError(f"bad field in {str(path)!r}: {error}")
