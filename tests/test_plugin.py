"""The pytest plugin, run as a user runs it: pytest in a subprocess, on a user's test file.

The subprocess is given no ``-p`` option: the plugin is loaded through the package's ``pytest11`` entry
point, as installing the package registers it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
GUIDE = ROOT / "docs" / "guides" / "testing.md"

pytestmark = pytest.mark.slow

# The key and address variables, and this run's own pytest settings (PYTEST_ADDOPTS, PYTEST_CURRENT_TEST).
_NOT_INHERITED = ("FREEPIK", "MAGNIFIC", "KLING", "PYTEST")


def _pytest(tmp_path: Path, code: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``code`` saved as ``test_user.py`` in an empty folder (no project configuration)."""
    (tmp_path / "test_user.py").write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", "-q", *options]
    return subprocess.run(
        [*command, "test_user.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def _passed(done: subprocess.CompletedProcess[str]) -> int:
    """How many tests passed; fails with pytest's output when any did not."""
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.fullmatch(r"(\d+) passed in .*", summary)
    assert match is not None, done.stdout + done.stderr
    return int(match[1])


def _guide_test_file() -> str:
    """The user's test file shown in the testing guide (the block titled ``test_render.py``)."""
    text = GUIDE.read_text(encoding="utf-8")
    match = re.search(r'^```py title="test_render.py"\n(.*?)^```$', text, re.MULTILINE | re.DOTALL)
    assert match is not None, "the testing guide has no test_render.py block"
    return match[1]


def test_the_testing_guides_user_tests_pass_with_the_fixture(tmp_path: Path) -> None:
    """The guide's test file, run by plain pytest: every test gets a running simulator."""
    assert _passed(_pytest(tmp_path, _guide_test_file())) == 4


def test_the_fixture_sets_no_environment_variable_and_stops_its_simulator(tmp_path: Path) -> None:
    """os.environ is the same during and after the test, and the simulator is stopped after it."""
    code = textwrap.dedent(
        """
        import os

        import pytest

        def environment():
            # pytest itself names the running test in PYTEST_CURRENT_TEST.
            return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


        BEFORE = environment()
        seen = []


        @pytest.mark.anyio
        async def test_uses_the_simulator(kling_simulator):
            seen.append(kling_simulator)
            assert kling_simulator.running
            assert environment() == BEFORE


        def test_after_it():
            (simulator,) = seen
            assert not simulator.running
            assert environment() == BEFORE
        """
    )
    assert _passed(_pytest(tmp_path, code)) == 2


def test_the_marker_passes_simulator_options_and_the_default_is_time_scaled(tmp_path: Path) -> None:
    """@pytest.mark.kling_simulator(...) reaches the Simulator; without it, time_scale is 0.001."""
    code = textwrap.dedent(
        """
        import pytest

        from kling_async import KlingClient, OmniRequest
        from kling_async.testing import Faults

        pytestmark = pytest.mark.anyio


        async def one_task(simulator, key):
            async with KlingClient(api_key=key, base_url=simulator.url) as client:
                await client.submit(OmniRequest(prompt="a fox"))
            (task,) = simulator.tasks.values()
            return task


        @pytest.mark.kling_simulator(api_key="other-key", faults=Faults(fail_rate=1.0), time_scale=0.5)
        async def test_marked(kling_simulator):
            task = await one_task(kling_simulator, "other-key")
            assert task.outcome == "FAILED"
            assert task.finishes_at - task.created_at == pytest.approx((2 + 60) * 0.5)


        async def test_unmarked(kling_simulator):
            task = await one_task(kling_simulator, "sim-key")
            assert task.outcome == "COMPLETED"
            assert task.finishes_at - task.created_at == pytest.approx((2 + 60) * 0.001)
        """
    )
    assert _passed(_pytest(tmp_path, code, "--strict-markers")) == 2


def test_pytest_without_anyios_plugin_still_runs_and_loads_the_plugin(tmp_path: Path) -> None:
    """With anyio's pytest plugin off, the installed plugin loads and breaks nothing."""
    code = textwrap.dedent(
        """
        def test_the_plugin_is_loaded_and_anyios_is_not(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("kling_async")
            assert not pytestconfig.pluginmanager.has_plugin("anyio")


        def test_a_plain_test():
            assert sum([1, 2]) == 3
        """
    )
    assert _passed(_pytest(tmp_path, code, "-p", "no:anyio")) == 2


def test_a_marker_with_a_positional_argument_is_an_error_that_says_so(tmp_path: Path) -> None:
    """Simulator options are keyword-only: a positional one fails the test's setup, naming the rule."""
    code = textwrap.dedent(
        """
        import pytest


        @pytest.mark.anyio
        @pytest.mark.kling_simulator(0.5)
        async def test_marked(kling_simulator):
            pass
        """
    )
    done = _pytest(tmp_path, code)
    assert done.returncode == 1
    assert "1 error" in done.stdout
    assert "@pytest.mark.kling_simulator: takes Simulator options by keyword only" in done.stdout
