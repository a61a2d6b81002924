"""Split names and their slices: 'train', 'train[:80%]', 'train[80%:]', 'train[:40000]'.

Every source takes a split name, optionally sliced as in TFDS: 'train[:80%]', 'train[80%:]',
'train[:40000]', 'train[-10%:]'. A slice is a range of the split's example indices (percent
boundaries round to the closest index, TFDS's default rule), so 'train[:80%]' and
'train[80%:]' partition 'train' exactly, for every source and on every machine. This is how a
validation split is held out of the training data (`SlicedSource`), and `shared_examples`
is how a run checks that its splits do not overlap.
"""

from __future__ import annotations

import re
from typing import Any

from alexnet_jax.sources import Source, check_index


def split_file_stem(split: str) -> str:
    """A file-name-safe form of a split name ('train[:90%]' -> 'train__90__')."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in split)


# 'name[start:stop]' with integer or percent bounds, either may be empty or negative.
_SLICE = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\]$")


def parse_split(split: str) -> tuple[str, str | None, str | None]:
    """('train', '80%', None) for 'train[80%:]'; (split, None, None) for a plain name.

    Raises:
      ValueError: a split with brackets that is not one 'name[start:stop]' slice.
    """
    if "[" not in split and "]" not in split:
        return split, None, None
    m = _SLICE.match(split.replace(" ", ""))
    if not m:
        raise ValueError(
            f"split {split!r} is not a split name or one slice of it; write e.g. 'train', "
            "'train[:80%]', 'train[80%:]' or 'train[:40000]'."
        )
    return m["base"], m["start"], m["stop"]


def _bound(text: str | None, n: int, default: int) -> int:
    if text is None:
        return default
    if text.endswith("%"):
        # TFDS's default rounding of percent slices ('closest').
        value = int(round(int(text[:-1]) * n / 100.0))
    else:
        value = int(text)
    if value < 0:
        value += n
    return min(max(value, 0), n)


def slice_range(split: str, n: int) -> range:
    """The indices of a split of `n` examples that `split` (e.g. 'train[80%:]') selects."""
    _, start, stop = parse_split(split)
    return range(_bound(start, n, 0), _bound(stop, n, n))


class SlicedSource(Source):
    """A contiguous range of another source's examples: 'train[:80%]', 'train[80%:]', ...

    Attributes:
      base: the source of the whole split.
      indices: the range of `base` indices this slice reads.
    """

    def __init__(self, base: Source, split: str):
        self.base = base
        self.indices = slice_range(split, len(base))
        if not len(self.indices):
            raise ValueError(
                f"split {split!r} of {base.name} is empty ({len(base)} examples in "
                f"{base.split!r}); widen the slice."
            )
        self.name, self.split, self.size = base.name, split, base.size
        self.resize_mode = base.resize_mode
        self.num_classes, self.class_names = base.num_classes, base.class_names
        self.stats_dir = base.stats_dir

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.base[self.indices[check_index(index, len(self))]]

    def example_name(self, index: int) -> str:
        """The base split's name of the example ('train#1150' for 'train[80%:]'[0])."""
        return self.base.example_name(self.indices[check_index(index, len(self))])


def shared_examples(a: Source, b: Source) -> int:
    """How many examples two sources of one dataset have in common (0 for different splits).

    Sources of different base splits ('train' vs 'test') share nothing; slices of one split
    share the overlap of their index ranges.
    """
    if a.name != b.name:
        return 0
    base_a, base_b = parse_split(a.split)[0], parse_split(b.split)[0]
    if base_a != base_b:
        return 0
    ra = a.indices if isinstance(a, SlicedSource) else range(len(a))
    rb = b.indices if isinstance(b, SlicedSource) else range(len(b))
    return max(0, min(ra.stop, rb.stop) - max(ra.start, rb.start))
