"""The simulator follows the API doc and injects the faults it promises, seen over real loopback HTTP."""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import email.utils
import hashlib
import hmac
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

import kling_async.testing
from kling_async.testing import Faults, Simulator

KEY = {"x-freepik-api-key": "sim-key"}
OMNI_STD = "/v1/ai/video/kling-v3-omni-std"
OMNI = "/v1/ai/video/kling-v3-omni"
KLING3_STD = "/v1/ai/video/kling-v3-std"
KLING3 = "/v1/ai/video/kling-v3"
REFERENCE_PRO = "/v1/ai/reference-to-video/kling-v3-omni-pro"
REFERENCE = "/v1/ai/reference-to-video/kling-v3-omni"
VIDEO = "https://example.com/clip.mp4"
IMAGE = "https://example.com/frame.png"
INVALID = "Your request parameters didn't validate."


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Reply(msgspec.Struct):
    """One HTTP answer, read in full."""

    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes

    @property
    def json(self) -> Any:
        return msgspec.json.decode(self.raw)


@contextlib.asynccontextmanager
async def simulator(**options: Any) -> AsyncIterator[tuple[Simulator, aiohttp.ClientSession]]:
    """A running simulator (60 s generations take 60 ms, queueing 2 ms) and a session on its API."""
    options = {"time_scale": 0.001, **options}
    async with Simulator(**options) as sim, aiohttp.ClientSession(sim.url) as session:
        yield sim, session


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: object = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    if body is not None:
        data = msgspec.json.encode(body)
    async with session.request(
        method, url, data=data, headers=KEY if headers is None else headers
    ) as response:
        return Reply(response.status, response.headers, await response.read())


async def create(session: aiohttp.ClientSession, body: object, path: str = OMNI_STD) -> str:
    reply = await call(session, "POST", path, body=body)
    assert reply.status == 200, reply.raw
    task_id: str = reply.json["data"]["task_id"]
    return task_id


async def status(session: aiohttp.ClientSession, task_id: str, family: str = OMNI) -> dict[str, Any]:
    reply = await call(session, "GET", f"{family}/{task_id}")
    assert reply.status == 200, reply.raw
    data: dict[str, Any] = reply.json["data"]
    return data


async def eventually(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    """Wait up to `seconds` for `condition()` to hold (the simulator's state has no event to wait on)."""
    for _ in range(round(seconds / 0.005)):
        if condition():
            return
        await anyio.sleep(0.005)
    raise AssertionError("the condition never held")


async def wait_for(session: aiohttp.ClientSession, task_id: str, wanted: str) -> dict[str, Any]:
    for _ in range(400):
        data = await status(session, task_id)
        if data["status"] == wanted:
            return data
        await anyio.sleep(0.005)
    raise AssertionError(f"{task_id} never reached {wanted}")


# the API's shape


@pytest.mark.anyio
async def test_create_answers_200_with_a_created_task() -> None:
    async with simulator() as (sim, session):
        reply = await call(session, "POST", OMNI_STD, body={"prompt": "a fox", "duration": "5"})
    assert reply.status == 200
    data = reply.json["data"]
    assert data == {"task_id": data["task_id"], "status": "CREATED", "generated": []}
    assert uuid.UUID(data["task_id"]).version == 4
    assert sim.tasks[data["task_id"]].model == "kling-v3-omni-std"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("create_path", "family", "body"),
    [
        ("/v1/ai/video/kling-v3-omni-std", OMNI, {"prompt": "p"}),
        ("/v1/ai/video/kling-v3-omni-pro", OMNI, {"prompt": "p"}),
        ("/v1/ai/video/kling-v3-std", KLING3, {"prompt": "p"}),
        ("/v1/ai/video/kling-v3-pro", KLING3, {"prompt": "p"}),
        ("/v1/ai/reference-to-video/kling-v3-omni-std", REFERENCE, {"video_url": VIDEO}),
        ("/v1/ai/reference-to-video/kling-v3-omni-pro", REFERENCE, {"video_url": VIDEO}),
    ],
)
async def test_status_lives_on_the_family_path_not_the_model_path(
    create_path: str, family: str, body: dict[str, Any]
) -> None:
    async with simulator() as (_, session):
        task_id = await create(session, body, create_path)
        on_family = await call(session, "GET", f"{family}/{task_id}")
        on_model = await call(session, "GET", f"{create_path}/{task_id}")
    assert on_family.status == 200
    assert on_family.json["data"]["task_id"] == task_id
    assert (on_model.status, on_model.json) == (404, {"message": "Not found"})


@pytest.mark.anyio
async def test_a_task_is_not_found_on_another_familys_path() -> None:
    async with simulator() as (_, session):
        task_id = await create(session, {"prompt": "p"}, KLING3_STD)
        reply = await call(session, "GET", f"{OMNI}/{task_id}")
    assert (reply.status, reply.json) == (404, {"message": "Not found"})


@pytest.mark.anyio
async def test_an_unknown_task_id_is_404_not_found() -> None:
    async with simulator() as (_, session):
        reply = await call(session, "GET", f"{OMNI}/{uuid.uuid4()}")
    assert (reply.status, reply.json) == (404, {"message": "Not found"})


@pytest.mark.anyio
async def test_list_is_newest_first_and_its_items_have_no_generated() -> None:
    async with simulator() as (_, session):
        ids = [await create(session, {"prompt": f"shot {n}"}) for n in range(3)]
        await create(session, {"prompt": "other family"}, KLING3_STD)
        reply = await call(session, "GET", OMNI)
    assert reply.status == 200
    assert list(reply.json) == ["data"]
    assert [item["task_id"] for item in reply.json["data"]] == ids[::-1]
    assert all(set(item) == {"task_id", "status"} for item in reply.json["data"])


@pytest.mark.anyio
async def test_list_pages_with_page_and_page_size() -> None:
    async with simulator() as (_, session):
        ids = [await create(session, {"prompt": f"shot {n}"}) for n in range(5)]
        second = await call(session, "GET", f"{OMNI}?page=2&page_size=2")
        last = await call(session, "GET", f"{OMNI}?page=3&page_size=2")
        beyond = await call(session, "GET", f"{OMNI}?page=4&page_size=2")
    assert [item["task_id"] for item in second.json["data"]] == [ids[2], ids[1]]
    assert [item["task_id"] for item in last.json["data"]] == [ids[0]]
    assert beyond.json == {"data": []}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("page_size=101", "page_size"),
        ("page_size=0", "page_size"),
        ("page=0", "page"),
        ("page=x", "page"),
        ("page=%201%20", "page"),
        ("page=1_0", "page"),
        ("page=%D9%A1", "page"),
    ],
)
async def test_list_paging_out_of_range_is_400_naming_the_parameter(query: str, name: str) -> None:
    async with simulator() as (_, session):
        reply = await call(session, "GET", f"{OMNI}?{query}")
    assert reply.status == 400
    assert reply.json["message"] == INVALID
    assert [param["name"] for param in reply.json["invalid_params"]] == [name]


