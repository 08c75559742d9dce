"""The retry rules: backoff shape, Retry-After parsing, and which failures may be repeated."""

from __future__ import annotations

import random

import pytest

from kling_async import APIError, RetryPolicy, TransportError
from kling_async._clock import grown
from kling_async._errors import api_error
from kling_async._retry import (
    Attempts,
    is_retryable,
    parse_retry_after,
    post_created_nothing,
    post_retryable,
)
from tests.fakes import FakeClock


def test_backoff_stays_within_its_growing_cap() -> None:
    policy = RetryPolicy(initial=1.0, multiplier=2.0, maximum=5.0)
    rng = random.Random(1)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (50, 5.0)]:
        draws = [policy.backoff(attempt, rng) for _ in range(200)]
        assert min(draws) >= 0.0
        assert max(draws) <= cap
        assert max(draws) > 0.8 * cap  # full jitter spans the whole range


def test_backoff_survives_huge_attempt_numbers() -> None:
    assert RetryPolicy(maximum=3.0).backoff(10_000) <= 3.0


def test_backoff_survives_a_huge_multiplier() -> None:
    assert RetryPolicy(initial=1.0, multiplier=1e300, maximum=3.0).backoff(4) <= 3.0


@pytest.mark.parametrize(
    ("initial", "multiplier", "steps", "ceiling"),
    [
        (1.0, 2.0, 3, 100.0),
        (15.0, 1.5, 2, 30.0),
        (0.1, 2.0, 6, 10.0),
        (0.0, 2.0, 5, 10.0),
        (50.0, 2.0, 0, 30.0),
    ],
)
def test_a_grown_wait_is_the_capped_power(
    initial: float, multiplier: float, steps: int, ceiling: float
) -> None:
    assert grown(initial, multiplier, steps, ceiling) == min(ceiling, initial * multiplier**steps)


def test_a_wait_grown_past_what_a_float_holds_is_the_ceiling() -> None:
    assert grown(15.0, 1.5, 1751, 30.0) == 30.0  # 1.5**1751 overflows


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"attempts": 0}, "attempts"), ({"multiplier": 0.5}, "multiplier"), ({"deadline": -1}, "deadline")],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after("7") == 7.0


def test_retry_after_as_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_an_http_date_retry_after_is_counted_from_the_answers_date_header() -> None:
    """Both dates are the server's clock: a client clock 45 s behind does not add 45 s."""
    value, sent = "Wed, 21 Oct 2015 07:28:10 GMT", "Wed, 21 Oct 2015 07:28:08 GMT"
    assert parse_retry_after(value, now=1445412488.0 - 45, date=sent) == pytest.approx(2.0)


@pytest.mark.parametrize("sent", [None, "", "yesterday", "Wed, 21 Oct 2015 07:28:08"])
def test_without_a_usable_date_header_an_http_date_retry_after_is_counted_from_the_clock(
    sent: str | None,
) -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0, date=sent) == pytest.approx(
        10.0
    )


def test_a_date_header_does_not_change_a_retry_after_in_seconds() -> None:
    assert parse_retry_after("7", now=0.0, date="Wed, 21 Oct 2015 07:28:08 GMT") == 7.0


def test_retry_after_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf", "Wed, 99 Foo 2015"])
def test_unusable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_status_requests_retry_429_and_5xx(status: int) -> None:
    assert is_retryable(api_error(status, b"{}"))


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_status_requests_do_not_retry_client_errors(status: int) -> None:
    assert not is_retryable(api_error(status, b"{}"))


def test_status_requests_retry_transport_errors() -> None:
    assert is_retryable(TransportError("reset"))


@pytest.mark.parametrize("status", [429, 503])
def test_post_retries_only_answers_that_prove_nothing_was_created(status: int) -> None:
    assert post_retryable(api_error(status, b"{}"))


@pytest.mark.parametrize("status", [500, 502, 504])
def test_post_never_retries_a_5xx_that_may_have_created_a_task(status: int) -> None:
    error = api_error(status, b"{}")
    assert not post_retryable(error)
    assert not post_created_nothing(error)


def test_post_retries_a_connection_that_never_opened() -> None:
    assert post_retryable(TransportError("refused", request_sent=False))


def test_post_never_retries_a_connection_lost_after_sending() -> None:
    error = TransportError("reset by peer", request_sent=True)
    assert not post_retryable(error)
    assert not post_created_nothing(error)


def test_a_400_created_nothing_but_is_not_worth_repeating() -> None:
    error: APIError = api_error(400, b'{"message": "bad"}')
    assert post_created_nothing(error)
    assert not post_retryable(error)


def test_the_retry_deadline_runs_from_the_first_try_s_start_not_from_the_wait_before_it() -> None:
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(attempts=3, initial=0.0, deadline=10.0), clock)
    clock.time += 100.0  # the first try queued behind a batch's others for the rate
    attempts.start()
    clock.time += 9.0
    assert attempts.next_delay() == 0.0


def test_no_retry_starts_once_the_deadline_after_the_first_try_s_start_has_passed() -> None:
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(attempts=3, initial=0.0, deadline=10.0), clock)
    attempts.start()
    clock.time += 10.5
    assert attempts.next_delay() is None


def test_a_try_that_failed_by_itself_is_retried_ahead_of_first_tries() -> None:
    attempts = Attempts(RetryPolicy(attempts=3, initial=0.0), FakeClock())
    attempts.start()
    assert attempts.next_delay() == 0.0  # a 503, a lost connection
    assert attempts.ahead


def test_a_try_refused_by_the_rate_is_retried_in_its_turn() -> None:
    attempts = Attempts(RetryPolicy(attempts=3, initial=0.0), FakeClock())
    attempts.start()
    assert attempts.next_delay(paced_wait=1.0) == 0.0  # a 429: the limiter paces it
    assert not attempts.ahead
