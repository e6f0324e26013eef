"""Protocol profiles: the default is today's protocol byte for byte; a profile file changes
every model-visible text byte-exactly (prompt, tool list, task, observations, final-answer
request, web_search output, stop strings) through the real agent loop; bad files fail with
the key and line; settings pick a checkpoint's profile up by themselves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.agent import AgentConfig, run_agent
from agent.executor import ExecutionResult
from agent.model_client import PROTOCOL_STOP
from agent.observation import (
    RETRY_INSTRUCTION,
    STATE_LOST_NOTE,
    render_error,
    render_observation,
    truncate,
)
from agent.openai_client import OpenAIChatClient
from agent.prompts import (
    FINAL_ANSWER_REQUEST,
    INSTRUCTION_SUFFIX,
    PromptError,
    load_prompt_template,
    system_prompt,
    task_message,
)
from agent.protocol import (
    PROTOCOL_FILE,
    Protocol,
    ProtocolError,
    default_protocol,
    load_protocol,
    protocol_from_dict,
)
from distillery.settings import Settings
from retrieval.retriever import Passage
from retrieval.tool import format_documents, make_web_search, no_results
from sandbox.executor import SandboxExecutor
from tests.helpers.scripted_server import ScriptedServer
from tests.helpers.unjailed import unjailed_config

CUSTOM = r'''
name = "custom"
stop = ["<end_code>", "Observation:", "<halt>"]

[prompts]
student = "You are terse. Tools:\n{{tool_list}}\nImports: {{authorized_imports}}."
judge = "Only judge."

[tools]
entry = "* {{name}}: {{signature}} | {{description}}"
separator = "\n\n"

[tool_docs.web_search]
description = "Searches."

[task]
prefix = "TASK>> "
suffix = "\n<<END"

[final_answer]
request = "Answer now."

[observation]
success = "[{{step}}] out:\n{{logs}}=> {{value}}{{state_lost}}"
error = "[{{step}}] failed:\n{{error}}\n{{retry}}{{state_lost}}"
retry = "Again."
state_lost_success = " (restarted)"
state_lost_error = "\n(restarted)"
truncation_marker = "<cut {{dropped}}>"

[web_search]
header = "RESULTS\n"
document = "#{{number}} [{{score}}] {{title}}: {{text}}\n"
number_start = 0
score_decimals = 1
no_results = "{{header}}none for {{query}}\n"
'''
FINAL_ANSWER_DOC = (
    "Gives the final answer to the task and ends the run. Pass just the answer "
    "(a number, a name, a short phrase), not a sentence about it."
)
CUSTOM_SYSTEM = (
    "You are terse. Tools:\n"
    "* web_search: web_search(query: str) -> str | Searches.\n\n"
    f"* final_answer: final_answer(answer: any) -> None | {FINAL_ANSWER_DOC}\n"
    "Imports: math, re."
)
PASSAGES = [Passage("1", "Tatra", "peaks", 0.873), Passage("2", 'A "b"', "{{title}} x", 12.26)]


@pytest.fixture
def custom(tmp_path: Path) -> Protocol:
    path = tmp_path / "custom.toml"
    path.write_text(CUSTOM)
    return load_protocol(path)


class StaticRetriever:
    """A Retriever over a fixed list (the retrieval backends have their own tests)."""

    def __init__(self, passages: Sequence[Passage]) -> None:
        self.passages = list(passages)

    async def search(self, query: str, k: int = 3) -> list[Passage]:
        return [] if query == "nothing" else self.passages[:k]

    async def search_batch(self, queries: Sequence[str], k: int = 3) -> list[list[Passage]]:
        return [await self.search(q, k) for q in queries]

    async def ping(self) -> dict[str, object]:
        return {"ok": True}

    async def aclose(self) -> None:
        return None


# ---------------------------------------------------------------- the default profile
def test_default_profile_is_the_existing_protocol() -> None:
    p = load_protocol(None)
    assert p is load_protocol("default") is default_protocol()
    assert p.prompt("student") == load_prompt_template("student")
    assert p.prompt("teacher") == load_prompt_template("teacher")
    assert p.stop == tuple(PROTOCOL_STOP) == ("<end_code>", "Observation:")
    assert p.task_suffix == INSTRUCTION_SUFFIX and p.final_answer_request == FINAL_ANSWER_REQUEST
    assert p.observation.retry == RETRY_INSTRUCTION
    assert p.observation.state_lost_success == "\n" + STATE_LOST_NOTE
    # passing the default explicitly renders exactly what the protocol-less calls render
    r = ExecutionResult(stdout="1\n", value_repr="2", state_lost=True)
    assert render_observation(3, r, layout=p.observation) == (
        "Call id: call_3\nObservation:\nExecution logs:\n1\nLast output from code snippet:\n2\n"
        + STATE_LOST_NOTE
    )
    assert system_prompt("teacher", ["web_search"], protocol=p) == system_prompt(
        "teacher", ["web_search"]
    )
    assert format_documents(PASSAGES[:1], p.web_search) == (
        '\nRetrieved documents:\n\n===== Document 1, similarity: 0.873 =====\n"Tatra"\npeaks\n'
    )


def test_paper_profile_numbers_from_zero_with_two_decimals() -> None:
    p = load_protocol("paper")
    assert p.name == "paper" and p.sha256 != default_protocol().sha256
    assert format_documents(PASSAGES, p.web_search) == (
        "\nRetrieved documents:\n"
        '\n===== Document 0, similarity: 0.87 =====\n"Tatra"\npeaks\n'
        '\n===== Document 1, similarity: 12.26 =====\n"A "b""\n{{title}} x\n'
    )
    assert p.observation.retry != RETRY_INSTRUCTION  # its own words
    assert "(i counts from 0)" in system_prompt("student", ["web_search"], protocol=p)
    # the rest is the default protocol's
    assert p.prompt("student") == default_protocol().prompt("student")
    assert p.observation.success == default_protocol().observation.success


# ---------------------------------------------------------------- a custom profile
def test_custom_profile_renders_every_text_byte_exactly(custom: Protocol) -> None:
    assert custom.name == "custom" and custom.roles == ("student", "teacher", "judge")
    assert system_prompt("student", ["web_search"], ["math", "re"], custom) == CUSTOM_SYSTEM
    assert system_prompt("judge", [], protocol=custom) == (
        f"Only judge.\n\nTools you can call as functions:\n* final_answer: "
        f"final_answer(answer: any) -> None | {FINAL_ANSWER_DOC}\n"
    )
    # teacher comes from the base (default) profile
    assert custom.prompt("teacher") == load_prompt_template("teacher")
    assert task_message("  What is 2+2? \n", protocol=custom) == "TASK>> What is 2+2?\n<<END"

    obs = custom.observation
    assert render_observation(2, ExecutionResult(stdout="hi", value_repr="3"), layout=obs) == (
        "[2] out:\nhi\n=> 3"
    )
    lost = ExecutionResult(stdout="", value_repr=None, state_lost=True)
    assert render_observation(1, lost, layout=obs) == "[1] out:\n=> None (restarted)"
    final = ExecutionResult(is_final=True, final_answer="Paris")
    assert render_observation(4, final, layout=obs) == "[4] out:\n=> 'Paris'"
    assert render_error(3, "Boom\n", layout=obs) == "[3] failed:\nBoom\nAgain."
    assert render_error(3, "Boom", state_lost=True, layout=obs) == (
        "[3] failed:\nBoom\nAgain.\n(restarted)"
    )
    cut = truncate("a" * 1000, 300, obs.marker)
    assert len(cut) <= 300 and "<cut " in cut and cut.startswith("a") and cut.endswith("a")
    dropped = int(cut.split("<cut ")[1].split(">")[0])
    assert len(cut) - len(f"<cut {dropped}>") + dropped == 1000

    ws = custom.web_search
    # placeholders inside passage text are not expanded (one-pass substitution)
    assert format_documents(PASSAGES, ws) == (
        'RESULTS\n#0 [0.9] Tatra: peaks\n#1 [12.3] A "b": {{title}} x\n'
    )
    assert no_results("it's", ws) == 'RESULTS\nnone for "it\'s"\n'


async def test_web_search_tool_prints_in_the_profile_layout(custom: Protocol) -> None:
    tool = make_web_search(StaticRetriever(PASSAGES), k=1, layout=custom.web_search)
    assert await tool("tatra") == "RESULTS\n#0 [0.9] Tatra: peaks\n"
    assert await tool("nothing") == "RESULTS\nnone for 'nothing'\n"
    default_tool = make_web_search(StaticRetriever(PASSAGES), k=1)
    assert (await default_tool("tatra")).startswith("\nRetrieved documents:\n\n===== Document 1,")


async def test_the_agent_loop_speaks_the_profile(
    custom: Protocol, tmp_path: Path, scripted_server: ScriptedServer
) -> None:
    """Through real HTTP and the real sandbox: the model receives the profile's texts and
    stop strings, and the trajectory records the profile's fingerprint."""
    profile = tmp_path / "custom.toml"  # the fixture's file
    replies = iter([
        "Thought: look.\nCode:\n```py\nprint(web_search('tatra'))\n```<end_code>",
        "Thought: done.\nCode:\n```py\nfinal_answer(5)\n```<end_code>",
    ])  # fmt: skip
    scripted_server.handler = lambda body: next(replies)
    client = OpenAIChatClient(scripted_server.url, scripted_server.model, retries=0)
    executor = SandboxExecutor(unjailed_config(step_timeout_s=10.0))
    tool = make_web_search(StaticRetriever(PASSAGES), k=2, layout=custom.web_search)
    try:
        traj = await run_agent(
            "What is x?",
            model=client,
            executor=executor,
            tools={"web_search": tool},
            config=AgentConfig(samples=1, max_steps=1, protocol=str(profile)),
        )
    finally:
        await client.aclose()
        await executor.aclose()
    assert traj.finish_reason == "max_steps" and traj.answer == 5, traj.error
    first, last = (r for r in scripted_server.requests if "messages" in r)
    assert first["stop"] == ["<end_code>", "Observation:", "<halt>"]
    assert first["messages"][0]["content"] == system_prompt("student", ["web_search"],
                                                            protocol=custom)
    assert first["messages"][1]["content"] == "TASK>> What is x?\n<<END"
    assert last["messages"][3]["content"] == (
        '[1] out:\nRESULTS\n#0 [0.9] Tatra: peaks\n#1 [12.3] A "b": {{title}} x\n\n=> None'
    )
    assert last["messages"][4] == {"role": "user", "content": "Answer now."}
    assert traj.config["protocol"] == str(profile)
    assert traj.config["protocol_fingerprint"] == custom.fingerprint()


