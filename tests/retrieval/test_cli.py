"""`distillery index build|search` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillery.cli import main
from tests.helpers.noida_server import NoidaServer
from tests.retrieval.conftest import write_corpus


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch):
    for var in ("DISTILLERY_ES_URL", "DISTILLERY_ES_INDEX", "DISTILLERY_INDEX_DIR"):
        monkeypatch.delenv(var, raising=False)


def corpus(tmp_path: Path) -> Path:
    rows = [
        {"id": str(i), "title": f"Planet {i}", "text": f"Planet {i} orbits star{i % 3}."}
        for i in range(1, 41)
    ]
    path = write_corpus(tmp_path / "c.jsonl", rows)
    with path.open("a") as f:
        f.write("not json\n")
    return path


def test_build_then_search_embedded(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    idx = tmp_path / "idx"
    args = ["index", "build", "--corpus", str(corpus(tmp_path)), "--index-dir", str(idx)]
    assert main([*args, "--no-progress", "--batch-size", "16"]) == 0
    out, err = capsys.readouterr()
    assert "40 passages indexed" in out and "1 bad lines skipped" in out
    assert "line 41: invalid JSON" in err

    assert main(["index", "search", "Planet 7 star1", "-k", "2", "--index-dir", str(idx)]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("\nRetrieved documents:\n\n===== Document 1, similarity: ")
    assert '"Planet 7"\nPlanet 7 orbits star1.\n' in out and "Document 3" not in out

    assert main(["index", "search", "Planet 7", "--json", "--index-dir", str(idx)]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["id"] == "7" and first["title"] == "Planet 7"


def test_abort_on_bad_line_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rc = main(
        [
            "index",
            "build",
            "--corpus",
            str(corpus(tmp_path)),
            "--index-dir",
            str(tmp_path / "i"),
            "--no-progress",
            "--on-bad-line",
            "abort",
        ]
    )
    assert rc == 1
    assert "c.jsonl:41: invalid JSON" in capsys.readouterr().err


def test_errors_say_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["index", "search", "x", "--index-dir", str(tmp_path / "none")]) == 1
    assert "distillery index build" in capsys.readouterr().err
    assert (
        main(
            [
                "index",
                "build",
                "--corpus",
                str(tmp_path / "missing.jsonl"),
                "--index-dir",
                str(tmp_path / "i"),
            ]
        )
        == 1
    )
    assert "corpus file not found" in capsys.readouterr().err


def test_build_and_search_elasticsearch(
    tmp_path: Path,
    es_server: NoidaServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("DISTILLERY_ES_URL", es_server.url)  # backend defaults to es
    monkeypatch.setenv("DISTILLERY_ES_INDEX", "cli-test")
    assert main(["index", "build", "--corpus", str(corpus(tmp_path)), "--no-progress"]) == 0
    assert "Elasticsearch index 'cli-test'" in capsys.readouterr().out
    assert main(["index", "search", "Planet 7 star1", "-k", "1"]) == 0
    assert '"Planet 7"\nPlanet 7 orbits star1.\n' in capsys.readouterr().out


def test_custom_corpus_never_lands_in_the_demo_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    # The default folder holds the demo index, which start-up rebuilds when it differs:
    # a user's corpus built there would be silently replaced, so the build refuses.
    monkeypatch.setenv("DISTILLERY_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["index", "build", "--corpus", str(corpus(tmp_path)), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "--index-dir" in err and "DISTILLERY_INDEX_DIR" in err
    assert not (tmp_path / "cache" / "index" / "demo").exists()
