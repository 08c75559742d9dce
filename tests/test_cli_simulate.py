"""``kling-async simulate``, run as a user runs it: a subprocess on loopback, stopped with a signal."""

from __future__ import annotations

import base64
import contextlib
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from kling_async import KlingClient, OmniRequest, TaskStatus, WebhookReceiver
from tests.conftest import FAST_POLL, FAST_RETRY
from tests.test_cli import FOREGROUND, ROOT, _cli, _env
from tests.test_cli_usage import _error_line

pytestmark = pytest.mark.anyio

# Started as a background job of a script does it (`kling-async simulate &`): SIGINT ignored, kept by exec.
_WITH_SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN);"
    " os.execv(sys.executable, [sys.executable, '-m', 'kling_async', *sys.argv[1:]])"
)


@dataclass
class _Running:
    """A ``kling-async simulate`` process whose banner has been read."""

    process: Process
    stderr: BufferedByteReceiveStream
    banner: str

    @property
    def url(self) -> str:
        match = re.search(r"^simulator on (\S+) ", self.banner)
        assert match is not None, self.banner
        return match[1]

    @property
    def cdn_url(self) -> str:
        match = re.search(r"; files on (\S+);", self.banner)
        assert match is not None, self.banner
        return match[1]

    @property
    def seed(self) -> str:
        match = re.search(r"^  seed (\d+):", self.banner, re.MULTILINE)
        assert match is not None, self.banner
        return match[1]

    async def stop(self, signum: signal.Signals) -> tuple[int, str]:
        """Send ``signum``; the exit code and what was written on stderr after the banner."""
        self.process.send_signal(signum)
        rest = bytearray()
        with anyio.fail_after(20):
            with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
                while True:
                    rest.extend(await self.stderr.receive())
            return await self.process.wait(), rest.decode()


@contextlib.asynccontextmanager
async def _simulate(
    *options: str, sigint_ignored: bool = False, env: dict[str, str] | None = None
) -> AsyncIterator[_Running]:
    """``kling-async simulate --port 0 --time-scale 0.001 OPTIONS``, running once its banner is out."""
    args = ["simulate", "--port", "0", "--time-scale", "0.001", *options]
    start = [sys.executable, "-c", _WITH_SIGINT_IGNORED] if sigint_ignored else FOREGROUND
    async with await anyio.open_process([*start, *args], env={**_env(), **(env or {})}, cwd=ROOT) as process:
        assert process.stderr is not None
        stderr = BufferedByteReceiveStream(process.stderr)
        lines: list[str] = []
        try:
            with anyio.fail_after(20):
                # The banner's last line says whether webhooks are delivered.
                while not lines or not lines[-1].startswith("  webhooks:"):
                    lines.append((await stderr.receive_until(b"\n", 64 * 1024)).decode())
            yield _Running(process, stderr, "\n".join(lines))
        finally:
            if process.returncode is None:
                process.kill()


def _client(running: _Running) -> KlingClient:
    return KlingClient(api_key="sim-key", base_url=running.url, poll=FAST_POLL, retry=FAST_RETRY)


async def _first_task_id(running: _Running) -> str:
    async with _client(running) as client:
        return (await client.submit(OmniRequest(prompt="a fox in snow"))).task_id


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- webhooks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["option", "environment"])
async def test_a_webhook_secret_sends_each_task_deliveries_the_sdk_receiver_verifies(given: str) -> None:
    """With --webhook-secret (or KLING_WEBHOOK_SECRET: an option shows in `ps`), a task's webhook_url
    gets deliveries ``WebhookReceiver(secret)`` accepts."""
    secret = "whsec_" + base64.b64encode(b"a simulator's signing key").decode()  # the banner says: as given
    options, env = (
        (["--webhook-secret", secret], {}) if given == "option" else ([], {"KLING_WEBHOOK_SECRET": secret})
    )
    send, receive = anyio.create_memory_object_stream[TaskStatus](100)
    async with (
        send,
        receive,
        _simulate(*options, env=env) as running,
        WebhookReceiver(secret) as receiver,
        _client(running) as client,
    ):
        receiver.add_listener(send.send_nowait)
        handle = await client.submit(OmniRequest(prompt="a steam train", webhook_url=receiver.url))
        with anyio.fail_after(10):
            async for task in receive:
                if task.task_id == handle.task_id and task.status == "COMPLETED":
                    break
        assert receiver.rejected == 0
        assert "webhooks: on" in running.banner
        assert secret not in running.banner  # the banner says which form to use, not the secret itself


async def test_without_a_webhook_secret_the_banner_says_webhook_urls_get_nothing() -> None:
    """No --webhook-secret: the banner says a webhook_url is accepted but nothing is delivered."""
    async with _simulate() as running:
        assert "webhook_url is accepted, but nothing is delivered" in running.banner
        assert "--webhook-secret" in running.banner


# -- task ids ---------------------------------------------------------------------------------------------


