"""The ``kling_simulator`` pytest fixture, registered by the package's ``pytest11`` entry point.

Installing kling-async registers this plugin for every pytest run, including runs that never use it, so
it does nothing at load time but declare its marker, and it never imports an async plugin: the fixture is
an async generator, run by whichever one the user has (anyio's, or pytest-asyncio in auto mode).
``pytest -p no:kling_async`` turns it off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ._simulator import Simulator

__all__ = ["DEFAULT_TIME_SCALE", "kling_simulator"]

# A 60 s generation takes 60 ms: fast enough for a unit test, slow enough that statuses are seen.
DEFAULT_TIME_SCALE = 0.001

_MARKER = "kling_simulator"


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker, so ``--strict-markers`` accepts it."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**options): Simulator options for the kling_simulator fixture "
        f"(default time_scale={DEFAULT_TIME_SCALE})",
    )


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = {"time_scale": DEFAULT_TIME_SCALE}
    marker = request.node.get_closest_marker(_MARKER)
    if marker is not None:
        if marker.args:
            raise TypeError(f"@pytest.mark.{_MARKER}: takes Simulator options by keyword only")
        options.update(marker.kwargs)
    return options


@pytest.fixture
async def kling_simulator(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    """A running ``Simulator`` on loopback for one test, stopped after it.

    Time-scaled (``DEFAULT_TIME_SCALE``, 0.001) unless ``@pytest.mark.kling_simulator(...)`` passes other
    ``Simulator`` options. It sets nothing global: point a client at ``kling_simulator.url``.
    """
    async with Simulator(**_options(request)) as simulator:
        yield simulator
