"""Signed webhook deliveries as the API sends them, with the delivery faults applied."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import time

import aiohttp

from ._faults import Faults
from ._state import SimulatorCounters

__all__ = ["WebhookSender", "signature", "signing_key"]


def signing_key(secret: str) -> bytes:
    """The HMAC key: the secret's UTF-8 bytes, or for a `whsec_` secret the base64-decoded rest."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def signature(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    """One `webhook-signature` entry: `v1,` then the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    signed = b".".join((webhook_id.encode(), timestamp.encode(), body))
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


_PER_RECEIVER = 100  # connections open to one receiver at once (aiohttp's default for all of them together)


class WebhookSender:
    """Posts deliveries from a client session it owns; open it before sending and close it after."""

    def __init__(self, secret: str, seed: int) -> None:
        self._key = signing_key(secret)
        # A different key, so a "bad signature" is well-formed and still fails verification.
        self._wrong_key = hashlib.sha256(b"wrong:" + self._key).digest()
        self._rng = random.Random(f"{seed}:webhooks")
        self._session: aiohttp.ClientSession | None = None

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    async def open(self) -> None:
        # No cap over all receivers (aiohttp's default is 100 connections): one that never answers would
        # hold them all, and every other receiver's deliveries would fail waiting for one.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=_PER_RECEIVER)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, url: str, body: bytes, faults: Faults, counters: SimulatorCounters) -> None:
        """Deliver one status change to `url`, unless the faults drop it; failures are only counted."""
        if self._session is None:
            raise RuntimeError("WebhookSender.send() before open()")
        if self._chance(faults.webhook_drop_rate):
            counters.webhooks_dropped += 1
            return
        if faults.webhook_delay:
            await asyncio.sleep(faults.webhook_delay)
        webhook_id = f"msg_{self._rng.getrandbits(96):024x}"
        timestamp = str(int(time.time()))
        key = self._wrong_key if self._chance(faults.webhook_bad_signature_rate) else self._key
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": signature(key, webhook_id, timestamp, body),
        }
        # A duplicate is a redelivery of the same message, so it keeps its webhook-id.
        for _ in range(2 if self._chance(faults.webhook_duplicate_rate) else 1):
            counters.webhooks_sent += 1
            try:
                async with self._session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as reply:
                    if not 200 <= reply.status < 300:
                        counters.webhook_failures += 1
            except (aiohttp.ClientError, TimeoutError):
                counters.webhook_failures += 1
