"""The LLM cost budget: USD spent over a sliding hour and a sliding day, per process.

Once a window's spend reaches its limit, calls go to the offline fallback until enough of
the spend ages out of the window. The check is before a call (the cost is known only
after it), so the spend may overshoot the limit by the calls in flight at that moment.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal

from . import metrics

WINDOWS = {"hour": 3600.0, "day": 86400.0}


class Budget:
    def __init__(self, per_hour: Decimal, per_day: Decimal, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = {"hour": per_hour, "day": per_day}
        self.clock = clock
        self._spends: deque[tuple[float, Decimal]] = deque()  # (when, usd), oldest first

    def spend(self, usd: Decimal) -> None:
        if usd > 0:
            self._spends.append((self.clock(), usd))
        self._update_metrics()

    def spent(self, window: str) -> Decimal:
        since = self.clock() - WINDOWS[window]
        return sum((usd for when, usd in self._spends if when > since), Decimal(0))

    def exhausted(self) -> str | None:
        """None while there is budget left, else why not (the caller's error text)."""
        now = self.clock()
        while self._spends and self._spends[0][0] <= now - WINDOWS["day"]:
            self._spends.popleft()
        self._update_metrics()
        for window, limit in self.limits.items():
            spent = self.spent(window)
            if limit == 0:
                return f"budget exhausted: budget_usd_per_{window} is 0 (LLM calls are off)"
            if spent >= limit:
                return (f"budget exhausted: ${spent:.4f} spent of ${limit} per {window}; "
                        f"refills in {self._refill_s(window, limit):.0f}s")
        return None

    def _refill_s(self, window: str, limit: Decimal) -> float:
        # Time until enough of the oldest spend leaves the window to get back under the limit.
        now, excess = self.clock(), self.spent(window) - limit
        for when, usd in self._spends:
            if when <= now - WINDOWS[window]:
                continue
            excess -= usd
            if excess < 0:
                return max(0.0, when + WINDOWS[window] - now)
        return 0.0

    def _update_metrics(self) -> None:
        for window, limit in self.limits.items():
            spent = self.spent(window)
            metrics.BUDGET_SPENT.labels(window).set(float(spent))
            metrics.BUDGET_EXHAUSTED.labels(window).set(1 if spent >= limit else 0)
