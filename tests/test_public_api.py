"""The package's front door: one sorted, complete __all__, no private names, public module names."""

from __future__ import annotations

import subprocess
import sys
import types

import kling_async
import kling_async.testing


def _public_names(module: types.ModuleType) -> set[str]:
    # dir(), not vars(): the package binds its names on first use (its front door is lazy).
    return {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(getattr(module, name), types.ModuleType)
        and name != "annotations"
    }


def test_all_is_sorted() -> None:
    assert kling_async.__all__ == sorted(kling_async.__all__, key=lambda n: (not n.isupper(), n))


def test_all_names_exactly_what_the_package_exports() -> None:
    assert set(kling_async.__all__) == _public_names(kling_async)


def test_no_private_name_is_exported() -> None:
    assert [name for name in kling_async.__all__ if name.startswith("_")] == []


def test_public_classes_say_they_live_in_kling_async() -> None:
    for name in kling_async.__all__:
        value = getattr(kling_async, name)
        if isinstance(value, type):
            assert value.__module__ == "kling_async", name


def test_testing_exports_its_public_names_sorted() -> None:
    assert kling_async.testing.__all__ == sorted(kling_async.testing.__all__)
    assert set(kling_async.testing.__all__) == _public_names(kling_async.testing)


def test_the_design_contract_names_are_all_there() -> None:
    contract = {
        "KlingClient",
        "OmniRequest",
        "Element",
        "PollPolicy",
        "RetryPolicy",
        "Job",
        "Outcome",
        "TaskHandle",
        "TaskResult",
        "TaskStatus",
        "verify_webhook",
        "WebhookReceiver",
        "KlingError",
        "InvalidRequestError",
        "APIError",
        "BadRequestError",
        "AuthenticationError",
        "NotFoundError",
        "RateLimitError",
        "ServerError",
        "TransportError",
        "TaskFailedError",
        "TaskTimeoutError",
        "SubmitUncertainError",
        "WebhookVerificationError",
    }
    assert contract <= set(kling_async.__all__)


def test_importing_reads_no_environment_and_starts_nothing() -> None:
    code = (
        "import os, threading, asyncio\n"
        "OURS = ('FREEPIK', 'MAGNIFIC', 'KLING')\n"
        "class Spy(dict):\n"
        "    def __getitem__(self, k):\n"
        "        if k.startswith(OURS): raise SystemExit('read ' + k)\n"
        "        return dict.__getitem__(self, k)\n"
        "    def get(self, k, d=None):\n"
        "        if k.startswith(OURS): raise SystemExit('read ' + k)\n"
        "        return dict.get(self, k, d)\n"
        "os.environ = Spy(os.environ)\n"
        "import kling_async, kling_async.testing\n"
        "assert threading.active_count() == 1\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_python_m_kling_async_is_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kling_async", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "batch" in done.stdout
