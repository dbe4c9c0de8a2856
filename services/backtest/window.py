"""The recent closed bars of one symbol, as a backtest hands them to a decider.

A `Window` is a sequence of at most `maxlen` bars, oldest first. A backtest pushes each
bar by its index in the series and the Bar is made only when someone reads it (an LLM
prompt reads the last few; most bars are never read), so keeping the window costs next
to nothing per bar. Live, the agent's context holds a plain list from `md.api.history`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import overload

from services.contract.models import Bar


class Window(Sequence[Bar]):
    __slots__ = ("_items", "_bar_of")

    def __init__(self, maxlen: int, bar_of: Callable[[int], Bar]) -> None:
        self._items: deque[int] = deque(maxlen=maxlen)
        self._bar_of = bar_of

    def push(self, index: int) -> None:
        """The bar `bar_of(index)` closed."""
        self._items.append(index)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Bar]:
        return map(self._bar_of, self._items)

    @overload
    def __getitem__(self, i: int) -> Bar: ...
    @overload
    def __getitem__(self, i: slice) -> list[Bar]: ...
    def __getitem__(self, i: int | slice) -> Bar | list[Bar]:
        if isinstance(i, slice):
            return [self._bar_of(k) for k in list(self._items)[i]]
        return self._bar_of(self._items[i])
