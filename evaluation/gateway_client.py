"""Evaluate a deployed gateway: every question goes through `POST /v1/solve`.

Operators measure exactly what is served (the gateway's model, prompt, sandbox and search).
`GatewayClient.check()` fails fast with one line when the gateway cannot be reached or
refuses the key (`GatewayError`); `record(question)` returns the same record shape as
`distillery generate` (`training.generate.run_question`), graded here with
`training.grading`, with the response's steps as the trajectory and `gateway` holding the
run id and the gateway's timings. Each request names its question's task's tools (`tools`
on /v1/solve: math none, a task over MCP tools those it lists), so the gateway runs those
and not every tool it serves; a factual question's task takes them all. A failed request
(HTTP error, timeout, connection lost) becomes an error record; it never raises.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from agent import AgentConfig
from training.grading import grade
from training.questions import Question

__all__ = ["GatewayClient", "GatewayError"]


class GatewayError(RuntimeError):
    """The gateway cannot be used (unreachable, key refused); the message says what to do."""


class GatewayClient:
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        agent: AgentConfig | None = None,
        timeout_s: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[: -len("/v1")]
        self.agent = agent
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            transport=transport,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self.model_name = "gateway"

    async def check(self) -> dict[str, Any]:
        """Reachable, key accepted; returns {"url", "model"} for config.json."""
        try:
            resp = await self._http.get("/v1/models")
        except httpx.HTTPError as e:
            raise GatewayError(
                f"cannot reach the gateway at {self.url} ({type(e).__name__}: {e}); is "
                "`distillery serve` running there? check --gateway-url"
            ) from e
        if resp.status_code in (401, 403):
            raise GatewayError(
                f"the gateway at {self.url} refused the request (HTTP {resp.status_code}): "
                "pass its key with --api-key"
            )
        if resp.status_code >= 400:
            raise GatewayError(
                f"the gateway at {self.url} answered GET /v1/models with HTTP "
                f"{resp.status_code}: {resp.text[:200]}"
            )
        try:
            models = [str(m["id"]) for m in resp.json()["data"]]
        except (ValueError, KeyError, TypeError) as e:
            raise GatewayError(
                f"{self.url}/v1/models did not answer like a distillery gateway"
            ) from e
        self.model_name = models[0] if models else "gateway"
        return {"url": self.url, "model": self.model_name}

    async def served_tools(self) -> list[str]:
        """The names of the tools the gateway serves (GET /v1/tools)."""
        try:
            resp = await self._http.get("/v1/tools")
            resp.raise_for_status()
            return [str(t["name"]) for t in resp.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise GatewayError(
                f"cannot read the tools the gateway at {self.url} serves (GET /v1/tools: "
                f"{type(e).__name__}: {e}); the questions' tasks name tools, which a gateway "
                "of this version lists"
            ) from e

    def _body(self, q: Question) -> dict[str, Any]:
        body: dict[str, Any] = {"question": q.question, "include_candidates": True}
        if q.spec.tools is not None:  # the task's tools (None: every tool the gateway serves)
            body["tools"] = list(q.spec.tools)
        a = self.agent
        if a is not None:
            body.update(
                max_steps=a.max_steps,
                samples=a.samples,
                policy=a.policy,
                temperature=a.temperature,
                top_p=a.top_p,
                max_tokens=a.max_tokens,
            )
            if a.seed is not None:
                body["seed"] = a.seed
            if a.timeout_s is not None:
                body["timeout_s"] = a.timeout_s
        return body

    async def record(self, q: Question) -> dict[str, Any]:
        started = time.monotonic()
        rec: dict[str, Any] = {
            "id": q.id,
            "question": q.question,
            "gold": q.answer,
            "task": q.task,
            "grader": q.spec.grader,
            "source": q.source,
            "mode": "agent",
            "ftp": False,
            "status": "ok",
            "prediction": None,
            "correct": None,
            "grade": None,
            "trajectory": None,
            "cot": None,
            "tools": sorted(q.spec.tools or ()),
            "teacher": self.model_name,
            "error": None,
            "error_type": None,
            "usage": {"prompt_tokens": 0, "completion_tokens": 0},
            "created_at": time.time(),
            "gateway": {"url": self.url},
        }
        try:
            resp = await self._http.post("/v1/solve", json=self._body(q))
            if resp.status_code >= 400:
                try:
                    msg = resp.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    msg = resp.text[:300]
                rec.update(
                    status="error",
                    error=f"HTTP {resp.status_code}: {msg}",
                    error_type=f"HTTP{resp.status_code}",
                )
            else:
                data = resp.json()
                traj = {k: v for k, v in data.items() if k not in ("object", "timings")}
                rec["trajectory"] = traj
                rec["teacher"] = data.get("model", self.model_name)
                rec["prediction"] = data.get("answer")
                usage = data.get("usage") or {}
                rec["usage"] = {
                    "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                    "completion_tokens": int(usage.get("completion_tokens") or 0),
                }
                rec["gateway"].update(id=data.get("id"), timings=data.get("timings"))
                if data.get("finish_reason") in ("error", "timeout"):
                    rec["status"] = "error"
                    rec["error"] = data.get("error") or data.get("finish_reason")
                    rec["error_type"] = data.get("error_type") or data.get("finish_reason")
        except httpx.HTTPError as e:
            rec.update(
                status="error", error=f"{type(e).__name__}: {e}", error_type=type(e).__name__
            )
        except ValueError as e:  # not JSON
            rec.update(status="error", error=f"invalid response: {e}", error_type="InvalidResponse")
        if rec["status"] == "ok" and q.answer is not None:
            g = await asyncio.to_thread(grade, q.spec.grader, rec["prediction"], q.answer)
            rec["grade"] = g.to_dict()
            rec["correct"] = g.correct
        rec["elapsed_s"] = round(time.monotonic() - started, 3)
        return rec

    async def aclose(self) -> None:
        await self._http.aclose()
