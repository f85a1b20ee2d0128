"""What a numeric flag may be: a :class:`Range`, declared with the flag (the entry scripts'
:data:`engine.options.FLAG_RANGES`, a method's :class:`distiller_zoo.methods.Params` fields) and
checked once, by :func:`engine.options.check_flag_values`."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """``low``/``high`` bounds (None: unbounded), open or closed, and the words that say what
    the flag may be in the error (``allowed``: "must be at least 1 (...)")."""

    low: float | None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allowed: str = ""

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True


#: A loss weight (``-r``, ``-a``, ``-b`` and a method's own weights).
WEIGHT = Range(0, allowed="must be 0 (the term switched off) or positive: a negative weight would "
                          "maximise the term")
#: A temperature (``--kd_T`` and a method's own).
TEMPERATURE = Range(0, low_open=True, allowed="must be positive (a temperature)")
