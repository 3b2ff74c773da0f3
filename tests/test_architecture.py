"""The floors of ARCHITECTURE.md, checked on every import of the package (those inside functions too).

A module imports from its own floor only along an arrow (or inside its own package), and from the
floors below it freely; nothing imports upwards, no pair in FORBIDDEN imports the other, and no set
of modules imports itself round in a cycle. The tables below are the drawing of ARCHITECTURE.md.

No function is longer than MAX_FUNCTION_LINES unless its docstring says why ("long because ...").
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import nnunetv2_selma

PACKAGE = "nnunetv2_selma"

#: floors, top to bottom; a module is on the floor of the longest prefix listed here, else on the ground
FLOORS: dict[str, tuple[str, ...]] = {
    "face": ("cli", "demo", "experiment", "submission"),
    "stages": ("training", "pretraining", "store", "inference", "dataset_conversion", "evaluation", "synthetic",
               "nnunet_ext", "regions"),
    "ground": ("volumes",),  # and every top-level module: io, checkpoint_io, checkpoints, nnssl_format...
}
LEVEL = {"face": 2, "stages": 1, "ground": 0}

#: imports allowed between different packages of one floor (source prefix -> target prefix)
ARROWS: tuple[tuple[str, str], ...] = (
    ("cli", "demo"),
    ("cli", "submission"),
    ("demo", "experiment"),  # the demo and the benchmark studies run the commands the same way
    ("training", "pretraining"),
    ("training", "store.reader"),
    ("pretraining", "store.reader"),
    ("nnunet_ext", "training"),  # nnU-Net finds our trainers through nnunet_ext.selma_trainers
    ("synthetic.atlas_brain", "inference.objects"),  # the test brain's objects folder is measured as a user's is
)

#: pairs that never import each other in the direction given, whatever the floors say
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("pretraining", "store.ingest"),
    ("pretraining", "store.format"),
    ("training", "store.ingest"),
    ("store.ingest", "store.reader"),
    ("store.reader", "store.ingest"),
    ("nnssl_format", "checkpoints"),
)
#: modules that import nothing of the package but the modules named (checkpoint files are read and written before
#: anything else, through the one atomic write)
SELF_CONTAINED: dict[str, tuple[str, ...]] = {"checkpoint_io": ("atomic",), "atomic": ()}


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def floor_of(module: str) -> str:
    """The floor of a module named relative to the package (``"store.reader"``, ``""`` for the package)."""
    best, floor = -1, "ground"
    for name, prefixes in FLOORS.items():
        for prefix in prefixes:
            if _matches(module, prefix) and len(prefix) > best:
                best, floor = len(prefix), name
    return floor


def unit_of(module: str) -> str:
    """The package (or top-level module) a module belongs to: imports inside one unit need no arrow."""
    return module.split(".")[0]


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """Every module of the package under ``root`` -> the package's modules it imports, anywhere in its body.

    ``from a.b import c`` counts as an import of ``a.b.c`` when that is a module, else of ``a.b``;
    relative imports are resolved. Module names are relative to the package (its ``__init__`` is ``""``).
    """
    files: dict[str, tuple[Path, bool]] = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

    def ours(name: str) -> str | None:
        if name == package:
            return ""
        return name[len(package) + 1:] if name.startswith(package + ".") else None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in files.items():
        here = name.split(".") if name else []
        parent = here if is_package else here[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {t for t in (ours(a.name) for a in node.names) if t is not None}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parent[: len(parent) - node.level + 1] + ([node.module] if node.module else [])
                    module = ".".join(base)
                else:
                    module = ours(node.module or "")
                    if module is None:
                        continue
                for alias in node.names:
                    sub = f"{module}.{alias.name}" if module else alias.name
                    targets.add(sub if sub in files else module)
        graph[name] = targets - {name}
    return graph


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Upward imports, same-floor imports without an arrow, and FORBIDDEN pairs, one line each."""
    found = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = floor_of(source), floor_of(target)
            where = f"{PACKAGE}.{source or '__init__'} imports {PACKAGE}.{target or '__init__'}"
            forbidden = [pair for pair in FORBIDDEN if _matches(source, pair[0]) and _matches(target, pair[1])]
            if forbidden:
                found.append(f"{where}: forbidden ({forbidden[0][0]} never imports {forbidden[0][1]})")
            elif LEVEL[b] > LEVEL[a]:
                found.append(f"{where}: upward, from the {a} floor to the {b} floor")
            elif (a == b and a != "ground" and unit_of(source) != unit_of(target)
                  and not any(_matches(source, s) and _matches(target, t) for s, t in ARROWS)):
                found.append(f"{where}: across the {a} floor without an arrow in ARCHITECTURE.md")
    return found


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Sets of modules that import each other round (Tarjan's strongly connected components, size > 1)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(Path(nnunetv2_selma.__file__).parent)


def test_no_import_crosses_a_floor_upwards_or_without_an_arrow(graph):
    assert violations(graph) == []


def test_no_import_cycle_between_modules(graph):
    assert cycles(graph) == []


def test_self_contained_modules_import_nothing_of_the_package(graph):
    extra = {m: sorted(graph[m] - set(allowed)) for m, allowed in SELF_CONTAINED.items()}
    assert {m: e for m, e in extra.items() if e} == {}


def test_every_table_entry_names_a_module_of_the_package(graph):
    """A renamed package must not leave a table entry that silently checks nothing."""
    prefixes = ({p for ps in FLOORS.values() for p in ps} | {p for pair in ARROWS + FORBIDDEN for p in pair}
                | set(SELF_CONTAINED) | {p for ps in SELF_CONTAINED.values() for p in ps})
    missing = sorted(p for p in prefixes if not any(_matches(m, p) for m in graph))
    assert missing == []


def _plant(tmp_path: Path, files: Mapping[str, str]) -> dict[str, set[str]]:
    root = tmp_path / PACKAGE
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return import_graph(root)


def test_a_planted_upward_import_inside_a_function_fails(tmp_path):
    graph = _plant(tmp_path, {
        "volumes/readers.py": "def read():\n    from nnunetv2_selma.inference.blocks import plan_blocks\n",
        "inference/blocks.py": "from ..volumes import readers\n",
        "cli/predict_large.py": "from nnunetv2_selma.inference import blocks\n",
    })
    assert graph["volumes.readers"] == {"inference.blocks"}
    assert graph["inference.blocks"] == {"volumes.readers"}  # relative import resolved to the module
    found = violations(graph)
    assert found == ["nnunetv2_selma.volumes.readers imports nnunetv2_selma.inference.blocks: upward, from the "
                     "ground floor to the stages floor"]
    assert cycles(graph) == [["inference.blocks", "volumes.readers"]]


def test_a_planted_forbidden_pair_and_a_missing_arrow_fail(tmp_path):
    graph = _plant(tmp_path, {
        "pretraining/data.py": "import nnunetv2_selma.store.ingest\n",
        "store/ingest.py": "",
        "evaluation/folders.py": "from nnunetv2_selma.synthetic import download\n",
        "synthetic/download.py": "",
        "training/trainers.py": "from nnunetv2_selma.pretraining.data import x\nfrom nnunetv2_selma import io\n",
        "io.py": "",
    })
    found = violations(graph)
    assert any("pretraining.data imports nnunetv2_selma.store.ingest: forbidden" in f for f in found)
    assert any("evaluation.folders imports nnunetv2_selma.synthetic.download: across the stages floor" in f
               for f in found)
    assert len(found) == 2  # training -> pretraining has an arrow; anything -> io goes down


def test_a_cycle_in_a_fake_graph_is_found():
    graph = {"checkpoints": {"nnssl_format"}, "nnssl_format": {"checkpoint_io", "model_folder"},
             "model_folder": {"checkpoints"}, "checkpoint_io": set()}
    assert cycles(graph) == [["checkpoints", "model_folder", "nnssl_format"]]
    assert violations({"nnssl_format": {"checkpoints"}}) == [
        "nnunetv2_selma.nnssl_format imports nnunetv2_selma.checkpoints: forbidden (nnssl_format never imports "
        "checkpoints)"]


# ---------------------------------------------------------------------------------------------- long functions
#: a function (method, nested function) longer than this reads as several steps: name them, or say why not
MAX_FUNCTION_LINES = 80
#: the words a longer function's docstring must hold (any case, any line breaks between them)
LONG_BECAUSE = "long because"


def long_functions(root: Path) -> list[str]:
    """Functions under ``root`` over MAX_FUNCTION_LINES lines (decorators aside) whose docstring does not say why."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            docstring = " ".join((ast.get_docstring(node) or "").lower().split())
            if lines > MAX_FUNCTION_LINES and LONG_BECAUSE not in docstring:
                found.append(f"{path.relative_to(root.parent).as_posix()}:{node.lineno} {node.name}: {lines} lines, "
                             f"and its docstring does not say why ('{LONG_BECAUSE} ...')")
    return found


def test_no_long_function_without_a_reason():
    assert long_functions(Path(nnunetv2_selma.__file__).parent) == []


def _function(name: str, lines: int, docstring: str | None = None, indent: str = "") -> str:
    """Source of a function ``lines`` lines long (its ``def`` line and docstring included)."""
    head = [f"{indent}def {name}():"] + (f'{indent}    """{docstring}"""'.split("\n") if docstring else [])
    return "\n".join(head + [f"{indent}    x = {k}" for k in range(lines - len(head))]) + "\n"


def test_a_planted_long_function_fails(tmp_path):
    n = MAX_FUNCTION_LINES
    root = tmp_path / PACKAGE
    (root / "inference").mkdir(parents=True)
    (root / "inference" / "blocks.py").write_text(
        _function("too_long", n + 1, "Plan the blocks.")
        + _function("just_short_enough", n)
        + _function("explained", n + 20, "Plan the blocks.\n\n    Long\n    Because its table is written out.")
        + "class Planner:\n" + _function("method", n + 1, indent="    "))
    why = "and its docstring does not say why ('long because ...')"
    assert long_functions(root) == [f"{PACKAGE}/inference/blocks.py:1 too_long: {n + 1} lines, {why}",
                                    f"{PACKAGE}/inference/blocks.py:{3 * n + 23} method: {n + 1} lines, {why}"]
