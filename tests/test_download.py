"""Downloads: whole files only at the target, resumed with Range, fresh URLs when the old ones expire."""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import formatdate
from importlib.resources import files
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from kling_async import DownloadError, KlingClient, OmniRequest, RetryPolicy, TaskResult, Timeouts
from kling_async._clock import SYSTEM_CLOCK
from kling_async._download import MAX_REDIRECTS, download_file, safe_file_name
from kling_async._transport import AiohttpTransport
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


async def test_a_url_into_a_folder_is_named_by_its_file_name(client: KlingClient, tmp_path: Path) -> None:
    """``.../TASK.mp4`` is saved as ``TASK.mp4``, not ``TASK.mp4.mp4``."""
    result = await _finished(client)
    assert result.url is not None
    path = await client.download(result.url, f"{tmp_path}/")
    assert path.name == f"{result.task_id}.mp4"


async def test_a_url_that_cannot_be_parsed_into_a_folder_is_a_download_error(
    client: KlingClient, tmp_path: Path
) -> None:
    with pytest.raises(DownloadError, match=r"GET http://\[::1/x: not a valid URL"):
        await client.download("http://[::1/x?sig=SECRET", f"{tmp_path}/")


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


# -- a file host of our own: other files, changed files, stalls, redirects, compression ----------------


class FileHost:
    """A tiny loopback file server whose misbehaviour each test sets, recording every request's headers."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.gzip: dict[str, bytes] = {}
        self.encoding = "gzip"  # the Content-Encoding the gzip bodies are labelled with
        self.cut_once: dict[str, int] = {}  # path -> bytes sent before the next answer is cut off
        self.cut_every: int | None = None  # every answer is cut off after this many bytes
        self.stall_once = 0.0  # seconds the first answer stops after its first piece
        self.pace = 0.0  # seconds between 1 KiB pieces
        self.chunked = False  # no Content-Length
        self.types: dict[str, str] = {}  # path -> Content-Type (default: application/octet-stream)
        self.lengths: dict[str, int] = {}  # path -> a stale Content-Length whole answers announce
        self.ranges_from_zero = False  # a Range is answered with a 206 from byte 0, whatever it asked
        self.validators = {"ETag"}  # sent with each answer; If-Range is ignored without an ETag
        self.held = anyio.Event()  # set to let answers proceed (when hold is on)
        self.hold = False
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.asked = anyio.Event()  # set at the first request
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.seen.append((path, dict(request.headers)))
        self.asked.set()
        if path in self.redirects:
            return web.Response(status=302, headers={"Location": self.redirects[path]})
        if path in self.gzip:
            return web.Response(body=self.gzip[path], headers={"Content-Encoding": self.encoding})
        data = self.files.get(path)
        if data is None:
            return web.Response(status=404)
        digest = hashlib.sha256(data).hexdigest()
        validators = {
            "ETag": f'"{digest[:16]}"',
            "Last-Modified": formatdate(int(digest[:8], 16), usegmt=True),
        }
        headers = {name: value for name, value in validators.items() if name in self.validators}
        etag = headers.get("ETag")
        status, start = 200, 0
        wanted = request.headers.get("Range", "")
        if wanted.startswith("bytes=") and (etag is None or request.headers.get("If-Range", etag) == etag):
            start = 0 if self.ranges_from_zero else int(wanted[6:].rstrip("-"))
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
        headers["Accept-Ranges"] = "bytes"
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        response = web.StreamResponse(status=status, headers=headers)
        if path in self.types:
            response.content_type = self.types[path]
        if not self.chunked:
            response.content_length = self.lengths.get(path, len(data) - start)
        await response.prepare(request)
        cut = self.cut_once.pop(path, self.cut_every)
        body = data[start:]
        sent = 0
        while sent < len(body):
            if self.hold:
                await self.held.wait()
            piece = body[sent : sent + 1024]
            if cut is not None and sent + len(piece) > cut:
                await response.write(piece[: cut - sent])
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(piece)
            sent += len(piece)
            if self.stall_once:
                stall, self.stall_once = self.stall_once, 0.0
                await anyio.sleep(stall)
            if self.pace:
                await anyio.sleep(self.pace)
        if path in self.lengths:  # short of its Content-Length: the connection ends the answer
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response


@pytest.fixture
async def host() -> AsyncIterator[FileHost]:
    file_host = FileHost()
    app = web.Application()
    app.router.add_get("/{tail:.*}", file_host.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    file_host.url = f"http://127.0.0.1:{port}"
    try:
        yield file_host
    finally:
        file_host.held.set()
        await runner.cleanup()


@asynccontextmanager
async def _transport(timeouts: Timeouts | None = None) -> AsyncIterator[AiohttpTransport]:
    transport = AiohttpTransport(
        base_url="http://127.0.0.1:9",
        auth_header=("x-freepik-api-key", "secret-key"),
        timeouts=timeouts or Timeouts(),
        connection_limit=8,
        trust_env=False,
    )
    await transport.open()
    try:
        yield transport
    finally:
        await transport.close()


async def _get(
    url: str,
    target: Path,
    *,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy = FAST_RETRY,
    source: str | None = None,
    deadline: float | None = None,
    max_bytes: int | None = None,
) -> Path:
    async with _transport(timeouts) as transport:
        return await download_file(
            transport,
            url,
            target,
            retry=retry,
            clock=SYSTEM_CLOCK,
            source=source,
            deadline=deadline,
            max_bytes=max_bytes,
        )


FILE_A = os.urandom(8 * 1024)
FILE_B = os.urandom(6 * 1024)
ONE_TRY = RetryPolicy(attempts=1)


async def test_a_part_file_of_another_video_is_started_over_not_resumed(
    host: FileHost, tmp_path: Path
) -> None:
    """Defect 11.9: a stale part from video A is never completed with the bytes of video B."""
    host.files.update({"/a.mp4": FILE_A, "/b.mp4": FILE_B + FILE_A[len(FILE_B) :]})
    host.cut_once["/a.mp4"] = 4096
    target = tmp_path / "clip.mp4"
    with pytest.raises(DownloadError):
        await _get(f"{host.url}/a.mp4", target, retry=ONE_TRY)
    path = await _get(f"{host.url}/b.mp4", target)
    assert path.read_bytes() == host.files["/b.mp4"]


async def test_a_part_whose_remote_file_changed_is_started_over(host: FileHost, tmp_path: Path) -> None:
    """The same URL serving another file (another size) since the break: the download starts over."""
    host.files["/clip.mp4"] = FILE_A
    host.cut_once["/clip.mp4"] = 4096
    target = tmp_path / "clip.mp4"
    with pytest.raises(DownloadError):
        await _get(f"{host.url}/clip.mp4", target, retry=ONE_TRY)
    host.files["/clip.mp4"] = FILE_B + os.urandom(4096)
    path = await _get(f"{host.url}/clip.mp4", target)
    assert path.read_bytes() == host.files["/clip.mp4"]


async def test_a_part_of_the_same_file_is_resumed_with_if_range(host: FileHost, tmp_path: Path) -> None:
    """The part of the same file resumes from where it broke, guarded by the file's ETag."""
    host.files["/clip.mp4"] = FILE_A
    host.cut_once["/clip.mp4"] = 4096
    path = await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4")
    assert path.read_bytes() == FILE_A
    assert [headers.get("Range") for _, headers in host.seen] == [None, "bytes=4096-"]
    assert host.seen[1][1]["If-Range"].startswith('"')