@pytest.mark.anyio
async def test_a_missing_key_is_401_missing_api_key() -> None:
    async with simulator() as (_, session):
        reply = await call(session, "POST", OMNI_STD, body={"prompt": "p"}, headers={})
    assert (reply.status, reply.json) == (401, {"message": "Missing API key"})


@pytest.mark.anyio
async def test_a_wrong_key_is_401_invalid_api_key() -> None:
    async with simulator() as (sim, session):
        reply = await call(session, "GET", OMNI, headers={"x-freepik-api-key": "nope"})
    assert (reply.status, reply.json) == (401, {"message": "Invalid API key"})
    assert sim.counters.responses_by_status[401] == 1


@pytest.mark.anyio
async def test_the_magnific_header_is_accepted_too() -> None:
    async with simulator() as (_, session):
        reply = await call(session, "GET", OMNI, headers={"x-magnific-api-key": "sim-key"})
    assert reply.status == 200


@pytest.mark.anyio
async def test_api_key_none_accepts_any_non_empty_key() -> None:
    async with simulator(api_key=None) as (_, session):
        anything = await call(session, "GET", OMNI, headers={"x-freepik-api-key": "whatever"})
        empty = await call(session, "GET", OMNI, headers={"x-freepik-api-key": ""})
    assert (anything.status, empty.status) == (200, 401)


# lifecycle


@pytest.mark.anyio
async def test_a_task_goes_created_in_progress_completed_on_the_scaled_clock() -> None:
    async with simulator(time_scale=0.001, queue_seconds=100, generation_seconds=200) as (sim, session):
        task_id = await create(session, {"prompt": "p"})
        first = await status(session, task_id)
        await anyio.sleep(0.15)
        middle = await status(session, task_id)
        await anyio.sleep(0.25)
        last = await status(session, task_id)
        assert (first["status"], middle["status"], last["status"]) == ("CREATED", "IN_PROGRESS", "COMPLETED")
        assert first["generated"] == middle["generated"] == []
        assert last["generated"] == [f"{sim.cdn_url}/files/{task_id}.mp4"]
        assert sim.cdn_url != sim.url


@pytest.mark.anyio
async def test_the_fail_marker_ends_a_task_failed() -> None:
    async with simulator() as (_, session):
        task_id = await create(session, {"prompt": "a fox [fail]"})
        data = await wait_for(session, task_id, "FAILED")
    assert data["generated"] == []


@pytest.mark.anyio
async def test_cancelled_is_never_emitted_unless_a_test_asks_for_it() -> None:
    """CANCELLED is not in the vendor's status enum: no prompt (not even the old `[cancel]`) gives it."""
    async with simulator() as (sim, session):
        ids = [await create(session, {"prompt": f"a fox [cancel] {n}"}) for n in range(5)]
        for task_id in ids:
            await wait_for(session, task_id, "COMPLETED")
        listed = await call(session, "GET", OMNI)
    assert {item["status"] for item in listed.json["data"]} == {"COMPLETED"}
    assert {task.status for task in sim.tasks.values()} == {"COMPLETED"}


@pytest.mark.anyio
async def test_markers_count_in_multi_prompt_shots_too() -> None:
    shots = [{"prompt": "fine", "duration": "5"}, {"prompt": "[fail]", "duration": "5"}]
    async with simulator() as (sim, session):
        task_id = await create(session, {"multi_prompt": shots}, KLING3_STD)
    assert sim.tasks[task_id].outcome == "FAILED"


@pytest.mark.anyio
@pytest.mark.parametrize("shots", [5, True])
async def test_a_multi_prompt_that_is_not_a_list_is_an_unknown_field_where_the_model_has_none(
    shots: object,
) -> None:
    """Reference-to-video has no ``multi_prompt``: any value is an unknown field, ignored (was a 500)."""
    async with simulator() as (sim, session):
        task_id = await create(session, {"video_url": VIDEO, "multi_prompt": shots}, REFERENCE_PRO)
    assert task_id in sim.tasks


@pytest.mark.anyio
@pytest.mark.parametrize(("host", "shown"), [("0.0.0.0", "127.0.0.1"), ("::1", "[::1]")])
async def test_result_urls_name_an_address_a_client_can_reach(host: str, shown: str) -> None:
    """On every interface the URLs name loopback; an IPv6 address is bracketed; the video downloads."""
    async with Simulator(host=host, time_scale=0.001) as sim, aiohttp.ClientSession(sim.url) as session:
        api = sim.url
        url = await completed_url(sim, session)
        reply = await call(session, "GET", url, headers={})
    assert api.startswith(f"http://{shown}:")
    assert url.startswith(f"http://{shown}:")
    assert reply.status == 200


