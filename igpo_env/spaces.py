"""A Gymnasium space of free text: any ``str`` up to a maximum length.

``gymnasium.spaces.Text`` checks every character against a charset (alphanumeric by
default), so real prompts and documents, with punctuation, newlines and unicode, are not
``in`` it. :class:`FreeText` contains every Python ``str`` of at most ``max_length``
characters. It is registered with Gymnasium's vector utilities so that ``SyncVectorEnv``
and ``AsyncVectorEnv(..., shared_memory=False)`` batch it as a tuple of strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Space
from gymnasium.vector.utils import create_empty_array

# What sample() draws from: printable ASCII, whitespace and a few non-Latin letters, so that
# samples exercise the parser with the kinds of characters real turns contain.
SAMPLE_CHARSET = (
    "".join(chr(c) for c in range(32, 127)) + "\n\t" + "éüßñçøåжλΩ中文日本語한국어—…“”‘’"
)


class FreeText(Space[str]):
    """Every ``str`` with ``len(s) <= max_length`` (any characters, including the empty string).

    ``sample()`` draws a length uniformly from ``[0, max_length]`` (or ``[0, mask]`` when an
    ``int`` mask is given) and characters uniformly from :data:`SAMPLE_CHARSET`, using the
    space's own seeded ``np_random``.
    """

    def __init__(self, max_length: int, seed: int | np.random.Generator | None = None):
        if not isinstance(max_length, (int, np.integer)) or max_length < 0:
            raise ValueError(f"max_length must be a non-negative int, got {max_length!r}")
        self.max_length = int(max_length)
        self._charset = np.array(list(SAMPLE_CHARSET))
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        """Free text has no fixed-size numeric form."""
        return False

    def sample(self, mask: int | None = None, probability: Any = None) -> str:
        """A random string; ``mask`` (an int) caps its length below ``max_length``."""
        if probability is not None:
            raise ValueError("FreeText.sample does not take a probability; pass mask=LENGTH")
        cap = self.max_length if mask is None else min(int(mask), self.max_length)
        length = int(self.np_random.integers(0, cap + 1))
        return "".join(self.np_random.choice(self._charset, size=length))

    def contains(self, x: Any) -> bool:
        """True for any ``str`` of at most ``max_length`` characters."""
        return isinstance(x, str) and len(x) <= self.max_length

    def to_jsonable(self, sample_n: Sequence[str]) -> list[str]:
        return list(sample_n)

    def from_jsonable(self, sample_n: Sequence[str]) -> list[str]:
        return list(sample_n)

    def __repr__(self) -> str:
        return f"FreeText(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FreeText) and other.max_length == self.max_length

    def __hash__(self) -> int:
        return hash(("FreeText", self.max_length))


@create_empty_array.register(FreeText)
def _create_empty_free_text(
    space: FreeText, n: int = 1, fn: Callable = np.zeros
) -> tuple[str, ...]:
    """The placeholder batch a vector env fills: ``n`` empty strings (each is in the space)."""
    return ("",) * n
