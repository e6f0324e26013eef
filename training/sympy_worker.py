"""Helper process for `training.grading.symbolic_equal`: sympy comparisons, one per line.

Reads JSON `[a, b]` lines on stdin, writes `true`/`false` lines on stdout. The parent
kills it when a comparison runs past its timeout.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

REL_TOL = 1e-4


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
    for line in sys.stdin:
        try:
            a, b = json.loads(line)
            result = bool(sympy_equal(str(a), str(b)))
        except Exception:  # noqa: BLE001 - unparsable means "not shown equal"
            result = False
        sys.stdout.write("true\n" if result else "false\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
