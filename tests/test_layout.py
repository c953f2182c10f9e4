"""The packages depend one way (DESIGN.md): every import of every module, those inside
functions included, read with ``ast``; a forbidden arrow or a cycle fails, naming the files."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("evalkit", "finetune", "monitor", "dashboards")
# Only these dispatch commands, so only they may import everything: the CLI, and the demo (a
# package: every module of it).
DISPATCH = {"evalkit.cli"}
DEMO = "evalkit.demo"
# What finetune may use of evalkit: the shared contracts (the event log's reader among them),
# perplexity to measure a base model, the speedups (evalkit.accel), and the start of torchrun's
# processes, which training and evaluation share (evalkit.distributed).
CONTRACTS = (
    "evalkit",
    "evalkit.distributed",
    "evalkit.errors",
    "evalkit.workspace",
    "evalkit.models",
    "evalkit.provenance",
    "evalkit.chat",
    "evalkit.contamination",
    "evalkit.events",
    "evalkit.perplexity",
)
# Statistics are pure functions over arrays (krippendorff is the reference alpha, numpy only):
# the evaluation's and the drift job's.
STATISTICS = ("evalkit.stats", "monitor.drift.statistics")
STATS_MAY_IMPORT = {"numpy", "scipy", "krippendorff"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for package in PACKAGES
        if (ROOT / package).is_dir()
        for p in sorted((ROOT / package).rglob("*.py"))
    }


def imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            # `from evalkit.gate import spec` imports the module evalkit.gate.spec
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imports(path) if m in known} for name, path in known.items()}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def dispatches(module: str) -> bool:
    return module in DISPATCH or within(module, DEMO)


def forbidden(source: str, target: str) -> str | None:
    """Why ``source`` may not import ``target``, or None."""
    if dispatches(source):
        return None
    if dispatches(target):
        return "a library module imports the command line or the demo"
    top_source, top_target = source.split(".")[0], target.split(".")[0]
    if top_source == "evalkit" and top_target != "evalkit":
        return f"evalkit imports {top_target} (only the CLI and the demo dispatch to it)"
    contract = target in CONTRACTS or within(target, "evalkit.accel")
    if top_source == "finetune" and top_target == "evalkit" and not contract:
        return "finetune uses evalkit beyond the shared contracts"
    if top_source == "finetune" and top_target in ("monitor", "dashboards"):
        return f"finetune imports {top_target}"
    if top_source == "monitor" and top_target in ("finetune", "dashboards"):
        return f"monitor imports {top_target}"
    if any(within(source, s) for s in STATISTICS) and not within(target, "evalkit.stats"):
        return "statistics import a module beyond numpy and scipy"
    return None


def test_no_forbidden_arrow():
    known = modules()
    wrong = [
        f"{known[source].relative_to(ROOT)} imports {target}: {why}"
        for source, targets in graph().items()
        for target in sorted(targets)
        if (why := forbidden(source, target))
    ]
    assert not wrong, "\n".join(wrong)


def test_statistics_use_numpy_and_scipy_only():
    wrong = []
    for name, path in modules().items():
        if not any(within(name, s) for s in STATISTICS):
            continue
        for module in sorted(imports(path)):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__" or top in STATS_MAY_IMPORT:
                continue
            if not within(module, "evalkit.stats"):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "\n".join(wrong)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between modules (a package and its own modules aside), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if within(target, node) or within(node, target):  # a package's own re-exports
                continue
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("evalkit.gate.judge", "finetune.data.prepare", False),
        ("evalkit.cli", "finetune.train", True),
        ("evalkit.demo.serving", "monitor.stack", True),
        ("evalkit.demo.data", "finetune.data.prepare", True),
        ("evalkit.demonstration", "monitor.stack", False),
        ("evalkit.cli.helpers", "monitor.stack", False),
        ("evalkit.gate.judge", "evalkit.demo.summary", False),
        ("finetune.train", "evalkit.provenance", True),
        ("finetune.train", "evalkit.gate", False),
        ("monitor.server", "finetune.train", False),
        ("evalkit.compare", "evalkit.cli", False),
        ("evalkit.stats.ranking", "evalkit.results", False),
    ],
)
def test_the_rules_themselves(source, target, allowed):
    assert (forbidden(source, target) is None) == allowed


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
