"""report.html in a real headless Chromium (Debian's `chromium`): the charts render, the
question browser opens a question from the URL and shows its steps (DOM and screenshot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from evaluation.report import write_reports
from tests.evaluation.browser import chromium, dump_dom, screenshot
from tests.evaluation.fixtures import GOLD_CONTENT, fixture_records, write_run

pytestmark = pytest.mark.skipif(
    chromium() is None, reason="chromium is not installed (make test installs it: apt-get)"
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = write_run(tmp_path_factory.mktemp("html") / "run", fixture_records())
    write_reports(out)
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: no CDN, no fetch
    return out / "report.html"


def test_the_charts_render_and_a_question_opens_from_the_url(report: Path) -> None:
    dom = dump_dom(f"file://{report}#q=0:m%2F3", virtual_time_ms=5000)
    # the scripts ran: the first-chart marks were set, the list was rendered from the index
    assert re.search(r'data-first-chart-ms="\d+(\.\d+)?"', dom)
    assert re.search(r'data-first-chart-painted-ms="\d+(\.\d+)?"', dom)
    assert "7 of 7 questions" in dom
    charts = {name: body for name, body in re.findall(
        r'<svg class="chart" data-chart="(\w+)".*?>(.*?)</svg>', dom, re.S)}
    assert set(charts) == {"accuracy", "tokens", "steps"}
    assert charts["accuracy"].count('class="bar"') == 3  # M, F, Avg.
    assert charts["tokens"].count('class="pt"') == 2
    assert charts["steps"].count('class="seg"') == 5  # M: 4 outcomes, F: valid only
    # the opened question: m/3, three steps, every candidate with its code and errors
    title = re.search(r'<h3 id="q-title">(.*?)</h3>', dom, re.S)
    assert title and "m/3" in title.group(1) and "correct" in title.group(1)
    assert len(re.findall(r'<div class="step" data-step="\d+">', dom)) == 3
    assert "ZeroDivisionError" in dom and "Observation 2" in dom
    assert "final-answer call" in dom and "max steps" in dom
    assert 'class="sel"' in dom  # its row is highlighted in the list


def test_tool_calls_and_their_results_are_shown(report: Path) -> None:
    dom = dump_dom(f"file://{report}#q=0:f%2Fa")
    assert "tool call web_search" in dom
    assert GOLD_CONTENT.split("\n")[1] in dom


def test_the_screenshot_shows_the_charts_and_the_steps(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    png = screenshot(f"file://{report}#q=0:m%2F3", tmp_path / "report.png", size="1400,1600")
    img = Image.open(png).convert("RGB")
    assert img.size == (1400, 1600)
    colors = {c for _, c in img.getcolors(maxcolors=1 << 20) or []}
    # the accuracy bars (#4e79a7), the valid (#59a14f) and max-steps (#b07aa1) segments and
    # step tags are painted
    for hex_color in ("4e79a7", "59a14f", "b07aa1", "e15759"):
        rgb = tuple(int(hex_color[i : i + 2], 16) for i in (0, 2, 4))
        assert rgb in colors, f"#{hex_color} is not on the screenshot"
