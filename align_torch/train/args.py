"""Command-line options derived from TrainConfig's fields: name, type, default and help are written once,
in the dataclass, and `align-torch finetune --help` shows every one with its default."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from .config import RECIPES, TrainConfig


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "none" if value is None else str(value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field. Options not given stay out of the namespace (argparse.SUPPRESS),
    so that a --recipe can fill them before the dataclass defaults do."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        required = f.default is dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "required": required}
        help_text = f.metadata["help"]
        if kind is bool:
            help_text += " (default: off)"
        elif not required:
            help_text += f" (default: {f.metadata.get('default_text', _show(f.default))})"
        if kind is bool:
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            args = typing.get_args(kind)
            if isinstance(kind, types.UnionType):  # X | None
                kind = next(a for a in args if a is not type(None))
                args = typing.get_args(kind)
            if typing.get_origin(kind) is tuple:
                kwargs.update(nargs="+" if args[-1] is Ellipsis else len(args), type=args[0])
            else:
                kwargs["type"] = kind
            for key in ("choices", "metavar"):
                if key in f.metadata:
                    kwargs[key] = f.metadata[key]
        parser.add_argument(_flag(f), help=help_text.replace("%", "%%"), **kwargs)


def add_recipe_argument(parser: argparse.ArgumentParser) -> None:
    scratch = ", ".join(
        f"{_flag(TrainConfig.__dataclass_fields__[k])} {_show(v)}" for k, v in RECIPES["scratch"].items()
    )
    parser.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="finetune",
        help=f"defaults for the options not given: finetune (the defaults shown) or scratch ({scratch}), for a "
        "randomly initialised or modified small model (default: finetune)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed options describe: the given ones, then the recipe's, then the defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig.from_recipe(getattr(args, "recipe", "finetune"), **given)