@pytest.mark.anyio
async def test_a_connection_that_never_completes_its_request_head_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An idle or trickling connection is closed after the idle time, not held for an hour."""
    monkeypatch.setattr("kling_async.testing._simulator._IDLE_SECONDS", 0.3)
    async with Simulator(time_scale=0.001) as sim:
        url = URL(sim.url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(b"GET /v1/ai/video/kling-v3-omni HTTP/1.1\r\nHost: x\r\n")  # no end of the head
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        finally:
            writer.close()


@pytest.mark.anyio
async def test_never_stays_in_progress_and_slow_takes_three_times_as_long() -> None:
    async with simulator(queue_seconds=0, generation_seconds=100) as (sim, session):
        normal = await create(session, {"prompt": "p"})
        slow = await create(session, {"prompt": "p [slow]"})
        never = await create(session, {"prompt": "p [never]"})
        await anyio.sleep(0.15)
        assert sim.tasks[normal].status == "COMPLETED"
        assert sim.tasks[slow].status == "IN_PROGRESS"
        await anyio.sleep(0.2)
        assert sim.tasks[slow].status == "COMPLETED"
        assert sim.tasks[never].status == "IN_PROGRESS"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("faults", "final"),
    [
        (Faults(fail_rate=1.0), "FAILED"),
        (Faults(cancel_rate=1.0), "CANCELLED"),
        (Faults(never_finish_rate=1.0), "IN_PROGRESS"),
    ],
)
async def test_fail_and_never_finish_rates_decide_a_tasks_end(faults: Faults, final: str) -> None:
    async with simulator(queue_seconds=0, generation_seconds=1, faults=faults) as (sim, session):
        task_id = await create(session, {"prompt": "p"})
        await anyio.sleep(0.01)
        assert sim.tasks[task_id].status == final


@pytest.mark.anyio
async def test_generation_seconds_range_is_drawn_per_task_and_repeats_with_the_seed() -> None:
    runs = []
    for _ in range(2):
        async with simulator(generation_seconds=(30.0, 120.0), seed=7) as (sim, session):
            ids = [await create(session, {"prompt": str(n)}) for n in range(5)]
            runs.append(
                [(task_id, sim.tasks[task_id].finishes_at - sim.tasks[task_id].started_at) for task_id in ids]
            )
    assert [task_id for task_id, _ in runs[0]] == [task_id for task_id, _ in runs[1]]
    assert all(0.03 <= seconds <= 0.12 for _, seconds in runs[0])
    assert len({round(seconds, 6) for _, seconds in runs[0]}) == 5


@pytest.mark.anyio
async def test_set_status_and_finish_drive_a_task_by_hand() -> None:
    async with simulator(queue_seconds=0) as (sim, session):
        task_id = await create(session, {"prompt": "[never]"})
        sim.set_status(task_id, "SOMETHING_NEW")
        assert (await status(session, task_id))["status"] == "SOMETHING_NEW"
        sim.finish(task_id)
        data = await status(session, task_id)
        with pytest.raises(ValueError, match="final status"):
            sim.finish(task_id, "IN_PROGRESS")
    assert data["status"] == "COMPLETED"
    assert len(data["generated"]) == 1


# validation


TOO_LONG = "x" * 2501
EMPTY_CONTAINERS: tuple[object, ...] = ({}, [])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body", "name"),
    [
        (OMNI_STD, {"prompt": "p", "duration": 5}, "duration"),
        (OMNI_STD, {"prompt": "p", "duration": "16"}, "duration"),
        (OMNI_STD, {"prompt": "p", "duration": "2"}, "duration"),
        (OMNI_STD, {"prompt": TOO_LONG}, "prompt"),
        (OMNI_STD, {"duration": "5"}, "prompt"),
        (OMNI_STD, {"multi_prompt": ["a"] * 7}, "multi_prompt"),
        (OMNI_STD, {"multi_prompt": [{"prompt": "a", "duration": "5"}]}, "multi_prompt[0]"),
        (OMNI_STD, {"prompt": "p", "shot_type": "intelligent"}, "shot_type"),
        (OMNI_STD, {"prompt": "p", "aspect_ratio": "4:3"}, "aspect_ratio"),
        (OMNI_STD, {"prompt": "p", "aspect_ratio": "auto"}, "aspect_ratio"),
        (OMNI_STD, {"prompt": "p", "voice_ids": ["a", "b", "c"]}, "voice_ids"),
        (OMNI_STD, {"prompt": "p", "generate_audio": "yes"}, "generate_audio"),
        (OMNI_STD, {"prompt": "p", "webhook_url": "not a url"}, "webhook_url"),
        (
            OMNI_STD,
            {"prompt": "p", "image_urls": [IMAGE] * 3, "elements": [{"frontal_image_url": IMAGE}] * 2},
            "elements",
        ),
        (OMNI_STD, {"prompt": "p", "multi_prompt": ["a"], "image_url": IMAGE}, "multi_prompt"),
        (KLING3_STD, {"multi_prompt": ["a"]}, "multi_prompt[0]"),
        (KLING3_STD, {"multi_prompt": [{"prompt": "a", "duration": "2"}]}, "multi_prompt[0].duration"),
        (KLING3_STD, {"multi_prompt": [{"prompt": "a", "duration": "8"}] * 2}, "multi_prompt"),
        (KLING3_STD, {"multi_prompt": [{"prompt": "a", "duration": "3"}] * 7}, "multi_prompt"),
        (KLING3_STD, {"prompt": "p", "cfg_scale": 2.5}, "cfg_scale"),
        (KLING3_STD, {"prompt": "p", "negative_prompt": TOO_LONG}, "negative_prompt"),
        (KLING3_STD, {"prompt": "p", "aspect_ratio": "auto"}, "aspect_ratio"),
        (KLING3_STD, {"prompt": "p", "shot_type": "random"}, "shot_type"),
        # type confusion is a 400 naming the field, never a 500
        *[
            (path, {"prompt": "p", "duration": value}, "duration")
            for path in (OMNI_STD, KLING3_STD)
            for value in EMPTY_CONTAINERS
        ],
        (REFERENCE_PRO, {"video_url": VIDEO, "duration": {}}, "duration"),
        (KLING3_STD, {"multi_prompt": [{"prompt": "a", "duration": {}}]}, "multi_prompt[0].duration"),
        (KLING3_STD, {"multi_prompt": [{"prompt": "a", "duration": []}]}, "multi_prompt[0].duration"),
        (OMNI_STD, {"prompt": "p", "aspect_ratio": {}}, "aspect_ratio"),
        (OMNI_STD, {"prompt": "p", "shot_type": []}, "shot_type"),
        (KLING3_STD, {"prompt": "p", "multi_prompt": {}}, "multi_prompt"),
        (OMNI_STD, {"prompt": "p", "elements": [{"frontal_image_url": 5}]}, "elements[0].frontal_image_url"),
        (
            OMNI_STD,
            {"prompt": "p", "elements": [{"reference_image_urls": "x"}]},
            "elements[0].reference_image_urls",
        ),
        (
            OMNI_STD,
            {"prompt": "p", "elements": [{"frontal_image_url": None}]},
            "elements[0].frontal_image_url",
        ),
        # no vendor field is nullable
        (OMNI_STD, {"prompt": None, "multi_prompt": ["a"]}, "prompt"),
        (OMNI_STD, {"prompt": "p", "duration": None}, "duration"),
        (KLING3_STD, {"prompt": "p", "cfg_scale": None}, "cfg_scale"),
        (REFERENCE_PRO, {"video_url": None}, "video_url"),
        (REFERENCE_PRO, {"video_url": VIDEO, "image_url": None}, "image_url"),
        # format: uri
        (REFERENCE_PRO, {"video_url": "not a uri"}, "video_url"),
        (REFERENCE_PRO, {"video_url": "clip.mp4"}, "video_url"),
        # "prompt ... Required for text-to-video mode or when not using multi_prompt"
        (KLING3_STD, {}, "prompt"),
        (KLING3_STD, {"duration": "5"}, "prompt"),
        (REFERENCE_PRO, {"prompt": "p"}, "video_url"),
        (REFERENCE_PRO, {"video_url": VIDEO, "cfg_scale": -1}, "cfg_scale"),
        (REFERENCE_PRO, {"video_url": VIDEO, "aspect_ratio": "2:1"}, "aspect_ratio"),
        (REFERENCE_PRO, {"video_url": VIDEO, "duration": "20"}, "duration"),
        (OMNI_STD, ["not", "an", "object"], "body"),
    ],
)
async def test_invalid_create_bodies_are_400_naming_the_field(path: str, body: object, name: str) -> None:
    async with simulator() as (sim, session):
        reply = await call(session, "POST", path, body=body)
    assert reply.status == 400
    assert reply.json["message"] == INVALID
    assert name in [param["name"] for param in reply.json["invalid_params"]]
    assert all(param["reason"] for param in reply.json["invalid_params"])
    assert sim.counters.tasks_created == 0


@pytest.mark.anyio
async def test_a_body_that_is_not_json_is_400() -> None:
    async with simulator() as (_, session):
        reply = await call(session, "POST", OMNI_STD, data=b"{not json")
    assert reply.status == 400
    assert reply.json["invalid_params"][0]["name"] == "body"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            OMNI_STD,
            {
                "prompt": "@Image1 meets @Element1 <<<voice_1>>>",
                "image_url": IMAGE,
                "aspect_ratio": "auto",
                "image_urls": [IMAGE] * 3,
                "elements": [{"reference_image_urls": [IMAGE], "frontal_image_url": IMAGE}],
                "voice_ids": ["v1", "v2"],
                "generate_audio": True,
                "duration": "15",
                "webhook_url": "https://example.com/hook",
                "some_future_field": {"ignored": True},
            },
        ),
        (OMNI_STD, {"multi_prompt": ["a"] * 6, "shot_type": "customize", "duration": "3"}),
        (
            KLING3_STD,
            {
                "multi_prompt": [{"prompt": "a", "duration": "5"}] * 3,
                "shot_type": "intelligent",
                "cfg_scale": 2,
                "negative_prompt": "blur",
            },
        ),
        (
            REFERENCE_PRO,
            {"video_url": VIDEO, "prompt": "@Video1 again", "cfg_scale": 0.5, "aspect_ratio": "auto"},
        ),
        # the vendor states no cap on Kling 3 elements (the 4-reference cap is Omni's)
        (KLING3_STD, {"prompt": "p", "elements": [{"frontal_image_url": IMAGE}] * 5}),
        # "not both" is on the Omni page only
        (
            KLING3_STD,
            {"prompt": "p", "multi_prompt": [{"prompt": "a", "duration": "5"}], "start_image_url": IMAGE},
        ),
        # format: uri is any scheme; image fields are plain strings
        (OMNI_STD, {"prompt": "p", "webhook_url": "urn:example:hook", "image_url": "frame.png"}),
        (REFERENCE_PRO, {"video_url": "s3://bucket/clip.mp4"}),
    ],
)
async def test_valid_bodies_are_accepted_and_unknown_fields_ignored(path: str, body: dict[str, Any]) -> None:
    async with simulator() as (sim, session):
        await create(session, body, path)
    assert sim.counters.tasks_created == 1


@pytest.mark.anyio
async def test_wrap_problem_wraps_the_400_body() -> None:
    async with simulator(faults=Faults(wrap_problem=True)) as (_, session):
        reply = await call(session, "POST", OMNI_STD, body={"prompt": "p", "duration": "99"})
    assert reply.status == 400
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert reply.json["problem"]["message"] == INVALID
    assert reply.json["problem"]["invalid_params"][0]["name"] == "duration"


@pytest.mark.anyio
async def test_an_unwrapped_400_is_plain_json() -> None:
    async with simulator() as (_, session):
        reply = await call(session, "POST", OMNI_STD, body={"prompt": "p", "duration": "99"})
    assert reply.status == 400
    assert reply.headers["Content-Type"].startswith("application/json")


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path", "allow"), [("GET", OMNI_STD, "POST"), ("POST", OMNI, "GET")])
async def test_a_wrong_method_is_405_with_an_allow_header(method: str, path: str, allow: str) -> None:
    async with simulator() as (_, session):
        reply = await call(session, method, path, body={"prompt": "p"} if method == "POST" else None)
    assert reply.status == 405
    assert reply.headers["Allow"] == allow


@pytest.mark.anyio
async def test_bare_create_answers_the_task_without_the_data_wrapper() -> None:
    async with simulator(faults=Faults(bare_create=True)) as (sim, session):
        reply = await call(session, "POST", OMNI_STD, body={"prompt": "p"})
        task_id = reply.json["task_id"]
        fetched = await status(session, task_id)
    assert reply.status == 200
    assert reply.json == {"task_id": task_id, "status": "CREATED", "generated": []}
    assert sim.tasks[task_id].family == OMNI
    assert fetched["task_id"] == task_id  # status answers keep their documented wrapper


@pytest.mark.anyio
async def test_ignore_page_size_answers_20_a_page_whatever_is_asked() -> None:
    async with simulator(faults=Faults(ignore_page_size=True)) as (_, session):
        ids = [await create(session, {"prompt": str(n)}) for n in range(45)]
        pages = [await call(session, "GET", f"{OMNI}?page={page}&page_size=100") for page in (1, 2, 3)]
        odd = await call(session, "GET", f"{OMNI}?page_size=0")
    assert [len(reply.json["data"]) for reply in pages] == [20, 20, 5]
    listed = [item["task_id"] for reply in pages for item in reply.json["data"]]
    assert listed == ids[::-1]
    assert (odd.status, len(odd.json["data"])) == (200, 20)  # ignored, so not even checked


# rate limit


@pytest.mark.anyio
@pytest.mark.parametrize("retry_after", [True, "date", False])
async def test_the_rate_limit_answers_429_with_retry_after_as_configured(retry_after: bool | str) -> None:
    async with simulator(rate_limit=2, retry_after=retry_after) as (sim, session):
        replies = [await call(session, "GET", OMNI) for _ in range(3)]
    assert [reply.status for reply in replies] == [200, 200, 429]
    limited = replies[2]
    assert limited.json == {"message": "Too many requests"}
    assert sim.counters.rate_limited == 1
    header = limited.headers.get("Retry-After")
    if retry_after is True:
        assert header == "1"
    elif retry_after == "date":
        assert header is not None
        moment = email.utils.parsedate_to_datetime(header).timestamp()
        assert time.time() <= moment <= time.time() + 2
    else:
        assert header is None


@pytest.mark.anyio
async def test_the_rate_limit_covers_every_api_request_and_refills() -> None:
    async with simulator(rate_limit=5, burst=3) as (sim, session):
        task_id = await create(session, {"prompt": "p"})
        await status(session, task_id)
        await call(session, "GET", OMNI)
        refused = await call(session, "GET", OMNI)
        await anyio.sleep(0.25)
        again = await call(session, "GET", OMNI)
    assert (refused.status, again.status) == (429, 200)
    assert sim.counters.responses_by_status == {200: 4, 429: 1}


@pytest.mark.anyio
async def test_random_429s_follow_the_retry_after_option() -> None:
    async with simulator(retry_after=False, faults=Faults(rate_limit_429_rate=1.0)) as (sim, session):
        reply = await call(session, "GET", OMNI)
    assert (reply.status, reply.json) == (429, {"message": "Too many requests"})
    assert "Retry-After" not in reply.headers
    assert sim.counters.rate_limited == 1


# faults


@pytest.mark.anyio
async def test_drop_before_closes_the_connection_and_creates_nothing() -> None:
    async with simulator() as (sim, session):
        sim.queue_fault("drop_before")
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(session, "POST", OMNI_STD, body={"prompt": "p"})
    assert (sim.counters.posts, sim.counters.tasks_created, sim.counters.connections_dropped) == (1, 0, 1)
    assert sim.tasks == {}


@pytest.mark.anyio
async def test_drop_after_create_closes_the_connection_but_the_task_exists() -> None:
    async with simulator() as (sim, session):
        sim.queue_fault("drop_after_create")
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(session, "POST", OMNI_STD, body={"prompt": "p"})
        listed = await call(session, "GET", OMNI)
    assert sim.counters.tasks_created == 1
    assert [item["task_id"] for item in listed.json["data"]] == list(sim.tasks)


@pytest.mark.anyio
async def test_500_after_create_answers_500_but_the_task_exists() -> None:
    async with simulator() as (sim, session):
        sim.queue_fault("500_after_create")
        reply = await call(session, "POST", OMNI_STD, body={"prompt": "p"})
    assert (reply.status, reply.json) == (500, {"message": "Internal Server Error"})
    assert sim.counters.tasks_created == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "code", "message"),
    [
        ("503", 503, "Service Unavailable. Please try again later."),
        ("500", 500, "Internal Server Error"),
        ("429", 429, "Too many requests"),
        ("403", 403, "Forbidden"),
    ],
)
async def test_a_queued_status_fault_answers_before_creating_anything(
    kind: str, code: int, message: str
) -> None:
    async with simulator() as (sim, session):
        sim.queue_fault(kind)
        reply = await call(session, "POST", OMNI_STD, body={"prompt": "p"})
    assert (reply.status, reply.json) == (code, {"message": message})
    assert sim.counters.tasks_created == 0


@pytest.mark.anyio
async def test_a_queued_429_without_retry_after_has_no_header() -> None:
    async with simulator() as (sim, session):
        sim.queue_fault("429-no-retry-after", method="GET")
        reply = await call(session, "GET", OMNI)
    assert reply.status == 429
    assert "Retry-After" not in reply.headers
    assert sim.counters.rate_limited == 1


@pytest.mark.anyio
async def test_502_html_is_a_proxy_page_not_json() -> None:
    async with simulator() as (sim, session):
        task_id = await create(session, {"prompt": "p"})
        sim.queue_fault("502_html", method="GET")
        reply = await call(session, "GET", f"{OMNI}/{task_id}")
    assert reply.status == 502
    assert reply.headers["Content-Type"].startswith("text/html")
    assert b"502 Bad Gateway" in reply.raw


@pytest.mark.anyio
async def test_queued_faults_hit_only_their_method_and_count() -> None:
    async with simulator() as (sim, session):
        sim.queue_fault("503", method="GET", count=2)
        post = await call(session, "POST", OMNI_STD, body={"prompt": "p"})
        gets = [(await call(session, "GET", OMNI)).status for _ in range(3)]
    assert post.status == 200
    assert gets == [503, 503, 200]


@pytest.mark.anyio
async def test_a_queued_latency_delays_one_request() -> None:
    async with simulator() as (sim, session):
        sim.queue_fault("latency", method="GET", seconds=0.1)
        started = time.monotonic()
        slow = await call(session, "GET", OMNI)
        middle = time.monotonic()
        await call(session, "GET", OMNI)
        ended = time.monotonic()
    assert slow.status == 200
    assert middle - started >= 0.1 > ended - middle


def test_an_unknown_fault_kind_or_method_is_a_value_error() -> None:
    sim = Simulator()
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.queue_fault("explode")
    with pytest.raises(ValueError, match="method"):
        sim.queue_fault("503", method="DELETE")
    with pytest.raises(ValueError, match="between 0 and 1"):
        Faults(get_error_rate=1.5)


@pytest.mark.anyio
async def test_post_error_rate_answers_without_creating() -> None:
    async with simulator(faults=Faults(post_error_rate=1.0)) as (sim, session):
        reply = await call(session, "POST", OMNI_STD, body={"prompt": "p"})
    assert (reply.status, reply.json) == (503, {"message": "Service Unavailable. Please try again later."})
    assert (sim.counters.posts, sim.counters.tasks_created) == (1, 0)


@pytest.mark.anyio
async def test_get_error_rate_answers_status_gets_and_lists_with_errors() -> None:
    faults = Faults(get_error_rate=1.0, get_error_statuses=(500,))
    async with simulator(faults=faults) as (sim, session):
        task_id = await create(session, {"prompt": "p"})
        one = await call(session, "GET", f"{OMNI}/{task_id}")
        listed = await call(session, "GET", OMNI)
    assert (one.status, one.json, listed.status) == (500, {"message": "Internal Server Error"}, 500)
    assert (sim.counters.status_gets, sim.counters.lists) == (1, 1)


@pytest.mark.anyio
async def test_random_after_create_faults_still_create_the_task() -> None:
    async with simulator() as (sim, session):
        sim.faults = Faults(post_500_after_create_rate=1.0)
        reply = await call(session, "POST", OMNI_STD, body={"prompt": "one"})
        sim.faults = Faults(drop_after_create_rate=1.0)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(session, "POST", OMNI_STD, body={"prompt": "two"})
    assert reply.status == 500
    assert sim.counters.tasks_created == 2


@pytest.mark.anyio
async def test_a_dropped_get_is_seen_twice_because_aiohttp_retries_idempotent_requests_once() -> None:
    async with simulator(faults=Faults(drop_before_rate=1.0)) as (sim, session):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(session, "GET", OMNI)
    assert sim.counters.lists == sim.counters.connections_dropped == 2


@pytest.mark.anyio
async def test_latency_counts_inside_max_concurrent_requests() -> None:
    async with simulator(faults=Faults(latency=0.05)) as (sim, session), anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(call, session, "GET", OMNI)
    assert sim.counters.max_concurrent_requests == 5


# counters


@pytest.mark.anyio
async def test_a_body_too_large_to_read_is_refused_with_a_json_message() -> None:
    """Over aiohttp's body limit, the 413 has the API's JSON ``message`` like every other error."""
    body = io.BytesIO(b" " * ((1 << 20) + 1))
    async with simulator() as (sim, session), session.post(OMNI_STD, data=body, headers=KEY) as response:
        reply = Reply(response.status, response.headers, await response.read())
    assert (reply.status, reply.headers["Content-Type"]) == (413, "application/json")
    [message] = reply.json.values()  # {"message": ...}: the phrase is Python's (renamed in 3.13)
    assert set(reply.json) == {"message"}
    assert message.endswith("Too Large")
    assert sim.counters.responses_by_status == {413: 1}


@pytest.mark.anyio
async def test_requests_without_the_key_leave_nothing_per_payload_or_per_task_id() -> None:
    """A long-running simulator keeps no memory for callers without its key: each new body or task id
    would add an entry for ever. The totals still count them."""
    async with simulator(api_key="sim-key") as (sim, session):
        for index in range(3):
            await call(session, "POST", OMNI_STD, body={"prompt": f"p{index}"}, headers={})
            await call(session, "GET", f"{OMNI}/unknown-{index}", headers={"x-freepik-api-key": "wrong"})
    counters = sim.counters
    assert (counters.posts, counters.status_gets) == (3, 3)
    assert (counters.posts_by_payload, counters.gets_by_task) == ({}, {})
    assert counters.responses_by_status == {401: 6}


@pytest.mark.anyio
async def test_counters_key_payloads_without_webhook_url_and_find_duplicates() -> None:
    async with simulator() as (sim, session):
        first = await create(
            session, {"prompt": "p", "duration": "5", "webhook_url": "https://a.example/hook"}
        )
        await create(session, {"duration": "5", "prompt": "p", "webhook_url": "https://b.example/hook"})
        sim.queue_fault("503")
        await call(session, "POST", OMNI_STD, body={"prompt": "retried"})
        await create(session, {"prompt": "retried"})
        await status(session, first)
        await status(session, first)
        await call(session, "GET", OMNI)
    counters = sim.counters
    key = msgspec.json.encode({"duration": "5", "prompt": "p"}, order="sorted")
    retried = msgspec.json.encode({"prompt": "retried"}, order="sorted")
    assert counters.posts == 4
    assert counters.posts_by_payload == {key: 2, retried: 2}
    assert counters.tasks_created == 3
    assert counters.duplicate_payloads() == [key]
    assert (counters.status_gets, counters.gets_by_task, counters.lists) == (2, {first: 2}, 1)
    assert counters.status_requests_per_task() == 1.0
    assert counters.responses_by_status == {200: 6, 503: 1}


# the CDN


async def completed_url(sim: Simulator, session: aiohttp.ClientSession) -> str:
    task_id = await create(session, {"prompt": "p"})
    sim.finish(task_id)
    url: str = (await status(session, task_id))["generated"][0]
    return url


def test_the_sample_is_a_small_mp4_package_resource() -> None:
    data = (resources.files("kling_async.testing") / "sample.mp4").read_bytes()
    assert data[4:8] == b"ftyp"
    assert b"avc1" in data
    assert len(data) < 20_000


@pytest.mark.anyio
async def test_the_cdn_serves_the_mp4_whole_and_by_range() -> None:
    sample = (resources.files("kling_async.testing") / "sample.mp4").read_bytes()
    async with simulator() as (sim, session):
        url = await completed_url(sim, session)
        whole = await call(session, "GET", url, headers={})
        part = await call(session, "GET", url, headers={"Range": "bytes=10-19"})
        tail = await call(session, "GET", url, headers={"Range": "bytes=-5"})
        rest = await call(session, "GET", url, headers={"Range": f"bytes={len(sample) - 30}-"})
        past = await call(session, "GET", url, headers={"Range": f"bytes={len(sample)}-"})
        assert url.startswith(sim.cdn_url + "/files/")
    assert (whole.status, whole.raw, whole.headers["Accept-Ranges"]) == (200, sample, "bytes")
    assert whole.headers["Content-Type"] == "video/mp4"
    assert int(whole.headers["Content-Length"]) == len(sample)
    assert (part.status, part.raw, part.headers["Content-Range"]) == (
        206,
        sample[10:20],
        f"bytes 10-19/{len(sample)}",
    )
    assert (tail.status, tail.raw) == (206, sample[-5:])
    assert rest.raw == sample[-30:]
    assert (past.status, past.headers["Content-Range"]) == (416, f"bytes */{len(sample)}")
    assert sim.counters.downloads == 4


@pytest.mark.anyio
@pytest.mark.parametrize(
    "header", ["bytes=" + "1" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=\u0661-\u0662"]
)
async def test_a_range_of_absurd_or_foreign_digits_is_ignored_and_the_whole_file_served(header: str) -> None:
    """Past any file's size (int() raises past 4,300 digits) or in another script's digits, a Range is
    malformed: ignored, as RFC 9110 allows, instead of a server error or a range of other bytes."""
    sample = (resources.files("kling_async.testing") / "sample.mp4").read_bytes()
    async with simulator() as (sim, session):
        url = await completed_url(sim, session)
        reply = await call(session, "GET", url, headers={"Range": header})
    assert (reply.status, reply.raw) == (200, sample)


@pytest.mark.anyio
async def test_no_range_serves_the_whole_file_without_accept_ranges() -> None:
    async with simulator(faults=Faults(no_range=True)) as (sim, session):
        url = await completed_url(sim, session)
        reply = await call(session, "GET", url, headers={"Range": "bytes=10-19"})
    assert reply.status == 200
    assert "Accept-Ranges" not in reply.headers
    assert len(reply.raw) == int(reply.headers["Content-Length"]) > 10


@pytest.mark.anyio
async def test_cut_download_after_sends_that_many_bytes_then_drops() -> None:
    async with simulator(faults=Faults(cut_download_after=100)) as (sim, session):
        url = await completed_url(sim, session)
        received = bytearray()

        async def download() -> None:
            async with session.get(url) as response:
                async for chunk in response.content.iter_any():
                    received.extend(chunk)

        with pytest.raises(aiohttp.ClientPayloadError):
            await download()
        resumed = await call(session, "GET", url, headers={"Range": "bytes=100-149"})
    assert len(received) == 100
    assert resumed.status == 206
    assert len(resumed.raw) == 50


@pytest.mark.anyio
async def test_a_client_hanging_up_on_a_paced_download_is_no_server_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with simulator(faults=Faults(download_pace=0.05)) as (sim, session):
        url = await completed_url(sim, session)
        async with session.get(url) as response:
            await response.content.readexactly(1024)  # the first piece, then the client gives up
        await anyio.sleep(0.2)  # the server's next pieces find the connection gone
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


@pytest.mark.anyio
async def test_the_cdn_counts_requests_that_carry_an_api_key() -> None:
    async with simulator() as (sim, session):
        url = await completed_url(sim, session)
        await call(session, "GET", url, headers={})
        await call(session, "GET", url, headers={"x-freepik-api-key": "sim-key"})
        await call(session, "GET", url, headers={"x-magnific-api-key": "sim-key"})
    assert sim.counters.cdn_requests_with_key == 2


@pytest.mark.anyio
async def test_the_cdn_404s_unknown_and_unfinished_files() -> None:
    async with simulator(queue_seconds=1000) as (sim, session):
        task_id = await create(session, {"prompt": "p"})
        unfinished = await call(session, "GET", f"{sim.cdn_url}/files/{task_id}.mp4", headers={})
        unknown = await call(session, "GET", f"{sim.cdn_url}/files/{uuid.uuid4()}.mp4", headers={})
    assert (unfinished.status, unknown.status) == (404, 404)


@pytest.mark.anyio
async def test_result_urls_expire_after_url_ttl_and_a_fresh_status_signs_anew() -> None:
    async with simulator(url_ttl=0.05) as (sim, session):
        url = await completed_url(sim, session)
        fresh = await call(session, "GET", url, headers={})
        await anyio.sleep(0.06)
        expired = await call(session, "GET", url, headers={})
        forged = await call(session, "GET", url.replace("sig=", "sig=0"), headers={})
        renewed = await call(
            session, "GET", (await status(session, next(iter(sim.tasks))))["generated"][0], headers={}
        )
    assert "expires=" in url
    assert "sig=" in url
    assert (fresh.status, expired.status, forged.status, renewed.status) == (200, 403, 403, 200)


# webhooks


class Receiver:
    """A webhook endpoint on loopback that records every delivery."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def _receive(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
            yield self
        finally:
            await runner.cleanup()

    async def wait_for(self, count: int, seconds: float = 2.0) -> list[tuple[dict[str, str], Any]]:
        await eventually(lambda: len(self.deliveries) >= count, seconds)
        return [(headers, msgspec.json.decode(raw)) for headers, raw in self.deliveries]


