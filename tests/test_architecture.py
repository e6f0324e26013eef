"""The import direction and the declared public surface of each package.

Dependencies point one way: distillery (the composition root) -> service, training,
evaluation -> agent -> sandbox, retrieval. A package imports another only if the arrow allows
it, and only names the other package lists in its `__init__.py` `__all__`, never from one of
its `_private` modules. Static (AST) check of every module, so a lazy import inside a
function counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> the packages it may import
ALLOWED: dict[str, set[str]] = {
    "sandbox": set(),
    "retrieval": set(),
    "agent": {"sandbox", "retrieval"},
    "training": {"agent", "sandbox", "retrieval"},
    "evaluation": {"agent", "training", "sandbox", "retrieval"},
    "service": {"agent"},
    "study": {"agent", "training", "evaluation", "sandbox", "retrieval"},
    "distillery": {"agent", "sandbox", "retrieval", "training", "evaluation", "study", "service"},
}
PACKAGES = [p for p in ALLOWED if (ROOT / p / "__init__.py").exists()]


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # the full module imported from
    names: tuple[str, ...]  # imported names ('' for `import x.y`)


def _imports(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(Import(path, node.lineno, node.module,
                                tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(path, node.lineno, alias.name, ("",)))
    return found


def _public_names(package: str, root: Path = ROOT) -> set[str]:
    init = root / package / "__init__.py"
    tree = ast.parse(init.read_text())
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Name) and t.id == "__all__":
                value = ast.literal_eval(node.value)  # type: ignore[arg-type]
                return set(value)
    return set()


def _modules(package: str, root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)


def _violations(package: str, root: Path = ROOT) -> list[str]:
    problems = []
    for path in _modules(package, root):
        rel = path.relative_to(root)
        for imp in _imports(path):
            top = imp.module.split(".")[0]
            if top == package or top not in ALLOWED:
                continue
            where = f"{rel}:{imp.line}"
            if top not in ALLOWED[package]:
                problems.append(
                    f"{where}: {package} must not import {top} ({imp.module}); the direction is "
                    "distillery -> service/training/evaluation -> agent -> sandbox/retrieval"
                )
                continue
            parts = imp.module.split(".")
            if any(p.startswith("_") for p in parts[1:]):
                problems.append(f"{where}: {imp.module} is private to {top}")
                continue
            public = _public_names(top, root)
            for name in imp.names:
                if name and name not in public:
                    problems.append(
                        f"{where}: {top} does not export {name!r} (from {imp.module}); add it to "
                        f"{top}/__init__.py __all__ or use an exported name"
                    )
    return problems


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_direction_and_the_public_surface(package: str) -> None:
    problems = _violations(package)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_exists(package: str) -> None:
    import importlib

    mod = importlib.import_module(package)
    missing = [n for n in _public_names(package) if not hasattr(mod, n)]
    assert not missing, f"{package}.__all__ lists names it cannot provide: {missing}"


def test_the_checker_catches_each_kind_of_violation(tmp_path: Path) -> None:
    for pkg, exports in [("agent", ["AgentConfig"]), ("sandbox", ["SandboxConfig"])]:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(f"__all__ = {exports!r}\n")
    (tmp_path / "sandbox" / "bad.py").write_text("from agent.agent import AgentConfig\n")
    (tmp_path / "agent" / "uses.py").write_text(
        "from sandbox.config import SandboxConfig\n"  # fine
        "from sandbox.config import DEFAULTS\n"  # not exported
        "from sandbox._worker import main\n"  # private module
        "def f():\n    import service.app\n"  # wrong direction, inside a function
    )
    assert _violations("agent", tmp_path) == [
        "agent/uses.py:2: sandbox does not export 'DEFAULTS' (from sandbox.config); add it to "
        "sandbox/__init__.py __all__ or use an exported name",
        "agent/uses.py:3: sandbox._worker is private to sandbox",
        "agent/uses.py:5: agent must not import service (service.app); the direction is "
        "distillery -> service/training/evaluation -> agent -> sandbox/retrieval",
    ]
    assert len(_violations("sandbox", tmp_path)) == 1


MAX_FUNCTION_LINES = 80
# Files whose long functions read better whole, with the reason.
LONG_FUNCTIONS_ALLOWED: dict[str, str] = {}


def _long_functions(package: str, root: Path = ROOT) -> list[str]:
    found = []
    for path in _modules(package, root):
        rel = str(path.relative_to(root))
        if rel in LONG_FUNCTIONS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{rel}:{node.lineno} {node.name} is {lines} lines")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_longer_than_80_lines(package: str) -> None:
    long = _long_functions(package)
    assert not long, (
        f"split these into named steps (max {MAX_FUNCTION_LINES} lines):\n" + "\n".join(long)
    )


def test_the_length_check_counts_lines(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg" / "m.py").write_text(f"def long():\n{body}\n\ndef short():\n    pass\n")
    expected = f"pkg/m.py:1 long is {MAX_FUNCTION_LINES + 1} lines"
    assert _long_functions("pkg", tmp_path) == [expected]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _internal_graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (lazy and type-only imports
    included: a cycle hidden inside a function is still a cycle)."""
    modules = {_module_name(p, root): p for p in _modules(package, root)}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for imp in _imports(path):
            targets = [imp.module] + [f"{imp.module}.{n}" for n in imp.names if n]
            graph[name].update(t for t in targets if t in modules and t != package and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle_inside_a_package(package: str) -> None:
    cycles = _cycles(_internal_graph(package))
    assert not cycles, "these modules import each other in a circle (split out what they " \
        "share): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_circle_check_finds_a_lazy_circle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import a\n")
    assert _cycles(_internal_graph("pkg", tmp_path)) == [["pkg.a", "pkg.b", "pkg.c"]]


