"""The folder tree is the architecture: each layer imports only what its rule allows.

| layer              | may import (inside the package)                                   |
|--------------------|-------------------------------------------------------------------|
| errors, types      | each other only (types needs errors)                              |
| core               | core, errors, types                                               |
| settings.schema    | core, errors, types                                               |
| providers          | core, settings.schema, errors, types                              |
| settings (loader)  | settings, providers, core, errors, types                          |
| security           | security, core, errors, types                                     |
| runtime            | runtime, core, settings, providers, errors, types                 |
| ops                | ops, runtime, security, settings, core, errors, types             |
| client             | node_link, caller_links, params, runtime.protocol, security, ops, core, errors, types |
| node_link          | runtime.node, security, ops, stream_receiver, caller_links, errors (its seam) |
| caller_links       | runtime.control_link, runtime.protocol, stream_receiver (a caller's end of the engines' links) |
| params             | nothing (the types of a call's parameters)                        |
| stream_receiver    | core, types (the client's end of the stream channel)              |
| http               | http, client, params, settings, core, errors, types              |
| testing            | anything; imported by nothing above (ops.system only lazily)      |
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "actors"

ALLOWED = {
    "actors.errors": {"actors.errors"},
    "actors.types": {"actors.errors", "actors.types"},
    "actors.core": {"actors.core", "actors.errors", "actors.types"},
    "actors.settings.schema": {"actors.core", "actors.errors", "actors.types", "actors.settings.schema"},
    "actors.providers": {"actors.providers", "actors.core", "actors.settings.schema", "actors.errors", "actors.types"},
    "actors.settings": {"actors.settings", "actors.providers", "actors.core", "actors.errors", "actors.types"},
    "actors.security": {"actors.security", "actors.core", "actors.errors", "actors.types"},
    "actors.runtime": {"actors.runtime", "actors.core", "actors.settings", "actors.providers", "actors.errors",
                       "actors.types"},
    "actors.ops": {"actors.ops", "actors.runtime", "actors.security", "actors.settings", "actors.core",
                   "actors.errors", "actors.types", "actors.providers"},
    "actors.client": {"actors.client", "actors.correlator", "actors.stream_receiver", "actors.node_link",
                      "actors.caller_links",
                      "actors.params", "actors.runtime.protocol", "actors.security", "actors.ops", "actors.core",
                      "actors.errors", "actors.types"},
    # how a client reaches its node (over TCP, or into an in-process system): the client's seam
    "actors.node_link": {"actors.node_link", "actors.correlator", "actors.stream_receiver", "actors.runtime.node",
                         "actors.security", "actors.ops", "actors.errors", "actors.caller_links"},
    # a caller's end of its links to the engines: the engines' own framing (runtime/control_link.py)
    "actors.caller_links": {"actors.caller_links", "actors.runtime.control_link", "actors.runtime.protocol",
                            "actors.stream_receiver"},
    "actors.params": {"actors.params"},
    # client side: files an endpoint's messages by request (and watches the stream channel's pipe)
    "actors.correlator": {"actors.correlator", "actors.security.thespian_hooks"},
    "actors.stream_receiver": {"actors.stream_receiver", "actors.core", "actors.types"},
    "actors.http": {"actors.http", "actors.client", "actors.correlator", "actors.params", "actors.settings",
                    "actors.core", "actors.errors", "actors.types"},
    "actors": {"actors"},  # the package's __init__: the public API re-exports anything
    "actors.testing": {"actors"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


@functools.cache
def top_level_imports(path: Path, name: str) -> frozenset[str]:
    """Package modules imported when ``name`` is imported (function-level imports are lazy: left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # `from actors.core import sse` imports a module
                if f"{target}.{alias.name}" in modules():
                    found.add(f"{target}.{alias.name}")
    return frozenset(m for m in found if m == "actors" or m.startswith("actors."))


def rule_for(name: str) -> set[str]:
    best = max((layer for layer in ALLOWED if name == layer or name.startswith(layer + ".")), key=len)
    return ALLOWED[best]


def test_every_module_imports_only_what_its_layer_allows():
    wrong = []
    for name, path in sorted(modules().items()):
        allowed = rule_for(name)
        for target in top_level_imports(path, name):
            if target == "actors" and name != "actors":
                wrong.append(f"{name} imports the package root")
            elif not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {name: {t for t in top_level_imports(path, name) if t in modules() and t != name}
             for name, path in modules().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


_CHECKED = ("actors.runtime.node", "actors.runtime.engine", "actors.runtime.worker", "actors.ops.system",
            "actors.client")

# One interpreter for every check: the core first, into a fresh process; then the checked modules
# together (what they load is the union of what each loads). Only when that union holds a module of
# actors.testing is each imported again alone (the package's own modules forgotten before it), to
# name the culprit.
_PROBE = """
import importlib, json, sys
def ours():
    return sorted(m for m in sys.modules if m == "actors" or m.startswith("actors."))
for name in sys.argv[1:]:
    importlib.import_module(name)
out = {"core": sorted(sys.modules)}
for name in %r:
    importlib.import_module(name)
together = ours()
out.update({name: together for name in %r})
if any(m.startswith("actors.testing") for m in together):
    for name in %r:
        for loaded in ours():
            del sys.modules[loaded]
        importlib.import_module(name)
        out[name] = ours()
print(json.dumps(out))
""" % (_CHECKED, _CHECKED, _CHECKED)


@functools.cache
def _imported() -> dict[str, list[str]]:
    """Module -> every module loaded by importing it (``core``: by importing every module of actors.core)."""
    core = sorted(n for n in modules() if n.startswith("actors.core."))
    out = subprocess.run([sys.executable, "-c", _PROBE, *core], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_core_runs_without_thespian_or_requests():
    loaded = _imported()["core"]
    assert not {m for m in loaded if m.split(".")[0] in ("thespian", "requests", "urllib3")}, \
        sorted(m for m in loaded if m.split(".")[0] in ("thespian", "requests", "urllib3"))


@pytest.mark.parametrize("module", _CHECKED)
def test_the_runtime_does_not_import_the_mock_provider(module):
    loaded = _imported()[module]
    assert module in loaded     # the probe imported it (and what it needs) afresh
    assert not {m for m in loaded if m.startswith("actors.testing")}


def test_runtime_modules_stay_small():
    big = {name: n for name, path in modules().items()
           if name.startswith("actors.runtime.") and (n := len(path.read_text().splitlines())) > 330}
    assert not big, big


def test_test_files_have_unique_names():
    # pytest imports test modules by basename (no __init__.py in tests/): two of the same
    # name in different tiers stop the whole run at collection.
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