def verifies(secret: str, headers: dict[str, str], raw: bytes) -> bool:
    """Check a delivery's signature the way the API doc describes, independently of the simulator."""
    key = base64.b64decode(secret[len("whsec_") :]) if secret.startswith("whsec_") else secret.encode()
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{raw.decode()}".encode()
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    entries = headers["webhook-signature"].split(" ")
    return any(entry == f"v1,{expected}" for entry in entries)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "secret", ["plain-dashboard-secret", "whsec_" + base64.b64encode(b"sixteen byte key").decode()]
)
async def test_webhooks_deliver_each_status_change_signed_without_the_data_wrapper(secret: str) -> None:
    async with Receiver().running() as receiver, simulator(webhook_secret=secret) as (sim, session):
        task_id = await create(session, {"prompt": "p", "webhook_url": receiver.url})
        deliveries = await receiver.wait_for(2)
        assert deliveries[1][1] == {
            "task_id": task_id,
            "status": "COMPLETED",
            "generated": [f"{sim.cdn_url}/files/{task_id}.mp4"],
        }
    assert [body["status"] for _, body in deliveries] == ["IN_PROGRESS", "COMPLETED"]
    for headers, raw in receiver.deliveries:
        assert verifies(secret, headers, raw)
        assert headers["webhook-id"].startswith("msg_")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert len({headers["webhook-id"] for headers, _ in receiver.deliveries}) == 2
    assert sim.counters.webhooks_sent == 2


