"""One line of an exception, for the one-line error messages every command prints, and the one
check of a value against its allowed choices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def first_line(e: BaseException, *, with_type: bool = True) -> str:
    """The first line of `e`'s message (numpy's, torch's and absl's run to paragraphs).

    Args:
      e: the exception.
      with_type: prefix the exception's type ('BadZipFile: File is not a zip file'); False
        gives the line alone, where the words around it already say what failed.

    Returns:
      'Type: first line' (with_type) or 'first line'; the type's name when the message is
      empty.
    """
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    return f"{type(e).__name__}: {lines[0]}" if with_type else lines[0]


def check_choice(
    field: str,
    value: Any,
    allowed: Sequence[Any],
    why: str = "",
    *,
    error: type[ValueError] = ValueError,
) -> None:
    """Raises a ValueError naming the config field (or flag), its value and the allowed values.

    Args:
      field: the field as a command line names it, e.g. 'model.init' or '--patches'.
      value: its value.
      allowed: the values it may take.
      why: what the choices mean, appended to the message after the value (it starts with its
        own ':' or ';'); without it the message ends with '.'.
      error: the ValueError subclass to raise (e.g. the features tool's FeaturesError).
    """
    if value not in allowed:
        raise error(f"{field} must be one of {tuple(allowed)}, got {value!r}{why or '.'}")
