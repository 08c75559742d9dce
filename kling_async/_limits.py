"""The client's one limiter: every API request (create, status, list) passes through it.

Three things are limited here:

* the request **rate**, with a token bucket. A rate the user gives is a ceiling, and a single 429 does not
  lower it. Without a given rate the limiter opens at 50 requests a second and raises the pace, while it
  holds requests back, until the first 429 (past 20,000 a second it stops pacing). The requests refused
  when the server's bucket runs dry are those on the wire then, whatever the pace: while at most four are
  (a near server, once an answer has come back), the pace doubles twelve times a second; with more (a
  distant server), only once a second; before the first answer, and for a rate shared by workers through
  PostgreSQL (which cannot see their wires), four times a second. Once the server has let about 90
  through, requests queued together leave in small clumps (``_OPEN_CLUMP``). From the first 429 on it
  finds the server's limit by itself.
  A burst spent from a full bucket refills only from its first answer on, and a token short: the
  server's bucket began refilling when the burst's first request reached it, a little after ours would
  have, and a token ahead absorbs two requests the server handles together.

  The server is taken to be a token bucket too: ``R`` requests a second, up to ``B`` saved up. What it
  accepted between two moments bounds ``R`` from below, and no guess is needed for it:

  - since a 429 (the server's bucket was empty then): ``R >= accepted / elapsed``;
  - since any moment ``s`` (its bucket held at most ``B`` then): ``R >= (accepted - B) / elapsed``, where
    ``B`` is bounded by what the server let through before its first 429, and more tightly, once ``R`` is
    bounded, by any drain of its bucket that ended in a refusal after a moment it was full: ``B``
    exceeds what was accepted from that moment on, plus the refused request, less what ``R`` refilled
    meanwhile (``_burst_bound``). A drain between two 429 events was full at some moment once ``R`` is
    above what it accepted over its length; the opening's, if the key was idle before it. Another client
    may have used the key just before (or the server slowed since): the first 429 that shows a bound
    taken with the opening's drain over the server's rate ends its use (``_opening_disproved``), and the
    drains between 429s bound the burst from then on.

  On a 429 the limiter takes the best such bound over windows of at least ``_MIN_SPAN`` seconds, reaching
  back to the latest earlier 429 at least that old (not further: a slower limit that has just begun to
  bind, such as a long-window average behind a short-window burst, is what the bound must measure), and:

  - when the bound is well below the rate that drew the 429, paces at the bound and returns quickly
    half-way (``_BISECT``) towards that rate: the server's rate lies between the two;
  - when the bound rose from the previous one to within ``_NEAR`` of that rate, the search has closed in:
    the limiter paces at the bound and probes above it slowly, since one more 429 to halve a gap of a
    few percent would cost a ``Retry-After``'s pause of the whole client;
  - when the bound is close to that rate or to the previous bound (``_CONFIRM``), it is the server's
    rate: the limiter paces at it and probes above it slowly, ``_PROBE`` per second, quartered each time,
    because every 429 can pause the whole client for a ``Retry-After``;
  - with no bound yet (the first 429 of an unpaced client), starts from what the server let through
    before it (its burst, most likely) and doubles every second (``_SEARCH``) until the next 429;
  - at that next 429, the opening's drain of the server's bucket and the search's bound its rate from
    above too, at rates where the bucket was provably full again during the search (``_upper_bound``):
    within ``_CLOSED`` of the lower bound, the limiter paces half-way between the two and probes
    slowly; else the return stops at it;
  - otherwise cuts the rate to ``DECREASE`` times itself.

  A given rate is kept unless a bound shows the server accepts less. A ``Retry-After`` pauses the whole
  client until it has passed. The 429s of requests already on the wire at a cut, and any within
  ``_MIN_GROUP`` seconds of it, belong to the same event. The client's own burst is spent once (after a
  429 it is 1), and its bucket holds ``_SLACK`` more, so that a late wake-up does not lower the rate sent.

* the requests **on the wire** at once (``max_concurrency``);
* **fairness**: submissions and status requests wait in two lanes whose heads take turns for the next
  token, so neither kind can starve the other; within a lane the order is first come, first served.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

from anyio.lowlevel import checkpoint_if_cancelled

from ._clock import SYSTEM_CLOCK, Clock
from ._errors import JournalError

__all__ = ["Lane", "Limiter", "Pace", "SharedPace", "rate_limit_headers"]

log = logging.getLogger("kling_async")

DECREASE = 0.8
_DECREASE_SPACING = 1.0  # seconds: the longest a 429 event lasts
_MIN_GROUP = 0.25  # seconds: the shortest
_RECOVER = 0.5  # per second, the share of the gap to the recovery target closed while below it
_SEARCH = 2.0  # per second, the growth while no bound on the server's rate is known
_PROBE = 0.004  # per second, the first growth above a bound; quartered by each 429 that confirms the bound
_MIN_PROBE = 0.0002
_CONFIRM = 0.97  # a bound this close to the rate that drew the 429, or to the last bound, confirms it
_NEAR = 0.85  # a bound that rose this close to the rate that drew the 429 is kept, not bisected
_BISECT = 0.5  # after a bound below the rate that drew the 429, recover this share of the gap
_CLOSED = 0.95  # a lower bound on the server's rate this close to an upper bound: the rate is found
_TOLD_DIP = 0.95  # a 429 without Retry-After at a given rate: pace this much lower, then recover
_MIN_RATE = 0.2
_ROUNDS = 12  # a tighter burst bound gives a higher rate bound: at most this many rounds (8 seen)
# A 429 at most this share above the last lower bound, after a Retry-After's pause, shows the bound was over
# the server's rate: a token bucket refills in the pause and never refuses a steady pace at or under its
# rate. The probe above a confirmed bound grows 0.1% a second or less: a server of 221/s with a burst of 3
# (a fake one, found right) drew its probe's 429 0.7% above the bound; 0.2% is two seconds of probing.
_AT_BOUND = 0.002
_SPLITS = 12  # halvings of the interval an upper bound on the server's rate is sought in
# Not told the rate, a client opens at _OPEN requests a second and doubles twelve times a second until the
# first 429: paced from the first request, so that few requests are on the wire to be refused when the
# server's bucket runs dry, yet a fast server is reached within a second. Past _OPEN_MAX it stops pacing (no
# server limit in sight). What a 429 event costs is the requests on the wire when the bucket runs dry, not
# the growth: with at most _OPEN_WIRE of them, growing faster costs nothing more (against the bench_rate
# servers on loopback, the same 429 shares within one request), and on this VM every wake-up of an idle
# event loop costs about a millisecond of CPU, so a slow opening against a fast server costs CPU
# (bench_cpu's gather: 0.91x its CPU and 0.7x its wall time with twelve doublings a second, against four).
_OPEN = 50.0
_OPEN_CLEAR = 4096.0  # per second, while at most _OPEN_WIRE requests are on the wire
# A rate shared through a row (``_rate_pg``) cannot see the workers' wires, nor can a client before its first
# answer: they double four times a second.
_OPEN_GROWTH = 16.0  # per second
_OPEN_SLICE = 0.05  # seconds: while opening, the bucket holds this long's worth of requests (if more)
_OPEN_MAX = 20_000.0
# Past this many requests on the wire the opening grows only as a search does: answers come back slowly (a
# distant server), and every request sent between the server's bucket running dry and its first 429
# coming back is refused.
_OPEN_WIRE = 4
# ... or this share of the answers the server accepted so far, if more: the requests of a 429 event against
# a server that let thousands through are as small a share of the answers as four of a few hundred. Against
# a server with no limit in sight (bench_cpu's), whose answers fill a wire of 16 at 1,400 a second on
# loopback, the opening then keeps doubling twelve times a second.
_OPEN_SHARE = 0.01
# While opening, requests queued together leave together: a wait for a token lasts until as many are due
# as wait (at most a slice's worth), because on a small VM every wake-up of an idle event loop costs about a
# millisecond of CPU, several times what a request costs. A clump is at most
# ``(answers accepted / _OPEN_CLUMP) ** 2`` requests: one at a time until the server has let 90 through (4
# at 128, 25 at 320), so a server whose first 429 comes sooner sees the same one-by-one opening: each
# request of a clump that meets its bucket running dry would draw a 429, and a clump at the first 429
# moves where the search after it starts (against 100/s with a burst of 20, whose first 429 comes after
# about 70 answers, clumps from 45 answers on cost the makespan benchmark 2-3%).
_OPEN_CLUMP = 64.0
_MIN_WAIT = 1e-6  # seconds
# Waits for a token or a pause longer than this end when the caller's halt comes (``Halting``); shorter
# ones run out first (their cancel scope would cost more than the wait is worth).
_HALTABLE = 0.05  # seconds
_GROWTH_SPAN = 60.0  # seconds: the most idle time exponential growth counts (more would overflow a float)
_HOLD_MAX = 1.0  # seconds: the longest a burst's first answer is waited for before the bucket refills
_SLACK = 0.5  # tokens
_LATE = 0.002  # seconds: at high rates the slack is this long's worth of tokens, if more than _SLACK
_MIN_SPAN = 0.5  # seconds: the shortest window a bound is taken over
_HORIZON = 30.0  # seconds: the longest
_DECREASES = 8  # the times of the last few cuts, where windows for a bound start
_WINDOW = 32  # send times kept to measure the rate being sent
_ACCEPTED_WINDOW = 8192  # answer times kept to bound the rate the server accepts
# A hostile server could send hundreds of such headers, or 8 KB values: events and reprs keep this much.
_MAX_RATE_HEADERS = 16
_MAX_RATE_HEADER_VALUE = 200


def rate_limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The rate-limit headers among ``headers``: ``Retry-After``, ``RateLimit*`` and ``X-RateLimit*``.

    Names are kept as the server spelt them; at most 16 headers, each value cut to 200 characters.
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower == "retry-after" or lower.startswith(("ratelimit", "x-ratelimit")):
            found[str(name)] = value[:_MAX_RATE_HEADER_VALUE]
            if len(found) == _MAX_RATE_HEADERS:
                break
    return found


def _drained(answers: Sequence[float], rate: float) -> float:
    """The most of ``answers`` (times before a refusal, so <= 0, oldest first) over a stretch ending at
    it, less what ``rate`` refilled over that stretch: a bucket that let them through held this much."""
    return max(count + rate * a for count, a in enumerate(reversed(answers), start=1))


def _filled(emptied: float, answers: Sequence[float], rate: float, capacity: float) -> bool:
    """Whether a bucket of at most ``capacity``, refilled at ``rate``, that was empty at ``emptied`` and let
    ``answers`` through since (times before a refusal, so <= 0, oldest first), was full at some moment
    before the refusal.

    Followed as a bucket of ``capacity`` that held nothing at ``emptied``: what it lacks of full falls by
    the rate and grows by one an answer, and a smaller or fuller bucket never lacks more, so when this one
    is full, so is the server's."""
    lacking, last = capacity, emptied
    for at in answers:
        lacking -= rate * (at - last)
        if lacking <= 0:
            return True
        lacking += 1
        last = at
    return lacking - rate * -last <= 0