@pytest.mark.anyio
async def test_a_status_change_during_a_slow_delivery_is_delivered_after_it() -> None:
    """The task finishes while its IN_PROGRESS delivery is still on its way; COMPLETED follows anyway."""
    async with (
        Receiver().running() as receiver,
        simulator(webhook_secret="s", faults=Faults(webhook_delay=0.2), queue_seconds=0) as (_, session),
    ):
        await create(session, {"prompt": "p", "webhook_url": receiver.url})  # a 60 s generation: 60 ms
        deliveries = await receiver.wait_for(2)
    assert [body["status"] for _, body in deliveries] == ["IN_PROGRESS", "COMPLETED"]


@pytest.mark.anyio
async def test_a_receiver_that_never_answers_does_not_hold_up_deliveries_to_the_others() -> None:
    """Deliveries hanging on one receiver do not take the connections the others' deliveries need."""
    hung = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await hung.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", never)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        silent = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        async with (
            Receiver().running() as receiver,
            simulator(webhook_secret="s", time_scale=1e-4) as (_, session),
        ):
            for index in range(110):  # each task's first delivery holds a connection: 110 of them
                await create(session, {"prompt": f"p{index}", "webhook_url": silent})
            await create(session, {"prompt": "healthy", "webhook_url": receiver.url})
            # Held up, they would never come; 10 s is for a CI machine running two suites on two cores,
            # where 2 s once ran out (the test takes 0.4 s here).
            deliveries = await receiver.wait_for(2, seconds=10.0)
            hung.set()
    finally:
        await runner.cleanup()
    assert [body["status"] for _, body in deliveries] == ["IN_PROGRESS", "COMPLETED"]


