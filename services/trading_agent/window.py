"""The recent closed bars of one symbol, as a strategy reads them.

A `Window` is a sequence of bars (oldest first, at most `maxlen`) that also keeps their
closes and, for every length a strategy asks about (`track`), the exact sum of the last
n closes, updated as each bar arrives: add the new close, subtract the one that leaves.
So a moving average costs the same whatever its length, and a strategy decides in
microseconds. Decimal sums are exact, so an average is the same number however the
window was filled (pushed bar by bar in a backtest, or built at once from
`md.api.history` live: `Window.of`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from itertools import islice
from typing import overload

from services.contract.models import Bar

ZERO = Decimal(0)


class Window(Sequence[Bar]):
    __slots__ = ("_bars", "closes", "_sums", "_bar_of")

    def __init__(self, maxlen: int, bar_of: Callable[[int], Bar] | None = None) -> None:
        # Bars, or (pushed with push_close) their indices in a series, made into Bars by
        # `bar_of` only when read: a backtest's strategies mostly read the closes alone.
        self._bars: deque[Bar | int] = deque(maxlen=maxlen)
        self._bar_of = bar_of
        self.closes: deque[Decimal] = deque(maxlen=maxlen)
        # n -> [sum of the last n closes, the same one bar earlier]
        self._sums: dict[int, list[Decimal]] = {}

    @classmethod
    def of(cls, bars: Iterable[Bar], maxlen: int) -> Window:
        window = cls(maxlen)
        for bar in bars:
            window.push(bar)
        return window

    @property
    def maxlen(self) -> int:
        return self._bars.maxlen or 0

    def push(self, bar: Bar) -> None:
        self.push_close(bar.close, bar)

    def push_close(self, close: Decimal, bar: Bar | int) -> None:
        """A bar by its close, and the bar itself or its index for `bar_of`."""
        closes = self.closes
        size = len(closes)
        for n, sums in self._sums.items():
            leaving = closes[size - n] if size >= n else ZERO
            sums[1] = sums[0]
            sums[0] = sums[0] + close - leaving
        self._bars.append(bar)
        closes.append(close)

    def _bar(self, item: Bar | int) -> Bar:
        if isinstance(item, int):
            if self._bar_of is None:
                raise LookupError("a bar pushed by index needs the window's bar_of")
            return self._bar_of(item)
        return item

    def track(self, n: int) -> None:
        """Keep the sum of the last n closes from now on (n <= maxlen)."""
        if n in self._sums:
            return
        if not 1 <= n <= self.maxlen:
            raise ValueError(f"a window of {self.maxlen} bars cannot average {n}")
        closes = list(self.closes)
        self._sums[n] = [sum(closes[-n:], ZERO), sum(closes[-n - 1 : -1], ZERO)]

    def sums(self, n: int) -> tuple[Decimal, Decimal]:
        """The sum of the last n closes now and one bar earlier (tracking n from now on);
        needs n + 1 closes. (Comparing two averages needs no division: a/n > b/m
        exactly when a*m > b*n.)"""
        sums = self._sums.get(n)
        if sums is None:
            self.track(n)
            sums = self._sums[n]
        if len(self.closes) <= n:
            raise ValueError(f"two sums of {n} closes need {n + 1} bars, have {len(self.closes)}")
        return sums[0], sums[1]

    def mean(self, n: int, ago: int = 0) -> Decimal:
        """The mean of the last n closes (ago=1: as it was one bar earlier); needs
        `track(n)` and n + ago closes."""
        if len(self.closes) < n + ago or ago not in (0, 1):
            raise ValueError(f"the mean of {n} closes {ago} bars ago needs {n + ago} bars, have {len(self.closes)}")
        return self._sums[n][ago] / n

    def last_closes(self, n: int) -> list[Decimal]:
        return list(islice(self.closes, max(0, len(self.closes) - n), None))

    def __len__(self) -> int:
        return len(self._bars)

    def __iter__(self) -> Iterator[Bar]:
        return (self._bar(b) for b in self._bars)

    @overload
    def __getitem__(self, i: int) -> Bar: ...
    @overload
    def __getitem__(self, i: slice) -> list[Bar]: ...
    def __getitem__(self, i: int | slice) -> Bar | list[Bar]:
        if isinstance(i, slice):
            return [self._bar(b) for b in list(self._bars)[i]]
        return self._bar(self._bars[i])


def window_of(bars: Sequence[Bar], maxlen: int) -> Window:
    """`bars` as a Window (itself when it is one)."""
    return bars if isinstance(bars, Window) else Window.of(bars[-maxlen:], maxlen)
