"""Answer checking, shared by teacher-trajectory filtering and the evaluation code.

Math (the paper's metric): the last `\\boxed{...}` is extracted when present, then the
prediction matches the gold answer when the normalized strings are equal, when both
are numbers within a relative tolerance of 1e-4 (fractions, `\\frac`, thousands
separators and percentages understood), when sequences/intervals/matrices match
element by element, or when sympy proves them equal. Sympy runs in a helper process
under a timeout, so a pathological expression can never hang the caller.

Factual QA: SQuAD-style normalized exact match and token F1 (no judge needed; a boolean
answer reads as yes/no), and an optional LLM judge through any `ModelClient` (an
OpenAI-compatible endpoint).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import select
import string
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.model_client import ModelClient, SamplingParams

Task = str
"""A task's name (training.tasks): `math`, `factual`, or any registered or inline task."""
REL_TOL = 1e-4
F1_CORRECT = 0.5
"""The `f1` grader counts a prediction correct from this token F1 up."""
SYMPY_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Grade:
    correct: bool
    method: str
    """How the verdict was reached: exact|numeric|sequence|symbolic|em|judge|none."""
    extracted: str = ""
    """The prediction as compared (boxed content for math, raw text for factual)."""
    em: float | None = None
    f1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- extraction


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, `\\boxed 5`), braces balanced."""
    best: str | None = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*", text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        best = text[i + 1 : j]
                        break
                j += 1
        else:
            tail = re.match(r"[^\s$]+", text[i:])
            if tail:
                best = tail.group(0)
    return best


_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE)


def extract_answer(pred: Any) -> str:
    """The answer part of a prediction: boxed content, else text after 'the answer is', else it."""
    if pred is None:
        return ""
    if isinstance(pred, bool):
        return str(pred)
    if isinstance(pred, int | float):
        return _format_number(float(pred))
    text = str(pred).strip()
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if "\n" in text:
        found = _ANSWER_IS.findall(text)
        if found:
            return found[-1].strip().rstrip(".").strip()
    return text


def _format_number(x: float) -> str:
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


# --------------------------------------------------------------------------- math


_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox|textrm|mathbf)\s*\{([^{}]*)\}")
_UNIT_WORDS = (
    r"(?:degrees?|cm|centimeters?|meters?|km|inches|inch|feet|foot|ft|units?|sq(?:uare)? ?\w*|"
    r"dollars?|cents?|hours?|minutes?|seconds?|days?|years?|mph|pounds?|miles?)"
)


def normalize_math(s: str) -> str:
    """Canonical text of a math answer: LaTeX decorations, units and spacing removed."""
    s = str(s).strip()
    s = s.replace("\n", " ").replace("\\!", "").replace("\\,", "").replace("\\;", "")
    s = re.sub(r"(?<!\\)\\ ", " ", s).replace("\\displaystyle", "")
    s = re.sub(r"\\(?:d|t)frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("°", "")
    s = s.replace("\\%", "%").replace("\\$", "").replace("$", "")
    s = _TEXT_CMD.sub(r"\1", s)
    s = re.sub(rf"(?<=\d)\s*{_UNIT_WORDS}(?:\^\{{?[23]\}}?)?\.?$", "", s)
    s = s.strip()
    s = re.sub(r"^[a-zA-Z]\s*=\s*(?=\S)", "", s)  # "x = 5" -> "5"
    s = s.rstrip(".").strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # 1,000,000
        s = s.replace(",", "")
    s = re.sub(r"\s+", " ", s)
    return s


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_number(s: str) -> float | None:
    """A plain number, `a/b`, `\\frac{a}{b}` or `\\frac ab` (with sign), else None."""
    t = s.replace(" ", "")
    if re.fullmatch(_NUM, t):
        return float(t)
    m = re.fullmatch(rf"({_NUM})/({_NUM})", t)
    if m:
        den = float(m.group(2))
        return float(m.group(1)) / den if den else None
    m = re.fullmatch(r"([-+]?)\\frac(?:\{(" + _NUM + r")\}|(\d))(?:\{(" + _NUM + r")\}|(\d))", t)
    if m:
        num = float(m.group(2) or m.group(3))
        den = float(m.group(4) or m.group(5))
        if not den:
            return None
        return (-1 if m.group(1) == "-" else 1) * num / den
    return None


def _numbers_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=0.0) or a == b


def _numeric_equal(p: str, g: str) -> bool | None:
    """True/False when both sides are numbers (percent-aware), None when not both numeric."""
    p_pct, g_pct = p.endswith("%"), g.endswith("%")
    pv, gv = parse_number(p.rstrip("%").strip()), parse_number(g.rstrip("%").strip())
    if pv is None or gv is None:
        return None
    if _numbers_close(pv, gv):
        return True
    if p_pct != g_pct:  # "50%" vs "0.5"
        if p_pct and _numbers_close(pv / 100, gv):
            return True
        if g_pct and _numbers_close(pv, gv / 100):
            return True
    return False


def _split_top_level(s: str, sep: str = ",") -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _as_sequence(s: str) -> tuple[str, str, list[str]] | None:
    """(open, close, items) for tuples, intervals, sets, lists and matrices; None otherwise."""
    m = re.fullmatch(r"\\begin\{[pbv]?matrix\}(.*)\\end\{[pbv]?matrix\}", s, re.DOTALL)
    if m:
        rows = [r for r in re.split(r"\\\\", m.group(1)) if r.strip()]
        cells = [c.strip() for r in rows for c in r.split("&")]
        return "m", f"{len(rows)}", cells
    t = s.replace("\\{", "{").replace("\\}", "}")
    if len(t) >= 2 and t[0] in "([{" and t[-1] in ")]}":
        inner = t[1:-1]
        # the brackets must enclose the whole string: "(1)(2)" is not a sequence
        depth = 0
        for ch in inner:
            depth += ch in "([{"
            depth -= ch in ")]}"
            if depth < 0:
                return None
        items = _split_top_level(inner)
        if len(items) >= 2:
            return t[0], t[-1], items
    items = _split_top_level(t)
    if len(items) >= 2:
        return "", "", items
    return None


def _sequence_equal(p: str, g: str, timeout_s: float) -> bool | None:
    if "\\cup" in p or "\\cup" in g:
        pu, gu = p.split("\\cup"), g.split("\\cup")
        if len(pu) != len(gu):
            return False
        pairs = zip(pu, gu, strict=True)
        return all(_math_equal_norm(a.strip(), b.strip(), timeout_s) for a, b in pairs)
    ps, gs = _as_sequence(p), _as_sequence(g)
    if ps is None or gs is None:
        return None if ps is None and gs is None else False
    (po, pc, pitems), (go, gc, gitems) = ps, gs
    if len(pitems) != len(gitems):
        return False
    if po == "m" or go == "m":
        if (po, pc) != (go, gc):
            return False
    elif "[" in (po + pc + go + gc) or "]" in (po + pc + go + gc):
        if (po, pc) != (go, gc):  # interval endpoints: open vs closed matters
            return False
    if po in ("", "{") and go in ("", "{"):  # unordered: answer lists and sets
        remaining = list(gitems)
        for a in pitems:
            hit = next((b for b in remaining if _math_equal_norm(a, b, timeout_s)), None)
            if hit is None:
                return False
            remaining.remove(hit)
        return True
    return all(_math_equal_norm(a, b, timeout_s) for a, b in zip(pitems, gitems, strict=True))


def _math_equal_norm(p: str, g: str, timeout_s: float) -> bool:
    if p.replace(" ", "").lower() == g.replace(" ", "").lower():
        return True
    num = _numeric_equal(p, g)
    if num is not None:
        return num
    seq = _sequence_equal(p, g, timeout_s)
    if seq is not None:
        return seq
    return symbolic_equal(p.rstrip("%"), g.rstrip("%"), timeout_s=timeout_s)


def math_equal(pred: Any, gold: Any, *, timeout_s: float = SYMPY_TIMEOUT_S) -> bool:
    """Whether a math prediction matches the gold answer (see the module docstring)."""
    return grade_math(pred, gold, timeout_s=timeout_s).correct


def grade_math(pred: Any, gold: Any, *, timeout_s: float = SYMPY_TIMEOUT_S) -> Grade:
    extracted = extract_answer(pred)
    p = normalize_math(extracted)
    g = normalize_math(extract_answer(gold))
    if not p or not g:
        return Grade(False, "none", extracted)
    if p.replace(" ", "").lower() == g.replace(" ", "").lower():
        return Grade(True, "exact", extracted)
    num = _numeric_equal(p, g)
    if num is not None:
        return Grade(num, "numeric", extracted)
    seq = _sequence_equal(p, g, timeout_s)
    if seq is not None:
        return Grade(seq, "sequence", extracted)
    ok = symbolic_equal(p.rstrip("%"), g.rstrip("%"), timeout_s=timeout_s)
    return Grade(ok, "symbolic", extracted)


# --------------------------------------------------------------------------- sympy worker


class _SympyWorker:
    """One long-lived `python -m training.sympy_worker` process (JSON lines over pipes).

    Killed and restarted when a comparison times out, so sympy can never hang the caller;
    a subprocess (not multiprocessing) so it works from any thread and any __main__.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._warm = False

    def _start(self) -> subprocess.Popen[str]:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "training.sympy_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._warm = False
        return self._proc

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=5)
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()

    def compare(self, a: str, b: str, timeout_s: float) -> bool | None:
        """True/False, or None on timeout or a dead worker."""
        with self._lock:
            proc = self._proc if self._proc is not None and self._proc.poll() is None else None
            if proc is None:
                self.stop()
                proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps([a, b]) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.stop()
                return None
            # the first call also pays the worker's start-up (sympy + antlr import, ~1-2 s)
            ready, _, _ = select.select(
                [proc.stdout], [], [], timeout_s + (0 if self._warm else 15)
            )
            line = proc.stdout.readline() if ready else ""
            if not line:
                self.stop()
                return None
            self._warm = True
            if line.strip() not in ("true", "false"):  # never: the worker guards its stdout
                self.stop()
                return None
            return line.strip() == "true"


