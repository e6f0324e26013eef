"""The study's hinted retries and checked agent data, on the real question split and a real
index of the mini-Wikipedia (../shared/data/wiki), with a scripted teacher behind the
real-HTTP scripted server (a real teacher is hours of CPU): it answers every factual
question wrongly unhinted, and with the hint searches the gold titles the hint names and
answers what the hint says. The study runs up to build-data-agent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.prompts import task_message
from distillery.cli import main as cli_main
from distillery.commands.study import _Backend
from study.config import load_config
from study.pipeline import Study, split_of
from tests.helpers.scripted_server import ScriptedServer

EXPR = re.compile(r"Calculate ([-+*/() 0-9]+?)\.(?:\s|$)")
HINTED = re.compile(r'the expected answer is "(.*?)"\.(?: The evidence is in the Wikipedia '
                    r"articles (.*?)\.)?")  # fmt: skip


def reply(code: str) -> str:
    return f"Thought: next step.\nCode:\n```py\n{code}\n```<end_code>"


def hinted_teacher(body: dict[str, Any]) -> list[str]:
    msgs = body["messages"]
    task = msgs[1]["content"]
    done = sum(1 for m in msgs if m["role"] == "assistant")
    n = body.get("n", 1)
    if (m := EXPR.search(task)) is not None:
        code = f"result = {m.group(1)}\nprint(result)" if done == 0 else "final_answer(result)"
        return [reply(code)] * n
    hint = HINTED.search(task)
    if hint is None:
        return [reply("final_answer('unknown')")] * n
    titles = re.findall(r'"(.*?)"', hint.group(2) or "")
    if done < len(titles):
        return [reply(f"print(web_search({titles[done]!r}))")] * n
    return [reply(f"final_answer({hint.group(1)!r})")] * n


@pytest.fixture(scope="module")
def teacher() -> Iterator[ScriptedServer]:
    with ScriptedServer(model="teacher") as srv:
        srv.handler = hinted_teacher
        yield srv


@pytest.fixture(scope="module")
def wiki_index(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = tmp_path_factory.mktemp("wiki") / "index"
    corpus = shared_data_dir / "wiki" / "passages.jsonl.gz"
    if not corpus.is_file():
        pytest.skip(f"{corpus} is absent (the mini-Wikipedia is optional shared data)")
    assert cli_main(["index", "build", "--corpus", str(corpus), "--index-dir", str(index)]) == 0
    return index


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def hinted_study(
    teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path, wiki_index: Path,
    tmp_path: Path, **fields: Any,
) -> Study:  # fmt: skip
    """A quick study of the scripted teacher with search and one hinted retry (gold titles
    in the hint), `fields` on top."""
    cfg = load_config(
        preset_name="quick", student={"path": str(tiny_model_dir)},
        teacher={"url": teacher.url, "name": "teacher", "path": None},
        data_dir=str(shared_data_dir), index_dir=str(wiki_index), search=True,
        hint_attempts=1, hint_titles=True, **fields,
    )  # fmt: skip
    return Study(cfg, tmp_path / "study", _Backend("local", str(wiki_index), tmp_path))


def test_failed_factual_questions_are_retried_with_a_hint_and_checked(
    teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path, wiki_index: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    study = hinted_study(teacher, tiny_model_dir, shared_data_dir, wiki_index, tmp_path,
                         grounded=True, leak_check=True)
    names = [s.name for s in study.stages]
    assert names[:4] == ["questions", "student-base", "generate-agent", "generate-agent-hinted"]
    wanted = {*names[:4], "build-data-agent"}
    study.stages = [s for s in study.stages if s.name in wanted]
    study.run()
    out = study.out

    train = read_jsonl(out / "questions" / "hotpot_train.jsonl")
    hinted = read_jsonl(out / "teacher" / "agent" / "hinted-0.jsonl")
    # every factual train question failed unhinted, so each got one hinted retry; no test
    # question ever reaches the teacher
    assert sorted(r["id"] for r in hinted) == sorted(r["id"] for r in train)
    assert all(split_of(r["id"]) == "train" for r in hinted)
    titles = {json.loads(x)["question_id"]: json.loads(x)["gold_titles"] for x in
              (shared_data_dir / "wiki" / "gold.jsonl").read_text().splitlines()}  # fmt: skip
    for r in hinted:
        assert r["question"] in {q["question"] for q in train}
        assert f'the expected answer is "{r["gold"]}"' in r["hint"]
        assert all(f'"{t}"' in r["hint"] for t in titles[r["id"]])
        assert r["correct"], "the scripted teacher answers what the hint says"
    assert not (out / "teacher" / "agent" / "hinted-1.jsonl").exists()
    harvest = json.loads((out / "stages" / "generate-agent-hinted.json").read_text())["summary"]
    assert harvest["questions"] == len(train) and harvest["solved"] == len(train)

    marker = json.loads((out / "stages" / "build-data-agent.json").read_text())["summary"]
    checks = marker["checks"]
    dropped_hinted = sum(checks.get("leak_check", {}).values()) + sum(
        checks.get("grounded", {}).values())
    # each hinted run is either kept (as hinted) or dropped by a check that says why
    assert marker["hinted"] + dropped_hinted == len(hinted)
    assert marker["hinted"] >= 1
    examples = read_jsonl(out / "data" / "agent.jsonl")
    for ex in examples:
        assert ex["messages"][1] == {"role": "user", "content": task_message(ex["question"])}
        assert not any("expected answer" in str(m["content"]) for m in ex["messages"])
    assert sum(ex["hinted"] for ex in examples) == marker["hinted"]
    assert {ex["source"] for ex in examples if not ex["hinted"]} == {
        "reasoning_gym/basic_arithmetic"}


def test_hint_limit_bounds_the_retries_and_resumes_the_started_ones_first(
    teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path, wiki_index: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    study = hinted_study(teacher, tiny_model_dir, shared_data_dir, wiki_index, tmp_path,
                         hint_limit=1)
    stages = {s.name: s for s in study.stages}
    study.stages = [stages["questions"], stages["student-base"], stages["generate-agent"]]
    study.run()
    train = read_jsonl(study.out / "questions" / "hotpot_train.jsonl")
    assert len(train) >= 2
    # a hinted run of the second failed question is on disk already (an earlier window):
    # the limit keeps it and retries nothing else
    path = study.out / "teacher" / "agent" / "hinted-0.jsonl"
    started = {"id": train[1]["id"], "question": train[1]["question"], "status": "ok",
               "correct": False, "gold": train[1]["answer"], "task": "factual",
               "mode": "agent", "ftp": False}  # fmt: skip
    path.write_text(json.dumps(started) + "\n")
    study.stages.append(stages["generate-agent-hinted"])
    study.run()
    assert [r["id"] for r in read_jsonl(path)] == [train[1]["id"]]
    harvest = json.loads((study.out / "stages" / "generate-agent-hinted.json").read_text())
    assert harvest["summary"]["questions"] == 1


def test_a_negative_hint_limit_is_refused() -> None:
    from study.config import ConfigError

    with pytest.raises(ConfigError, match="hint_limit must be >= 0"):
        load_config(preset_name="quick", hint_limit=-1)


def test_without_train_hinted_the_agent_data_holds_the_unhinted_runs_only(
    teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path, wiki_index: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    study = hinted_study(teacher, tiny_model_dir, shared_data_dir, wiki_index, tmp_path,
                         train_hinted=False)
    wanted = {"questions", "student-base", "generate-agent", "generate-agent-hinted",
              "build-data-agent"}  # fmt: skip
    study.stages = [s for s in study.stages if s.name in wanted]
    study.run()
    out = study.out
    hinted = read_jsonl(out / "teacher" / "agent" / "hinted-0.jsonl")
    assert hinted and all(r["correct"] for r in hinted), "the hinted runs exist and are right"
    marker = json.loads((out / "stages" / "build-data-agent.json").read_text())["summary"]
    attempts = [r for f in sorted((out / "teacher" / "agent").glob("attempt-*.jsonl"))
                for r in read_jsonl(f)]  # fmt: skip
    assert marker["records"] == len(attempts) and marker["hinted"] == 0
    examples = read_jsonl(out / "data" / "agent.jsonl")
    assert examples and not any(ex["hinted"] for ex in examples)
