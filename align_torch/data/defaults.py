"""Defaults the commands share, in one place: every command that loads a model or images, fine-tuning
included, starts from these."""

from __future__ import annotations

import os

DEFAULT_MODEL = "kakaobrain/align-base"
# Image-loading processes: a few, but never more than the cores that must also run the model.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
