"""The house rules of ``edge/`` and ``tools/``, read from the source with ``ast``.

* **No import circles** inside ``edge/`` or ``tools/``. Every import counts:
  module level, inside a function (lazy), and under ``TYPE_CHECKING``.
  ``from P import N`` is an arrow to the module ``P.N`` when there is one,
  else to ``P`` (its ``__init__``).
* **Inside a package whose ``__init__`` gathers its modules, a module never
  imports the package itself** (``from P import x``): it names the module
  (``from P.mod import x``), so that ``__init__`` cannot close a circle.
* **Stage order** (:data:`LAYERS`): a module of ``edge/`` imports only its
  own unit or units of earlier layers, never a later stage, never a sibling
  of its own layer. Every module must belong to a declared unit, so a new
  package has to be placed in the order before it can be imported.
* ``edge`` never imports ``tools``; the door never imports the MQTT side of
  delivery (:data:`FORBIDDEN`): it publishes through its ``EventSink``.
* **Size**: no class over :data:`MAX_CLASS_LINES` lines, no function over
  :data:`MAX_FUNCTION_LINES` (decorators excluded, docstrings included);
  each exception is listed in :data:`SIZE_EXCEPTIONS` with its reason.
* Every module has a docstring.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "tools")

MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60

# The stages of edge/, earliest first. A unit is a package or a top-level
# module; a unit may import units of earlier layers only (and itself).
# Units of one layer are siblings: neither imports the other. Units not yet
# written are declared where they will go (liveness, review, fleet, doctor),
# so new code is born in its place.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("edge", "edge.errors"),  # the package itself holds only __version__
    ("edge.types", "edge.clock", "edge.sdnotify"),
    ("edge.files", "edge.numerics"),
    ("edge.imageio",),  # image files in: the sources read them too
    ("edge.config",),  # describes and validates its own sections, no feature module
    ("edge.sources",),  # frame
    ("edge.vision",),  # -> boxes, landmarks, aligned crops, embeddings
    ("edge.identity", "edge.liveness"),  # -> matches; per-face liveness evidence
    ("edge.decide",),  # -> decisions
    ("edge.delivery", "edge.review"),  # -> events (outbox, MQTT); unknown-visitor review
    ("edge.door",),  # decisions -> the relay; publishes through its EventSink
    ("edge.homeassistant", "edge.fleet"),  # extensions of the MQTT publisher
    ("edge.daemon",),  # the service: puts the parts together
    ("edge.demo", "edge.doctor"),
    ("edge.cli",),
    ("edge.__main__",),
)

# Modules a unit must not import even though they are in an earlier stage.
FORBIDDEN: dict[str, dict[str, str]] = {
    "edge.door": {
        m: "the door publishes through edge.door.record.EventSink, never the MQTT side"
        for m in (
            "edge.delivery.transport",
            "edge.delivery.drain",
            "edge.delivery.sender",
            "edge.delivery.announce",
            "edge.delivery.extension",
            "edge.delivery.mqtt",
        )
    },
}

# (path relative to the repository, qualified name) -> why it may be longer.
SIZE_EXCEPTIONS: dict[tuple[str, str], str] = {}
# Files not size-checked at all, with the reason.
SIZE_EXEMPT_FILES: dict[str, str] = {}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def package(self) -> str:
        """The package this module's relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _modules() -> dict[str, Module]:
    out: dict[str, Module] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            out[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return out


MODULES = _modules()


def _imports(mod: Module) -> Iterator[tuple[int, str, str]]:
    """(line, target module, how it was written) for every import in ``mod``."""
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                sub = f"{prefix}.{alias.name}"
                written = f"from {'.' * node.level}{node.module or ''} import {alias.name}"
                yield node.lineno, sub if sub in MODULES else prefix, written


def _known(target: str) -> str | None:
    """The module of ours that an import names (its nearest known parent), or None."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, mod in MODULES.items():
        deps = {k for _, t, _ in _imports(mod) if (k := _known(t)) and k != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def _unit(name: str) -> str | None:
    """The declared unit a module of edge/ belongs to (the longest matching prefix)."""
    units = [u for layer in LAYERS for u in layer]
    matches = [u for u in units if name == u or name.startswith(u + ".")]
    return max(matches, key=len) if matches else None


RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def test_the_graph_sees_lazy_and_type_checking_imports() -> None:
    """The checker itself: a lazy import and a TYPE_CHECKING import are arrows too."""
    code = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from edge.config import Config\n"
        "def f():\n    from edge.errors import ConfigError\n"
    )
    mod = Module("edge.probe", ROOT / "edge" / "probe.py", ast.parse(code))
    assert {t for _, t, _ in _imports(mod)} == {"typing", "edge.config", "edge.errors"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles_in_edge_or_tools() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def _gathering_packages() -> set[str]:
    """Packages whose ``__init__`` imports their own modules (their public face)."""
    return {
        name
        for name, mod in MODULES.items()
        if mod.is_package and any(t.startswith(name + ".") for _, t, _ in _imports(mod))
    }


def test_a_package_never_imports_itself_from_inside() -> None:
    """Inside a package whose ``__init__`` gathers its modules, name the module.

    ``from tools.train import metrics`` inside ``tools.train`` goes through the
    package's ``__init__``, which imports ``cli``, which imports ``loop``: a
    circle in all but the letter. ``from tools.train.metrics import ...`` does not.
    """
    gathering = _gathering_packages()
    bad = []
    for mod in MODULES.values():
        if mod.is_package:
            continue
        for line, _, written in _imports(mod):
            target = written.split()[1]
            if target == ".":
                target = mod.package
            if written.startswith("from ") and target == mod.package and target in gathering:
                bad.append(f"{mod.path.relative_to(ROOT)}:{line}: {written}")
    assert not bad, "name the module, not the package:\n" + "\n".join(bad)


def test_every_edge_module_has_a_place_in_the_stage_order() -> None:
    unplaced = [n for n in MODULES if n.split(".")[0] == "edge" and _unit(n) is None]
    assert not unplaced, f"add these to LAYERS: {unplaced}"


def test_no_stage_imports_a_later_one() -> None:
    bad = []
    for name, mod in MODULES.items():
        unit = _unit(name)
        if unit is None:
            continue
        for line, target, written in _imports(mod):
            known = _known(target)
            if known is None:
                continue
            if known.split(".")[0] == "tools":
                where = f"{mod.path.relative_to(ROOT)}:{line}"
                bad.append(f"{where}: {written} (edge never imports tools)")
                continue
            other = _unit(known)
            if other is None or other == unit:
                continue
            if RANK[other] >= RANK[unit]:
                why = "a sibling" if RANK[other] == RANK[unit] else "a later stage"
                bad.append(f"{mod.path.relative_to(ROOT)}:{line}: {written} ({other} is {why})")
    assert not bad, "stage order broken:\n" + "\n".join(bad)


def test_the_door_never_imports_the_mqtt_side() -> None:
    bad = []
    for name, mod in MODULES.items():
        unit = _unit(name)
        for line, target, written in _imports(mod):
            why = FORBIDDEN.get(unit or "", {}).get(_known(target) or "")
            if why:
                bad.append(f"{mod.path.relative_to(ROOT)}:{line}: {written} ({why})")
    assert not bad, "\n".join(bad)


def _sizes() -> Iterator[tuple[str, str, str, int]]:
    """(file, kind, qualified name, lines) for every class and function."""

    def walk(node: ast.AST, prefix: str, rel: str) -> Iterator[tuple[str, str, str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                qual = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                yield rel, kind, qual, end - child.lineno + 1
                yield from walk(child, qual + ".", rel)
            else:
                yield from walk(child, prefix, rel)

    for mod in MODULES.values():
        rel = str(mod.path.relative_to(ROOT))
        if rel not in SIZE_EXEMPT_FILES:
            yield from walk(mod.tree, "", rel)


def test_no_god_classes_and_no_long_functions() -> None:
    too_long = []
    for rel, kind, qual, lines in _sizes():
        limit = MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES
        if lines > limit and (rel, qual) not in SIZE_EXCEPTIONS:
            too_long.append(f"{rel}: {kind} {qual} is {lines} lines (limit {limit})")
    assert not too_long, "\n".join(too_long)


def test_size_exceptions_are_still_needed() -> None:
    sizes = {(rel, qual): lines for rel, _, qual, lines in _sizes()}
    stale = [key for key in SIZE_EXCEPTIONS if key not in sizes]
    assert not stale, f"exceptions for code that is gone: {stale}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_what_it_holds(name: str) -> None:
    mod = MODULES[name]
    if mod.path.name == "__main__.py":
        return
    assert ast.get_docstring(mod.tree), f"{mod.path.relative_to(ROOT)} has no module docstring"