@dataclass(slots=True)
class Pace:
    """The rate requests are sent at, and how it moves: down after a 429, back up while nothing is refused.

    One rule for both the client's own limiter and the rate workers share through PostgreSQL
    (``_rate_pg``), which keeps these fields in a row. ``rate`` None: not paced (no rate given, no 429 yet).
    """

    ceiling: float | None  # a rate the user gave: never exceeded
    rate: float | None
    target: float | None  # where the rate recovers to quickly after a cut; None: no such rate is known
    searching: bool = False  # no bound on the server's rate yet: the rate doubles every second
    probe: float = _PROBE  # the growth per second above a bound
    bound: float | None = None  # the last lower bound on the server's rate
    opening: bool = False  # no rate given and no 429 yet: the rate grows as the opening's (``_OPEN``)

    @classmethod
    def given(cls, requests_per_second: float | None) -> Pace:
        """The pace before any 429: the given rate, a ceiling to return to; None: the opening's pace."""
        if requests_per_second is None:
            return cls(ceiling=None, rate=_OPEN, target=None, opening=True)
        return cls(ceiling=requests_per_second, rate=requests_per_second, target=requests_per_second)

    def grow(
        self, elapsed: float, *, held: bool = True, paused: float = 0.0, crowded: bool | None = None
    ) -> None:
        """Raise the rate: as the opening's, fast towards the target after a cut, doubling while
        searching, else slowly. Past the opening's ``_OPEN_MAX`` the rate is None: not paced.

        ``held``: whether the pace held requests back over ``elapsed``. Time it did not (the client idle, or
        its wire full) asked the server for nothing more, so it raises the rate only towards a target, a
        rate already known or chosen after a cut (the server's bucket refills all the same), never above
        one (the opening, the search, the probe), as TCP leaves alone a window the application does not
        fill (RFC 7661): else a client idle for ten seconds after a 429 would send its next burst at
        1,024 times its pace.

        ``paused``: the first part of ``elapsed`` spent in a Retry-After's pause, which counts as not held
        whatever ``held`` says: the server held the requests back, not the pace (a search that doubled
        over a 30 s pause would send unpaced when it ends, into the next 429 and its pause).

        ``crowded``: whether more requests are on the wire than a 429 event may cost (``_OPEN_WIRE``),
        which sets the opening's growth (``_SEARCH`` if so, else ``_OPEN_CLEAR``); None, when the wire says
        nothing (a shared rate, or no answer yet): ``_OPEN_GROWTH``."""
        if paused > 0:
            self._grow(paused, held=False, crowded=crowded)
        self._grow(elapsed - paused, held=held, crowded=crowded)

    def _grow(self, elapsed: float, *, held: bool, crowded: bool | None) -> None:
        if self.rate is None or elapsed <= 0:
            return
        returning = not self.opening and self.target is not None and self.rate < self.target
        if not (held or returning):
            return
        elapsed = min(elapsed, _GROWTH_SPAN)
        if self.opening:
            if crowded is None:
                rate = self.rate * _OPEN_GROWTH**elapsed
            else:
                rate = self.rate * (_SEARCH if crowded else _OPEN_CLEAR) ** elapsed
            self.rate, self.opening = (rate, True) if rate < _OPEN_MAX else (None, False)
            return
        target = self.target
        if target is not None and self.rate < target:
            closer = self.rate + (target - self.rate) * min(1.0, _RECOVER * elapsed)
            self.rate = min(closer, self.rate * _SEARCH**elapsed)
            if target - self.rate < 0.01 * target:
                self.rate = target
        elif self.searching:
            self.rate *= _SEARCH**elapsed
        else:
            self.rate *= 1.0 + self.probe * elapsed
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling)

    def after_429(
        self,
        *,
        paced: float | None,
        bound: float | None,
        paused: bool,
        start: float,
        fell: float = 1.0 - _CONFIRM,
        above: float | None = None,
    ) -> None:
        """Set the rate after a 429 drawn at ``paced`` (None: unknown), given a lower bound on the server's
        rate (None: none yet); ``start`` is where an unpaced sender begins (the server's burst, likely).

        ``fell``: not told a rate, a bound at most this share below the last one confirms it, as the same
        bound would (the bounds of a rate shared through a row are coarser than a lone client's).

        ``above``: an upper bound on the server's rate below ``paced``, if one is known
        (``Limiter._upper_bound``)."""
        self.rate = self._next_rate(paced, bound, paused, start, fell, above)

    def _next_rate(
        self,
        paced: float | None,
        bound: float | None,
        paused: bool,
        start: float,
        fell: float,
        above: float | None,
    ) -> float:
        ceiling = self.ceiling
        opening, self.opening = self.opening, False
        if bound is not None:
            self.searching = False
            drew = paced if paced is not None else bound
            previous, self.bound = self.bound, bound
            # Told a rate, a bound that fell returns to the last one (below), however coarse the bounds.
            fall = fell if ceiling is None else 1 - _CONFIRM
            steady = previous is not None and (
                -fall * previous <= bound - previous <= (1 - _CONFIRM) * previous
            )
            rose = previous is not None and bound > previous
            if rose and not steady and bound >= _NEAR * drew:
                # A bound that rose to near the rate that drew the 429: the search has closed in on the
                # server's rate, and one more 429 (a Retry-After's pause) would cost more than the gap.
                self.probe = _PROBE / 4
                self.target = None
                rate = bound
            elif steady or bound >= _CONFIRM * drew:
                # The same bound twice, or a 429 right at it: that is the server's rate. Sit at it and
                # probe above it more slowly each time.
                self.probe = max(_MIN_PROBE, self.probe / 4)
                self.target = None
                rate = min(bound, drew)
            elif above is not None and bound >= _CLOSED * above:
                # The server's rate is bounded from above too, closely: the search has closed in. Pace
                # half-way between the bounds and probe above slowly.
                self.probe = _PROBE / 4
                self.target = None
                rate = bound + (above - bound) * _BISECT
            else:
                # The server's rate lies between the bound and the rate that drew the 429 (or ``above``);
                # return quickly to part of the way, so the next 429 (if any) comes from a pace close to
                # the limit.
                self.probe = _PROBE
                self.target = bound + (drew - bound) * _BISECT
                if above is not None:
                    self.target = min(self.target, above)
                if ceiling is not None:
                    # Under a given rate, a first bound is measured mostly over the first 429's pause:
                    # return near the given rate, and let the next 429 (if any) measure again. A later
                    # bound below the one before is mostly its own window's pause (two 429s a second or
                    # two apart): return at least to the one before, which still holds.
                    floor = _TOLD_DIP * ceiling if previous is None else previous
                    self.target = max(self.target, floor)
                rate = bound
            if ceiling is None or rate < _CONFIRM * ceiling:
                return max(_MIN_RATE, rate)
        if ceiling is not None:
            # A given rate is kept: one 429 is jitter at the server, or its burst spent twice. Without a
            # pause its bucket stays empty, so pace a little under the rate while it refills.
            self.target = ceiling
            return ceiling if paused else _TOLD_DIP * ceiling
        if self.rate is None or opening:
            # Unpaced or opening until now: start from what the server accepted (its burst, most likely)
            # and double from there until a second 429 bounds the server's rate.
            self.searching = True
            return max(_MIN_RATE, min(start, paced or start) * DECREASE)
        # No bound: a plain multiplicative cut, with nothing to return to.
        self.target = None
        return max(_MIN_RATE, self.rate * DECREASE)