# ---------------------------------------------------------------- the self-contained form
def test_round_trip_through_json_is_equal(custom: Protocol, tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text(custom.to_json())
    back = load_protocol(path)
    assert back == custom and back.sha256 == custom.sha256
    assert protocol_from_dict(json.loads(custom.to_json())) == custom
    # a checkpoint folder is read through its distillery_protocol.json
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / PROTOCOL_FILE).write_text(custom.to_json())
    assert load_protocol(tmp_path / "ckpt") == custom
    # the fingerprint ignores the name; turns_sha256 only covers the transcript layouts
    renamed = protocol_from_dict({**custom.to_dict(), "name": "other"})
    assert renamed.sha256 == custom.sha256
    only_prompt = default_protocol().with_prompt("student", "Hi {{tool_list}}")
    assert only_prompt.sha256 != default_protocol().sha256
    assert only_prompt.turns_sha256 == default_protocol().turns_sha256


def test_a_profile_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[task]\nsuffix = "A"\n')
    assert load_protocol(path).task_suffix == "A"
    path.write_text('[task]\nsuffix = "BB"\n')  # a different size: seen as changed
    assert load_protocol(path).task_suffix == "BB"
    assert load_protocol(path).name == "p"  # no name: the file's stem


def test_prompt_files_and_extends(tmp_path: Path) -> None:
    (tmp_path / "s.md").write_text("From a file. {{tool_list}}")
    (tmp_path / "base.toml").write_text(
        'extends = "paper"\n[prompts]\nstudent = {file = "s.md"}\n'
    )
    (tmp_path / "top.json").write_text(json.dumps({"extends": "base.toml", "name": "top"}))
    top = load_protocol(tmp_path / "top.json")
    assert top.prompt("student") == "From a file. {{tool_list}}"
    assert top.web_search.number_start == 0  # from paper, through base
    assert top.name == "top"


