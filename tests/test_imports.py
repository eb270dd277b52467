"""The stages meet only at the format contract: the trainer imports from ``parsit_data`` nothing but
``parsit_data.format`` and ``parsit_data.errors``, and the format package needs nothing else of the build."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"parsit_data.format", "parsit_data.errors"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names; ``from X import y`` gives X and X.y)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _parsit_data_imports(package: str) -> dict[str, set[str]]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        mods = {m for m in imported_modules(path) if m == "parsit_data" or m.startswith("parsit_data.")}
        if mods:
            found[str(path.relative_to(ROOT))] = mods
    return found


def _allowed(module: str, names_ok: set[str]) -> bool:
    return module in names_ok or any(module.startswith(a + ".") for a in names_ok)


def test_the_trainer_imports_only_the_format_and_the_errors():
    found = _parsit_data_imports("parsit_train")
    assert found, "the ast walk found no import of parsit_data at all: the test is broken"
    bad = {f: sorted(m for m in mods if not _allowed(m, ALLOWED)) for f, mods in found.items()}
    bad = {f: m for f, m in bad.items() if m}
    assert bad == {}, f"parsit_train imports build-stage modules: {bad}"


def test_the_format_package_stands_on_its_own():
    found = _parsit_data_imports("parsit_data/format")
    bad = {f: sorted(m for m in mods if not _allowed(m, ALLOWED)) for f, mods in found.items()}
    assert {f: m for f, m in bad.items() if m} == {}
    # At run time too: importing the trainer's data side loads no other parsit_data module.
    code = ("import sys, parsit_data.format, parsit_data.errors, parsit_train.data.dataset, "
            "parsit_train.data.images, parsit_train.data.collator\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('parsit_data'))))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=True).stdout.split()
    assert "parsit_data.format.reader" in loaded
    assert [m for m in loaded if m != "parsit_data" and not _allowed(m, ALLOWED)] == []


def test_the_rule_catches_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from parsit_data.images import select_best_resolution\nimport parsit_data.cli.run\n"
                 "from parsit_data import format\n")
    mods = imported_modules(f)
    assert {"parsit_data.images", "parsit_data.cli.run", "parsit_data.format"} <= mods
    assert [m for m in sorted(mods) if not _allowed(m, ALLOWED)] == ["parsit_data", "parsit_data.cli.run",
                                                                     "parsit_data.images",
                                                                     "parsit_data.images.select_best_resolution"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at module level (what runs when it is imported)."""
    paths = sorted((ROOT / package).rglob("*.py"))
    names = {_module_name(p) for p in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in tree.body:  # top-level statements only (an `if TYPE_CHECKING:` block does not run)
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        graph[_module_name(path)] = {d for d in deps if d in names} - {_module_name(path)}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycles_and_templates_import_at_module_level():
    graph = module_level_graph("parsit_data")
    assert "parsit_data.encode" in graph["parsit_data.mask_report"]
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    # Templates hide no dependency in a function body (that is how the old cycle with tokenize.py hid).
    for path in sorted((ROOT / "parsit_data" / "templates").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = set(map(id, tree.body))
        late = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom | ast.Import) and id(n) not in top
                and any(a.name.startswith("parsit_data") for a in n.names) | bool(
                    isinstance(n, ast.ImportFrom) and (n.module or "").startswith("parsit_data"))]
        assert late == [], f"{path.name}: function-level imports of parsit_data at lines {late}"
