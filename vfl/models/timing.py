"""Where the time goes: seconds per named phase, for progress lines and reports."""
from __future__ import annotations

import time


class Stopwatch:
    """Seconds spent per named phase, accumulated over a role's batches (for reports)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str) -> "_Lap":
        return _Lap(self, phase)


class _Lap:
    def __init__(self, watch: Stopwatch, phase: str) -> None:
        self.watch, self.phase = watch, phase

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.watch.seconds[self.phase] = self.watch.seconds.get(self.phase, 0.0) + time.perf_counter() - self.t0
