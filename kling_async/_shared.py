"""What a client shares with the other workers of one PostgreSQL database: the API key's request rate.

``KlingClient(shared="postgresql://...")`` shares for the client's life; a batch whose journal is a
PostgreSQL URL shares for the batch's, when the client does not already. Every worker then paces its
requests by one schedule for the key (``_rate_pg``), while its cap on requests on the wire stays its own.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

from ._errors import JournalError
from ._limits import Limiter
from ._secret import Secret

__all__ = ["Sharing"]


class Sharing:
    """Opens what is shared through the database at ``url``, and hooks it into the client's limiter.

    Raises (on entry):
        JournalError: the database cannot be used, or psycopg (the ``postgres`` extra) is not installed.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: Secret,
        limiter: Limiter,
        requests_per_second: float | None,
        burst: int | None,
        max_pause: float,
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._limiter = limiter
        self._requests_per_second = requests_per_second
        self._burst = burst
        self._max_pause = max_pause
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        try:
            from ._rate_pg import SharedRate  # psycopg is an optional extra
        except ImportError as exc:
            raise JournalError(f"{exc}", path="postgresql://...") from None
        async with AsyncExitStack() as stack:
            rate = await stack.enter_async_context(
                SharedRate(
                    self._url,
                    self._api_key.reveal(),
                    requests_per_second=self._requests_per_second,
                    burst=self._burst or 1,
                    max_pause=self._max_pause,
                )
            )
            stack.enter_context(self._limiter.sharing(rate))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