class SharedPace(Protocol):
    """A rate shared with other workers (``_rate_pg.SharedRate``): while the limiter shares it, every
    request takes a slot of its schedule instead of a token of the limiter's own bucket."""

    async def take(self) -> float:
        """Reserve a slot; the seconds to wait before sending. Raises ``JournalError``."""
        ...

    async def throttled(self, retry_after: float | None) -> None:
        """A request was answered 429. Raises ``JournalError``."""
        ...

    async def held(self) -> float:
        """The seconds a Retry-After any worker got still holds them all. Raises ``JournalError``."""
        ...


class Halting(Protocol):
    """A caller's word that its request may no longer leave (a batch's ``stop_submitting``)."""

    @property
    def halted(self) -> bool: ...

    def interruptible(self) -> AbstractContextManager[object]:
        """A block the word, once given, ends at once."""
        ...


class Halted(Exception):
    """``acquire`` gave up its wait: the caller's ``halt`` came. Nothing was taken (place, token)."""


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


_OTHER = {Lane.SUBMIT: Lane.STATUS, Lane.STATUS: Lane.SUBMIT}


class _Queue(deque[asyncio.Future[None]]):
    """One lane's waiters, in order: its first ``retries`` are retries (they queue ahead of first tries)."""

    __slots__ = ("retries",)

    def __init__(self) -> None:
        super().__init__()
        self.retries = 0