async def test_a_symlink_planted_at_the_part_path_is_refused_and_its_target_untouched(
    host: FileHost, tmp_path: Path
) -> None:
    """Defect 11.9: the part file is opened with O_NOFOLLOW; an unrelated file behind a link stays whole."""
    host.files["/clip.mp4"] = FILE_A
    precious = tmp_path / "precious.txt"
    precious.write_bytes(b"do not touch")
    (tmp_path / ".clip.mp4.part").symlink_to(precious)
    with pytest.raises(DownloadError, match="symbolic link"):
        await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4")
    assert precious.read_bytes() == b"do not touch"
    assert host.seen == []


async def test_a_second_download_to_the_same_target_fails_cleanly_while_the_first_runs(
    host: FileHost, tmp_path: Path
) -> None:
    """Defect 11.9: two downloads never share a part file; the second fails cleanly, the first ends whole."""
    host.files["/clip.mp4"] = FILE_A
    host.hold = True
    target = tmp_path / "clip.mp4"
    paths: list[Path] = []

    async def first() -> None:
        paths.append(await _get(f"{host.url}/clip.mp4", target))

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await host.asked.wait()
        with pytest.raises(DownloadError, match="in progress"):
            await _get(f"{host.url}/clip.mp4", target)
        host.held.set()
    assert paths == [target]
    assert target.read_bytes() == FILE_A
    assert len(host.seen) == 1