# ---------------------------------------------------------------- bad profiles
@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.toml", '[observation]\nretry = "x"\nsucess = "y"\n',
         r"a.toml: key 'observation.sucess' \(line 3\): is not a protocol key \(did you mean "
         r"'success'\?\)"),
        ("b.toml", 'stops = ["x"]\n', r"key 'stops' \(line 1\): .*did you mean 'stop'"),
        ("c.toml", '\n[web_search]\nnumber_start = "zero"\n',
         r"key 'web_search.number_start' \(line 3\): must be an integer, not str 'zero'"),
        ("d.toml", '[observation]\nsuccess = "{{stp}} {{logs}}"\n',
         r"key 'observation.success' \(line 2\): unknown placeholder \{\{stp\}\}; this text may "
         r"use \{\{step\}\}"),
        ("e.toml", '[task]\nsuffix = "unterminated\n', r"e.toml: not valid TOML: .*line 2"),
        ("f.json", '{\n  "web_search": {\n    "score_decimals": 42\n  }\n}\n',
         r"key 'web_search.score_decimals' \(line 3\): .*score_decimals must be 0..10"),
        ("g.json", '{"task": [1, 2]', r"g.json: not valid JSON: .*line 1"),
        ("h.toml", "stop = []\n", r"key 'stop' \(line 1\): must list at least one"),
        ("i.toml", '[prompts]\nstudent = {file = "missing.md"}\n',
         r"key 'prompts.student' \(line 2\): cannot read prompt file .*missing.md"),
        ("j.toml", '[tools]\nfallback = "no list"\n', r"'tools.fallback'.*must contain"),
        ("k.yaml", "name: x\n", r"unknown file type '.yaml'; write the profile as .toml or .json"),
        ("l.toml", 'extends = "l.toml"\n', r"key 'extends' \(line 1\): .*cycle"),
        ("m.toml", "version = 2\n", r"key 'version' \(line 1\): this release reads version 1"),
        ("n.toml", '[tool_docs.web_search]\ndescr = "x"\n',
         r"key 'tool_docs.web_search.descr' \(line 2\): .*did you mean 'description'"),
    ],
)  # fmt: skip
def test_bad_profiles_name_the_key_and_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ProtocolError, match=message):
        load_protocol(path)