_WORKER = _SympyWorker()
atexit.register(_WORKER.stop)


def symbolic_equal(a: str, b: str, *, timeout_s: float = SYMPY_TIMEOUT_S) -> bool:
    """sympy-proven equality of two math expressions; False when unparsable or past the timeout."""
    return _WORKER.compare(a, b, timeout_s) is True


# --------------------------------------------------------------------------- factual


def normalize_text(s: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    s = str(s).lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(pred: Any, gold: str | Sequence[str]) -> float:
    golds = [gold] if isinstance(gold, str) else list(gold)
    p = normalize_text(extract_answer(pred))
    return float(any(p == normalize_text(g) for g in golds))


def token_f1(pred: Any, gold: str | Sequence[str]) -> float:
    golds = [gold] if isinstance(gold, str) else list(gold)
    return max(
        (_f1(normalize_text(extract_answer(pred)), normalize_text(g)) for g in golds), default=0.0
    )


def _f1(p: str, g: str) -> float:
    special = {"yes", "no", "noanswer"}
    if (p in special or g in special) and p != g:
        return 0.0
    pt, gt = p.split(), g.split()
    common = Counter(pt) & Counter(gt)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pt), same / len(gt)
    return 2 * precision * recall / (precision + recall)


def grade_factual(pred: Any, gold: str | Sequence[str]) -> Grade:
    """Exact match and F1 against the gold answer(s). A boolean answer
    (`final_answer(True)` to a yes/no question) counts as "yes"/"no"."""
    if isinstance(pred, bool):
        pred = "yes" if pred else "no"
    gold_list = [str(gold)] if isinstance(gold, str | int | float) else [str(g) for g in gold]
    em, f1 = exact_match(pred, gold_list), token_f1(pred, gold_list)
    return Grade(em == 1.0, "em", extract_answer(pred), em=em, f1=f1)