async def test_a_download_locked_by_another_process_fails_cleanly(host: FileHost, tmp_path: Path) -> None:
    """The lock is an flock on the target's lock file, so it holds across processes too."""
    host.files["/clip.mp4"] = FILE_A
    holder = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', end='', flush=True)\n"
        "sys.stdin.read()\n"
    )
    async with await anyio.open_process(
        [sys.executable, "-c", holder, str(tmp_path / ".clip.mp4.lock")]
    ) as child:
        assert child.stdout is not None
        assert child.stdin is not None
        assert await child.stdout.receive() == b"locked"
        try:
            with pytest.raises(DownloadError, match="in progress"):
                await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4")
        finally:
            await child.stdin.aclose()
    assert host.seen == []


async def test_a_slow_download_is_not_cut_by_the_api_requests_total(host: FileHost, tmp_path: Path) -> None:
    """Defect 11.10: a transfer longer than Timeouts.total arrives in one GET, never restarted by it."""
    host.files["/clip.mp4"] = FILE_A
    host.pace = 0.05  # 8 pieces: about 0.4 s, twice the API total below
    timeouts = Timeouts(connect=1.0, read=0.1, total=0.2, download_idle=5.0)
    path = await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", timeouts=timeouts)
    assert path.read_bytes() == FILE_A
    assert len(host.seen) == 1


async def test_a_transfer_silent_for_download_idle_is_resumed(host: FileHost, tmp_path: Path) -> None:
    """A file host that stops sending mid-file is left after download_idle and the file resumed."""
    host.files["/clip.mp4"] = FILE_A
    host.stall_once = 3.0
    timeouts = Timeouts(download_idle=0.2)
    path = await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", timeouts=timeouts)
    assert path.read_bytes() == FILE_A
    assert [headers.get("Range") for _, headers in host.seen] == [None, "bytes=1024-"]


async def test_the_download_deadline_ends_a_download_that_never_finishes(
    host: FileHost, tmp_path: Path
) -> None:
    """A file trickling in forever ends at the download's own deadline with a DownloadError."""
    host.files["/clip.mp4"] = os.urandom(1024 * 1024)
    host.pace = 0.02
    with pytest.raises(DownloadError, match="deadline"):
        await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", deadline=0.3)
    assert not (tmp_path / "clip.mp4").exists()


