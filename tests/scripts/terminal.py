"""A pseudo-terminal for CLI tests: the child sees a real terminal; the test reads what it drew."""

from __future__ import annotations

import os
import pty
import re
import select

import anyio


def _read_some(fd: int) -> bytes | None:
    """What the terminal has within a second (b"" for nothing yet), or None once the child closed it."""
    ready, _, _ = select.select([fd], [], [], 1.0)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536) or None
    except OSError:  # EIO: every writer of the terminal is gone
        return None


class Terminal:
    """One pseudo-terminal: pass ``child`` as a stream of the process, then read ``output``."""

    def __init__(self) -> None:
        self.controller, self.child = pty.openpty()
        self.output = b""
        self.closed = False

    def release_child_end(self) -> None:
        """Close the test's copy of the child's end, so that reading ends when the child exits."""
        os.close(self.child)

    async def read_until(self, needle: bytes) -> bool:
        """Read until ``needle`` was drawn (True) or the terminal closed (False)."""
        while needle not in self.output and not self.closed:
            chunk = await anyio.to_thread.run_sync(_read_some, self.controller)
            if chunk is None:
                self.closed = True
            else:
                self.output += chunk
        return needle in self.output

    async def read_to_end(self) -> bytes:
        """Everything the child drew until it closed the terminal."""
        await self.read_until(b"\0never drawn\0")
        os.close(self.controller)
        return self.output

    @property
    def text(self) -> str:
        """The output so far, decoded."""
        return self.output.decode(errors="replace")

    @property
    def plain(self) -> str:
        """The output so far without colours, cursor moves or carriage returns."""
        return _CONTROL.sub("", self.text).replace("\r", "")


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
