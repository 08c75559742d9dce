"""KlingClient against the simulator over real loopback HTTP: one task at a time."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import threading
import warnings
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from kling_async import (
    AuthenticationError,
    DownloadError,
    InvalidRequestError,
    Kling3Request,
    KlingClient,
    KlingError,
    NotFoundError,
    OmniRequest,
    RetryPolicy,
    ServerError,
    SubmitUncertainError,
    TaskFailedError,
    TaskTimeoutError,
    TransportError,
)
from kling_async._transport import AiohttpTransport
from kling_async.testing import Faults, Simulator
from tests.conftest import FAST_POLL, FAST_RETRY, client_side_tasks

pytestmark = pytest.mark.anyio

FOX = OmniRequest(prompt="a fox in snow", duration="5")


async def test_submit_makes_one_post_and_returns_a_created_handle(
    client: KlingClient, sim: Simulator
) -> None:
    handle = await client.submit(FOX)
    assert handle.status == "CREATED"
    assert handle.task_id in sim.tasks
    assert sim.counters.posts == 1


async def test_awaiting_a_handle_gives_the_result_with_its_video_url(
    client: KlingClient, sim: Simulator
) -> None:
    handle = await client.submit(FOX)
    result = await handle
    assert result.status == "COMPLETED"
    assert result.task_id == handle.task_id
    assert result.url is not None
    assert result.url.startswith(sim.cdn_url)
    assert result.urls == (result.url,)


async def test_generate_submits_and_waits(client: KlingClient, sim: Simulator) -> None:
    result = await client.generate(FOX, model="kling-v3-omni-pro")
    assert result.status == "COMPLETED"
    assert sim.tasks[result.task_id].model == "kling-v3-omni-pro"


async def test_a_task_already_completed_in_the_create_answer_keeps_its_video() -> None:
    async with (
        Simulator(generation_seconds=0.0, queue_seconds=0.0) as sim,
        KlingClient(api_key="sim-key", base_url=sim.url) as client,
    ):
        handle = await client.submit(FOX)  # a zero-length generation is COMPLETED in the POST's answer
        assert handle.done
        assert handle.result().url is not None
        assert sim.counters.status_gets == 0


async def test_refresh_sends_exactly_one_status_request(client: KlingClient, sim: Simulator) -> None:
    handle = await client.submit(FOX)
    status = await handle.refresh()
    assert status.task_id == handle.task_id
    assert sim.counters.gets_by_task[handle.task_id] == 1


async def test_status_is_asked_on_the_family_path_for_every_model(client: KlingClient) -> None:
    """The simulator 404s on /kling-v3-pro/{id}; a pro task still resolves, so the family path was used."""
    result = await client.generate(Kling3Request(prompt="a fox", duration="3"), model="kling-v3-pro")
    assert result.status == "COMPLETED"


async def test_failed_task_raises_task_failed_with_its_id(client: KlingClient) -> None:
    handle = await client.submit(OmniRequest(prompt="[fail] a fox"))
    with pytest.raises(TaskFailedError) as caught:
        await handle
    assert caught.value.task_id == handle.task_id
    assert caught.value.status == "FAILED"


async def test_cancelled_task_raises_task_failed(client: KlingClient, sim: Simulator) -> None:
    sim.faults.cancel_rate = 1.0
    handle = await client.submit(OmniRequest(prompt="a fox"))
    with pytest.raises(TaskFailedError) as caught:
        await handle
    assert caught.value.status == "CANCELLED"


async def test_deadline_raises_timeout_and_the_task_can_be_reattached_by_id(
    client: KlingClient, sim: Simulator
) -> None:
    handle = await client.submit(OmniRequest(prompt="[never] a fox"))
    with pytest.raises(TaskTimeoutError) as caught:
        await handle.wait(timeout=0.2)
    assert caught.value.task_id == handle.task_id
    assert caught.value.last_status == "IN_PROGRESS"
    sim.finish(handle.task_id)
    del handle
    gc.collect()
    again = client.task(caught.value.task_id, model="kling-v3-omni-pro")
    result = await again
    assert result.status == "COMPLETED"


async def test_a_task_reattached_with_the_wrong_models_family_is_reached_with_the_right_one(
    client: KlingClient, sim: Simulator
) -> None:
    task_id = (await client.submit(FOX)).task_id
    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL) as restarted:
        wrong = restarted.task(task_id, model="kling-v3-std")  # another family: its status path 404s
        with pytest.raises(NotFoundError):
            await wrong.refresh()
        right = restarted.task(task_id, model="kling-v3-omni-std")  # the wrong handle still held
        assert (await right).status == "COMPLETED"


BAD_TIMEOUTS = [math.nan, math.inf, -1, 0, "30", True]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
async def test_a_bad_timeout_for_generate_is_refused_before_the_post(
    client: KlingClient, sim: Simulator, timeout: object
) -> None:
    with pytest.raises(ValueError, match=r"^timeout: "):
        await client.generate(FOX, timeout=timeout)  # type: ignore[arg-type]
    assert sim.counters.posts == 0


@pytest.mark.parametrize("name", ["timeout", "batch_timeout"])
@pytest.mark.parametrize("value", BAD_TIMEOUTS, ids=repr)
async def test_a_bad_deadline_for_gather_is_refused_before_anything_is_sent(
    client: KlingClient, sim: Simulator, name: str, value: object
) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: "):
        await client.gather([FOX], **{name: value})  # type: ignore[arg-type]
    assert sim.counters.posts == 0


async def test_a_bad_timeout_for_a_wait_is_refused_before_any_check(
    client: KlingClient, sim: Simulator
) -> None:
    handle = client.task("3f1c6a52-7a40-4f0e-9a43-0c9d0a3c9b11")
    with pytest.raises(ValueError, match=r"^timeout: "):
        await handle.wait(timeout=math.nan)
    assert sim.counters.status_gets == 0


async def test_a_task_id_of_a_str_subclass_reaches_its_own_task_whatever_it_formats_as(
    client: KlingClient, sim: Simulator
) -> None:
    class Sneaky(str):
        __slots__ = ()

        def __format__(self, spec: str) -> str:
            return "../../elsewhere?x="

    task_id = (await client.submit(FOX)).task_id
    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL) as restarted:
        status = await restarted.task(Sneaky(task_id)).refresh()
    assert status.task_id == task_id


async def test_cancelling_a_wait_leaves_the_task_running_server_side(
    client: KlingClient, sim: Simulator
) -> None:
    handle = await client.submit(FOX)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await handle
    assert sim.tasks[handle.task_id].task_id == handle.task_id
    assert (await handle).status == "COMPLETED"


async def test_unknown_task_id_raises_not_found_with_the_id(client: KlingClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        await client.task("0000-unknown").refresh()
    assert caught.value.status == 404
    assert caught.value.task_id == "0000-unknown"


async def test_wrong_key_raises_authentication_error_with_the_servers_message(sim: Simulator) -> None:
    async with KlingClient(api_key="wrong", base_url=sim.url, retry=FAST_RETRY) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.submit(FOX)
    assert caught.value.status == 401
    assert caught.value.message == "Invalid API key"
    assert sim.counters.tasks_created == 0


@pytest.mark.parametrize("url", ["http://api.example/?v=1", "http://api.example/#top"])
def test_a_base_url_with_a_query_or_fragment_is_refused_when_built(url: str) -> None:
    # Every path would go after it, with the key: POST /?v=1/v1/ai/...
    with pytest.raises(KlingError, match="base_url: no query or fragment"):
        KlingClient(api_key="k", base_url=url)


@pytest.mark.parametrize("page", [1.5, True, "1"], ids=repr)
async def test_a_list_page_that_is_not_a_whole_number_is_refused_before_the_request(
    client: KlingClient, sim: Simulator, page: object
) -> None:
    with pytest.raises(InvalidRequestError, match=r"^page: a whole number"):
        await client.list_tasks(page=page)  # type: ignore[arg-type]
    assert sim.counters.lists == 0


@pytest.mark.parametrize("url", ["", "file:///etc/passwd", "ftp://127.0.0.1/x"])
async def test_a_download_of_a_url_that_is_not_http_fails_at_once(
    client: KlingClient, tmp_path: Path, url: str
) -> None:
    with pytest.raises(DownloadError, match=r"not an http\(s\) URL$"):
        await client.download(url, tmp_path)


async def test_a_download_into_a_folder_name_too_long_for_the_disk_is_a_download_error(
    client: KlingClient, tmp_path: Path
) -> None:
    result = await client.generate(FOX)
    with pytest.raises(DownloadError, match="File name too long"):
        await client.download(result, f"{tmp_path / ('a' * 300)}/")


@pytest.mark.parametrize("result", [123, None, {"url": "http://x"}], ids=repr)
async def test_a_download_of_something_that_is_no_result_names_the_argument(
    client: KlingClient, tmp_path: Path, result: object
) -> None:
    with pytest.raises(TypeError, match=r"^result: a TaskResult or a URL"):
        await client.download(result, tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "field"),
    [((None,), "requests"), ((5,), "requests"), (("a fox",), "requests"), (([FOX], 5), "download")],
    ids=["None", "a number", "a string", "download=5"],
)
async def test_a_batch_of_the_wrong_type_is_refused_naming_the_argument(
    client: KlingClient, sim: Simulator, arguments: tuple[object, ...], field: str
) -> None:
    requests, *download = arguments
    with pytest.raises(TypeError, match=f"^{field}: "):
        await client.gather(requests, download=download[0] if download else None)  # type: ignore[arg-type]
    assert sim.counters.posts == 0


async def test_a_batch_downloading_into_a_file_fails_before_any_post(
    client: KlingClient, sim: Simulator, tmp_path: Path
) -> None:
    (tmp_path / "videos").write_text("not a folder")
    with pytest.raises(DownloadError, match="download: cannot make the folder"):
        await client.gather([FOX], download=tmp_path / "videos")
    assert sim.counters.posts == 0


async def test_invalid_request_is_refused_before_anything_is_sent(
    client: KlingClient, sim: Simulator
) -> None:
    with pytest.raises(InvalidRequestError):
        await client.submit(OmniRequest(prompt="x" * 2501))
    assert sim.counters.posts == 0


async def test_request_of_another_family_is_refused_before_anything_is_sent(
    client: KlingClient, sim: Simulator
) -> None:
    with pytest.raises(InvalidRequestError, match="kling-v3-std takes Kling3Request"):
        await client.submit(FOX, model="kling-v3-std")
    assert sim.counters.posts == 0


# -- the POST rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["503", "429", "429-no-retry-after"])
async def test_post_answered_with_a_status_that_created_nothing_is_retried(
    client: KlingClient, sim: Simulator, kind: str
) -> None:
    sim.queue_fault(kind, method="POST")
    handle = await client.submit(FOX)
    assert sim.counters.posts == 2
    assert sim.counters.tasks_created == 1
    assert handle.task_id in sim.tasks


@pytest.mark.parametrize("kind", ["500_after_create", "drop_after_create", "502", "500", "drop_before"])
async def test_post_that_may_have_created_a_task_is_never_resent(
    client: KlingClient, sim: Simulator, kind: str
) -> None:
    sim.queue_fault(kind, method="POST")
    with pytest.raises(SubmitUncertainError) as caught:
        await client.submit(FOX)
    assert caught.value.model == "kling-v3-omni-std"
    assert sim.counters.posts == 1
    assert sim.counters.duplicate_payloads() == []


async def test_post_to_a_closed_port_is_retried_then_reported_as_a_transport_error() -> None:
    async with Simulator() as sim:
        url = sim.url
    retry = RetryPolicy(attempts=3, initial=0.001, maximum=0.001)
    async with KlingClient(api_key="k", base_url=url, retry=retry) as client:
        with pytest.raises(TransportError) as caught:
            await client.submit(FOX)
    assert caught.value.request_sent is False


async def test_post_503_until_attempts_run_out_raises_server_error_not_uncertain(
    client: KlingClient, sim: Simulator
) -> None:
    sim.queue_fault("503", method="POST", count=FAST_RETRY.attempts)
    with pytest.raises(ServerError):
        await client.submit(FOX)
    assert sim.counters.tasks_created == 0


@pytest.mark.parametrize("kind", ["500", "502_html", "503", "429", "429-no-retry-after", "drop_before"])
async def test_status_requests_retry_transient_failures(
    client: KlingClient, sim: Simulator, kind: str
) -> None:
    handle = await client.submit(FOX)
    sim.queue_fault(kind, method="GET", count=2)
    assert (await handle).status == "COMPLETED"


# -- configuration and lifecycle ---------------------------------------------------------------------


async def test_key_and_base_url_come_from_the_environment(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FREEPIK_API_KEY", "sim-key")
    monkeypatch.setenv("KLING_BASE_URL", sim.url)
    async with KlingClient(poll=FAST_POLL) as client:
        assert (await client.generate(FOX)).status == "COMPLETED"


async def test_magnific_key_is_used_when_the_freepik_one_is_absent(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FREEPIK_API_KEY", raising=False)
    monkeypatch.setenv("MAGNIFIC_API_KEY", "sim-key")
    async with KlingClient(base_url=sim.url) as client:
        await client.submit(FOX)
    assert sim.counters.tasks_created == 1


async def test_magnific_host_gets_the_magnific_header() -> None:
    client = KlingClient(api_key="k", base_url="https://api.magnific.com")
    assert isinstance(client._transport, AiohttpTransport)
    assert client._transport._auth == {"x-magnific-api-key": "k"}


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FREEPIK_API_KEY", raising=False)
    monkeypatch.delenv("MAGNIFIC_API_KEY", raising=False)
    with pytest.raises(KlingError, match="FREEPIK_API_KEY"):
        KlingClient()


def test_repr_never_shows_the_key() -> None:
    client = KlingClient(api_key="secret-key-123", base_url="http://127.0.0.1:1")
    assert "secret-key-123" not in repr(client)


async def test_the_key_never_leaves_for_the_file_host(
    client: KlingClient, sim: Simulator, tmp_path: object
) -> None:
    result = await client.generate(FOX)
    await client.download(result, f"{tmp_path}/")
    assert sim.counters.downloads == 1
    assert sim.counters.cdn_requests_with_key == 0


async def test_the_key_never_appears_in_logs(sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kling_async")
    sim.queue_fault("503", method="POST")
    async with KlingClient(api_key="sim-key", base_url=sim.url, retry=FAST_RETRY) as client:
        await client.submit(FOX)
    assert caplog.records
    assert "sim-key" not in caplog.text


async def test_a_closed_client_refuses_to_work(sim: Simulator) -> None:
    async with KlingClient(api_key="sim-key", base_url=sim.url) as client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await client.submit(FOX)


async def test_a_client_opened_by_one_task_can_be_closed_by_another(sim: Simulator) -> None:
    """An application's startup opens it, its shutdown hook (another task) closes it; the opener goes on."""
    before = client_side_tasks()
    client = KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL)
    opened, closed = anyio.Event(), anyio.Event()
    went_on: list[str] = []

    async def app() -> None:
        await client.__aenter__()
        opened.set()
        await closed.wait()
        went_on.append("after the close")

    async with anyio.create_task_group() as tg:
        tg.start_soon(app)
        await opened.wait()
        handle = await client.submit(FOX)
        await client.aclose()
        closed.set()
    assert went_on == ["after the close"]
    assert handle.task_id in sim.tasks
    assert client_side_tasks() == before