def test_missing_profiles_say_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match=r"does not exist: give a built-in name \(default, "
                       r"paper\), a .toml/.json profile or an exported checkpoint folder"):
        load_protocol(tmp_path / "nope.toml")
    with pytest.raises(ProtocolError, match=f"has no {PROTOCOL_FILE}"):
        load_protocol(tmp_path)
    with pytest.raises(ValueError, match="invalid agent config: protocol .*nope.toml"):
        AgentConfig(protocol=str(tmp_path / "nope.toml")).validate()


def test_unknown_prompt_role_lists_the_profile_roles(custom: Protocol) -> None:
    with pytest.raises(PromptError, match=r"nor a role of protocol 'custom' \(judge\)"):
        system_prompt("juge", [], protocol=custom)


# ---------------------------------------------------------------- settings pick it up
def _settings(**values: Any) -> Settings:
    return Settings(**values)  # (a dict: mypy without the pydantic plugin wants every field)


async def test_settings_pick_up_a_checkpoint_profile(tmp_path: Path) -> None:
    from distillery.components import ConfigError, load_settings_protocol, web_search_tools

    ckpt = tmp_path / "student"
    ckpt.mkdir()
    (ckpt / PROTOCOL_FILE).write_text(load_protocol("paper").to_json())
    plain = tmp_path / "plain"
    plain.mkdir()

    assert _settings(model_path=plain).agent_config().protocol is None
    cfg = _settings(model_path=ckpt).agent_config()
    assert cfg.protocol == str(ckpt.resolve())
    assert load_protocol(cfg.protocol) == load_protocol("paper")
    # a served model whose name is its local folder (vLLM's default name)
    url = _settings(model_url="http://localhost:1/v1", model=str(ckpt))
    assert url.agent_config().protocol == str(ckpt.resolve())
    # an explicit profile wins
    assert _settings(model_path=ckpt, protocol="default").agent_config().protocol == "default"

    tools = web_search_tools(_settings(model_path=ckpt), StaticRetriever(PASSAGES))
    out = await tools["web_search"]("tatra")
    assert out.startswith('\nRetrieved documents:\n\n===== Document 0, similarity: 0.87 =====')

    with pytest.raises(ConfigError, match=r"protocol .*bad.toml.*DISTILLERY_PROTOCOL"):
        (tmp_path / "bad.toml").write_text("nonsense = 1\n")
        load_settings_protocol(_settings(protocol=str(tmp_path / "bad.toml")))


