"""Imports point down, and the sans-I/O core stays free of I/O.

Every module of ``adicom/`` belongs to one layer (docs/architecture.md draws
them). A module may import from its own layer and the layers below, never
from above; the modules of the core may not import what does I/O or keeps
time (asyncio, socket, time, threading, selectors) or the user-facing
models (pydantic); no module takes another's private names; and the import
graph has no circle, counting imports made inside functions. A new module
must be placed in a layer here before this test passes.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "adicom"

#: Lowest first. Within a layer, modules import each other freely (no circles).
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "foundation",
        frozenset({"adicom.errors", "adicom.elements", "adicom.fileformat", "adicom.version"}),
    ),
    (
        "upper layer (PS3.8)",
        frozenset(
            {
                "adicom.pdu",
                "adicom.pdu.wire",
                "adicom.pdu.items",
                "adicom.pdu.pdus",
                "adicom.pdu.reader",
                "adicom.fsm",
                "adicom.protocol",
                "adicom.presentation",
                "adicom.negotiation",
            }
        ),
    ),
    (
        "DIMSE (PS3.7)",
        frozenset(
            {
                "adicom.dimse",
                "adicom.dimse.commands",
                "adicom.dimse.status",
                "adicom.dimse.framing",
                "adicom.dimse.connection",
            }
        ),
    ),
    (
        "asyncio driver",
        frozenset(
            {
                "adicom.tls",
                "adicom.operation",
                "adicom.turns",
                "adicom.events",
                "adicom.transport",
                "adicom.deadlines",
                "adicom.driverevents",
                "adicom.inputflow",
                "adicom.driver",
                "adicom.association",
                "adicom.client",
            }
        ),
    ),
    (
        "services",
        frozenset(
            {
                "adicom.storescu",
                "adicom.storesources",
                "adicom.nservices",
                "adicom.commitment",
                "adicom.storage",
                "adicom.diskstorage",
                "adicom.diskinstance",
                "adicom.instancevalues",
                "adicom.qrscu",
                "adicom.qrcontexts",
                "adicom.qrscp",
            }
        ),
    ),
    (
        "user-facing",
        frozenset(
            {
                "adicom.admission",
                "adicom.retry",
                "adicom.pool",
                "adicom.batch",
                "adicom.progress",
                "adicom.audit",
                "adicom.identity",
                "adicom.peers",
                "adicom.listener",
                "adicom.workers",
                "adicom.values",
                "adicom.models",
                "adicom.models.keys",
                "adicom.models.results",
                "adicom.models.queries",
                "adicom.models.worklist",
                "adicom.settings",
                "adicom.defaults",
                "adicom.serverrequests",
                "adicom.serveranswers",
                "adicom.server",
                "adicom.clientbase",
                "adicom.clientretrieve",
                "adicom.dicomclient",
                "adicom.sync",
            }
        ),
    ),
    (
        "applications",
        frozenset(
            {
                "adicom.archive",
                "adicom.worklist",
                "adicom.worklistmatch",
                "adicom.mpps",
                "adicom.archive.index",
                "adicom.archive.answers",
                "adicom.archive.matching",
                "adicom.archive.backends",
                "adicom.archive.postgres",
                "adicom.archive.files",
                "adicom.archive.sequences",
                "adicom.cli",
                "adicom.cli.common",
                "adicom.cli.serve",
                "adicom.cli.serveoptions",
                "adicom.cli.index",
                "adicom.cli.commands",
                "adicom.cli.main",
                "adicom.demo",
                "adicom.testing",
                "adicom",
                "adicom.__main__",
            }
        ),
    ),
)
#: The layers that must never do I/O or keep time (sans-I/O, as h11).
CORE = ("foundation", "upper layer (PS3.8)", "DIMSE (PS3.7)")
FORBIDDEN_IN_CORE = frozenset({"asyncio", "socket", "time", "threading", "selectors", "pydantic"})

RANK = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}
LAYER_NAME = {module: name for name, modules in LAYERS for module in modules}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """(imported module, names taken, line) for every import in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = tuple(alias.name for alias in node.names)
            # "from adicom import protocol" imports the submodule adicom.protocol.
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            if submodules:
                for submodule in submodules:
                    yield submodule, (), node.lineno
                rest = tuple(n for n in names if f"{base}.{n}" not in MODULES)
                if rest:
                    yield base, rest, node.lineno
            else:
                yield base, names, node.lineno


def is_type_checking_only(module: str, line: int) -> bool:
    """True for an import inside ``if TYPE_CHECKING:`` (no import at run time)."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        ):
            end = max(getattr(n, "end_lineno", 0) or 0 for n in ast.walk(node))
            if node.lineno <= line <= end:
                return True
    return False


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(set(MODULES) - set(RANK))
    assert not unplaced, f"place these modules in a layer of tests/test_layering.py: {unplaced}"
    gone = sorted(set(RANK) - set(MODULES))
    assert not gone, f"these layered modules no longer exist: {gone}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    upward = []
    for target, _, line in imports(module):
        if target in RANK and RANK[target] > RANK[module]:
            if is_type_checking_only(module, line):
                continue
            upward.append(f"line {line}: {target} ({LAYER_NAME[target]})")
    assert not upward, f"{module} ({LAYER_NAME[module]}) imports upward: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if LAYER_NAME.get(m) in CORE))
def test_the_core_does_no_io(module: str) -> None:
    bad = [
        f"line {line}: {target}"
        for target, _, line in imports(module)
        if target.split(".")[0] in FORBIDDEN_IN_CORE
    ]
    assert not bad, f"{module} is sans-I/O but imports {bad}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_takes_another_modules_private_names(module: str) -> None:
    private = [
        f"line {line}: {target}.{name}"
        for target, names, line in imports(module)
        if target.split(".")[0] == "adicom"
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, f"{module} imports private names: {private}"


def test_the_import_graph_has_no_circle() -> None:
    graph = {
        module: {
            target
            for target, _, line in imports(module)
            if target in MODULES and target != module and not is_type_checking_only(module, line)
        }
        for module in MODULES
    }
    # A package's __init__ importing its own submodules is how packages work.
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circle = [*path[path.index(target) :], target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_public_signatures_name_no_private_type(module: str) -> None:
    # A caller cannot name (or read the docs of) a type with a leading
    # underscore: what a public function takes or returns must be public.
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text())
    exported: set[str] | None = None
    type_variables = set()  # _T = TypeVar("_T"): private by convention, and fine
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            exported = set(ast.literal_eval(node.value))
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) in ("TypeVar", "ParamSpec")
        ):
            type_variables |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    bad = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if node.name.startswith("_") or (exported is not None and node.name not in exported):
            continue
        functions = [node] if not isinstance(node, ast.ClassDef) else [
            f
            for f in node.body
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            and (not f.name.startswith("_") or f.name == "__init__")
        ]  # fmt: skip
        for function in functions:
            annotations = [a.annotation for a in function.args.args + function.args.kwonlyargs]
            annotations.append(function.returns)
            for annotation in annotations:
                for name in ast.walk(annotation) if annotation is not None else ():
                    if (
                        isinstance(name, ast.Name)
                        and name.id.startswith("_")
                        and name.id not in type_variables
                    ):
                        bad.append(f"{node.name}: line {function.lineno}: {name.id}")
    assert not bad, f"{module}: public signatures name private types: {bad}"