async def test_closing_the_client_inside_a_batch_block_ends_the_batch_not_its_caller(
    sim: Simulator,
) -> None:
    client = await KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL).__aenter__()

    async def close_inside_the_block() -> None:
        # Two tasks that never finish: the batch still runs when its client closes under it.
        never = OmniRequest(prompt="[never] a fox")
        async with client.map([FOX, never, never]) as outcomes:
            async for _ in outcomes:
                await client.aclose()

    with pytest.raises(RuntimeError, match=r"KlingClient .*closed"):
        await close_inside_the_block()
    await anyio.lowlevel.checkpoint()  # the caller's task is not cancelled by what the close left behind


async def test_a_batch_entered_a_second_time_is_refused_and_leaves_its_caller_whole(
    client: KlingClient,
) -> None:
    batch = client.map([FOX])
    async with batch as outcomes:
        assert [outcome.ok async for outcome in outcomes] == [True]
    with pytest.raises(RuntimeError, match="already started"):
        async with batch:
            pass
    await anyio.lowlevel.checkpoint()
    assert (await client.generate(FOX)).status == "COMPLETED"


async def test_submitting_past_max_in_flight_then_awaiting_every_handle_finishes(sim: Simulator) -> None:
    """Submit them all, then await them all: the handles held but not awaited yet hold every slot, and
    the client checks their tasks itself while a submission waits (it used to wait for good)."""
    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, max_in_flight=2) as client:
        with anyio.fail_after(20):
            handles = [await client.submit(FOX) for _ in range(5)]
            results = [await handle for handle in handles]
    assert [result.status for result in results] == ["COMPLETED"] * 5
    assert sim.counters.posts == 5


