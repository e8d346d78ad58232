"""Keywords a public function had before a rename, still accepted: scripts written against the old name keep
running (with a DeprecationWarning that names the new one) while the package, its docs and its tests use one name
per concept."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keywords(**old_to_new: str) -> Callable[[F], F]:
    """Pass each old keyword on under its new name; both spellings at once are refused, naming the two."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got both {old}= and {new}=; {old}= is the old name of {new}=")
                warnings.warn(
                    f"{fn.__name__}({old}=...) is now {fn.__name__}({new}=...)", DeprecationWarning, stacklevel=2
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