@pytest.mark.anyio
async def test_webhook_faults_reorder_duplicate_and_bad_signature() -> None:
    faults = Faults(webhook_reorder=True, webhook_duplicate_rate=1.0, webhook_bad_signature_rate=1.0)
    async with (
        Receiver().running() as receiver,
        simulator(webhook_secret="s", faults=faults) as (sim, session),
    ):
        await create(session, {"prompt": "p", "webhook_url": receiver.url})
        deliveries = await receiver.wait_for(4)
    assert [body["status"] for _, body in deliveries] == [
        "COMPLETED",
        "COMPLETED",
        "IN_PROGRESS",
        "IN_PROGRESS",
    ]
    assert deliveries[0][0]["webhook-id"] == deliveries[1][0]["webhook-id"]
    assert not any(verifies("s", headers, raw) for headers, raw in receiver.deliveries)
    assert sim.counters.webhooks_sent == 4


@pytest.mark.anyio
async def test_webhook_drop_rate_sends_nothing_and_counts_drops() -> None:
    faults = Faults(webhook_drop_rate=1.0)
    async with (
        Receiver().running() as receiver,
        simulator(webhook_secret="s", faults=faults) as (sim, session),
    ):
        task_id = await create(session, {"prompt": "p", "webhook_url": receiver.url})
        await wait_for(session, task_id, "COMPLETED")
        await eventually(lambda: sim.counters.webhooks_dropped == 2)
    assert receiver.deliveries == []
    assert sim.counters.webhooks_sent == 0