MAX_CLASS_LINES = 300
# Classes over the cap, each with why it is still one piece. A new entry needs a reason;
# splitting one of these removes its entry.
LONG_CLASSES_ALLOWED = {
    "sandbox/process.py:WorkerProcess": "the host side of one jail: its control loop, "
    "freeze/thaw between steps and the scrub for another run share the fork bookkeeping "
    "(spares, accounting and Fork are split out); start-up and the between-steps rest "
    "are the seams to split along next",
    "sandbox/session.py:SandboxSession": "one run's steps against one worker: candidates, "
    "tool calls and promotion share the step's state",
}


def _long_classes(package: str, root: Path = ROOT) -> list[str]:
    found = []
    for path in _modules(package, root):
        rel = str(path.relative_to(root))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES and f"{rel}:{node.name}" not in LONG_CLASSES_ALLOWED:
                    found.append(f"{rel}:{node.lineno} class {node.name} is {lines} lines")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_class_is_longer_than_300_lines(package: str) -> None:
    long = _long_classes(package)
    assert not long, (
        f"give the class's new responsibility its own module (max {MAX_CLASS_LINES} lines), "
        "or add it to LONG_CLASSES_ALLOWED with the reason:\n" + "\n".join(long)
    )


def test_every_allowed_long_class_still_exists_and_is_long() -> None:
    for key in LONG_CLASSES_ALLOWED:
        rel, name = key.split(":")
        tree = ast.parse((ROOT / rel).read_text())
        sizes = [(n.end_lineno or n.lineno) - n.lineno + 1 for n in ast.walk(tree)
                 if isinstance(n, ast.ClassDef) and n.name == name]
        assert sizes and sizes[0] > MAX_CLASS_LINES, f"{key} is gone or short: drop its entry"