async def test_two_runs_without_a_seed_hand_out_different_task_ids() -> None:
    """Each run (a restart, a second instance) draws its own seed: a journaled id never names another job."""
    async with _simulate() as first, _simulate() as second:
        assert first.seed != second.seed
        assert await _first_task_id(first) != await _first_task_id(second)


async def test_the_seed_the_banner_prints_repeats_the_runs_task_ids() -> None:
    """``--seed N``, N the seed a run printed, hands out that run's task ids again."""
    async with _simulate() as first:
        seed, task_id = first.seed, await _first_task_id(first)
    async with _simulate("--seed", seed) as again:
        assert again.seed == seed
        assert await _first_task_id(again) == task_id


# -- the file host's port ---------------------------------------------------------------------------------


async def test_cdn_port_sets_the_port_result_files_are_served_from(tmp_path: Path) -> None:
    """--cdn-port N: the file host listens on N, and a finished task's video is fetched from there."""
    port = _free_port()
    async with _simulate("--cdn-port", str(port)) as running, _client(running) as client:
        assert running.cdn_url == f"http://127.0.0.1:{port}"
        result = await client.generate(OmniRequest(prompt="a fox in snow"))
        assert result.url is not None
        assert result.url.startswith(f"http://127.0.0.1:{port}/")
        saved = await client.download(result, tmp_path)
        assert Path(saved).stat().st_size > 0


# -- bad options ------------------------------------------------------------------------------------------

# Each: the options, then what the one error line must say (the option, and its rule).
BAD_OPTIONS = {
    "--time-scale nan": (["--time-scale", "nan"], "'--time-scale': nan is not a finite number"),
    "--time-scale inf": (["--time-scale", "inf"], "'--time-scale': inf is not in the range 0.001<=x<=1000"),
    # 60 ns generations: every task would be over before its POST is answered.
    "--time-scale 1e-9": (["--time-scale", "1e-9"], "'--time-scale': 1e-09 is not in the range 0.001<=x"),
    "--rate-limit inf": (["--rate-limit", "inf"], "'--rate-limit': inf is not a finite number"),
    "--rate-limit nan": (["--rate-limit", "nan"], "'--rate-limit': nan is not a finite number"),
    # A Retry-After of 300 digits.
    "--rate-limit 1e-300": (["--rate-limit", "1e-300"], "'--rate-limit': 1e-300 is not in the range x>=0.01"),
    "--fail-rate nan": (["--fail-rate", "nan"], "'--fail-rate': nan is not a finite number"),
    "--error-rate nan": (["--error-rate", "nan"], "'--error-rate': nan is not a finite number"),
    "an empty --api-key": (["--api-key", ""], "--api-key: must not be empty"),
    "an --api-key with a space at its end": (
        ["--api-key", "sim-key "],
        "--api-key: printable ASCII without spaces",
    ),
    "an empty --webhook-secret": (["--webhook-secret", ""], "--webhook-secret: must not be empty"),
    "a whsec_ --webhook-secret that is not base64": (
        ["--webhook-secret", "whsec_!!"],
        "--webhook-secret: webhook secret starts with 'whsec_' but the rest is not valid base64",
    ),
    "--cdn-port 70000": (["--cdn-port", "70000"], "'--cdn-port': 70000 is not in the range 0<=x<=65535"),
    "--cdn-port the same as --port": (
        ["--port", "18999", "--cdn-port", "18999"],
        "--cdn-port 18999: the same as --port",
    ),
}


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=list(BAD_OPTIONS))
async def test_a_bad_option_is_refused_with_one_line_naming_it_before_anything_listens(case: str) -> None:
    """An option out of its range (nan and inf included) exits 2 with one line naming it and its rule."""
    options, message = BAD_OPTIONS[case]
    with anyio.fail_after(30):  # an option wrongly accepted would serve until stopped
        done = await _cli(["simulate", "--port", "0", *options])
    assert done.returncode == 2, done.stderr
    assert message in _error_line(done.stderr)
    assert "simulator on" not in done.stderr


# -- stopping ---------------------------------------------------------------------------------------------


async def test_sigterm_and_a_hangup_stop_the_simulator_as_ctrl_c_does() -> None:
    """SIGTERM and SIGHUP (its terminal closed) close the servers and exit as Ctrl-C does (exit 0,
    "simulator stopped"), not death by the signal."""
    stops = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        async with _simulate() as running:
            stops.append(await running.stop(signum))
    assert stops == [(0, "simulator stopped\n")] * 3


async def test_a_background_simulator_ignores_ctrl_c_and_stops_on_sigterm() -> None:
    """Started with SIGINT ignored (`simulate &` in a script): Ctrl-C leaves it serving, SIGTERM stops it."""
    async with _simulate(sigint_ignored=True) as running:
        running.process.send_signal(signal.SIGINT)
        await anyio.sleep(0.5)  # time enough for a followed signal to stop it
        assert running.process.returncode is None
        assert await _first_task_id(running)  # still serving
        assert await running.stop(signal.SIGTERM) == (0, "simulator stopped\n")
