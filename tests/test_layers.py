"""The package's shape: data flows one way (no upward import, no import cycle), and retrieval, the
embedding cache and the LoRA target list are each written once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "searchr3"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, *, top_level_only: bool) -> set[str]:
    """The searchr3 modules that ``name`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in _modules() else base for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "searchr3" or m.startswith("searchr3.")}


def test_data_imports_nothing_above_it():
    for name, path in _modules().items():
        if name.startswith("searchr3.data"):
            upward = {m for m in _imports(name, path, top_level_only=False) if not m.startswith("searchr3.data")}
            assert not upward, f"{name} imports {upward} from above searchr3.data"


def test_no_import_cycle():
    graph = {name: _imports(name, path, top_level_only=True) - {name} for name, path in _modules().items()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node) :] + [node]))
        if node in done or node not in graph:
            return
        for nxt in graph[node]:
            visit(nxt, stack + [node])
        done.add(node)

    for name in graph:
        visit(name, [])


def _files_matching(pattern: str) -> set[str]:
    rx = re.compile(pattern)
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if rx.search(p.read_text())}


def test_each_idea_is_written_once():
    assert _files_matching(r"\.topk\(|argpartition|semantic_search\(") == {"retrieval.py"}  # exact top-k
    assert _files_matching(r"import hnswlib|hnswlib\.Index") == {"retrieval.py"}  # the graph
    assert _files_matching(r"def cached_encode|def corpus_key") == {"retrieval.py"}  # the embedding cache
    assert _files_matching(r"def doc_text") == {"data/beir.py"}  # document -> text
    assert _files_matching(r"\"q_proj\"") == {"backbone.py"}  # LoRA targets
    assert _files_matching(r"torch\.save\(") == {"runs.py"}  # checkpoints: the run-folder layer only