JUDGE_PROMPT = """You check answers to questions. Decide whether the predicted answer means \
the same thing as the gold answer for this question (different wording, abbreviations, extra \
detail that does not change the answer are fine; a different entity, number or date is not).

Question: {question}
Gold answer: {gold}
Predicted answer: {pred}

Reply with exactly one word: yes or no."""


async def judge_answer(
    question: str, pred: Any, gold: str | Sequence[str], client: ModelClient
) -> bool:
    """LLM judge (the paper's factual metric): does `pred` answer `question` like `gold`?

    Raises ModelError when the judge cannot be reached.
    """
    gold_text = gold if isinstance(gold, str) else " | ".join(gold)
    prompt = JUDGE_PROMPT.format(question=question, gold=gold_text, pred=extract_answer(pred))
    params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_tokens=8, stop=[])
    completion = await client.complete([{"role": "user", "content": prompt}], params)
    reply = completion.choices[0].text.strip().lower() if completion.choices else ""
    return re.match(r"\W*yes\b", reply) is not None


# --------------------------------------------------------------------------- plain graders


def _golds(gold: Any) -> list[str]:
    """The acceptable answers: a list's items, else the one value, as text."""
    if isinstance(gold, list | tuple):
        return [g if isinstance(g, str) else extract_answer(g) for g in gold]
    return [gold if isinstance(gold, str) else extract_answer(gold)]