async def test_a_handle_that_outlived_its_client_says_how_to_reach_its_task(sim: Simulator) -> None:
    async with KlingClient(api_key="sim-key", base_url=sim.url) as client:
        handle = await client.submit(FOX)
    with pytest.raises(RuntimeError, match=rf"client.task\('{handle.task_id}', model='kling-v3-omni-std'\)"):
        await handle.wait()


async def test_closing_leaves_no_task_running_and_no_unclosed_session(sim: Simulator) -> None:
    before = client_side_tasks()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL) as client:
            handle = await client.submit(FOX)
            await handle
            del client, handle
        gc.collect()
    await asyncio.sleep(0)
    assert client_side_tasks() == before
    assert [str(w.message) for w in seen] == []


async def test_list_tasks_shows_a_task_whose_post_went_unanswered(
    client: KlingClient, sim: Simulator
) -> None:
    sim.queue_fault("drop_after_create", method="POST")
    with pytest.raises(SubmitUncertainError):
        await client.submit(FOX)
    (created,) = sim.tasks
    listed = await client.list_tasks(page_size=10)
    assert [summary.task_id for summary in listed] == [created]
    assert sim.counters.lists == 1


@pytest.mark.parametrize(("page", "page_size"), [(0, 10), (1, 0), (1, 101)])
async def test_list_tasks_refuses_pages_the_api_does_not_have(
    client: KlingClient, sim: Simulator, page: int, page_size: int
) -> None:
    with pytest.raises(InvalidRequestError):
        await client.list_tasks(page=page, page_size=page_size)
    assert sim.counters.lists == 0


