"""What a client shares with the other workers of one PostgreSQL database that use the same API key.

``KlingClient(shared="postgresql://...")`` shares for the client's life; a batch whose journal is a
PostgreSQL URL shares for the batch's, when the client does not already. Two things are shared:

* the key's **request rate** (``_rate_pg.SharedRate``): every worker paces its requests by one schedule,
  while its cap on requests on the wire stays its own;
* what the workers **learn about tasks** (``_relay_pg.StatusRelay``): a webhook delivered to any worker
  resolves the handle in the worker that waits, and one worker sweeps each family's list for all.

Both are scoped by a fingerprint of the key (never the key): workers of other keys in the same database
share nothing with these.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ._errors import JournalError
from ._limits import Limiter
from ._models import TaskStatus
from ._secret import Secret
from ._webhooks import WebhookReceiver

if TYPE_CHECKING:
    from ._relay_pg import StatusRelay

__all__ = ["Sharing"]


class Sharing:
    """Opens what is shared through the database at ``url``, and hooks it into the client.

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
        observe: Callable[[TaskStatus], None],
        webhooks: WebhookReceiver | None,
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._limiter = limiter
        self._requests_per_second = requests_per_second
        self._burst = burst
        self._max_pause = max_pause
        self._observe = observe
        self._webhooks = webhooks
        self._stack = AsyncExitStack()
        self.relay: StatusRelay | None = None

    async def __aenter__(self) -> Self:
        try:  # psycopg is an optional extra
            from ._rate_pg import SharedRate, key_fingerprint
            from ._relay_pg import StatusRelay
        except ImportError as exc:
            raise JournalError(f"{exc}", path="postgresql://...") from None
        async with AsyncExitStack() as stack:
            key = self._api_key.reveal()
            rate = await stack.enter_async_context(
                SharedRate(
                    self._url,
                    key,
                    requests_per_second=self._requests_per_second,
                    burst=self._burst or 1,
                    max_pause=self._max_pause,
                )
            )
            stack.enter_context(self._limiter.sharing(rate))
            relay = await stack.enter_async_context(StatusRelay(self._url, scope=key_fingerprint(key)[:16]))
            relay.add_listener(self._observe)
            stack.callback(relay.remove_listener, self._observe)
            if self._webhooks is not None:
                # Deliveries to this worker reach the others too: the one that waits may be elsewhere.
                self._webhooks.add_listener(relay.forward)
                stack.callback(self._webhooks.remove_listener, relay.forward)
            self.relay = relay
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.relay = None
        await self._stack.aclose()
