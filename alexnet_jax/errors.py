"""One line of an exception, for the one-line error messages every command prints."""

from __future__ import annotations


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