async def test_a_create_answer_without_the_data_wrapper_gives_a_handle(sim: Simulator) -> None:
    """The vendor documents no create schema: the bare {task_id, status} form is a task too."""
    sim.faults = Faults(bare_create=True)
    async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL, retry=FAST_RETRY) as client:
        handle = await client.submit(OmniRequest(prompt="a fox"))
    assert handle.task_id in sim.tasks


async def test_a_client_used_from_another_event_loop_refuses_and_its_own_loop_goes_on(sim: Simulator) -> None:
    """Used from a loop that did not open it (another thread's), a client says so, sends nothing, and
    the thread that owns it goes on using it."""
    opened, used = threading.Event(), threading.Event()
    owned: list[KlingClient] = []
    created: list[str] = []

    async def owner() -> None:
        async with KlingClient(api_key="sim-key", base_url=sim.url, poll=FAST_POLL) as client:
            owned.append(client)
            opened.set()
            await asyncio.to_thread(used.wait, 10)
            created.append((await client.submit(FOX)).task_id)

    thread = threading.Thread(target=asyncio.run, args=(owner(),))
    thread.start()
    try:
        assert await anyio.to_thread.run_sync(opened.wait, 10)  # a hang guard
        with pytest.raises(RuntimeError, match="belongs to the event loop that opened it"):
            await owned[0].submit(FOX)
    finally:
        used.set()
        await anyio.to_thread.run_sync(thread.join, 10)
    assert created == list(sim.tasks)