def grade_exact(pred: Any, gold: Any) -> Grade:
    """Correct when the prediction equals a gold answer after SQuAD normalization (case,
    punctuation, articles, spacing)."""
    p = normalize_text(extract_answer(pred))
    em = float(bool(p) and any(p == normalize_text(g) for g in _golds(gold)))
    return Grade(em == 1.0, "exact", extract_answer(pred), em=em)


_NUMBER_IN_TEXT = re.compile(r"[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?")


def _only_number(text: str) -> str | None:
    """The one number a text states (`about 42 units` -> `42`); None for none or several."""
    found = _NUMBER_IN_TEXT.findall(text)
    return found[0].replace("$", "").replace(",", "") if len(found) == 1 else None


def grade_numeric(pred: Any, gold: Any) -> Grade:
    """Correct when the prediction is the gold number within a relative 1e-4 (thousands
    separators, currency, percentages and fractions understood); a prediction that states
    exactly one number among words is read as that number."""
    extracted = extract_answer(pred)
    p = normalize_math(extracted)
    if parse_number(p.rstrip("%").strip()) is None:
        p = _only_number(extracted) or p
    for g in _golds(gold):
        if _numeric_equal(p, normalize_math(g)):
            return Grade(True, "numeric", extracted)
    return Grade(False, "numeric", extracted)


def grade_f1(pred: Any, gold: Any) -> Grade:
    """Token F1 against the best gold answer; correct from F1_CORRECT up."""
    golds = _golds(gold)
    f1 = token_f1(pred, golds)
    return Grade(f1 >= F1_CORRECT, "f1", extract_answer(pred), em=exact_match(pred, golds), f1=f1)


def grade_contains(pred: Any, gold: Any) -> Grade:
    """Correct when a normalized gold answer occurs in the normalized prediction as whole
    words (`Paris` in `It is Paris, France`)."""
    p = f" {normalize_text(extract_answer(pred))} "
    hit = any(f" {g} " in p for g in map(normalize_text, _golds(gold)) if g)
    return Grade(hit, "contains", extract_answer(pred))


Grader = Callable[[Any, Any], Grade]
GRADERS: dict[str, Grader] = {
    "math": grade_math,
    "factual": grade_factual,
    "exact": grade_exact,
    "numeric": grade_numeric,
    "f1": grade_f1,
    "contains": grade_contains,
}
"""Every grader by name: `math` and `factual` (the paper's), `exact`, `numeric`, `f1`,
`contains`. A task (training.tasks) names one of them."""


# --------------------------------------------------------------------------- dispatch


def grade(grader: str, pred: Any, gold: Any, *, timeout_s: float = SYMPY_TIMEOUT_S) -> Grade:
    """Deterministic grade with the named grader (GRADERS; `math` and `factual` are also the
    built-in tasks' names, so a record's task name grades as before)."""
    if gold is None:
        return Grade(False, "none", extract_answer(pred))
    if grader == "math":
        return grade_math(pred, gold, timeout_s=timeout_s)
    fn = GRADERS.get(grader)
    if fn is None:
        raise ValueError(f"unknown grader {grader!r}: expected one of {', '.join(GRADERS)}")
    return fn(pred, gold)


async def grade_with_judge(
    task: str, question: str, pred: Any, gold: Any, judge: ModelClient | None
) -> Grade:
    """`grade` with grader `task`, and for the factual grader, where exact match misses, the
    LLM judge's verdict."""
    g = grade(task, pred, gold)
    if task != "factual" or judge is None or g.correct or gold is None or pred is None:
        return g
    ok = await judge_answer(
        question, pred, gold if isinstance(gold, str | list) else str(gold), judge
    )
    return Grade(ok, "judge", g.extracted, em=g.em, f1=g.f1)
