"""report.html, rendered by a real browser (headless Chromium) and read back from its DOM."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import anyio
import pytest

from kling_async.testing import Simulator
from tests.test_cli import FAST, _cli, _write_jobs

pytestmark = pytest.mark.anyio

HOSTILE = "<script>document.title='owned'</script><img src=x onerror=alert(1)> & \"quotes\""


class _Dom(HTMLParser):
    """The elements of a rendered page: (tag, attributes) in document order, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.elements if name == tag]


async def _render(page: Path) -> _Dom:
    """The DOM that headless Chromium builds from the page (no network: the page is a local file)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None, "headless Chromium is needed (Debian package chromium; .ci/run installs it)"
    done = await anyio.run_process(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        check=False,
        stderr=subprocess.DEVNULL,
    )
    assert done.returncode == 0
    dom = _Dom()
    dom.feed(done.stdout.decode())
    return dom


@pytest.fixture
async def run(tmp_path: Path) -> Path:
    """A finished batch with completed, failed, invalid and hostile rows; its --out folder."""
    rows: list[dict[str, object]] = [
        {"id": "fox", "prompt": "a fox in snow", "duration": "5"},
        {"id": "boat", "prompt": "a boat at dawn", "model": "kling-v3-omni-pro"},
        {"prompt": HOSTILE},
        {"id": "broken", "prompt": "[fail] a storm"},
        {"id": "too-long", "prompt": "x" * 2501},
    ]
    jobs = _write_jobs(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "videos"
    async with Simulator(time_scale=0.001) as sim:
        done = await _cli(["batch", str(jobs), "--out", str(out), "--skip-invalid", *FAST], sim)
    assert done.returncode == 1, done.stderr
    return out


async def test_the_rendered_report_shows_every_row_and_plays_every_clip_from_a_file(run: Path) -> None:
    """In Chromium's DOM each row of report.json appears once, and each video points at a saved file."""
    report = json.loads((run / "report.json").read_text())
    dom = await _render(run / "report.html")
    lines = [attrs["data-line"] for _, attrs in dom.elements if "data-line" in attrs]
    assert sorted(lines, key=lambda line: int(line or 0)) == [str(record["line"]) for record in report]
    videos = dom.all("video")
    completed = [record for record in report if record["status"] == "COMPLETED"]
    assert len(videos) == len(completed) == 3
    for video in videos:
        src = video["src"]
        assert src is not None
        assert "://" not in src
        assert (run / unquote(src)).is_file()
    assert "TaskFailedError" in "".join(dom.text)


async def test_the_rendered_report_shows_hostile_prompts_as_text(run: Path) -> None:
    """A prompt holding markup is shown verbatim; it adds no element to the page."""
    dom = await _render(run / "report.html")
    assert HOSTILE in "".join(dom.text)
    assert dom.all("script") == []
    assert dom.all("img") == []


async def test_the_report_page_needs_no_network(run: Path) -> None:
    """Nothing on the page is fetched from elsewhere: no script, stylesheet, font or image link."""
    page = (run / "report.html").read_text()
    dom = _Dom()
    dom.feed(page)
    assert {tag for tag, _ in dom.elements} & {"script", "link", "img", "iframe"} == set()
    for _, attrs in dom.elements:
        for name in ("src", "href"):
            assert "://" not in (attrs.get(name) or "")
    assert "url(" not in page
    assert "@import" not in page
    assert len(dom.all("svg")) == 2