def test_protocol_flag_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from distillery.cli import build_parser
    from distillery.options import AGENT_FIELDS, settings_from_args

    assert "protocol" in AGENT_FIELDS
    for command in (["solve", "q"], ["serve"],
                    ["generate", "--questions", "q.json", "--out", "o.jsonl"]):  # fmt: skip
        args = build_parser().parse_args([command[0], "--protocol", "paper", *command[1:]])
        assert settings_from_args(args, ["protocol"]).agent_config().protocol == "paper"
    monkeypatch.setenv("DISTILLERY_PROTOCOL", "paper")
    args = build_parser().parse_args(["solve", "q"])
    assert settings_from_args(args, ["protocol"]).protocol == "paper"


def test_the_gateway_serves_a_checkpoint_with_its_profile(
    scripted_server: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`distillery serve --model-url URL --model CHECKPOINT_DIR` (vLLM names a model after
    its folder): the gateway speaks the checkpoint's profile, the tool output included."""
    import httpx

    from retrieval.embedded import EmbeddedIndexWriter
    from retrieval.ingest import IterSource, ingest
    from tests.helpers.gateway_server import GatewayServer

    index = tmp_path / "index"
    rows = [{"id": "1", "title": "Tatra", "text": "The Tatra peaks are high."}]
    ingest(IterSource("t", rows, "1"), EmbeddedIndexWriter(index, heap_mb=16, threads=1),
           progress=False, log=lambda _m: None)  # fmt: skip
    ckpt = tmp_path / "student"
    ckpt.mkdir()
    (ckpt / PROTOCOL_FILE).write_text(load_protocol("paper").to_json())
    monkeypatch.setattr(scripted_server, "check_model", False)
    replies = iter([
        "Thought: look.\nCode:\n```py\nprint(web_search('tatra peaks'))\n```<end_code>",
        "Thought: done.\nCode:\n```py\nfinal_answer('high')\n```<end_code>",
    ])  # fmt: skip
    scripted_server.handler = lambda body: next(replies)
    settings = _settings(
        model_url=scripted_server.url, model=str(ckpt), model_retries=0, executor="local",
        sandbox_pool_size=0, samples=1, max_steps=3, index_dir=index,
    )  # fmt: skip
    with GatewayServer(settings) as gw:
        r = httpx.post(gw.url + "/v1/solve", json={"question": "How high?"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == "high"
    first, second = scripted_server.chat_requests
    paper = load_protocol("paper")
    assert first["messages"][0]["content"] == system_prompt(
        "student", ["web_search"], protocol=paper
    )
    observation = second["messages"][3]["content"]
    assert observation.startswith(
        "Call id: call_1\nObservation:\nExecution logs:\n\nRetrieved documents:\n\n"
        "===== Document 0, similarity: "
    )
    score = observation.split("similarity: ")[1].split(" ")[0]
    assert len(score.split(".")[1]) == 2, score  # two decimals


def test_index_search_prints_a_profiles_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from distillery.cli import main
    from retrieval.embedded import EmbeddedIndexWriter
    from retrieval.ingest import IterSource, ingest

    index = tmp_path / "index"
    rows = [{"id": "1", "title": "Tatra", "text": "The Tatra peaks are high."}]
    ingest(IterSource("t", rows, "1"), EmbeddedIndexWriter(index, heap_mb=16, threads=1),
           progress=False, log=lambda _m: None)  # fmt: skip
    argv = ["index", "search", "tatra", "--index-dir", str(index)]
    assert main([*argv, "--protocol", "paper"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("\nRetrieved documents:\n\n===== Document 0, similarity: ")
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("\nRetrieved documents:\n\n===== Document 1, ")
    assert main([*argv, "--protocol", str(tmp_path / "nope.toml")]) == 1
    assert "nope.toml does not exist" in capsys.readouterr().err
