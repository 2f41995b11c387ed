"""Snapshot schedules: which iterations to keep, as a union of simple items.

Syntax (comma separated, combined as a union): ``N`` (an iteration), ``every:N``, ``pow2``
(1, 2, 4, 8, …) and ``last``. ``"10,25,50,every:100,last"`` keeps 10, 25, 50, 100, 200, …
and the final iteration. Iteration 0 is the starting image; iteration k is the image after
k optimiser steps. Pure Python, no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ScheduleError(ValueError):
    """A snapshot schedule could not be read; the message says which item and why."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; ask it for the iterations it keeps in a run of a given length."""

    at: frozenset[int] = frozenset()
    every: tuple[int, ...] = ()
    pow2: bool = False
    last: bool = False

    def iterations(self, total: int) -> list[int]:
        """The sorted iterations in 0..total that this schedule keeps."""
        keep = {i for i in self.at if 0 <= i <= total}
        for n in self.every:
            keep.update(range(n, total + 1, n))
        if self.pow2:
            keep.update(1 << k for k in range(total.bit_length()))  # 2**k <= total
        if self.last:
            keep.add(total)
        return sorted(keep)


_HELP = "Use comma-separated items: an iteration number (50), every:N (every:100), pow2, last."


def parse_schedule(text: str) -> Schedule:
    """'10,25,50,every:100,last' -> Schedule. Raises ScheduleError naming the bad item."""
    at: set[int] = set()
    every: list[int] = []
    pow2 = last = False
    for raw in str(text).split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item == "pow2":
            pow2 = True
        elif item == "last":
            last = True
        elif item.startswith("every:"):
            every.append(_positive(item[6:], raw, "every:N needs N of at least 1"))
        elif re.fullmatch(r"-?[0-9]+", item):
            value = int(item)
            if value < 0:
                raise ScheduleError(
                    f"Snapshot item {raw.strip()!r} is negative; iterations start at 0 "
                    f"(the starting image). {_HELP}"
                )
            at.add(value)
        else:
            raise ScheduleError(f"Snapshot item {raw.strip()!r} is not understood. {_HELP}")
    if not (at or every or pow2 or last):
        raise ScheduleError(
            f"The snapshot schedule {str(text)!r} names no iteration. {_HELP} "
            "Write 'last' to keep only the final image."
        )
    return Schedule(frozenset(at), tuple(sorted(set(every))), pow2, last)


def _positive(digits: str, raw: str, why: str) -> int:
    if not re.fullmatch(r"[0-9]+", digits.strip()) or int(digits) < 1:
        raise ScheduleError(f"Snapshot item {raw.strip()!r}: {why}. {_HELP}")
    return int(digits)
