"""The client's one limiter: every API request (create, status, list) passes through it.

Three things are limited here:

* the request **rate**, with a token bucket. A rate the user gives is a ceiling; below it the rate adapts
  to 429 answers. Without a given rate the limiter does not pace at all until the first 429, and from then
  on finds the server's limit by itself:

  - on a 429 the rate drops to ``DECREASE`` times the rate that was being sent (at most once per
    ``_DECREASE_SPACING`` seconds, since a burst of requests already on the wire all come back 429 at once);
    a ``Retry-After`` pauses the whole client until it has passed;
  - after that it climbs back quickly towards the rate that drew the 429 and then probes above it slowly
    (``_PROBE`` of that rate per second), so the steady state sits just under the server's limit with a
    429 every few hundred requests rather than a sawtooth.

* the requests **on the wire** at once (``max_concurrency``);
* **fairness**: submissions and status requests wait in two lanes whose heads take turns for the next
  token, so neither kind can starve the other; within a lane the order is first come, first served.
"""

from __future__ import annotations

import enum
import math
from collections import deque

import anyio

from ._clock import SYSTEM_CLOCK, Clock

__all__ = ["Lane", "Limiter"]

DECREASE = 0.8
_DECREASE_SPACING = 1.0
_RECOVER = 0.5  # per second, the share of the gap to the last bad rate closed while below it
_PROBE = 0.0025  # per second, the growth above the last bad rate
_MIN_RATE = 0.2
_WINDOW = 32  # send times kept to measure the rate being sent
_ACCEPTED_WINDOW = 512  # answer times kept to measure the rate the server accepts
_ACCEPTED_SPAN = 2.0  # seconds over which that rate is measured


class _Slot:
    """The async context manager of ``Limiter.slot`` (a class: cheaper than a generator per request)."""

    __slots__ = ("_lane", "_limiter")

    def __init__(self, limiter: Limiter, lane: Lane) -> None:
        self._limiter = limiter
        self._lane = lane

    async def __aenter__(self) -> None:
        await self._limiter.acquire(self._lane)

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter.release()


class Lane(enum.Enum):
    """Which queue a request waits in."""

    SUBMIT = "submit"
    STATUS = "status"