@pytest.mark.anyio
async def test_finish_by_hand_triggers_a_webhook() -> None:
    async with (
        Receiver().running() as receiver,
        simulator(webhook_secret="s", queue_seconds=0) as (sim, session),
    ):
        task_id = await create(session, {"prompt": "[never]", "webhook_url": receiver.url})
        assert [body["status"] for _, body in await receiver.wait_for(1)] == ["IN_PROGRESS"]
        sim.finish(task_id, "FAILED")
        deliveries = await receiver.wait_for(2)
    assert deliveries[1][1] == {"task_id": task_id, "status": "FAILED", "generated": []}


@pytest.mark.anyio
async def test_no_webhooks_without_a_secret() -> None:
    async with Receiver().running() as receiver, simulator() as (_, session):
        task_id = await create(session, {"prompt": "p", "webhook_url": receiver.url})
        await wait_for(session, task_id, "COMPLETED")
        await anyio.sleep(0.02)
    assert receiver.deliveries == []


@pytest.mark.anyio
async def test_an_unreachable_webhook_url_is_counted_as_a_failure() -> None:
    async with Receiver().running() as receiver:
        gone = receiver.url
    async with simulator(webhook_secret="s") as (sim, session):
        await create(session, {"prompt": "p", "webhook_url": gone})
        await eventually(lambda: sim.counters.webhook_failures == 2)
    assert sim.counters.webhooks_sent == 2