class _Wire:
    """The places on the wire (``max_concurrency``): ``value`` are free, and waiters queue by lane.

    A freed place goes straight to the next waiter (its future is set: one wake-up), the lanes taking
    turns when both wait. Waiting through a lane lock, the bucket lock and a semaphore cost three
    wake-ups a request whenever the wire was full, which it is most of the time in a large batch.
    """

    __slots__ = ("_turn", "_waiting", "queued", "value")

    def __init__(self, places: int) -> None:
        self.value = places
        self.queued = 0
        self._waiting: dict[Lane, _Queue] = {lane: _Queue() for lane in Lane}
        self._turn = Lane.SUBMIT

    async def take(self, lane: Lane, *, checked: bool = False, retry: bool = False) -> None:
        """Wait for a place, after the waiters already queued (a ``retry``: after the retries only).

        A submission checks for cancellation first (unless ``checked``: its caller checks after this):
        a POST let go after its caller was cancelled would still be sent. A status request does not (a GET
        sent for a cancelled caller is harmless, and the caller is cancelled at its first wait for the
        answer): the check walks every cancel scope around the task, the largest cost of a status
        request's way through the limiter.
        """
        if lane is Lane.SUBMIT and not checked:
            await checkpoint_if_cancelled()
        if self.value > 0 and not self.queued:
            self.value -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        queue = self._waiting[lane]
        if retry:
            # A retry is a request already late (its try failed), and its RetryPolicy deadline runs:
            # behind a batch's queue of first tries it would outwait the deadline and fail an item that
            # one more try would have carried.
            queue.insert(queue.retries, waiter)
            queue.retries += 1
        else:
            queue.append(waiter)
        if not self.queued:
            self._turn = lane  # the first to wait goes first
        self.queued += 1
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the place came as the wait was cancelled: it goes to the next waiter
            else:
                try:
                    queue.remove(waiter)
                    self.queued -= 1
                    if retry:
                        queue.retries -= 1
                except ValueError:
                    pass  # ``release`` already dropped it
            raise

    def release(self, lane: Lane | None = None) -> None:
        """Give a place back: to the next waiter (the lanes take turns; a place held by a request of
        ``lane`` goes to the other lane first), or to the free ones."""
        turn = self._turn if lane is None else _OTHER[lane]
        for lane in (turn, _OTHER[turn]):
            queue = self._waiting[lane]
            while queue:
                waiter = queue.popleft()
                self.queued -= 1
                if queue.retries:
                    queue.retries -= 1
                if waiter.done():
                    continue  # cancelled: its task is leaving
                waiter.set_result(None)
                self._turn = _OTHER[lane]
                return
        self.value += 1


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
        self._pace = Pace.given(requests_per_second)
        self._opened_at: float | None = None  # the opening's first request
        # The answers the server accepted from the opening's first request to its first 429 (times from
        # that 429, all <= 0): with a bound on its rate, they bound its burst (``_burst_bound``).
        self._opening_answers: tuple[float, ...] = ()
        self._burst = float(burst if burst is not None else 1)
        self._tokens = self._burst
        # A burst spent from a full bucket: the server's own bucket begins refilling only when the first
        # of it arrives, a little after this one would. So this bucket refills from the burst's first
        # answer on (the server has seen a request by then), a token short, so that the server stays a
        # token ahead of what is sent: two requests its event loop handles together draw no 429. No
        # answer within _HOLD_MAX (a server that does not answer) releases it all the same.
        self._held_since: float | None = None
        self._stamp = clock.now()
        self._blocked_until = 0.0
        # A Retry-After longer than this pauses the client only this long (a hostile or broken server
        # must not freeze every request for a day; the request that got it fails instead).
        self._max_pause = max_pause
        self._server_burst: float | None = None
        # Whether the opening's drain still bounds the server's burst (``_opening_disproved``).
        self._opening_trusted = True
        self._burst_unsettled = 0
        self._last_decrease = -math.inf
        self._decreases: deque[float] = deque(maxlen=_DECREASES)
        self._resumed = -math.inf
        self._unsettled = 0  # answers still due to requests on the wire at the last cut
        self._sent: deque[float] = deque(maxlen=_WINDOW)
        self._accepted: deque[float] = deque(maxlen=_ACCEPTED_WINDOW)
        self._wire = _Wire(max_concurrency)
        self.max_concurrency = max_concurrency
        # Paced, one request at a time takes its place on the wire and its token, the lanes taking turns:
        # a wire of one place. Two locks (one per lane, then one for the bucket) did the same at the cost
        # of two more waits, each looking up the current task and walking its cancel scopes.
        self._gate = _Wire(1)
        self.rate_limited = 0
        self._waiting = 0  # requests queued for a token (see ``_OPEN_CLUMP``)
        # Shared rates in use (a batch each), the latest first; a failing one leaves the own bucket in charge.
        self._shared: list[SharedPace] = []
        self._shared_failing = False
        # The rate-limit headers of the last 429 that carried any, for the repr (and whoever debugs).
        self.last_rate_limit_headers: dict[str, str] = {}

    def __repr__(self) -> str:
        pace = self.rate
        rate = "unpaced" if pace is None else f"{pace:.2f}/s"
        if self._pace.opening:
            rate += " (opening)"
        on_wire = self.max_concurrency - self._wire.value
        told = f" headers={self.last_rate_limit_headers}" if self.last_rate_limit_headers else ""
        wire = f"{on_wire}/{self.max_concurrency}"
        return f"<Limiter rate={rate} on_wire={wire} 429s={self.rate_limited}{told}>"

    def note_rate_limit_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Keep the rate-limit headers of a 429 answer (when it has any) and return them."""
        found = rate_limit_headers(headers)
        if found:
            self.last_rate_limit_headers = found
        return found

    @property
    def rate(self) -> float | None:
        """The current pace in requests per second (the opening's before any 429), or None while unpaced."""
        return self._pace.rate

    def slot(self, lane: Lane) -> _Slot:
        """``async with limiter.slot(lane):`` holds one place on the wire, entered once the rate allows."""
        return _Slot(self, lane)

    async def acquire(self, lane: Lane, *, retry: bool = False, halt: Halting | None = None) -> None:
        """Wait for a place on the wire and the rate's permission; pair with ``release``.

        A ``retry`` waits ahead of its lane's first tries (the caller decides: ``Attempts.ahead``).

        Raises:
            Halted: ``halt`` came while this request waited out a ``Retry-After`` pause or a token more
                than ``_HALTABLE`` away (a shared rate's slot, once reserved, stays spent).
        """
        wire = self._wire
        if self._unpaced():
            # Unpaced: no token to wait for, so no bucket to queue for; the lanes take turns at the wire.
            await wire.take(lane, retry=retry)
            now = self._clock.now()
            if self._unpaced() and now >= self._blocked_until:
                self._sent.append(now)
                return
            wire.release()  # paced while it waited (a 429): the bucket decides, in turn
        self._waiting += 1
        try:
            gate = self._gate
            await gate.take(lane, checked=True, retry=retry)  # the wire checks, after any wait here
            try:
                await wire.take(lane, retry=retry)
                try:
                    await self._take_token(halt)
                except BaseException:
                    wire.release()
                    raise
            finally:
                gate.release(lane)
        finally:
            self._waiting -= 1

    def _unpaced(self) -> bool:
        """No rate to keep: none given, past the opening with no 429, and no shared rate in use."""
        return self._pace.rate is None and not self._shared

    def release(self) -> None:
        """Give back the place on the wire."""
        self._wire.release()

    def unused(self) -> None:
        """Give back what an ``acquire`` took for a request dropped before it left: its place on the wire
        and its token, so that the next request waiting has its turn at once. (A shared rate's slot stays
        spent: the other workers' schedule cannot be wound back.)"""
        self._wire.release()
        if self._sent:
            self._sent.pop()
        if self._pace.rate is not None and not self._shared:
            self._tokens += 1.0

    @contextmanager
    def sharing(self, shared: SharedPace) -> Iterator[None]:
        """Within the block, pace requests by ``shared`` (a rate other workers use too); the cap on
        requests on the wire and the lanes stay this client's. If the shared rate fails (its database is
        down), requests are paced by this limiter's own bucket until it answers again."""
        self._shared.append(shared)
        try:
            yield
        finally:
            self._shared.remove(shared)

    async def _take_token(self, halt: Halting | None) -> None:
        if self._shared and await self._take_shared(self._shared[-1], halt):
            return
        woke = False  # from a wait of its own here: a late wake-up is made up for
        while True:
            now = self._clock.now()
            if now < self._blocked_until:
                await self._wait(self._blocked_until - now, halt)
                woke = True
                continue
            rate = self._refill(now, woke)
            if rate is None:
                break
            # A hair under a whole token counts: float time cannot always advance by what is missing.
            if self._tokens >= 1.0 - 1e-9:
                if self._tokens >= self._burst > 1 and self._held_since is None:
                    self._held_since = now
                self._tokens = max(0.0, self._tokens - 1.0)
                break
            # At least a microsecond: at tens of thousands a second, what is missing can be a wait too
            # short to move a float clock, and then no token would ever be earned.
            wait = max(_MIN_WAIT, (self._due(rate) - self._tokens) / rate)
            if halt is None or wait <= _HALTABLE:  # the usual wait, without a frame more
                await self._clock.sleep(wait)
            else:
                await self._wait(wait, halt)
            woke = True
        self._sent.append(self._clock.now())

    async def _wait(self, seconds: float, halt: Halting | None) -> None:
        """Sleep; a long sleep ends with ``Halted`` when ``halt`` comes (or came)."""
        if halt is None or seconds <= _HALTABLE:
            await self._clock.sleep(seconds)
            return
        with halt.interruptible():
            await self._clock.sleep(seconds)
        if halt.halted:
            raise Halted

    def _due(self, rate: float) -> float:
        """The tokens a wait for one lasts until: one, or while opening, one for each request waiting, as
        far as ``_OPEN_CLUMP`` and the bucket's slice allow."""
        if not self._pace.opening:
            return 1.0
        shown = (len(self._accepted) / _OPEN_CLUMP) ** 2
        return max(1.0, min(float(self._waiting), shown, rate * _OPEN_SLICE))

    async def _take_shared(self, shared: SharedPace, halt: Halting | None) -> bool:
        """Wait for a slot of the shared rate; False when it cannot be had (then the own bucket paces)."""
        try:
            wait = await shared.take()
        except JournalError as exc:
            self._shared_failed(exc)
            return False
        if self._shared_failing:
            self._shared_failing = False
            log.warning("the shared rate answers again; requests follow it")
        # A Retry-After this client saw holds it at once, before the other workers' reach the row.
        wait = max(wait, self._blocked_until - self._clock.now())
        if wait > 0:
            await self._wait(wait, halt)
            # The slot was reserved before the wait: a 429 another worker got meanwhile holds this one too
            # (else each worker's reserved slot draws a 429 of its own while the server's bucket is empty).
            try:
                held = await shared.held()
            except JournalError as exc:
                self._shared_failed(exc)
                held = 0.0
            held = max(held, self._blocked_until - self._clock.now())
            if held > 0:
                await self._wait(held, halt)
        self._sent.append(self._clock.now())
        return True

    def _shared_failed(self, exc: JournalError) -> None:
        if not self._shared_failing:
            self._shared_failing = True
            log.warning("the shared rate cannot be used; this client paces its own requests: %s", exc)

    async def refused(self, retry_after: float | None) -> None:
        """A request got 429: adapt this limiter (``on_rate_limited``) and the shared rate, if any."""
        self.on_rate_limited(retry_after)
        if self._shared:
            try:
                await self._shared[-1].throttled(retry_after)
            except JournalError as exc:
                self._shared_failed(exc)

    def _refill(self, now: float, woke: bool) -> float | None:
        """Add the tokens earned since the last call and let the rate grow; the rate now (None: unpaced).

        ``woke``: for a request that waited here for its token, which may then hold up to ``_SLACK`` more
        than the burst, or ``_LATE`` seconds' worth at high rates, as may the requests right behind it
        (see below)."""
        if self._pace.opening:
            return self._open(now, woke)
        rate = self._pace.rate
        if rate is None:
            return None
        if self._held_since is not None and now - self._held_since >= _HOLD_MAX:
            self._release(now)
        elapsed = 0.0 if self._held_since is not None else max(0.0, now - self._stamp)
        self._stamp = now
        # Up to _SLACK of a token more than the burst for a request that waited for its token: a wake-up
        # that comes late (a busy event loop) is made up for by the next request, instead of lowering the
        # rate actually sent. At high rates a trip through a busy event loop can take several tokens'
        # time, and a half token would lose the rest (told 2,000/s, about 1,600 left): then the slack is
        # _LATE's worth, and the requests right behind the late one (within _LATE) may spend it. Not after
        # a quiet spell, however it came (nothing to send, or the wire full): then the bucket holds the
        # burst, no more, or the second request of the next two would go half an interval after the
        # first, and a server without a burst refuses it. A Retry-After's pause earns one token, for a
        # request as it ends, not the slack, for the same reason.
        earned = min(elapsed, max(0.0, now - self._blocked_until))
        if earned < elapsed:
            self._tokens = max(self._tokens, 1.0)
        room = self._burst + max(_SLACK, rate * _LATE) if woke or elapsed <= _LATE else self._burst
        self._tokens = min(room, self._tokens + earned * rate)
        # Time this request did not wait for its token (idle, or the wire full) did not hold it back.
        self._pace.grow(elapsed, held=woke, paused=elapsed - earned)
        return self._pace.rate

    def _open(self, now: float, woke: bool) -> float | None:
        """The opening pace's refill (see ``_OPEN``); None once it is past ``_OPEN_MAX``. ``woke``: for a
        request that waited here for its token."""
        rate = self._pace.rate
        assert rate is not None  # the opening's
        if self._opened_at is None:
            self._opened_at = now
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        # The bucket holds a slice of time's worth: requests asked for together need no wait each.
        room = max(self._burst + _SLACK, rate * _OPEN_SLICE)
        self._tokens = min(room, self._tokens + elapsed * rate)
        # Until an answer has come back, a wire with few requests on it says nothing of how far the server
        # is: a distant one fills it only after a round trip, which the fast growth would spend running ahead.
        on_wire = self.max_concurrency - self._wire.value
        accepted = len(self._accepted)
        seen = on_wire > _OPEN_WIRE or accepted > 0
        # A 429 event costs about the requests on the wire when the bucket runs dry: _OPEN_WIRE, or once
        # the server has accepted many, _OPEN_SHARE of what it accepted (never more of the run's answers).
        crowded = on_wire > max(_OPEN_WIRE, accepted * _OPEN_SHARE) if seen else None
        # The pace held requests back if this one waited for its token, or others queue behind it: so a
        # client idle after a few requests is still opening when a burst comes.
        self._pace.grow(elapsed, held=woke or self._waiting > 1, crowded=crowded)
        return self._pace.rate

    def _release(self, now: float) -> None:
        """Refill again after a burst from a full bucket: from now on, a token short (see ``__init__``)."""
        self._held_since = None
        self._stamp = now
        self._tokens -= 1.0

    def sending_rate(self) -> float | None:
        """The rate of the last few requests, measured; None until there are enough."""
        if len(self._sent) < 4:
            return None
        span = self._sent[-1] - self._sent[0]
        return (len(self._sent) - 1) / span if span > 0 else None

    def on_success(self) -> None:
        """A request was answered (not 429): what the server accepts is what the rate adapts to."""
        now = self._clock.now()
        self._accepted.append(now)
        if self._held_since is not None:
            self._release(now)
        if self._unsettled:
            self._unsettled -= 1
            if self._burst_unsettled:
                self._burst_unsettled -= 1
                assert self._server_burst is not None
                self._server_burst += 1

    def accepted_rate(self) -> float | None:
        """A lower bound on the server's sustained rate from the answers since an earlier 429, or None.

        None before the first 429, or within ``_MIN_SPAN`` seconds of it.
        """
        now = self._clock.now()
        # The latest cut at least _MIN_SPAN ago: the server's bucket was empty then.
        since = next((t for t in reversed(self._decreases) if now - t >= _MIN_SPAN), None)
        if since is None:
            return None
        drains = self._drains()
        # A bucket that let a request through held a token then: the burst is at least one, even when
        # the first request was refused (the key was in use before this client opened).
        burst = (
            max(1.0, self._server_burst) if self._opening_trusted and self._server_burst is not None else None
        )
        best = self._bound(now, since, burst)
        if best is None and burst is None and self._kept_since(since):
            # No burst to take windows with, and the cut is past the horizon: the whole stretch since it
            # (the server's bucket empty then) bounds the rate all the same, if slow to see a change.
            best = sum(1 for t in self._accepted if t > since) / (now - since) or None
        # A tighter burst gives a higher bound, which gives a tighter burst: rounds until it settles.
        for _ in range(_ROUNDS):
            if best is None:
                break
            tighter = self._burst_bound(best, drains)
            if tighter is None or (burst is not None and tighter >= burst - 0.5):
                break
            burst = tighter
            best = max(best, self._bound(now, since, burst) or best)
        return best

    def _drains(self) -> list[tuple[tuple[float, ...], float]]:
        """The drains of the server's bucket between two 429 events whose answers are all kept: each its
        answers (times from the refusal that ended it, oldest first) and the lowest rate at which the
        bucket must have been full during it (``_burst_bound``)."""
        drains = []
        for emptied, refused in itertools.pairwise(self._decreases):
            if self._kept_since(emptied):
                answers = tuple(t - refused for t in self._answers(emptied, refused))
                if answers:
                    drains.append((answers, (len(answers) + 2) / (refused - emptied)))
        return drains

    def _answers(self, start: float, end: float = math.inf) -> Iterator[float]:
        """The times of the answers kept from ``start`` until before ``end``, oldest first."""
        times = self._accepted
        return itertools.islice(times, bisect.bisect_left(times, start), bisect.bisect_left(times, end))

    def _burst_bound(self, rate: float, drains: Sequence[tuple[tuple[float, ...], float]]) -> float | None:
        """An upper bound on the server's burst, given a lower bound ``rate`` on its rate; None: none.

        From a drain that ended in a refusal after a moment its bucket was full (held the burst ``B``):
        from that moment to the refusal the bucket went from ``B`` to under a token, so
        ``B < accepted + 1 - rate * length`` over that stretch, and so below the largest such value over
        the stretches ending at the refusal (``_drained``) plus one.

        - A drain between two 429 events began with the bucket empty, a token short: at rates from
          ``(answers + 2) / span`` up, it would have held two tokens at the refusal had it never been
          full, so it was.
        - The opening's, if the key was idle before it (its bucket full then), unless a 429 since showed
          otherwise (``_opening_trusted``).
        """
        caps = [_drained(answers, rate) + 1 for answers, lowest in drains if rate >= lowest]
        if self._opening_trusted and self._opening_answers:
            caps.append(_drained(self._opening_answers, rate) + 1)
        return min(caps, default=None)

    def _upper_bound(self, now: float, bound: float, drew: float) -> float | None:
        """An upper bound on the server's rate below ``drew``, from two drains of its bucket; None: none.

        Two drains of the server's bucket are known: the opening's and the one since the last 429's
        pause. Each ties the server's burst ``B`` to its rate ``R``: it accepted every request of the
        drain and refused the next, so ``F(R) <= B``, where ``F(R)`` is the most requests accepted over a
        stretch ending at the refusal, less what ``R`` refilled over it (``_drained``), and if the bucket
        was full at the stretch's start, ``B < F(R) + 1``. The later drain is the longer (its pace grew
        slower than the opening's), so its ``F`` falls faster with ``R``: above some rate the opening's
        is a token or more over it, which rules that rate out if the bucket was full at some moment of
        the later drain. Whether it was depends on ``R`` (a slow server's pause may not refill a large
        burst, nor a search that starts above its rate): ``_filled`` follows a bucket of the opening's
        ``F(R) + 1`` from the last 429, when it was empty, through every answer since. If it fills, so
        did the server's, or the server's is larger and held more than that, and then the later drain's
        ``F`` is above the opening's. Either way the opening's bucket need not have been full: this
        holds on a key another client was using. The lowest rate ruled out, with every rate above it,
        bounds the server's.

        None: no opening seen, answers since the last 429 no longer kept, no rate up to ``drew`` ruled
        out, or ``bound`` itself ruled out (the server is no single token bucket).
        """
        ruled_out = self._rules_out(now)
        if ruled_out is None:
            return None
        low, high = bound, drew
        if not ruled_out(high) or ruled_out(low):
            return None
        for _ in range(_SPLITS):
            middle = (low + high) / 2
            low, high = (middle, high) if not ruled_out(middle) else (low, middle)
        return high

    def _rules_out(self, now: float) -> Callable[[float], bool] | None:
        """Whether the opening's drain and the one since the last 429 rule a rate out (``_upper_bound``);
        None: no opening seen, no answer since the pause, or answers since the last 429 no longer kept."""
        opening = self._opening_answers
        emptied = self._decreases[-1] if self._decreases else None
        since = self._resumed
        if not opening or emptied is None or not self._kept_since(emptied):
            return None
        # Every answer since the last 429 (oldest first, relative to now); the search's drain is the part
        # since its pause ended.
        refill = [t - now for t in self._answers(emptied)]
        drain = refill[bisect.bisect_left(refill, since - now) :]
        if not drain:
            return None

        def ruled_out(rate: float) -> bool:
            # At this rate the bucket holds less than the opening's drain plus a token (``burst``): the
            # search's drain is a token or more below the opening's, and a bucket of ``burst`` would
            # have been full by the refusal, so the server's was.
            burst = _drained(opening, rate) + 1
            return burst - _drained(drain, rate) >= 2 and _filled(emptied - now, refill, rate, burst)

        return ruled_out

    def _kept_since(self, since: float) -> bool:
        """Whether every answer after ``since`` is still kept (the window holds ``_ACCEPTED_WINDOW``)."""
        times = self._accepted
        return len(times) < _ACCEPTED_WINDOW or times[0] <= since

    def _bound(self, now: float, since: float, burst: float | None) -> float | None:
        """The best lower bound on the server's rate over windows after ``since`` (a cut), for a server
        whose bucket held at most ``burst`` at the end of a pause; None: none."""
        emptied = since
        times = self._accepted
        if not self._kept_since(since):
            since = times[0]  # a window from the oldest answer kept needs the burst bound
        best: float | None = None
        count = 0
        # Walk back from the newest answer: `count` answers came after `t`.
        for t in reversed(times):
            if t <= since or now - t > _HORIZON:
                break
            count += 1
            span = now - t
            if span >= _MIN_SPAN and t >= self._resumed and burst is not None:
                bound = (count - burst) / span
                best = bound if best is None else max(best, bound)
        if since == emptied and now - since <= _HORIZON:
            bound = count / (now - since)
            best = bound if best is None else max(best, bound)
        return best if best is not None and best > 0 else None

    def _opening_disproved(self, now: float, pace: Pace, paced: float | None) -> bool:
        """Whether this 429 shows that the opening's drain does not bound the server's burst: the key was
        not idle before the opening (another client had used it), or the server has slowed since.

        Either way the last lower bound, taken with that burst, was over the server's rate, which shows
        in two ways: the 429 came, after a Retry-After's pause, at a pace no higher than that bound
        (``_AT_BOUND``; a token bucket never refuses that), or the drains bound the server's rate from
        above below it (``_rules_out``). Not told a rate only: a told client does not use the opening.
        """
        assert pace.bound is not None
        if pace.ceiling is not None:
            return False
        paused = self._blocked_until > self._last_decrease
        if paused and paced is not None and paced <= pace.bound * (1 + _AT_BOUND):
            return True
        ruled_out = self._rules_out(now)
        return ruled_out is not None and ruled_out(pace.bound)

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A request got 429: pause for Retry-After when given, and set the rate from what was accepted."""
        self.rate_limited += 1
        now = self._clock.now()
        self._held_since = None
        if retry_after is not None:
            self._blocked_until = max(self._blocked_until, now + min(retry_after, self._max_pause))
        # The server's bucket was empty now, and refills from the end of the pause on.
        resumed = max(now, self._blocked_until)
        since = now - self._last_decrease
        if self._unsettled > 0:
            self._unsettled -= 1
            self._burst_unsettled = max(0, self._burst_unsettled - 1)
            if since < _DECREASE_SPACING:
                # A request sent before the cut: the same 429 event.
                self._resumed = max(self._resumed, resumed)
                return
        if since < _MIN_GROUP:
            self._resumed = max(self._resumed, resumed)
            return
        pace = self._pace
        paced = pace.rate if pace.rate is not None and not pace.opening else self.sending_rate()
        if self._opening_trusted and pace.bound is not None:
            self._opening_trusted = not self._opening_disproved(now, pace, paced)
        bound = self.accepted_rate()
        above = None
        if bound is not None and paced is not None and pace.bound is None:
            # The first bound only: later the server may have changed (another client on the key), and
            # the opening says nothing of it.
            above = self._upper_bound(now, bound, paced)
        if self._server_burst is None:
            # What the server let through in the second before its first 429 bounds its burst (its
            # bucket held no more than that, plus what it refilled meanwhile), and so do those of the
            # requests still on the wire that ``on_success`` hears of next.
            on_wire = self.max_concurrency - self._wire.value
            self._server_burst = float(sum(1 for t in self._accepted if t > now - 1.0))
            self._burst_unsettled = on_wire
            if pace.opening and self._opened_at is not None:
                opened = self._opened_at
                self._opening_answers = tuple(t - now for t in self._accepted if t >= opened)
        self._last_decrease = now
        self._decreases.append(now)
        self._unsettled = self.max_concurrency - self._wire.value
        self._resumed = resumed
        self._stamp = now
        # The client's own burst was spent once; spending it again after every pause would empty the
        # server's bucket each time, and then any jitter draws a 429.
        self._burst = 1.0
        self._tokens = min(self._tokens, 1.0)
        # Unpaced until now: what the server let through before the 429, and those of the requests on
        # the wire that were let through but not heard of yet.
        start = (self._server_burst or 0.0) + self._burst_unsettled or paced or 1.0
        self._pace.after_429(
            paced=paced, bound=bound, paused=retry_after is not None, start=start, above=above
        )
