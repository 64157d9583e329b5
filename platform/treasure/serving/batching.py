"""When to wait for a batch to fill: only when other clients are actually around.

Static batching (one `generate` per batch) fragments under load: clients that were served in
different batches come back at different times, and with no wait they stay in separate, small
batches forever. A short wait re-synchronizes them, but would delay a lone client on every
request. `ConcurrencyTracker` tells the two apart: the recent peak of requests in flight at once.
"""

from __future__ import annotations

import time
from collections import deque


class ConcurrencyTracker:
    """Counts requests in flight and remembers the peak over the last `window_s` seconds."""

    def __init__(self, window_s: float = 2.0, clock=time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self.in_flight = 0
        self._peaks: deque[tuple[float, int]] = deque()  # (time, in_flight after an enter)

    def enter(self) -> None:
        self.in_flight += 1
        now = self.clock()
        self._peaks.append((now, self.in_flight))
        self._trim(now)

    def exit(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def _trim(self, now: float) -> None:
        while self._peaks and now - self._peaks[0][0] > self.window_s:
            self._peaks.popleft()

    def recent_peak(self) -> int:
        self._trim(self.clock())
        return max([self.in_flight] + [n for _, n in self._peaks])

    def batch_wait(self, configured_s: float) -> float:
        """The configured wait when several clients were in flight recently, else 0 (no delay for a lone client)."""
        return configured_s if self.recent_peak() > 1 else 0.0