# lifecycle of the simulator itself


@pytest.mark.anyio
async def test_stop_is_prompt_with_requests_and_webhooks_pending() -> None:
    faults = Faults(webhook_delay=5.0)
    async with Receiver().running() as receiver:
        sim = Simulator(time_scale=0.001, webhook_secret="s", queue_seconds=0, faults=faults)
        await sim.start()
        async with aiohttp.ClientSession(sim.url) as session:
            await create(session, {"prompt": "p", "webhook_url": receiver.url})
            sim.queue_fault("latency", method="GET", seconds=5.0)

            async def hang() -> None:
                with contextlib.suppress(aiohttp.ClientError):
                    await call(session, "GET", OMNI)

            async with anyio.create_task_group() as group:
                group.start_soon(hang)
                await anyio.sleep(0.05)
                started = time.monotonic()
                await sim.stop()
                stopped = time.monotonic()
            await sim.stop()
    assert stopped - started < 1.5
    assert receiver.deliveries == []
    assert not sim.running
    with pytest.raises(RuntimeError, match="not running"):
        _ = sim.url


@pytest.mark.anyio
async def test_serve_forever_runs_until_cancelled() -> None:
    sim = Simulator()
    async with anyio.create_task_group() as group:
        group.start_soon(sim.serve_forever)
        await eventually(lambda: sim.running)
        async with aiohttp.ClientSession(sim.url) as session:
            assert (await call(session, "GET", OMNI)).status == 200
        group.cancel_scope.cancel()
    assert repr(sim) == "<Simulator not running tasks=0 posts=0>"


def test_the_public_surface_is_sorted_and_says_kling_async_testing() -> None:
    names = kling_async.testing.__all__
    assert names == sorted(names)
    assert all(getattr(kling_async.testing, name).__module__ == "kling_async.testing" for name in names)
    # "@py_builtins" and "@pytest_ar": pytest rewrites the asserts of a plugin's package, this one included.
    public = [name for name in dir(kling_async.testing) if not name.startswith(("_", "@"))]
    assert not [name for name in public if name not in names]


def test_the_simulator_imports_nothing_from_the_client() -> None:
    """It re-implements the server independently, so it can catch the client's mistakes."""
    package = Path(kling_async.testing.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 1 or not (node.module or "").startswith("kling_async"), source
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("kling_async") for alias in node.names), source


@pytest.mark.anyio
async def test_adopt_unknown_turns_a_never_seen_task_id_into_a_running_task() -> None:
    task_id = "7d4f4bb0-3a43-4c7b-9d38-2b1d6a3c8e11"
    async with (
        Simulator(time_scale=0.001, adopt_unknown=True) as sim,
        aiohttp.ClientSession() as session,
        session.get(
            f"{sim.url}/v1/ai/video/kling-v3-omni/{task_id}", headers={"x-freepik-api-key": "sim-key"}
        ) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["data"]["task_id"] == task_id
        assert task_id in sim.tasks
