"""Downloads: whole files only at the target, resumed with Range, fresh URLs when the old ones expire."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import anyio
import pytest

from kling_async import DownloadError, KlingClient, OmniRequest, RetryPolicy, TaskResult
from kling_async._download import safe_file_name
from kling_async.testing import Faults, Simulator
from tests.conftest import FAST_POLL, FAST_RETRY

pytestmark = pytest.mark.anyio

SAMPLE = (files("kling_async.testing") / "sample.mp4").read_bytes()


async def _finished(client: KlingClient) -> TaskResult:
    return await client.generate(OmniRequest(prompt="a fox"))


async def test_a_video_is_saved_whole_under_the_task_id(client: KlingClient, tmp_path: Path) -> None:
    result = await _finished(client)
    path = await client.download(result, tmp_path)
    assert path == tmp_path / f"{result.task_id}.mp4"
    assert path.read_bytes() == SAMPLE


async def test_a_torn_transfer_resumes_with_range_requests(
    client: KlingClient, sim: Simulator, tmp_path: Path
) -> None:
    result = await _finished(client)
    sim.faults = Faults(cut_download_after=1000)
    path = await client.download(result, tmp_path)
    assert path.read_bytes() == SAMPLE
    assert sim.counters.downloads == -(-len(SAMPLE) // 1000)  # one response per 1000-byte piece


async def test_a_server_that_cuts_every_transfer_and_ignores_range_is_a_download_error(
    sim: Simulator, tmp_path: Path
) -> None:
    retry = RetryPolicy(attempts=3, initial=0.001, maximum=0.001)
    async with KlingClient("sim-key", sim.url, poll=FAST_POLL, retry=retry) as client:
        result = await _finished(client)
        sim.faults = Faults(cut_download_after=1000, no_range=True)
        with pytest.raises(DownloadError, match="failed after 3 tries"):
            await client.download(result, tmp_path)
    assert not (tmp_path / f"{result.task_id}.mp4").exists()


async def test_an_expired_url_is_replaced_by_a_fresh_one_from_the_task(tmp_path: Path) -> None:
    async with (
        Simulator(time_scale=0.001, url_ttl=0.05) as sim,
        KlingClient("sim-key", sim.url, poll=FAST_POLL, retry=FAST_RETRY) as client,
    ):
        result = await _finished(client)
        await anyio.sleep(0.1)
        gets_before = sim.counters.status_gets
        path = await client.download(result, tmp_path)
        assert sim.counters.status_gets == gets_before + 1
    assert path.read_bytes() == SAMPLE


async def test_a_different_file_at_the_target_is_never_overwritten(
    client: KlingClient, tmp_path: Path
) -> None:
    result = await _finished(client)
    taken = tmp_path / "clip.mp4"
    taken.write_bytes(b"someone else's video")
    path = await client.download(result, tmp_path, name="clip")
    assert path == tmp_path / "clip-2.mp4"
    assert taken.read_bytes() == b"someone else's video"


async def test_the_same_file_already_at_the_target_is_kept_as_is(client: KlingClient, tmp_path: Path) -> None:
    result = await _finished(client)
    first = await client.download(result, tmp_path, name="clip")
    second = await client.download(result, tmp_path, name="clip")
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


async def test_a_file_path_target_is_used_as_given(client: KlingClient, tmp_path: Path) -> None:
    result = await _finished(client)
    path = await client.download(result, tmp_path / "nested" / "fox.mp4")
    assert path == tmp_path / "nested" / "fox.mp4"


async def test_a_plain_url_can_be_downloaded(client: KlingClient, tmp_path: Path) -> None:
    result = await _finished(client)
    assert result.url is not None
    path = await client.download(result.url, f"{tmp_path}/")
    assert path.read_bytes() == SAMPLE


async def test_no_part_file_is_left_after_a_successful_download(
    client: KlingClient, sim: Simulator, tmp_path: Path
) -> None:
    result = await _finished(client)
    sim.faults = Faults(cut_download_after=2000)
    await client.download(result, tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


@pytest.mark.parametrize("key", ["clip-01", "a/b\\c:d*e?f", "   ", "..", "é" * 300])
def test_file_names_from_keys_are_safe(key: str) -> None:
    name = safe_file_name(key)
    assert name.endswith(".mp4")
    assert "/" not in name
    assert "\\" not in name
    assert not name.startswith(".")
    assert len(name) <= 120


def test_names_windows_reserves_are_changed() -> None:
    assert safe_file_name("CON").upper() != "CON.MP4"


def test_distinct_keys_that_clean_alike_get_distinct_names() -> None:
    assert safe_file_name("a/b") != safe_file_name("a:b")