class Limiter:
    """Token bucket with adaptive rate, a cap on requests on the wire, and two fair lanes."""

    def __init__(
        self,
        *,
        requests_per_second: float | None,
        burst: int | None = None,
        max_concurrency: int,
        max_pause: float = 120.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if requests_per_second is not None and requests_per_second <= 0:
            raise ValueError("requests_per_second: must be positive")
        if max_concurrency < 1:
            raise ValueError("max_concurrency: at least 1")
        self._clock = clock
        self._ceiling = requests_per_second
        self._rate = requests_per_second
        self._burst = float(burst if burst is not None else 1)
        self._tokens = self._burst
        self._stamp = clock.now()
        self._blocked_until = 0.0
        # A Retry-After longer than this pauses the client only this long (a hostile or broken server
        # must not freeze every request for a day; the request that got it fails instead).
        self._max_pause = max_pause
        self._last_bad: float | None = None
        self._last_decrease = -math.inf
        self._sent: deque[float] = deque(maxlen=_WINDOW)
        self._accepted: deque[float] = deque(maxlen=_ACCEPTED_WINDOW)
        # fast_acquire: a free lock is taken without a trip through the event loop. Three such trips per
        # request were most of the client's CPU overhead over bare aiohttp.
        self._wire = anyio.Semaphore(max_concurrency, fast_acquire=True)
        self.max_concurrency = max_concurrency
        self._lanes = {lane: anyio.Lock(fast_acquire=True) for lane in Lane}
        self._bucket = anyio.Lock(fast_acquire=True)
        self.rate_limited = 0

    def __repr__(self) -> str:
        rate = "unpaced" if self._rate is None else f"{self._rate:.2f}/s"
        on_wire = self.max_concurrency - self._wire.value
        return f"<Limiter rate={rate} on_wire={on_wire}/{self.max_concurrency} 429s={self.rate_limited}>"

    @property
    def rate(self) -> float | None:
        """The current pace in requests per second, or None while unpaced."""
        return self._rate

    def slot(self, lane: Lane) -> _Slot:
        """``async with limiter.slot(lane):`` holds one place on the wire, entered once the rate allows."""
        return _Slot(self, lane)

    async def acquire(self, lane: Lane) -> None:
        """Wait for a place on the wire and the rate's permission; pair with ``release``."""
        async with self._lanes[lane], self._bucket:
            await self._wire.acquire()
            try:
                await self._take_token()
            except BaseException:
                self._wire.release()
                raise

    def release(self) -> None:
        """Give back the place on the wire."""
        self._wire.release()

    async def _take_token(self) -> None:
        while True:
            now = self._clock.now()
            if now < self._blocked_until:
                await self._clock.sleep(self._blocked_until - now)
                continue
            if self._rate is None:
                break
            self._refill(now)
            # A hair under a whole token counts: float time cannot always advance by what is missing.
            if self._tokens >= 1.0 - 1e-9:
                self._tokens = max(0.0, self._tokens - 1.0)
                break
            await self._clock.sleep((1.0 - self._tokens) / self._rate)
        self._sent.append(self._clock.now())

    def _refill(self, now: float) -> None:
        assert self._rate is not None
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._grow(elapsed)

    def _grow(self, elapsed: float) -> None:
        """Recover the rate after a decrease: fast up to the last bad rate, slowly past it."""
        if self._last_bad is None or self._rate is None or elapsed <= 0:
            return
        if self._rate < self._last_bad:
            gap = self._last_bad - self._rate
            self._rate += gap * min(1.0, _RECOVER * elapsed)
            if self._last_bad - self._rate < 0.01 * self._last_bad:
                self._rate = self._last_bad
        else:
            self._rate *= 1.0 + _PROBE * elapsed
        if self._ceiling is not None:
            self._rate = min(self._rate, self._ceiling)

    def sending_rate(self) -> float | None:
        """The rate of the last few requests, measured; None until there are enough."""
        if len(self._sent) < 4:
            return None
        span = self._sent[-1] - self._sent[0]
        return (len(self._sent) - 1) / span if span > 0 else None

    def on_success(self) -> None:
        """A request was answered (not 429): what the server accepts is what the rate adapts to."""
        self._accepted.append(self._clock.now())

    def accepted_rate(self) -> float | None:
        """Answers per second over the last ``_ACCEPTED_SPAN`` seconds; None without enough of them."""
        now = self._clock.now()
        recent = [t for t in self._accepted if t >= now - _ACCEPTED_SPAN]
        if len(recent) < 4:
            return None
        # Over at least a second: right after an unpaced start, ten answers in 0.1 s are the server's
        # burst allowance, not a rate of 100/s.
        return len(recent) / max(now - recent[0], 1.0)

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A request got 429: pause for Retry-After when given, and lower the rate."""
        self.rate_limited += 1
        now = self._clock.now()
        if retry_after is not None:
            self._blocked_until = max(self._blocked_until, now + min(retry_after, self._max_pause))
        if now - self._last_decrease < _DECREASE_SPACING:
            return
        self._last_decrease = now
        # The rate the server accepted, not the rate sent: an unpaced burst may be sent many times
        # faster than the limit, and a cut from there would take many more 429s to reach it.
        measured = self.accepted_rate() or self.sending_rate()
        current = self._rate if self._rate is not None else measured
        if current is None:
            current = float(self.max_concurrency)
        if measured is not None:
            current = min(current, measured)
        self._last_bad = current
        self._rate = max(_MIN_RATE, current * DECREASE)
        self._stamp = now
        self._tokens = min(self._tokens, 1.0)
