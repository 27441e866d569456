"""One clock: a guest's CLOCK_MONOTONIC put on the collector's.

The collector sends a probe at host time t1; the guest answers with its
clock g when it reads the probe; the answer arrives at t4. If the two legs
took equally long, offset = g - (t1 + t4) / 2; whatever the asymmetry, the
true offset lies within rtt / 2 of it (rtt = t4 - t1). So:

- min-RTT filtering: of each window of WINDOW probes, only the one with
  the shortest round trip counts (the others queued behind data);
- drift: once the kept points span DRIFT_SPAN_NS, a least-squares line
  offset(host) = a + b * host through the last POINTS of them (two VMs'
  clocks run at slightly different rates);
- uncertainty: half the best kept round trip, plus the RMS of the points
  around the line: the bound the output states beside every aligned time.

    >>> clock = ClockEstimator()
    >>> clock.add(1_000, 501_050, 1_100)      # guest is 500_000 ns ahead
    >>> _ = clock.flush()
    >>> clock.to_host(600_000), clock.uncertainty_ns()
    (100000, 50)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockPoint:
    """One kept probe: host time (middle of the round trip), offset, rtt."""

    host_ns: int
    offset_ns: float
    rtt_ns: int


WINDOW = 4
POINTS = 64
DRIFT_SPAN_NS = 10_000_000_000


class ClockEstimator:
    """Offset and drift of one guest's clock relative to ours."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self._pending: list[ClockPoint] = []
        self.points: deque[ClockPoint] = deque(maxlen=POINTS)
        self.samples = 0
        self._a = 0.0           # offset at host time `_t0`
        self._b = 0.0           # drift: ns of offset per ns of host time
        self._t0 = 0
        self._residual = 0.0

    @property
    def ready(self) -> bool:
        return bool(self.points)

    def add(self, t1: int, guest_ns: int, t4: int) -> ClockPoint | None:
        """One probe's answer; the point kept when it closes a window."""
        if t4 < t1:
            return None
        self.samples += 1
        rtt = t4 - t1
        self._pending.append(ClockPoint((t1 + t4) // 2,
                                        guest_ns - (t1 + t4) / 2, rtt))
        if len(self._pending) >= self.window:
            return self.flush()
        return None

    def flush(self) -> ClockPoint | None:
        """Keep the best of the probes seen since the last kept point."""
        if not self._pending:
            return None
        best = min(self._pending, key=lambda point: point.rtt_ns)
        self._pending.clear()
        self.points.append(best)
        self._fit()
        return best

    def _fit(self) -> None:
        points = list(self.points)
        span = points[-1].host_ns - points[0].host_ns
        self._t0 = points[-1].host_ns
        if len(points) < 3 or span < DRIFT_SPAN_NS:
            # Too short to see drift: the best round trip's offset.
            best = min(points, key=lambda point: point.rtt_ns)
            self._a, self._b, self._residual = best.offset_ns, 0.0, 0.0
            return
        xs = [point.host_ns - self._t0 for point in points]
        ys = [point.offset_ns for point in points]
        mean_x = sum(xs) / len(xs)
        mean_y = sum(ys) / len(ys)
        sxx = sum((x - mean_x) ** 2 for x in xs)
        sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
        self._b = sxy / sxx if sxx else 0.0
        self._a = mean_y - self._b * mean_x
        self._residual = math.sqrt(sum(
            (y - (self._a + self._b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
            / len(xs))

    def offset_at(self, host_ns: int) -> float:
        """The guest's clock minus ours, at host time `host_ns`."""
        return self._a + self._b * (host_ns - self._t0)

    def to_host(self, guest_ns: int) -> int:
        """A guest CLOCK_MONOTONIC time on the host's clock."""
        guess = guest_ns - self._a
        return round(guest_ns - self.offset_at(round(guess)))

    def uncertainty_ns(self) -> int:
        """How far an aligned time may be off: half the best kept round trip
        among recent points, plus the fit's RMS residual."""
        if not self.points:
            return 0
        best = min(point.rtt_ns for point in self.points)
        return math.ceil(best / 2 + self._residual)

    def summary(self) -> dict[str, float | int]:
        """The estimate as the collector writes it (clock.jsonl)."""
        return {"offset_ns": round(self._a), "drift_ppm": round(self._b * 1e6, 3),
                "uncertainty_ns": self.uncertainty_ns(),
                "residual_ns": round(self._residual),
                "points": len(self.points), "probes": self.samples}
