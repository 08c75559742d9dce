"""When to try a request again, and how long to wait first.

Status requests (GET) are safe to repeat; a POST creates (and bills) a video, so it is repeated only when
the failure proves that nothing was created: the connection never opened, or the server answered 429 or 503.
"""

from __future__ import annotations

import email.utils
import math
import random
from dataclasses import dataclass, fields

from ._clock import SYSTEM_CLOCK, Clock, grown
from ._errors import APIError, KlingError, TransportError

__all__ = [
    "Attempts",
    "RetryPolicy",
    "is_retryable",
    "parse_retry_after",
    "post_created_nothing",
    "post_retryable",
]

# Statuses after which a POST provably created nothing (the docs advise backing off on 503).
_POST_SAFE_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a failed request is repeated: exponential backoff with full jitter, bounded twice.

    The n-th wait is a uniform draw from ``[0, min(maximum, initial * multiplier ** (n - 1))]``
    (full jitter, so many clients that failed together do not retry together). Retrying stops after
    ``attempts`` tries in all or once ``deadline`` seconds have passed since the first try, whichever
    comes first. The defaults carry a request through 15% transient errors with a failure chance of
    about 0.15 ** 8 = 2.6e-7 per request, and give up on an outage after 2 minutes.

    Args:
        attempts: tries in all, the first included (1 disables retries).
        initial: the cap of the first wait, in seconds.
        maximum: the largest cap of any wait, in seconds.
        multiplier: how fast the cap grows.
        deadline: seconds after the first try past which no retry starts. The first try starts when it
            is sent: a wait for the client's own rate limit before it does not count. A retry after a
            failure of its own (not a 429) waits for the rate ahead of the requests trying for the
            first time.
    """

    attempts: int = 8
    initial: float = 0.25
    maximum: float = 15.0
    multiplier: float = 2.0
    deadline: float = 120.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            whole = spec.name == "attempts"
            if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
                kind = "a whole number" if whole else "a number"
                raise TypeError(f"RetryPolicy.{spec.name}: {kind} (got {value!r})")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"RetryPolicy.{spec.name}: a finite number (got {value!r})")
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts: at least 1")
        if self.initial < 0 or self.maximum < 0 or self.deadline < 0:
            raise ValueError("RetryPolicy: initial, maximum and deadline must not be negative")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier: at least 1")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before try ``attempt + 1``, after ``attempt`` failed tries (full jitter)."""
        cap = grown(self.initial, self.multiplier, attempt - 1, self.maximum)
        return (rng or random).uniform(0.0, cap)


class Attempts:
    """The retry bookkeeping of one operation (an API request or a create POST): which try this is, and
    whether another may start, bounded by the policy's attempts and deadline, whichever comes first.

    ``ahead``: the next try may wait for the rate ahead of first tries. True after a failure of the
    request itself (a 5xx, a lost connection), which made it late; False after a 429, where the rate
    failed, not the request, and the limiter already holds every request back alike. (Letting 429
    retries ahead too cost a third of the rate against a server without a burst, ``bench_rate``.)
    """

    __slots__ = ("_clock", "_first", "_policy", "_rng", "ahead", "number")

    def __init__(self, policy: RetryPolicy, clock: Clock, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._first = math.nan
        self.number = 0
        self.ahead = False

    def start(self) -> int:
        """Count a new try, as it is about to be sent, and return its number (1 for the first).

        The deadline runs from the first try's start: the wait for the client's own rate limit before
        it is not time spent retrying (10,000 ``submit`` calls at once, at 10 requests a second, queue
        for up to 1,000 s).
        """
        self.number += 1
        if self.number == 1:
            self._first = self._clock.now()
        return self.number

    def next_delay(self, *, paced_wait: float | None = None) -> float | None:
        """Seconds to wait before the next try, or None when no try may start any more.

        Args:
            paced_wait: the wait that someone else already imposes (a ``Retry-After`` the limiter
                enforces for the whole client): no backoff of our own then, but a wait that would end
                past the deadline gives up now rather than hang.
        """
        self.ahead = paced_wait is None
        if self.number >= self._policy.attempts:
            return None
        delay = 0.0 if paced_wait is not None else self._policy.backoff(self.number, self._rng)
        waiting = paced_wait if paced_wait is not None else delay
        if self._clock.now() + waiting - self._first > self._policy.deadline:
            return None
        return delay


def is_retryable(error: KlingError) -> bool:
    """Whether a status request (GET) that failed this way is worth repeating."""
    if isinstance(error, TransportError):
        return True
    if isinstance(error, APIError):
        return error.status == 429 or error.status >= 500
    return False


def post_created_nothing(error: KlingError) -> bool:
    """Whether a failed POST provably created no task: refused before sending, a 4xx, or a 503."""
    if isinstance(error, TransportError):
        return not error.request_sent
    if isinstance(error, APIError):
        return error.status in _POST_SAFE_STATUSES or 400 <= error.status < 500
    return False


def post_retryable(error: KlingError) -> bool:
    """Whether a failed POST may be sent again: it created nothing and trying again can help."""
    return post_created_nothing(error) and is_retryable(error)


def _http_date(value: str) -> float | None:
    """An HTTP date as Unix time; None if it is not one (or names no zone)."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return None if when.tzinfo is None else when.timestamp()


def parse_retry_after(
    value: str | None, *, now: float | None = None, date: str | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or bad.

    Args:
        value: the header's value.
        now: the current Unix time, to turn an HTTP date into seconds (the client passes its clock's).
        date: the answer's ``Date`` header. An HTTP date is counted from it when it is a valid date: both
            are the server's clock, so a client whose clock is off (a machine without NTP) waits what the
            server meant, not that plus its error; shared across workers, the error would hold them all.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = _http_date(value)
        if when is None:
            return None
        sent = _http_date(date) if date else None
        if sent is None:
            sent = SYSTEM_CLOCK.wall() if now is None else now
        seconds = when - sent
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)
