"""Command-line options derived from TrainConfig's fields: name, type, default and help are written once,
in the dataclass, and `align-torch finetune --help` shows every one with its default."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from .config import RECIPES, RESUME_CHANGEABLE, TrainConfig, renamed_fields


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "none" if value is None else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, optional: tuple[str, ...] = ()) -> None:
    """One option per TrainConfig field. Options not given stay out of the namespace (argparse.SUPPRESS),
    so that a --recipe (or a resumed run's record) can fill them before the dataclass defaults do. The fields
    `optional` names are not required by the parser even without a default (a resume finds them recorded)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        required = f.default is dataclasses.MISSING and f.name not in optional
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "required": required}
        help_text = f.metadata["help"]
        if kind is bool:
            help_text += " (default: off)"
        elif f.default is not dataclasses.MISSING:  # a field `optional` frees has no default to show
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
        help=f"defaults for the options not given: finetune (the defaults shown) or scratch ({scratch}), for a "
        "randomly initialised or modified small model (default: finetune)",
    )


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed options describe: the given ones, then the recipe's, then the defaults."""
    given = _given(args)
    missing = [
        _flag(f) for f in dataclasses.fields(TrainConfig) if f.default is dataclasses.MISSING and f.name not in given
    ]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join(missing)}")
    return TrainConfig.from_recipe(getattr(args, "recipe", None) or "finetune", **given)


def resumed_config(args: argparse.Namespace, recorded: dict[str, Any], where: str) -> tuple[TrainConfig, list[str]]:
    """The config of the run being resumed: its recorded one, with the options given on the command line (and a
    given --recipe's) checked against it. A difference in what the run computes is refused, naming each option;
    one of RESUME_CHANGEABLE (the run's length, how it is watched) is taken, and described in the notes."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    base = {k: v for k, v in renamed_fields(recorded).items() if k in names}
    try:
        old = TrainConfig(**{**base, "out": args.out})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: its recorded train config cannot be read ({e})") from None
    recipe = getattr(args, "recipe", None)
    given = {**(RECIPES[recipe] if recipe else {}), **_given(args), "out": args.out}
    new = TrainConfig(**{**dataclasses.asdict(old), **given})
    changed = [f for f in dataclasses.fields(TrainConfig) if getattr(new, f.name) != getattr(old, f.name)]
    refused = [f for f in changed if f.name not in RESUME_CHANGEABLE]
    if refused:
        detail = "; ".join(
            f"{_flag(f)} {_show(getattr(new, f.name))} (the run has {_show(getattr(old, f.name))})" for f in refused
        )
        raise ValueError(
            f"cannot resume {where} with a different {detail}; leave the option out to continue the run as it "
            "was recorded, or start a new run in another --out"
        )
    notes = [f"{_flag(f)}: {_show(getattr(old, f.name))} -> {_show(getattr(new, f.name))}" for f in changed]
    return new, notes
