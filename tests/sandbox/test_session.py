"""The session contract on a real jail: state, candidates, tools, results."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.sandbox.conftest import Opener
from tests.sandbox.util import assert_healthy, fast_config

pytestmark = pytest.mark.nsjail


class CountingTool:
    """A host tool that counts its calls (stands in for retrieval's web_search)."""

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None) -> None:
        self.calls: list[tuple[tuple[object, ...], dict[str, object]]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.cancelled = 0

    async def __call__(self, *args: object, **kwargs: object) -> str:
        self.calls.append((args, kwargs))
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail_on is not None and args and args[0] == self.fail_on:
            raise ConnectionError("index unreachable")
        return f"docs about {args[0] if args else kwargs}"


async def test_state_persists_across_steps(open_session: Opener) -> None:
    s = await open_session()
    r = await s.run("import math\nx = 41\ndef f(v):\n    return v * 2\nprint('x is', x)\nx + 1")
    assert (r.error, r.stdout, r.value_repr) == (None, "x is 41\n", "42")
    r = await s.run("y = f(x)\nprint(math.sqrt(y + 18))")
    assert (r.error, r.stdout, r.value_repr) == (None, "10.0\n", "None")
    r = await s.run("for i in range(3):\n    pass")
    assert r.ok and r.value_repr is None
    r = await s.run("(x, y, i)")
    assert r.value_repr == "(41, 82, 2)"
    assert r.duration_s > 0 and not r.state_lost


async def test_random_state_survives_the_fork_per_step(open_session: Opener) -> None:
    # `random` reseeds itself in forked children; the worker undoes that.
    s = await open_session()
    await s.run("import random\nrandom.seed(1234)")
    r = await s.run("random.random()")
    assert r.value_repr == repr(random.Random(1234).random())


async def test_numpy_and_sympy_work(open_session: Opener) -> None:
    # importing sympy takes seconds on a busy machine: a wall limit far above that
    s = await open_session(fast_config(step_timeout_s=60.0, cpu_s=30))
    r = await s.run("import numpy as np\nnp.arange(10).reshape(2, 5).sum(axis=1).tolist()")
    assert r.value_repr == "[10, 35]", r.error
    r = await s.run("import sympy\nx = sympy.symbols('x')\nsympy.solve(x**2 - 4, x)")
    assert r.value_repr == "[-2, 2]", r.error


async def test_errors_are_trimmed_to_user_code(open_session: Opener) -> None:
    s = await open_session()
    r = await s.run("import json\ndef parse(t):\n    return json.loads(t)\n\nparse('not json')")
    assert r.error_kind == "exception" and r.error is not None
    assert 'File "<code>", line 5' in r.error and 'File "<code>", line 3, in parse' in r.error
    assert r.error.rstrip().splitlines()[-1].startswith("json.decoder.JSONDecodeError")
    assert "worker.py" not in r.error and "/json/" not in r.error
    r = await s.run("x = (1,\nprint(x)")
    assert r.error_kind == "syntax" and "SyntaxError" in (r.error or "")
    # an exception keeps what ran before it (like an interpreter), output included
    r = await s.run("kept = 1\nprint('before')\nraise ValueError('boom')")
    assert r.stdout == "before\n" and "ValueError: boom" in (r.error or "")
    assert (await s.run("kept")).value_repr == "1"


async def test_final_answer(open_session: Opener) -> None:
    s = await open_session()
    r = await s.run("print('done')\nfinal_answer({'a': [1, 2.5, None]})\nprint('never')")
    assert r.is_final and r.ok and r.final_answer == {"a": [1, 2.5, None]}
    assert r.stdout == "done\n"
    r = await s.run("import numpy as np\nfinal_answer(np.int64(7))")  # not JSON: str()
    assert r.is_final and r.final_answer == "7"
    r = await s.run("final_answer(float('nan'))")
    assert r.final_answer == "nan"


async def test_candidates_are_isolated_and_commit_adopts_one(open_session: Opener) -> None:
    s = await open_session()
    await s.run("items = [1]\nn = 0")
    results = await s.try_candidates(
        [
            "items.append('rejected')\nn = 100\nleak = True",
            "items.append(2)\nn += 1\nn",
            "items.append('x')\nraise ValueError('nope')",
        ]
    )
    assert [r.ok for r in results] == [True, True, False]
    assert results[1].value_repr == "1"
    await s.commit(1)
    r = await s.run("(items, n, 'leak' in globals())")
    assert r.value_repr == "([1, 2], 1, False)"
    await s.try_candidates(["items.clear()\nn = -1"])
    await s.discard()
    assert (await s.run("(items, n)")).value_repr == "([1, 2], 1)"
    with pytest.raises(RuntimeError):
        await s.commit(0)


async def test_candidates_run_in_parallel_up_to_the_width(open_session: Opener) -> None:
    tool = CountingTool(delay_s=0.4)
    s = await open_session(fast_config(fork_width=4, step_timeout_s=10.0), {"slow": tool})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    results = await s.try_candidates([f"slow('q{i}')" for i in range(4)])
    elapsed = loop.time() - t0
    assert all(r.ok for r in results)
    assert elapsed < 4 * 0.4, f"4 candidates of 0.4 s took {elapsed:.2f} s: not parallel"
    await s.discard()
    await assert_healthy(s)


async def test_tools_are_proxied(open_session: Opener) -> None:
    tool = CountingTool()
    s = await open_session(tools={"web_search": tool})
    r = await s.run("r = web_search('Eiffel tower', k=2)\nprint(r)\nr")
    assert r.ok and r.stdout == "docs about Eiffel tower\n"
    assert tool.calls == [(("Eiffel tower",), {"k": 2})]
    [rec] = r.tool_calls
    assert (rec.name, rec.args, rec.kwargs, rec.cached) == ("web_search", ["Eiffel tower"],
                                                            {"k": 2}, False)
    assert rec.result == "docs about Eiffel tower"


async def test_tool_errors_reach_the_code(open_session: Opener) -> None:
    tool = CountingTool(fail_on="boom")
    s = await open_session(tools={"web_search": tool})
    r = await s.run(
        "try:\n    web_search('boom')\nexcept Exception as e:\n    print(type(e).__name__, e)"
    )
    assert r.ok and "ToolError" in r.stdout and "index unreachable" in r.stdout
    r = await s.run("web_search('boom')")
    assert r.error_kind == "tool" and "index unreachable" in (r.error or "")
    assert r.tool_calls[0].error is not None
    r = await s.run("web_search(object())")
    assert r.error_kind == "exception" and "JSON" in (r.error or "")


async def test_tool_calls_are_cached_per_step_across_candidates(open_session: Opener) -> None:
    tool = CountingTool(delay_s=0.05)
    s = await open_session(tools={"web_search": tool})
    results = await s.try_candidates(
        ["a = web_search('paris')", "b = web_search('paris')\nc = web_search('rome')",
         "d = web_search('paris')"]
    )
    assert all(r.ok for r in results)
    assert sorted(str(c[0][0]) for c in tool.calls) == ["paris", "rome"]
    paris = [rec for r in results for rec in r.tool_calls if rec.args == ["paris"]]
    assert len(paris) == 3 and sum(not rec.cached for rec in paris) == 1
    await s.commit(1)
    r = await s.run("b")
    assert r.value_repr == "'docs about paris'" and len(tool.calls) == 2
    # a new step has a new cache
    await s.run("web_search('paris')")
    assert len(tool.calls) == 3


async def test_timeout_inside_a_tool_call(open_session: Opener) -> None:
    tool = CountingTool(delay_s=30.0)
    s = await open_session(fast_config(step_timeout_s=1.0), {"web_search": tool})
    await s.run("x = 5")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await s.run("web_search('slow')\nx = 6")
    assert r.error_kind == "timeout" and loop.time() - t0 < 5.0
    await asyncio.sleep(0)
    assert tool.cancelled == 1  # the host-side call was cancelled with the step
    assert (await s.run("x")).value_repr == "5"  # the killed step left no trace
    await assert_healthy(s)


async def test_too_many_tool_calls(open_session: Opener) -> None:
    tool = CountingTool()
    s = await open_session(fast_config(max_tool_calls=3), {"web_search": tool})
    r = await s.run("for i in range(10):\n    web_search(str(i))")
    assert r.error_kind == "tool" and "too many tool calls" in (r.error or "")
    assert len(tool.calls) == 3


async def test_value_repr_and_output_truncation_markers(open_session: Opener) -> None:
    s = await open_session(fast_config(output_max_bytes=2000))
    r = await s.run("list(range(5000))")
    assert r.ok and r.value_repr is not None and "[truncated" in r.value_repr
    assert len(r.value_repr) < 2100


async def test_odd_text_survives_the_protocol(open_session: Opener) -> None:
    s = await open_session()
    r = await s.run("print('\\ud800 lone surrogate', 'é', '\\x00')\n'\\udfff'")
    assert r.ok and r.stdout == "? lone surrogate é \x00\n", r
    assert r.value_repr == "'\\udfff'"
