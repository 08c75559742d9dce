"""When to try a request again, and how long to wait first.

Status requests (GET) are safe to repeat; a POST creates (and bills) a video, so it is repeated only when
the failure proves that nothing was created: the connection never opened, or the server answered 429 or 503.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass

from ._errors import APIError, KlingError, TransportError

__all__ = ["RetryPolicy", "is_retryable", "parse_retry_after", "post_created_nothing", "post_retryable"]

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
        deadline: seconds after the first try past which no retry starts.
    """

    attempts: int = 8
    initial: float = 0.25
    maximum: float = 15.0
    multiplier: float = 2.0
    deadline: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts: at least 1")
        if self.initial < 0 or self.maximum < 0 or self.deadline < 0:
            raise ValueError("RetryPolicy: initial, maximum and deadline must not be negative")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier: at least 1")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before try ``attempt + 1``, after ``attempt`` failed tries (full jitter)."""
        exponent = min(attempt - 1, 64)  # past 2**64 the cap is `maximum` anyway; avoid float overflow
        cap = min(self.maximum, self.initial * self.multiplier**exponent)
        return (rng or random).uniform(0.0, cap)


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


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)
