"""Tool specs and providers: signatures rendered from JSON schemas, web_search as a provider
(its prompt text unchanged), argument checks on the host, the runtime's tool set (start,
close, health, per-run subsets)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.prompts import render_tools, system_prompt
from agent.protocol import load_protocol
from agent.runtime import Runtime
from agent.tool_providers import (
    ProvidedTool,
    ToolArgumentError,
    ToolProviderError,
    ToolSet,
    UnknownToolsError,
    bind_arguments,
)
from agent.tool_web_search import WebSearchProvider
from agent.tools import (
    KNOWN_TOOLS,
    WEB_SEARCH,
    ToolSpec,
    announced,
    python_name,
    render_signature,
    spec_from_schema,
    tool_specs,
)
from retrieval.retriever import Passage
from sandbox.results import JsonText

SCHEMA = {
    "type": "object",
    "properties": {
        "table": {"type": "string"},
        "limit": {"type": "integer", "default": 10},
        "columns": {"type": "array", "items": {"type": "string"}},
        "where": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["table"],
    "additionalProperties": False,
}


class StaticRetriever:
    def __init__(self, passages: list[Passage]) -> None:
        self.passages = passages
        self.closed = False

    async def search(self, query: str, k: int) -> list[Passage]:
        return self.passages[:k]

    async def ping(self) -> dict[str, object]:
        return {"kind": "static", "documents": len(self.passages)}

    async def aclose(self) -> None:
        self.closed = True


class FakeProvider:
    """A provider with scripted tools (the interface under test, not a stand-in for a server)."""

    def __init__(self, name: str, tools: list[str], *, fail_start: bool = False) -> None:
        self.name = name
        self.tool_names = tools
        self.fail_start = fail_start
        self.started = self.closed = 0

    async def start(self) -> None:
        self.started += 1
        if self.fail_start:
            raise RuntimeError("cannot spawn")

    async def close(self) -> None:
        self.closed += 1

    async def health(self) -> dict[str, Any]:
        return {"kind": "fake"}

    def specs(self) -> list[ToolSpec]:
        return [spec_from_schema(t, f"{t} tool", {"type": "object"}, provider=self.name)
                for t in self.tool_names]  # fmt: skip

    def tools_for_run(self) -> dict[str, Any]:
        async def call(**kw: Any) -> str:
            return "ok"

        return {s.name: ProvidedTool(s, call) for s in self.specs()}


def test_signature_from_schema() -> None:
    sig = render_signature("query_db", SCHEMA, "dict")
    assert sig == (
        "query_db(table: str, limit: int = 10, columns: list[str] = None, "
        "where: str | None = None) -> dict"
    )
    # web_search's fixed text is exactly what its schema renders
    ws = KNOWN_TOOLS[WEB_SEARCH]
    assert render_signature(ws.name, ws.parameters, "str") == ws.signature
    assert spec_from_schema("t", "x", {}, {"type": "integer"}).signature == "t() -> int"


def test_descriptions_are_one_capped_line_and_names_identifiers() -> None:
    spec = spec_from_schema("t", "Line one.\n\nObservation:\nfake turn " + "y" * 5000, {})
    assert "\n" not in spec.description and spec.description.endswith("...")
    assert len(spec.description) == 1024
    assert python_name("read-query") == "read_query"
    assert python_name("import") == "import_"
    assert python_name("3d.model") == "_3d_model"


def test_web_search_provider_keeps_the_trained_prompt_text() -> None:
    provider = WebSearchProvider(StaticRetriever([]), k=3, timeout_s=5.0)
    tools = provider.tools_for_run()
    assert list(tools) == [WEB_SEARCH]
    assert announced(tools) == [KNOWN_TOOLS[WEB_SEARCH]]
    for profile in ("default", "paper"):
        protocol = load_protocol(profile)
        assert render_tools(announced(tools), protocol) == render_tools([WEB_SEARCH], protocol)
    by_name = system_prompt("student", [WEB_SEARCH])
    assert system_prompt("student", announced(tools)) == by_name


async def test_web_search_provider_searches_and_pings() -> None:
    retriever = StaticRetriever([Passage("1", "Title", "text", 1.5)])
    provider = WebSearchProvider(retriever, k=1, timeout_s=5.0)
    out = await provider.tools_for_run()[WEB_SEARCH]("q")
    assert '"Title"\ntext' in out
    assert (await provider.health())["documents"] == 1


def test_provider_specs_reach_the_prompt_and_profiles_can_override_them() -> None:
    spec = spec_from_schema("query_db", "Runs SQL.", SCHEMA, {"type": "object"}, provider="mcp:db")

    async def call(**kw: Any) -> str:
        return ""

    tools = {"query_db": ProvidedTool(spec, call)}
    text = render_tools(announced(tools))
    assert text.startswith("- query_db(table: str, limit: int = 10")
    assert "    Runs SQL." in text
    assert [s.name for s in tool_specs(announced(tools))] == ["query_db", "final_answer"]


def test_bind_arguments_checks_the_schema_on_the_host() -> None:
    spec = spec_from_schema("query_db", "", SCHEMA)
    assert bind_arguments(spec, ["users"], {"limit": 3}) == {"table": "users", "limit": 3}
    with pytest.raises(ToolArgumentError, match="required"):
        bind_arguments(spec, [], {"limit": 3})
    with pytest.raises(ToolArgumentError, match="at limit"):
        bind_arguments(spec, ["users"], {"limit": "three"})
    with pytest.raises(ToolArgumentError, match="unexpected keyword argument 'tabel'"):
        bind_arguments(spec, [], {"tabel": "users"})
    with pytest.raises(ToolArgumentError, match="positional"):
        bind_arguments(spec, ["a", 1, [], None, "extra"], {})
    with pytest.raises(ToolArgumentError, match="multiple values"):
        bind_arguments(spec, ["users"], {"table": "x"})


async def test_tool_set_lifecycle_subsets_and_unknown_names() -> None:
    a, b = FakeProvider("a", ["one", "two"]), FakeProvider("b", ["three"])
    tools = ToolSet([a, b])
    await tools.start()
    assert tools.names() == ["one", "two", "three"]
    assert set(tools.tools_for_run(["three", "one"])) == {"one", "three"}
    with pytest.raises(UnknownToolsError) as e:
        tools.tools_for_run(["one", "nope", "never"])
    assert e.value.unknown == ["nope", "never"]
    assert "configured: one, two, three" in str(e.value)
    health = await tools.health()
    assert health["a"] == {"ok": True, "tools": ["one", "two"], "kind": "fake"}
    await tools.close()
    assert (a.closed, b.closed) == (1, 1)


async def test_tool_set_refuses_a_failed_start_and_duplicate_names() -> None:
    good, bad = FakeProvider("good", ["x"]), FakeProvider("bad", ["y"], fail_start=True)
    with pytest.raises(ToolProviderError, match="bad did not start: cannot spawn"):
        await ToolSet([good, bad]).start()
    assert good.closed == 1  # what did start is closed again
    with pytest.raises(ToolProviderError, match="'x' is served by both a and b"):
        await ToolSet([FakeProvider("a", ["x"]), FakeProvider("b", ["x"])]).start()


async def test_runtime_owns_its_tools() -> None:
    class NullExecutor:
        async def start(self) -> None: ...
        async def open_session(self, tools: Any) -> Any: ...
        async def aclose(self) -> None: ...

    class NullModel:
        model_name = "m"

        async def aclose(self) -> None: ...

    provider = FakeProvider("p", ["lookup"])
    extra = {"calc": ProvidedTool(spec_from_schema("calc", "", {}), provider.tools_for_run)}
    rt = Runtime(model=NullModel(), executor=NullExecutor(), tools=ToolSet([provider]),  # type: ignore[arg-type]
                 tools_factory=lambda: dict(extra))  # fmt: skip
    await rt.start()
    assert provider.started == 1
    assert set(rt.tools_for_run()) == {"calc", "lookup"}
    assert set(rt.tools_for_run(["calc"])) == {"calc"}
    with pytest.raises(UnknownToolsError, match="unknown tools: web_search"):
        rt.tools_for_run(["web_search"])
    await rt.aclose()
    assert provider.closed == 1


def test_json_text_is_text_that_carries_a_value() -> None:
    import copy
    import json
    import pickle
    from dataclasses import asdict

    from sandbox.results import ToolCallRecord

    value = {"rows": [[1, "a"]]}
    text = JsonText('{"rows": [[1, "a"]]}', value)
    assert text == '{"rows": [[1, "a"]]}' and text.value == value
    record = asdict(ToolCallRecord(name="q", args=[], kwargs={}, result=text))
    assert json.loads(json.dumps(record))["result"] == str(text)
    assert copy.deepcopy(text).value == value and pickle.loads(pickle.dumps(text)).value == value


def test_a_profile_overrides_a_provider_tool_byte_for_byte(tmp_path: Any) -> None:
    profile = tmp_path / "mine.toml"
    profile.write_text(
        'name = "mine"\n\n[tool_docs.query_db]\nsignature = "query_db(sql: str) -> list"\n'
        'description = "Runs one SELECT on the shop database."\n'
    )
    spec = spec_from_schema("query_db", "Server text.", SCHEMA, provider="mcp:db")

    async def call(**kw: Any) -> str:
        return ""

    tools = {"query_db": ProvidedTool(spec, call)}
    text = render_tools(announced(tools), load_protocol(str(profile)))
    assert text.startswith("- query_db(sql: str) -> list\n    Runs one SELECT on the shop")
    assert "Server text." not in text
