"""A local stand-in for the Freepik Kling 3 API, for testing code that uses kling-async (or any client).

::

    from kling_async.testing import Faults, Simulator

    async with Simulator(time_scale=0.001, faults=Faults(get_error_rate=0.1)) as sim:
        ...  # point a client at sim.url, then assert on sim.counters

For unit tests without a server, ``MockTransport(handler)`` answers each request from a function.
"""

from ._clock import FakeClock
from ._faults import Faults
from ._mock_transport import MockRequest, MockTransport, Response
from ._simulator import Simulator
from ._state import SimulatedTask, SimulatorCounters

__all__ = [
    "FakeClock",
    "Faults",
    "MockRequest",
    "MockTransport",
    "Response",
    "SimulatedTask",
    "Simulator",
    "SimulatorCounters",
]

for _public in (
    FakeClock,
    Faults,
    MockRequest,
    MockTransport,
    Response,
    SimulatedTask,
    Simulator,
    SimulatorCounters,
):
    _public.__module__ = __name__
del _public
