"""The LLM judge over real HTTP (a scripted judge server counting its calls) and its cache."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agent.openai_client import OpenAIChatClient
from evaluation.judge import JUDGE_PROMPT, Judge, JudgeCache
from tests.helpers.scripted_server import Error, ScriptedServer


def judge_handler(body: dict[str, Any]) -> list[str]:
    """'yes' when the candidate answer is 'USA' or 'America' (aliases), else 'no'."""
    prompt = body["messages"][0]["content"]
    cand = prompt.split("Candidate answer:", 1)[1].split("\n", 1)[0].strip()
    return ["yes" if cand in ("USA", "America") else "no"]


def recs(*triples: tuple[str, str, Any]) -> list[dict[str, Any]]:
    return [
        {"id": f"f/{i}", "question": q, "gold": g, "prediction": p, "status": "ok"}
        for i, (q, g, p) in enumerate(triples)
    ]


def run_judge(srv: ScriptedServer, cache: JudgeCache, records: list[dict[str, Any]]) -> Any:
    async def main() -> Any:
        client = OpenAIChatClient(srv.url, srv.model, retries=0)
        try:
            judge = Judge(client, cache)
            return await judge.judge_records(records, concurrency=2), judge.calls
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_verdicts_are_cached_by_question_gold_and_prediction(tmp_path: Path) -> None:
    records = recs(
        ("Which country?", "United States", "America"),
        ("Which country?", "United States", "\\boxed{America}"),  # same extracted prediction
        ("Which country?", "United States", "Canada"),
        ("Which country?", "United States", "the United States"),  # exact match: no call
        ("Which country?", "United States", None),  # no prediction: no call
    )
    with ScriptedServer(model="judge") as srv:
        srv.handler = judge_handler
        cache = JudgeCache(tmp_path / "cache.jsonl")
        verdicts, calls = run_judge(srv, cache, records)
        cache.close()
        assert [verdicts[f"f/{i}"].verdict for i in range(5)] == [True, True, False, True, False]
        assert [verdicts[f"f/{i}"].method for i in range(5)][3:] == ["em", "empty"]
        assert calls == len(srv.chat_requests) == 2  # America (once) and Canada
        prompt = srv.chat_requests[0]["messages"][0]["content"]
        assert prompt == JUDGE_PROMPT.format(
            question="Which country?", gold="United States", prediction=prompt.split(
                "Candidate answer: ", 1)[1].split("\n", 1)[0])
        assert srv.chat_requests[0]["temperature"] == 0.0

        # a new run over the same questions, reading the cache file: no call at all
        srv.reset()
        srv.handler = judge_handler
        cache = JudgeCache(tmp_path / "cache.jsonl")
        verdicts, calls = run_judge(srv, cache, records)
        cache.close()
        assert calls == 0 and srv.chat_requests == []
        assert verdicts["f/0"].method == "cache" and verdicts["f/0"].verdict is True
        rows = [json.loads(x) for x in (tmp_path / "cache.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and {r["prediction"] for r in rows} == {"America", "Canada"}


def test_a_failing_judge_is_recorded_per_question_and_retried_later(tmp_path: Path) -> None:
    records = recs(("Q?", "Paris", "Lyon"), ("Q2?", "Rome", "Milan"))
    with ScriptedServer(model="judge") as srv:
        srv.script(Error(500, "judge overloaded"), "maybe")  # an error, then no yes/no
        cache = JudgeCache(tmp_path / "cache.jsonl")
        verdicts, _ = run_judge(srv, cache, records)
        cache.close()
        errors = sorted(str(v.error) for v in verdicts.values())
        assert all(v.verdict is None for v in verdicts.values())
        assert "judge unavailable" in errors[0] + errors[1]
        assert "not yes/no" in errors[0] + errors[1]
        assert not (tmp_path / "cache.jsonl").read_text()  # failures are not cached
        srv.handler = lambda body: ["no"]
        cache = JudgeCache(tmp_path / "cache.jsonl")
        verdicts, calls = run_judge(srv, cache, records)
        cache.close()
        assert calls == 2 and all(v.verdict is False for v in verdicts.values())
