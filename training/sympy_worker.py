"""Helper process for `training.grading.symbolic_equal`: sympy comparisons, one per line.

Reads JSON `[a, b]` lines on stdin, writes `true`/`false` lines on stdout. The parent
kills it when a comparison runs past its timeout.

The answers compared are model-written text. sympy's plain parser evaluates its input as
Python, so text for it must look like mathematics: no quotes, underscores, semicolons or
brackets of attribute access, and no names but single letters and the math words below
(`__import__('os')`, `print(1)` or `exit()` are "not shown equal", never run). Replies go
to a private copy of the original stdout; anything else written to stdout goes to stderr,
so nothing sympy prints can corrupt the protocol.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any

REL_TOL = 1e-4
_NAME = re.compile(r"[A-Za-z]+")
_UNSAFE = re.compile(r"[_'\"`;\[\]@$#:]|\.\s*[A-Za-z]")
MATH_WORDS = frozenset({
    "sqrt", "pi", "e", "E", "I", "oo", "inf", "infty", "sin", "cos", "tan", "cot", "sec",
    "csc", "asin", "acos", "atan", "sinh", "cosh", "tanh", "log", "ln", "exp", "abs", "Abs",
    "frac", "dfrac", "tfrac", "cdot", "times", "div", "left", "right", "pm", "mp", "circ",
    "degree", "deg", "binom", "factorial", "floor", "ceil", "min", "max", "gcd", "lcm", "mod",
})  # fmt: skip


def plain_math(text: str) -> bool:
    """Whether `text` may go to sympy's evaluating parser (see the module docstring)."""
    if _UNSAFE.search(text):
        return False
    return all(len(w) == 1 or w in MATH_WORDS for w in _NAME.findall(text))


def to_sympy(s: str) -> Any:
    """Parse LaTeX (sympy's ANTLR parser) or plain math text into a sympy expression."""
    import sympy
    from sympy.parsing.latex import parse_latex
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    if "\\" in s or "{" in s:
        try:
            expr = parse_latex(s)
            # the LaTeX parser leaves \pi as a plain symbol
            return expr.subs(sympy.Symbol("pi"), sympy.pi) if hasattr(expr, "subs") else expr
        except Exception:  # noqa: BLE001 - fall back to the plain parser below
            pass
    text = s.replace("{", "(").replace("}", ")").replace("\\", "")
    if not plain_math(text):
        raise ValueError("not plain mathematics")
    transformations = (*standard_transformations, implicit_multiplication_application, convert_xor)
    return parse_expr(text, transformations=transformations, evaluate=True)


def sympy_equal(a: str, b: str) -> bool:
    import sympy

    ea, eb = to_sympy(a), to_sympy(b)
    if isinstance(ea, sympy.Equality) and isinstance(eb, sympy.Equality):
        da, db = ea.lhs - ea.rhs, eb.lhs - eb.rhs
        return bool(sympy.simplify(da - db) == 0 or sympy.simplify(da + db) == 0)
    if isinstance(ea, sympy.Equality):
        ea = ea.rhs
    if isinstance(eb, sympy.Equality):
        eb = eb.rhs
    try:
        if sympy.simplify(ea - eb) == 0:
            return True
    except Exception:  # noqa: BLE001 - objects that do not subtract: compare numerically
        pass
    try:
        va, vb = complex(sympy.N(ea)), complex(sympy.N(eb))
    except (TypeError, ValueError):
        return False
    return math.isclose(va.real, vb.real, rel_tol=REL_TOL, abs_tol=1e-12) and math.isclose(
        va.imag, vb.imag, rel_tol=REL_TOL, abs_tol=1e-12
    )


def main() -> None:
    import warnings

    warnings.simplefilter("ignore")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever else writes to stdout lands on stderr
    sys.stdout = sys.stderr
    for line in sys.stdin:
        try:
            a, b = json.loads(line)
            result = bool(sympy_equal(str(a), str(b)))
        except Exception:  # noqa: BLE001 - unparsable means "not shown equal"
            result = False
        replies.write("true\n" if result else "false\n")
        replies.flush()


if __name__ == "__main__":
    main()