# Where a package module may touch os.environ / os.getenv, by "file:function" with the
# reason. The rule (docs/design.md): only distillery/settings.py reads the environment, and
# components get plain values; these places hand the environment on to a child process or
# read what a launcher sets per process, which no setting can carry.
ENVIRONMENT_ACCESS_ALLOWED = {
    "training/sft.py:is_main_process": "torchrun's RANK: set per worker process by the "
    "launcher (each process of one job differs), not a setting",
    "training/sft.py:data_parallel_world": "torchrun's WORLD_SIZE, as for RANK",
    "training/sft.py:_gradient_accumulation": "torchrun's WORLD_SIZE, as for RANK",
    "sandbox/process.py:WorkerProcess._start": "PATH handed on to nsjail, the only variable "
    "its environment gets",
    "training/grading.py:_SympyWorker._start": "the sympy helper process inherits the "
    "environment it runs in",
    "study/serving.py:VLLMServer.start": "the vLLM server process inherits the environment "
    "(with the offline and KV-cache variables it needs set)",
    "agent/embedded_model.py:convert_gguf_to_hf": "HF_HUB_OFFLINE defaulted for the Hugging "
    "Face libraries loaded in this process (the conversion reads local files only)",
    "distillery/commands/serve.py:export_env": "writes, not reads: the flags' values as "
    "DISTILLERY_* for the worker processes' Settings",
}


class _EnvironmentAccess(ast.NodeVisitor):
    """The enclosing function (Class.method) of every os.environ / os.getenv / os.putenv
    use, and of a `from os import environ|getenv|putenv`."""

    NAMES = {"environ", "getenv", "putenv", "environb", "getenvb"}

    def __init__(self) -> None:
        self.scope: list[str] = []
        self.found: list[tuple[str, int]] = []

    def _enter(self, node: ast.AST, name: str) -> None:
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._enter(node, node.name)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._enter(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._enter(node, node.name)

    def _hit(self, node: ast.AST) -> None:
        self.found.append((".".join(self.scope) or "<module>", getattr(node, "lineno", 0)))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in self.NAMES and isinstance(node.value, ast.Name) and node.value.id == "os":
            self._hit(node)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module == "os" and any(a.name in self.NAMES for a in node.names):
            self._hit(node)


def _environment_access(package: str, root: Path = ROOT) -> dict[str, list[int]]:
    """The lines that touch the environment by "file:function", outside distillery/settings.py."""
    found: dict[str, list[int]] = {}
    for path in _modules(package, root):
        rel = str(path.relative_to(root))
        if rel == "distillery/settings.py":
            continue
        visitor = _EnvironmentAccess()
        visitor.visit(ast.parse(path.read_text()))
        for scope, line in visitor.found:
            found.setdefault(f"{rel}:{scope}", []).append(line)
    return found


def test_only_settings_reads_the_environment() -> None:
    found = {k: v for p in PACKAGES for k, v in _environment_access(p).items()}
    unlisted = [f"{k} (line {', '.join(map(str, v))})" for k, v in sorted(found.items())
                if k not in ENVIRONMENT_ACCESS_ALLOWED]  # fmt: skip
    assert not unlisted, (
        "only distillery/settings.py reads the environment: add a Settings field and hand "
        "the value down, or list the place in ENVIRONMENT_ACCESS_ALLOWED with the reason:\n"
        + "\n".join(unlisted)
    )
    stale = sorted(set(ENVIRONMENT_ACCESS_ALLOWED) - set(found))
    assert not stale, f"these no longer touch the environment: drop their entries: {stale}"


def test_the_environment_check_finds_each_form(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        "import os\n"
        "from os import getenv\n"
        "A = os.environ.get('A')\n"
        "class C:\n"
        "    def f(self):\n"
        "        return os.getenv('B'), dict(os.environ)\n"
        "def g():\n"
        "    os.environ['C'] = '1'\n"
        "def h(environ):\n"
        "    return environ.get('D'), os.path.join('a')\n"  # a parameter, not os's
    )
    assert _environment_access("pkg", tmp_path) == {
        "pkg/m.py:<module>": [2, 3], "pkg/m.py:C.f": [6, 6], "pkg/m.py:g": [8],
    }
