"""A protocol profile travels with the student: teacher generation under a profile ->
build-data renders with it and records it -> export writes it into the checkpoint ->
`distillery solve --model-path CHECKPOINT` speaks it without being told. Mismatches
(records generated with other layouts, an export flag that contradicts the data, a data
file whose profile went missing) are refused with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.agent import AgentConfig
from agent.openai_client import OpenAIChatClient
from agent.prompts import load_prompt_template, system_prompt, task_message
from agent.protocol import PROTOCOL_FILE, default_protocol, load_protocol
from distillery.cli import main as cli_main
from sandbox.executor import SandboxExecutor
from tests.training.conftest import read_jsonl
from training.build_data import BuildDataError, build_data, protocol_sidecar
from training.export import ExportError, export_model
from training.generate import GenerateConfig, generate
from training.questions import load_questions

PROFILE = r'''
name = "terse"
stop = ["<end_code>", "Observation:", "<halt>"]

[prompts]
student = "Solve with Python. Tools:\n{{tool_list}}"

[task]
prefix = "Q: "
suffix = "\nA (code):"

[observation]
success = "#{{step}} printed:\n{{logs}}value: {{value}}{{state_lost}}"
retry = "Retry."
'''


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    path = tmp_path / "terse.toml"
    path.write_text(PROFILE)
    return path


async def _generate(
    teacher: Any, questions: Path, out: Path, executor: SandboxExecutor, protocol: str | None
) -> Path:
    client = OpenAIChatClient(teacher.url, teacher.model, retries=0)
    try:
        await generate(
            load_questions(questions),
            out,
            model=client,
            executor=executor,
            tools_factory=dict,
            config=GenerateConfig(
                agent=AgentConfig(prompt="teacher", samples=1, max_steps=3, protocol=protocol),
                progress=False,
            ),
        )
    finally:
        await client.aclose()
    return out


@pytest.fixture
async def terse_records(
    teacher: Any, questions_file: Path, tmp_path: Path, local_executor: SandboxExecutor,
    profile_file: Path,
) -> Path:  # fmt: skip
    return await _generate(
        teacher, questions_file, tmp_path / "gen.jsonl", local_executor, str(profile_file)
    )


def test_build_data_renders_and_records_the_profile(
    terse_records: Path, profile_file: Path, tmp_path: Path, teacher: Any
) -> None:
    terse = load_protocol(profile_file)
    # the teacher already spoke the profile: its task turn and observation layout
    bodies = teacher.chat_requests
    tasks = {b["messages"][1]["content"] for b in bodies}
    assert "Q: What is 17 * 23?\nA (code):" in tasks and len(tasks) == 4
    assert all(b["stop"] == ["<end_code>", "Observation:", "<halt>"] for b in bodies)

    out = tmp_path / "train.jsonl"
    summary = build_data([terse_records], out, protocol=str(profile_file))
    assert summary["kept"] == 3  # one gold answer is deliberately wrong
    assert summary["protocol"] == {
        **terse.fingerprint(), "file": str(protocol_sidecar(out)),
    }  # fmt: skip
    assert protocol_sidecar(out) == tmp_path / "train.jsonl.protocol.json"
    assert load_protocol(protocol_sidecar(out)) == terse
    ex = next(e for e in read_jsonl(out) if e["question"] == "What is 17 * 23?")
    assert ex["protocol"] == {"name": "terse", "sha256": terse.sha256}
    msgs = ex["messages"]
    assert msgs[0]["content"] == (
        "Solve with Python. Tools:\n- final_answer(answer: any) -> None\n    Gives the final "
        "answer to the task and ends the run. Pass just the answer (a number, a name, a short "
        "phrase), not a sentence about it."
    )
    assert msgs[1]["content"] == "Q: What is 17 * 23?\nA (code):"
    assert msgs[3]["content"] == "#1 printed:\n391\nvalue: None"

    # records made with other layouts are refused, nothing is written
    other = tmp_path / "other.jsonl"
    with pytest.raises(BuildDataError, match=r"record q\d was generated with protocol 'terse', "
                       r"whose observation/web_search layout differs from protocol 'default'"):
        build_data([terse_records], other)
    assert not other.exists()

    # another prompt than 'student' becomes the recorded profile's student prompt
    teacher_out = tmp_path / "teacher-prompt.jsonl"
    summary = build_data([terse_records], teacher_out, protocol=terse, prompt="teacher")
    recorded = load_protocol(protocol_sidecar(teacher_out))
    assert recorded.prompt("student") == load_prompt_template("teacher")
    assert recorded.name == "terse, student prompt from teacher"
    assert read_jsonl(teacher_out)[0]["messages"][0]["content"] == system_prompt(
        "student", [], protocol=recorded
    )


def test_build_data_cli_takes_the_flag_and_the_variable(
    terse_records: Path, profile_file: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    out = tmp_path / "cli.jsonl"
    argv = ["train", "build-data", "--input", str(terse_records), "--out", str(out)]
    assert cli_main([*argv, "--protocol", str(profile_file)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] and summary["protocol"]["name"] == "terse"
    monkeypatch.setenv("DISTILLERY_PROTOCOL", str(profile_file))
    assert cli_main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kept"] == 3
    monkeypatch.setenv("DISTILLERY_PROTOCOL", str(tmp_path / "missing.toml"))
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "missing.toml does not exist" in err


def _run_with_data(lora_run: Path, data: Path, dest: Path) -> Path:
    """A copy of the finished sft run whose summary names `data` as its training data."""
    run = dest / "run"
    shutil.copytree(lora_run, run)
    summary_path = run / "train_summary.json"
    summary = json.loads(summary_path.read_text())
    summary["settings"]["data"] = [str(data)]
    summary_path.write_text(json.dumps(summary))
    return run


def test_export_writes_the_profile_and_solve_picks_it_up(
    terse_records: Path, profile_file: Path, lora_run: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    terse = load_protocol(profile_file)
    data = tmp_path / "train.jsonl"
    build_data([terse_records], data, protocol=str(profile_file))
    run = _run_with_data(lora_run, data, tmp_path)

    with pytest.raises(ExportError, match=r"--protocol paper .* differs from the profile the "
                       r"training data was built with \('terse'"):
        export_model(tmp_path / "wrong", run_dir=run, protocol="paper")

    ckpt = tmp_path / "student"
    summary = export_model(ckpt, run_dir=run)
    assert summary["protocol"]["sha256"] == terse.sha256
    assert summary["protocol"]["source"] == "training data"
    assert PROTOCOL_FILE in summary["files"]
    assert load_protocol(ckpt / PROTOCOL_FILE) == terse
    assert json.loads((ckpt / PROTOCOL_FILE).read_text()) == terse.to_dict()
    info = json.loads((ckpt / "distillery.json").read_text())
    assert info["protocol"]["name"] == "terse" and info["protocol"]["file"] == PROTOCOL_FILE
    assert "Protocol profile: `terse`" in (ckpt / "README.md").read_text()

    # loading the checkpoint picks its profile up: no --protocol given
    code = cli_main([
        "solve", "What is 2 + 2?", "--model-path", str(ckpt), "--executor", "local",
        "--no-search", "--samples", "1", "--max-steps", "1", "--max-tokens", "8", "--json",
    ])  # fmt: skip
    traj = json.loads(capsys.readouterr().out)
    assert code in (0, 1) and traj["finish_reason"] in ("answer", "max_steps"), traj.get("error")
    assert traj["config"]["protocol"] == str(ckpt.resolve())
    assert traj["config"]["protocol_fingerprint"]["sha256"] == terse.sha256
    assert traj["messages"][0]["content"] == system_prompt("student", [], protocol=terse)
    assert traj["messages"][1]["content"] == task_message("What is 2 + 2?", protocol=terse)
    assert traj["steps"][0]["request"]["params"]["stop"] == list(terse.stop)

    # an explicit profile still wins over the checkpoint's
    code = cli_main([
        "solve", "What is 2 + 2?", "--model-path", str(ckpt), "--executor", "local",
        "--no-search", "--samples", "1", "--max-steps", "1", "--max-tokens", "4", "--json",
        "--protocol", "default",
    ])  # fmt: skip
    traj = json.loads(capsys.readouterr().out)
    assert traj["messages"][1]["content"] == task_message("What is 2 + 2?")


def test_export_of_data_without_a_profile(
    lora_run: Path, tmp_path: Path, profile_file: Path
) -> None:
    # data built before profiles existed: the default protocol, said so
    summary = export_model(tmp_path / "legacy", run_dir=lora_run)
    assert summary["protocol"]["sha256"] == default_protocol().sha256
    assert summary["protocol"]["source"].startswith("default")
    # ... unless the user says which profile it was built with
    chosen = export_model(tmp_path / "chosen", run_dir=lora_run, protocol=str(profile_file))
    assert load_protocol(tmp_path / "chosen") == load_protocol(profile_file)
    assert chosen["protocol"]["source"] == f"--protocol {profile_file}"


def test_a_data_file_whose_profile_went_missing_is_refused(
    terse_records: Path, profile_file: Path, lora_run: Path, tmp_path: Path
) -> None:
    data = tmp_path / "train.jsonl"
    build_data([terse_records], data, protocol=str(profile_file))
    protocol_sidecar(data).unlink()
    run = _run_with_data(lora_run, data, tmp_path)
    with pytest.raises(ExportError, match=r"was built with protocol 'terse' but "
                       r".*train.jsonl.protocol.json is missing"):
        export_model(tmp_path / "x", run_dir=run)
    assert not (tmp_path / "x").exists()


async def test_generate_accepts_a_prompt_role_the_profile_defines(
    teacher: Any, questions_file: Path, tmp_path: Path, local_executor: SandboxExecutor
) -> None:
    profile = tmp_path / "roles.toml"
    profile.write_text('[prompts]\nsolver = "You solve. {{tool_list}}"\n')
    client = OpenAIChatClient(teacher.url, teacher.model, retries=0)
    try:
        summary = await generate(
            load_questions(questions_file, limit=1),
            tmp_path / "gen.jsonl",
            model=client,
            executor=local_executor,
            tools_factory=dict,
            config=GenerateConfig(
                agent=AgentConfig(prompt="solver", samples=1, max_steps=3, protocol=str(profile)),
                progress=False,
            ),
        )
    finally:
        await client.aclose()
    assert summary.succeeded == 1
    system = teacher.chat_requests[0]["messages"][0]["content"]
    assert system == system_prompt("solver", [], protocol=load_protocol(profile))
    assert system.startswith("You solve. - final_answer(answer: any) -> None")
