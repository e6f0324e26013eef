"""The LLM judge for factual answers, with a verdict cache.

The paper grades factual answers with an LLM judge. Ours: any OpenAI-compatible endpoint
(`agent.model_client.ModelClient`), greedy, a prompt written here (`JUDGE_PROMPT`, binary:
aliases, abbreviations and paraphrases of the gold answer are accepted; an answer that is
verbose, hedges between candidates, or names only part of a multi-part gold answer is
wrong). The reply must start with `yes` or `no`; anything else is a judge error.

Verdicts are cached by (question, gold, prediction) - the prediction as extracted, so
`\\boxed{Paris}` and `Paris` share a verdict - together with the judge's model name, in a
JSONL file (one line per verdict, appended and fsynced), so rerunning a run, or reusing
the cache across runs of the same questions, never pays for the same verdict twice.
A prediction that matches the gold answer exactly after normalization is correct without
a call; an empty prediction is wrong without a call. A failed call (judge down, unparsable
reply) is returned as an error for that question and not cached: the next run retries it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import ModelClient, ModelError, SamplingParams
from training.grading import exact_match, extract_answer

__all__ = ["JUDGE_PROMPT", "Judge", "JudgeCache", "Verdict", "judge_key"]

JUDGE_PROMPT = """You grade answers to trivia and multi-hop questions against a reference.

Question: {question}
Reference answer(s): {gold}
Candidate answer: {prediction}

Is the candidate answer correct? Rules:
- Correct when it names the same entity, date, number or yes/no as a reference answer, even in \
other words: aliases, abbreviations, translations, a fuller or shorter form of the same name, \
or a different but equivalent unit or date format.
- Wrong when it names something else, when it hedges between several answers, when it gives \
only part of an answer that has several parts, or when it is a long explanation instead of \
an answer.
Reply with one word: yes or no."""

_REPLY = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def judge_key(question: str, gold: str, prediction: str) -> str:
    return hashlib.sha256(json.dumps([question, gold, prediction]).encode()).hexdigest()


@dataclass
class Verdict:
    verdict: bool | None
    """None when the judge failed (see `error`)."""
    error: str | None = None
    method: str = "judge"
    """judge | cache | em (exact match, no call) | empty (no prediction, no call) | error."""
    reply: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "error": self.error,
            "method": self.method,
            "reply": self.reply,
        }


class JudgeCache:
    """Verdicts by (question, gold, prediction, judge model), persisted as JSONL."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._mem: dict[tuple[str, str], dict[str, Any]] = {}
        if path is not None and path.is_file():
            with path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self._mem[(row["key"], row["model"])] = row
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # the half line of an interrupted write
        self._f = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = path.open("a", encoding="utf-8")

    def get(self, key: str, model: str) -> dict[str, Any] | None:
        return self._mem.get((key, model))

    def put(self, row: dict[str, Any]) -> None:
        self._mem[(row["key"], row["model"])] = row
        if self._f is not None:
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())

    def __len__(self) -> int:
        return len(self._mem)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class Judge:
    """Judge factual predictions through `client`; see the module docstring."""

    def __init__(
        self, client: ModelClient, cache: JudgeCache | None = None, *, max_tokens: int = 8
    ) -> None:
        self.client = client
        self.cache = cache if cache is not None else JudgeCache(None)
        self.max_tokens = max_tokens
        self.calls = 0
        self._inflight: dict[str, asyncio.Future[Verdict]] = {}

    @property
    def model(self) -> str:
        return self.client.model_name

    async def verdict(self, question: str, gold: Any, prediction: Any) -> Verdict:
        golds = [str(g) for g in gold] if isinstance(gold, list) else [str(gold)]
        pred = extract_answer(prediction).strip() if prediction is not None else ""
        if not pred:
            return Verdict(False, method="empty")
        if exact_match(pred, golds) == 1.0:
            return Verdict(True, method="em")
        gold_text = " | ".join(golds)
        key = judge_key(question, gold_text, pred)
        hit = self.cache.get(key, self.model)
        if hit is not None:
            return Verdict(bool(hit["verdict"]), method="cache", reply=hit.get("reply"))
        pending = self._inflight.get(key)
        if pending is not None:  # the same triple is being judged right now: share that call
            return await asyncio.shield(pending)
        task = asyncio.ensure_future(self._call(question, gold_text, pred, key))
        self._inflight[key] = task
        try:
            return await task
        finally:
            self._inflight.pop(key, None)

    async def _call(self, question: str, gold_text: str, pred: str, key: str) -> Verdict:
        prompt = JUDGE_PROMPT.format(question=question, gold=gold_text, prediction=pred)
        params = SamplingParams(
            n=1, temperature=0.0, top_p=1.0, max_tokens=self.max_tokens, stop=[]
        )
        self.calls += 1
        try:
            completion = await self.client.complete([{"role": "user", "content": prompt}], params)
        except ModelError as e:
            return Verdict(None, error=f"judge unavailable: {e}", method="error")
        reply = completion.choices[0].text.strip() if completion.choices else ""
        m = _REPLY.match(reply)
        if m is None:
            return Verdict(
                None, error=f"the judge replied {reply[:80]!r}, not yes/no", method="error"
            )
        ok = m.group(1).lower() == "yes"
        self.cache.put(
            {
                "key": key,
                "model": self.model,
                "question": question,
                "gold": gold_text,
                "prediction": pred,
                "verdict": ok,
                "reply": reply[:200],
            }
        )
        return Verdict(ok, reply=reply[:200])

    async def judge_records(
        self, records: Sequence[Mapping[str, Any]], *, concurrency: int = 8
    ) -> dict[str, Verdict]:
        """Verdicts for the factual records (id -> Verdict), `concurrency` calls at a time."""
        sem = asyncio.Semaphore(max(1, concurrency))
        out: dict[str, Verdict] = {}

        async def one(rec: Mapping[str, Any]) -> None:
            async with sem:
                pred = rec.get("prediction") if rec.get("status") == "ok" else None
                out[str(rec["id"])] = await self.verdict(
                    str(rec.get("question", "")), rec.get("gold"), pred
                )

        await asyncio.gather(*(one(r) for r in records if r.get("gold") is not None))
        return out
