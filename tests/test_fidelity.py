"""The probe table of docs/reference/fidelity.md holds: each body gets the verdicts written there.

Every row goes through the SDK's validation (``request_from_dict``, the path of a JSONL line) and through
the simulator over real HTTP; the simulator must also agree with the vendor's column, which it follows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import msgspec
import pytest

from kling_async._errors import InvalidRequestError
from kling_async._models import Kling3Request, OmniRequest, Request, VideoReferenceRequest, request_from_dict
from kling_async.testing import Simulator

PAGE = Path(__file__).parent.parent / "docs" / "reference" / "fidelity.md"
KEY = {"x-freepik-api-key": "sim-key"}
FAMILIES: dict[str, tuple[type[Request], str]] = {
    "omni": (OmniRequest, "/v1/ai/video/kling-v3-omni-std"),
    "kling3": (Kling3Request, "/v1/ai/video/kling-v3-std"),
    "reference": (VideoReferenceRequest, "/v1/ai/reference-to-video/kling-v3-omni-std"),
}
VERDICTS = ("accept", "refuse")
_ROW = re.compile(r"^\| (?P<family>\w+) \| `(?P<body>[^`]*)` \| (?P<verdicts>[^|]+\|[^|]+\|[^|]+)\|")
_LONG = re.compile(r'"<(\d+) chars>"')


class Probe(NamedTuple):
    family: str
    body: dict[str, Any]
    vendor: str
    simulator: str
    sdk: str


def _probes() -> list[Probe]:
    section = PAGE.read_text(encoding="utf-8").split("\n## Probes\n", 1)[1].split("\n## ", 1)[0]
    probes = []
    for line in section.splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        text = _LONG.sub(lambda long: json.dumps("x" * int(long[1])), match["body"])
        vendor, simulator, sdk = (verdict.strip() for verdict in match["verdicts"].split("|"))
        probes.append(Probe(match["family"], json.loads(text), vendor, simulator, sdk))
    return probes


PROBES = _probes()


def _id(probe: Probe) -> str:
    return f"{probe.family}-{json.dumps(probe.body)[:60]}"


def test_the_probe_table_is_there_and_well_formed() -> None:
    assert len(PROBES) >= 90
    for probe in PROBES:
        assert probe.family in FAMILIES
        assert {probe.vendor, probe.simulator, probe.sdk} <= set(VERDICTS), probe


@pytest.mark.parametrize("family", FAMILIES)
def test_every_request_field_of_every_family_is_probed(family: str) -> None:
    """The table covers each field the SDK's struct has, so no field's rules go unchecked."""
    request_type = FAMILIES[family][0]
    probed = {name for probe in PROBES if probe.family == family for name in probe.body}
    assert set(request_type.__struct_fields__) <= probed


@pytest.mark.parametrize("probe", PROBES, ids=_id)
def test_the_simulator_follows_the_vendor(probe: Probe) -> None:
    """Written to the vendor's rules, not the SDK's: where they differ, the simulator sides with it."""
    assert probe.simulator == probe.vendor


@pytest.mark.parametrize("probe", PROBES, ids=_id)
def test_the_sdk_gives_the_tables_verdict(probe: Probe) -> None:
    try:
        request_from_dict(probe.body, FAMILIES[probe.family][0])
    except InvalidRequestError:
        verdict = "refuse"
    else:
        verdict = "accept"
    assert verdict == probe.sdk


@pytest.mark.anyio
@pytest.mark.parametrize("probe", PROBES, ids=_id)
async def test_the_simulator_gives_the_tables_verdict(probe: Probe) -> None:
    """A refusal is a 400 naming a field; nothing else (a 500 least of all) is a verdict."""
    path = FAMILIES[probe.family][1]
    async with (
        Simulator(time_scale=0.001) as sim,
        aiohttp.ClientSession(sim.url, headers=KEY) as session,
        session.post(path, data=msgspec.json.encode(probe.body)) as response,
    ):
        status, answer = response.status, msgspec.json.decode(await response.read())
    assert status in (200, 400), answer
    assert ("accept" if status == 200 else "refuse") == probe.simulator, answer
    if status == 400:
        assert all(param["name"] and param["reason"] for param in answer["invalid_params"])
