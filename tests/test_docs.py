"""The documentation's links hold: README.md is a short front door whose links all resolve.

Checked for README.md, CONTRIBUTING.md and every docs/*.md:
- every relative Markdown link (`[text](path)`, `[text](path#anchor)`) outside code blocks
  and inline code points at a file or folder that exists inside the repository;
- an anchor into a Markdown file (or `#anchor` within the same page) names one of that
  file's headings, using GitHub's heading ids;
- README.md is under 200 lines and links to every page in docs/.
External links (http, https, mailto) are not fetched.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, REPO / "CONTRIBUTING.md", *DOCS]

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
EXTERNAL = ("http://", "https://", "mailto:")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) of lines outside fenced code blocks, inline code removed."""
    out: list[tuple[int, str]] = []
    in_fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            out.append((number, INLINE_CODE.sub("", line)))
    return out


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every Markdown link in the page's prose."""
    found: list[tuple[int, str]] = []
    for number, line in _prose_lines(page.read_text(encoding="utf-8")):
        found.extend((number, m.group(1)) for m in LINK.finditer(line))
    return found


def heading_ids(page: Path) -> set[str]:
    """GitHub's ids for the page's headings: lowercase, punctuation dropped, spaces to '-'."""
    ids: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose_lines(page.read_text(encoding="utf-8")):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(2).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def _problem(page: Path, target: str) -> str | None:
    """Why `target` (a link in `page`) does not resolve, or None when it does."""
    path_part, _, anchor = target.partition("#")
    dest = page if not path_part else (page.parent / path_part).resolve()
    if not dest.is_relative_to(REPO):
        return "points outside the repository (a user's clone has nothing there)"
    if not dest.exists():
        return f"{dest.relative_to(REPO)} does not exist"
    if anchor and dest.suffix == ".md" and anchor not in heading_ids(dest):
        return f"{dest.relative_to(REPO)} has no heading with the id #{anchor}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert page.exists(), f"{page.relative_to(REPO)} is missing"
    broken = []
    for number, target in links(page):
        if target.startswith(EXTERNAL):
            continue
        why = _problem(page, target)
        if why:
            broken.append(f"{page.relative_to(REPO)}:{number}: ({target}) {why}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_a_short_front_door() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < 200, f"README.md has {lines} lines; move detail into docs/ (limit 200)"


def test_readme_links_every_doc() -> None:
    linked = {
        (README.parent / t.partition("#")[0]).resolve()
        for _, t in links(README)
        if not t.startswith(EXTERNAL) and t.partition("#")[0]
    }
    missing = [str(d.relative_to(REPO)) for d in DOCS if d.resolve() not in linked]
    assert DOCS, "docs/ has no pages"
    assert not missing, f"README.md does not link to: {', '.join(missing)}"


def test_link_checker_sees_broken_links(tmp_path: Path) -> None:
    """The checker itself: a missing file, a bad anchor and links in code are told apart."""
    page = REPO / "docs" / "design.md"
    assert _problem(page, "no-such-page.md") == "docs/no-such-page.md does not exist"
    assert _problem(page, "sandbox.md#no-such-heading") is not None
    assert _problem(page, "../../outside.md") is not None
    assert _problem(page, "sandbox.md#threat-model") is None
    sample = tmp_path / "sample.md"
    sample.write_text(
        "# A title: with punctuation\n[ok](#a-title-with-punctuation) `[code](nowhere.md)`\n"
        "```\n[fenced](nowhere.md)\n```\n[real](missing.md)\n",
        encoding="utf-8",
    )
    assert links(sample) == [(2, "#a-title-with-punctuation"), (6, "missing.md")]
    assert heading_ids(sample) == {"a-title-with-punctuation"}
