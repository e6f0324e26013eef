"""A quick study with a task set over an MCP server: the shop task (training/tasks/shop.py)
beside the study's math, end to end through `distillery study run --config ... --mcp-config`.

The shop's own MCPServer is spawned over stdio by every stage that runs the agent and ends
with it; the scripted teacher (the study tests' one stand-in, see test_study.py) answers a
price, order-count or most-expensive question by querying the shop through the `query` tool
and arithmetic as before. Each question gets its task's tools: the shop's runs `tables` and
`query`, math none.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from distillery.cli import main as cli_main
from study.config import load_config
from study.pipeline import split_of
from tests.helpers.scripted_server import ScriptedServer
from tests.study.test_study import read_jsonl, study_argv, study_teacher
from tests.tools.test_shop_task import _shop_servers
from training.questions import load_questions
from training.tasks.shop import make_example

_SQL = (
    (re.compile(r"price of the ([a-z ]+)\?"), "SELECT price FROM products WHERE name = '{}'"),
    (re.compile(r"How many orders did ([A-Za-z-]+) place\?"),
     "SELECT COUNT(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
     "WHERE c.name = '{}'"),
    (re.compile(r"Which ([a-z]+) product is the most expensive\?"),
     "SELECT name FROM products WHERE category = '{}' ORDER BY price DESC LIMIT 1"),
)  # fmt: skip


def _shop_sql(question: str) -> str | None:
    """The query the teacher answers `question` with; None: it cannot (answers -1)."""
    for pattern, sql in _SQL:
        m = pattern.search(question)
        if m:
            return sql.format(m.group(1))
    return None


def shop_teacher(body: dict[str, Any]) -> list[str]:
    """A run whose prompt lists the shop's `query`: query in step 1, final_answer in step 2;
    anything else (math, and CoT, which cannot query) as the study's arithmetic teacher."""
    msgs, n = body["messages"], body.get("n", 1)
    if msgs[0]["role"] != "system" or "query(sql" not in str(msgs[0]["content"]):
        return study_teacher(body)
    task = next(str(m["content"]) for m in msgs if m["role"] == "user")
    sql = _shop_sql(task)
    if not any(m["role"] == "assistant" for m in msgs):
        code = f'result = query(sql="{sql}")[0][0]\nprint(result)' if sql else "result = -1"
        return [f"Thought: I ask the shop.\nCode:\n```py\n{code}\n```<end_code>"] * n
    return ["Thought: done.\nCode:\n```py\nfinal_answer(result)\n```<end_code>"] * n


def _config(tmp_path: Path, questions: str, **fields: Any) -> Path:
    cfg = tmp_path / "shop-study.json"
    cfg.write_text(json.dumps({
        "preset": "quick", "hotpot_train": 0, "hotpot_test": 0, "math_train": 1,
        "math_test": 1, "gsm_hard_test": 0, "rows": ["agent", "teacher"],
        "task_sets": [{"name": "shop", "questions": questions, "train": 4, "test": 3}],
        **fields,
    }))  # fmt: skip
    return cfg


def _argv(out: Path, cfg: Path, student: Path, teacher: ScriptedServer, data: Path) -> list[str]:
    argv = study_argv(out, student, teacher, data)
    argv[argv.index("--quick")] = "--config"
    argv.insert(argv.index("--config") + 1, str(cfg))
    return argv


