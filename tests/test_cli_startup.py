"""The command's startup: a Ctrl-C while it loads ends it as a Ctrl-C once it runs does (exit code 130, one
line, no traceback), and the lazy front door that makes that possible still exports the whole API."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import kling_async

# A harness for `python -c HARNESS MODULE`: this process gets a SIGINT (a Ctrl-C) at the moment MODULE is
# about to be imported, deterministically, with no sleep. The rest of the script then starts the command.
_CTRL_C_AT = """
import os, signal, sys

# As a terminal starts a command: a parent that ignores SIGINT (a background job of a script, `cmd &`)
# hands that on, and Python then keeps it ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

class CtrlCAt:
    def __init__(self, module):
        self.module, self.fired = module, False

    def find_spec(self, name, path=None, target=None):
        if name == self.module and not self.fired:
            self.fired = True
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCAt(sys.argv[1]))
"""

# What the console script pip generates does: import the entry point, call it, exit with its result.
_CONSOLE_SCRIPT = """
from importlib.metadata import entry_points

(entry_point,) = entry_points(group="console_scripts", name="kling-async")
sys.argv = ["kling-async", "--help"]
sys.exit(entry_point.load()())
"""

# What `python -m kling_async --help` does.
_PYTHON_M = """
import runpy

sys.argv = ["kling_async", "--help"]
runpy.run_module("kling_async", run_name="__main__", alter_sys=True)
"""

# Moments during the command's 0.4 s of imports: its first module, a heavy dependency, its last
# third-party import, and its last module of its own.
MOMENTS = ["kling_async._cli", "aiohttp", "rich.table", "kling_async._report"]


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c script args...`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("module", MOMENTS)
def test_ctrl_c_while_the_console_script_loads_exits_130_with_one_line(module: str) -> None:
    done = _run(_CTRL_C_AT + _CONSOLE_SCRIPT, module)
    assert (done.returncode, done.stderr, done.stdout) == (130, "interrupted\n", "")


@pytest.mark.parametrize("module", MOMENTS)
def test_ctrl_c_while_python_m_kling_async_loads_exits_130_with_one_line(module: str) -> None:
    done = _run(_CTRL_C_AT + _PYTHON_M, module)
    assert (done.returncode, done.stderr, done.stdout) == (130, "interrupted\n", "")


def test_sigterm_while_the_console_script_loads_exits_130_with_one_line() -> None:
    """Not death by the signal (exit -15, no word): the command's own answer to a SIGTERM."""
    sigterm_at = _CTRL_C_AT.replace(
        "os.kill(os.getpid(), signal.SIGINT)", "os.kill(os.getpid(), signal.SIGTERM)"
    )
    done = _run(sigterm_at + _CONSOLE_SCRIPT, "aiohttp")
    assert (done.returncode, done.stderr, done.stdout) == (130, "interrupted\n", "")


def test_an_ignored_sigint_stays_ignored_while_the_command_loads() -> None:
    """A command started with SIGINT ignored (a background job of a script) is not stopped by one."""
    ignore = "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    done = _run(_CTRL_C_AT + ignore + _CONSOLE_SCRIPT, "aiohttp")
    assert (done.returncode, done.stderr) == (0, "")
    assert "Usage: kling-async" in done.stdout


def test_importing_kling_async_imports_none_of_its_modules_or_dependencies() -> None:
    # What was loaded before (coverage's subprocess hook imports typing, for one) is not the package's doing.
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import kling_async\n"
        "loaded = sorted(m for m in set(sys.modules) - before if m.startswith('kling_async.')"
        " or m.split('.')[0] in {'aiohttp', 'anyio', 'msgspec', 'click', 'rich', 'typing'})\n"
        "print(' '.join(loaded))\n"
    )
    done = _run(code)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "", "")


def _type_checked_sources() -> dict[str, str]:
    """Each name the ``if TYPE_CHECKING:`` block of kling_async/__init__.py imports, and its module."""
    tree = ast.parse(Path(kling_async.__file__).read_text())
    (block,) = [
        node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    return {
        alias.asname or alias.name: f"kling_async.{node.module}"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_every_public_name_is_the_object_type_checkers_see_it_import() -> None:
    sources = _type_checked_sources()
    assert sorted(sources) == sorted(kling_async.__all__)
    for name, module in sources.items():
        assert getattr(kling_async, name) is getattr(importlib.import_module(module), name), name


def test_the_front_door_lists_and_loads_every_public_name_on_first_use() -> None:
    code = (
        "import kling_async\n"
        "assert set(kling_async.__all__) | {'__version__'} <= set(dir(kling_async))\n"
        "from kling_async import *\n"
        "assert all(name in globals() for name in kling_async.__all__)\n"
        "assert kling_async.KlingClient.__module__ == 'kling_async'\n"
        "assert kling_async.__version__\n"
    )
    done = _run(code)
    assert (done.returncode, done.stderr) == (0, "")


def test_an_unknown_name_is_an_attribute_error_with_the_usual_message() -> None:
    with pytest.raises(AttributeError, match=r"^module 'kling_async' has no attribute 'Nope'$"):
        kling_async.Nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'Nope' from 'kling_async'"):
        from kling_async import Nope  # type: ignore[attr-defined]  # noqa: F401


def test_the_command_gives_sigint_back_before_it_runs() -> None:
    """Once loaded, a Ctrl-C is the command's to handle, as before (``KeyboardInterrupt``, then exit 130)."""
    code = (
        "import signal, sys, kling_async._cli as cli\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as a terminal starts it
        "from kling_async.__main__ import main\n"
        "cli.main = lambda: print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
        "main()\n"
    )
    done = _run(code)
    assert (done.returncode, done.stdout, done.stderr) == (0, "True\n", "")