async def test_tries_that_make_progress_do_not_use_up_the_attempts(host: FileHost, tmp_path: Path) -> None:
    """Defect 11.10: a link that breaks every 1 KiB still delivers the file with only 3 attempts."""
    host.files["/clip.mp4"] = FILE_A
    host.cut_every = 1000
    retry = RetryPolicy(attempts=3, initial=0.001, maximum=0.001)
    path = await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", retry=retry)
    assert path.read_bytes() == FILE_A
    assert len(host.seen) == -(-len(FILE_A) // 1000)


async def test_a_redirect_on_the_same_scheme_is_followed(host: FileHost, tmp_path: Path) -> None:
    """http to http (https to https) redirects are followed, without the key."""
    host.files["/real.mp4"] = FILE_A
    host.redirects["/moved.mp4"] = f"{host.url}/real.mp4"
    path = await _get(f"{host.url}/moved.mp4", tmp_path / "clip.mp4")
    assert path.read_bytes() == FILE_A
    assert [p for p, _ in host.seen] == ["/moved.mp4", "/real.mp4"]
    assert all("x-freepik-api-key" not in {k.lower() for k in h} for _, h in host.seen)


async def test_a_redirect_to_another_scheme_is_refused(host: FileHost, tmp_path: Path) -> None:
    """Defect 11.10: a redirect that changes the scheme is a DownloadError, not followed."""
    host.redirects["/moved.mp4"] = "https://127.0.0.1:9/real.mp4"
    with pytest.raises(DownloadError, match="only http redirects are followed"):
        await _get(f"{host.url}/moved.mp4", tmp_path / "clip.mp4")
    assert len(host.seen) == 1


async def test_a_redirect_loop_ends_after_the_redirect_limit(host: FileHost, tmp_path: Path) -> None:
    """Redirects are bounded: more than MAX_REDIRECTS in a row is a DownloadError."""
    host.redirects["/loop.mp4"] = "/loop.mp4"
    with pytest.raises(DownloadError, match="redirects in a row"):
        await _get(f"{host.url}/loop.mp4", tmp_path / "clip.mp4")
    assert len(host.seen) == MAX_REDIRECTS + 1


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_file_over_max_bytes_is_refused_and_nothing_is_kept(
    host: FileHost, tmp_path: Path, chunked: bool
) -> None:
    """With or without a Content-Length, a body over max_bytes ends the download and leaves no file."""
    host.files["/clip.mp4"] = FILE_A
    host.chunked = chunked
    with pytest.raises(DownloadError, match="max_bytes"):
        await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", max_bytes=4000)
    assert [p.name for p in tmp_path.iterdir()] == []


async def test_a_compressed_body_is_capped_by_its_inflated_size(host: FileHost, tmp_path: Path) -> None:
    """Defect 11.10: a gzip bomb (8 MiB of zeros in a few KiB) never inflates past max_bytes."""
    host.gzip["/clip.mp4"] = gzip.compress(bytes(8 * 1024 * 1024))
    with pytest.raises(DownloadError, match="max_bytes"):
        await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", max_bytes=1024 * 1024)
    assert [p.name for p in tmp_path.iterdir()] == []


async def test_files_are_asked_for_uncompressed(host: FileHost, tmp_path: Path) -> None:
    """Downloads send Accept-Encoding: identity (a video gains nothing from compression)."""
    host.files["/clip.mp4"] = FILE_A
    await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4")
    assert host.seen[0][1]["Accept-Encoding"] == "identity"


async def test_no_lock_part_or_record_file_is_left_after_a_download(host: FileHost, tmp_path: Path) -> None:
    """After success, only the target remains: the lock and the part's record are removed too."""
    host.files["/clip.mp4"] = FILE_A
    host.cut_once["/clip.mp4"] = 2048
    await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


# -- hostile file hosts ---------------------------------------------------------------------------------

THREE_TRIES = RetryPolicy(attempts=3, initial=0.001, maximum=0.001)


@pytest.mark.parametrize("resume", ["answered 416", "answered from byte 0"])
async def test_a_file_that_breaks_at_the_same_byte_every_time_fails_after_the_policy_tries(
    host: FileHost, tmp_path: Path, resume: str
) -> None:
    """Bytes a started-over part gets again are no progress: the RetryPolicy ends the loop."""
    if resume == "answered 416":  # the file has 5000 bytes; a stale Content-Length says 8 KiB
        host.files["/clip.mp4"] = FILE_A[:5000]
        host.lengths["/clip.mp4"] = len(FILE_A)
    else:
        host.files["/clip.mp4"] = FILE_A
        host.cut_every = 5000
        host.ranges_from_zero = True
    # The download deadline only ends the test if the loop never does.
    with pytest.raises(DownloadError, match="failed after 3 tries"):
        await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", retry=THREE_TRIES, deadline=10.0)
    assert len(host.seen) == 3


async def test_a_malformed_url_is_a_download_error_naming_it_without_its_query(tmp_path: Path) -> None:
    """A URL that cannot be parsed is this download's DownloadError, never a bare ValueError."""
    with pytest.raises(DownloadError, match=r"GET http://\[::1/clip\.mp4: not a valid URL") as caught:
        await _get("http://[::1/clip.mp4?sig=secret", tmp_path / "clip.mp4")
    assert "secret" not in str(caught.value)


async def test_a_redirect_to_a_malformed_url_is_a_download_error_at_once(
    host: FileHost, tmp_path: Path
) -> None:
    """A Location that cannot be parsed is not followed, nor asked for again."""
    host.redirects["/moved.mp4"] = "http://[oops/clip.mp4?sig=secret"
    with pytest.raises(
        DownloadError, match=r"redirected to http://\[oops/clip\.mp4: not a valid URL"
    ) as caught:
        await _get(f"{host.url}/moved.mp4", tmp_path / "clip.mp4")
    assert "secret" not in str(caught.value)
    assert len(host.seen) == 1


@pytest.mark.parametrize(
    "kind", ["text/html; charset=utf-8", "application/json", "application/xml", "application/problem+json"]
)
async def test_an_error_page_answered_200_is_a_failed_try_never_the_file(
    host: FileHost, tmp_path: Path, kind: str
) -> None:
    """A CDN's or S3's error body sent with 200 is tried again, then a DownloadError; nothing is saved."""
    host.files["/clip.mp4"] = b"<html><body>Access denied</body></html>"
    host.types["/clip.mp4"] = kind
    with pytest.raises(DownloadError, match="an error page"):
        await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", retry=THREE_TRIES)
    assert len(host.seen) == 3
    assert list(tmp_path.iterdir()) == []


async def test_an_empty_answer_is_a_failed_try_never_the_file(host: FileHost, tmp_path: Path) -> None:
    """A 200 of 0 bytes is tried again, then a DownloadError; no empty video is saved."""
    host.files["/clip.mp4"] = b""
    with pytest.raises(DownloadError, match="empty"):
        await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", retry=THREE_TRIES)
    assert len(host.seen) == 3
    assert list(tmp_path.iterdir()) == []


async def test_a_gzip_body_cut_short_is_never_saved_as_the_file(host: FileHost, tmp_path: Path) -> None:
    """The body's framing is whole but its gzip stream ends early: a failed try, not a finished file."""
    compressed = gzip.compress(FILE_A)
    host.gzip["/clip.mp4"] = compressed[: len(compressed) // 2]
    with pytest.raises(DownloadError, match="does not end where its stream ends"):
        await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", retry=THREE_TRIES)
    assert not (tmp_path / "clip.mp4").exists()


async def test_a_file_host_that_compresses_anyway_is_inflated(host: FileHost, tmp_path: Path) -> None:
    """A gzip body despite Accept-Encoding: identity is saved inflated (a guard: the inflating moved here)."""
    host.gzip["/clip.mp4"] = gzip.compress(FILE_A)
    path = await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4")
    assert path.read_bytes() == FILE_A


async def test_a_content_encoding_that_is_not_inflated_here_is_a_download_error_at_once(
    host: FileHost, tmp_path: Path
) -> None:
    """Bodies come to the download code as sent; one it cannot inflate is refused, not retried."""
    host.gzip["/clip.mp4"] = gzip.compress(FILE_A)
    host.encoding = "br"
    with pytest.raises(DownloadError, match="Content-Encoding 'br'"):
        await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4")
    assert len(host.seen) == 1


@pytest.mark.parametrize("validator", ["ETag", "Last-Modified"])
async def test_a_resume_answer_without_the_parts_validator_starts_over(
    host: FileHost, tmp_path: Path, validator: str
) -> None:
    """A part recorded with an ETag (or Last-Modified) never takes a range that lacks it: no spliced file."""
    host.validators = {validator}
    host.files["/clip.mp4"] = FILE_A
    host.cut_once["/clip.mp4"] = 4096
    target = tmp_path / "clip.mp4"
    with pytest.raises(DownloadError):
        await _get(f"{host.url}/clip.mp4", target, retry=ONE_TRY)
    host.validators = set()  # a sloppy server now: no validators, If-Range ignored, and another version
    host.files["/clip.mp4"] = other = os.urandom(len(FILE_A))
    path = await _get(f"{host.url}/clip.mp4", target)
    assert path.read_bytes() == other


async def test_the_download_deadline_cuts_a_silent_read_short_of_download_idle(
    host: FileHost, tmp_path: Path
) -> None:
    """A read waits for the time left to the deadline, not for download_idle."""
    host.files["/clip.mp4"] = FILE_A
    host.hold = True
    timeouts = Timeouts(download_idle=3600.0)
    with anyio.fail_after(60), pytest.raises(DownloadError, match="deadline"):  # a hang guard
        await _get(f"{host.url}/clip.mp4", tmp_path / "clip.mp4", timeouts=timeouts, deadline=0.3)


@pytest.mark.parametrize("key", ["a b", "a b31"])  # "a b31": a key whose hash is digits alone
def test_an_id_named_like_a_hashed_name_gets_a_name_of_its_own(key: str) -> None:
    """``a b`` becomes ``a_b-<hash>``; an id that is literally that name must not share its file."""
    hashed = key.replace(" ", "_") + "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    assert safe_file_name(hashed) != safe_file_name(key)


def test_a_clean_id_ending_in_a_number_keeps_its_name() -> None:
    """A guard: ``shot-20240517`` is not taken for a hashed name (hashed names carry a letter)."""
    assert safe_file_name("shot-20240517") == "shot-20240517.mp4"


# A child process downloads into a folder with no room for the file, and lists the folder afterwards.
NO_ROOM_CHILD = """
import asyncio, os, resource, signal, sys
from kling_async import DownloadError, KlingClient

async def main(url, folder):
    async with KlingClient("key", "http://127.0.0.1:9") as client:
        try:
            await client.download(url, os.path.join(folder, "clip.mp4"))
        except DownloadError as exc:
            print(exc)
    print(sorted(os.listdir(folder)))

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.slow
async def test_a_part_that_ran_out_of_room_is_deleted(host: FileHost, tmp_path: Path) -> None:
    """The part holds the space the rest needs and cannot be resumed there: it goes, and the error says so.

    The room runs out at a file size limit (EFBIG), which every machine can set for a child process; a full
    disk (ENOSPC) and a quota (EDQUOT) take the same way (`_NO_ROOM`), but need a small filesystem to show.
    """
    host.files["/clip.mp4"] = os.urandom(256 * 1024)
    folder = tmp_path / "videos"
    folder.mkdir()
    command = [sys.executable, "-c", NO_ROOM_CHILD, f"{host.url}/clip.mp4", str(folder)]
    done = await anyio.run_process(command, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, check=False)
    message, listing = done.stdout.decode().strip().splitlines()
    assert "the partial file was deleted" in message
    assert listing == "[]"