@pytest.mark.slow
def test_quick_study_distils_on_the_shops_mcp_tools(
    tiny_model_dir: Path, shared_data_dir: Path, tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    shop = make_example(tmp_path / "shop")
    cfg = _config(tmp_path, shop["questions"])
    out = tmp_path / "study"
    with ScriptedServer(model="teacher") as teacher:
        teacher.handler = shop_teacher
        argv = _argv(out, cfg, tiny_model_dir, teacher, shared_data_dir)
        # without the shop's server the harvest is refused before any run, naming the tools
        assert cli_main(argv) == 1
        err = capfd.readouterr().err
        assert "tables, query" in err and "--mcp-config" in err
        assert not teacher.requests
        assert cli_main([*argv, "--mcp-config", shop["mcp_config"]]) == 0
    assert not _shop_servers(), "every stage closes the servers it started"

    # the questions: the shop file split by the stable hash, each half cut to its count
    every = load_questions(shop["questions"])
    train = [q for q in every if split_of(q.id) == "train"][:4]
    test = [q for q in every if split_of(q.id) == "test"][:3]
    assert [r["id"] for r in read_jsonl(out / "questions" / "shop_train.jsonl")] == [
        q.id for q in train]  # fmt: skip
    assert [r["id"] for r in read_jsonl(out / "questions" / "shop_test.jsonl")] == [
        q.id for q in test]  # fmt: skip

    # the harvest: each question ran with its task's tools, the shop's through its server
    records = read_jsonl(out / "teacher" / "agent" / "attempt-0.jsonl")
    by_task = {r["task"]: r for r in records}
    assert {r["task"] for r in records} == {"math", "shop"}
    assert all(r["tools"] == ["query", "tables"] for r in records if r["task"] == "shop")
    assert by_task["math"]["tools"] == [] and by_task["math"]["tool_specs"] == []
    answerable = [q for q in train if _shop_sql(q.question)]
    results = json.loads((out / "results.json").read_text())
    shop_harvest = results["harvest"]["agent"]["by_task"]["shop"]
    assert shop_harvest["questions"] == 4 and shop_harvest["solved"] == len(answerable) > 0

    # the student's data carries the shop's tool specs; the table has the shop's held-out set
    data = read_jsonl(out / "data" / "agent.jsonl")
    shop_examples = [ex for ex in data if ex["id"] in {q.id for q in answerable}]
    assert shop_examples and all(
        {t["name"] for t in ex["tools"]} == {"tables", "query"} for ex in shop_examples)
    rows = {r["row"]: r for r in results["table"]}
    assert set(rows) == {"agent", "teacher"}
    expected = sum(bool(_shop_sql(q.question)) for q in test) / len(test)
    assert rows["teacher"]["sets"]["shop_test"]["accuracy"] == pytest.approx(expected)
    student = read_jsonl(out / "eval" / "agent" / "records.jsonl")
    assert any(r["tools"] == ["query", "tables"] for r in student if r["task"] == "shop")


def test_task_sets_are_checked(tmp_path: Path) -> None:
    def load(sets: Any) -> None:
        load_config(preset_name="quick", student={"path": "x"}, teacher={"url": "http://x"},
                    task_sets=sets)  # fmt: skip

    load([{"name": "shop", "questions": "q.jsonl", "train": 2, "test": 0}])
    with pytest.raises(ValueError, match="must be a list"):
        load({"name": "shop"})
    with pytest.raises(ValueError, match=r"unknown keys \['mcp'\]"):
        load([{"name": "shop", "questions": "q", "train": 1, "test": 1, "mcp": "m.json"}])
    with pytest.raises(ValueError, match="lower-case identifier"):
        load([{"name": "Shop Q", "questions": "q", "train": 1, "test": 1}])
    with pytest.raises(ValueError, match="'math' is taken"):
        load([{"name": "math", "questions": "q", "train": 1, "test": 1}])
    with pytest.raises(ValueError, match="'shop' is taken"):
        load([{"name": "shop", "questions": "q", "train": 1, "test": 1}] * 2)
    with pytest.raises(ValueError, match="'test' must be a count"):
        load([{"name": "shop", "questions": "q", "train": 1, "test": -1}])


def test_a_study_written_before_task_sets_resumes(tmp_path: Path) -> None:
    """The field is adopted at its default (no task set), so a study made before it existed
    continues; with a task set it is another study."""
    from study.config import fingerprint
    from study.pipeline import Study

    cfg = load_config(preset_name="quick", student={"path": "x"}, teacher={"url": "http://x"})
    old = {k: v for k, v in cfg.to_dict().items() if k != "task_sets"}
    doc = json.dumps({"fingerprint": fingerprint(old), "config": old})
    (tmp_path / "study.json").write_text(doc)
    said: list[str] = []
    Study(cfg, tmp_path, backend=None, say=said.append)._setup()  # type: ignore[arg-type]
    assert any("adopting" in m and "task_sets" in m for m in said)
    (tmp_path / "study.json").write_text(doc)
    cfg.task_sets = [{"name": "shop", "questions": "q.jsonl", "train": 1, "test": 1}]
    with pytest.raises(ValueError, match="task_sets"):
        Study(cfg, tmp_path, backend=None, say=said.append)._setup()  # type: ignore[arg-type]


def test_a_harvest_made_before_task_sets_is_reusable(tmp_path: Path) -> None:
    """--harvest-from a study whose study.json predates the field: it held no task set."""
    from study import HarvestError, StudyConfig, reuse_harvest

    src = tmp_path / "src"
    (src / "teacher" / "agent").mkdir(parents=True)
    (src / "teacher" / "agent" / "attempt-0.jsonl").write_text("{}\n")
    made = StudyConfig().to_dict()
    old = {k: v for k, v in made.items() if k != "task_sets"}
    (src / "study.json").write_text(json.dumps({"fingerprint": "f", "config": old}))
    assert reuse_harvest(src, made, tmp_path / "ok")["from"] == str(src)
    shop = [{"name": "shop", "questions": "q.jsonl", "train": 1, "test": 1}]
    with pytest.raises(HarvestError, match="task_sets"):
        reuse_harvest(src, {**made, "task_sets": shop}, tmp_path / "other")
