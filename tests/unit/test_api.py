"""The public API is a contract: its names are pinned, and the layers only look down."""

from __future__ import annotations

import ast
import pathlib

import pytest

import offload

SRC = pathlib.Path(offload.__file__).parent


def test_public_names_are_pinned_and_sorted():
    assert offload.__all__ == sorted(offload.__all__)
    for required in ("App", "Retry", "Fail", "TaskAlreadyExists", "current_task"):
        assert required in offload.__all__
    for name in offload.__all__:
        assert hasattr(offload, name), name


def test_lazy_exports_table_agrees_with_all_and_type_checking_imports():
    """``offload/__init__`` serves its names lazily from one table; ``__all__`` and the
    imports type checkers read must name the same things, from the same modules."""
    table = offload._EXPORTS
    assert sorted([*table, "__version__"]) == offload.__all__
    for name, module in table.items():
        defining = __import__(module, fromlist=[name])
        assert getattr(offload, name) is getattr(defining, name), name
    tree = ast.parse((SRC / "__init__.py").read_text())
    blocks = [
        n
        for n in tree.body
        if isinstance(n, ast.If) and isinstance(n.test, ast.Name) and n.test.id == "TYPE_CHECKING"
    ]
    assert len(blocks) == 1, "one `if TYPE_CHECKING:` block of imports"
    seen = {
        alias.asname or alias.name: f"offload.{node.module}"
        for node in blocks[0].body
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names
    }
    assert seen == table


def test_lazy_package_behaves_like_a_plain_one():
    assert set(offload.__all__) <= set(dir(offload))
    ns: dict = {}
    exec("from offload import *", ns)
    assert {k for k in ns if not k.startswith("__")} == set(offload._EXPORTS)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        offload.NoSuchName  # noqa: B018
    assert not hasattr(offload, "NoSuchName")


# Each layer may import only itself and the layers listed for it.
LAYERS = {
    "errors": set(),
    "chan": {"errors"},
    "core": {"errors"},
    "brokers": {"core", "errors"},
    "model": {"brokers", "core", "errors", "_sync", "chan"},  # app, task, hooks, registry
    "_sync": set(),
    "testing": {"brokers", "core", "errors", "model", "worker", "_sync"},
    "worker": {"model", "brokers", "core", "errors", "chan", "_sync"},
    "faces": {"worker", "model", "brokers", "core", "errors", "chan", "_sync", "testing"},
}


def _layer(rel: pathlib.Path) -> str:
    top = rel.parts[0].removesuffix(".py")
    if top in ("app", "task", "hooks", "registry", "push", "service", "topology", "rpc", "catalog"):
        return "model"
    if top == "push_pool":  # the connections push deliveries reuse
        return "model"
    if top == "autoscale":  # pure scaling decisions, read by the topology and the faces
        return "model"
    if top in ("calls", "outcomes", "replies", "events", "periodic"):  # how services talk
        return "model"
    if top == "profile":  # reading measurements back into rows: no I/O
        return "model"
    if top in ("http", "planner", "metrics", "__main__", "__init__") or top.startswith("cli"):
        return "faces"
    if top in ("k8s", "plan_input", "plan_report"):  # the planner's input and report, k8s
        return "faces"
    if top == "supervisor":  # the worker processes of `offload run`
        return "faces"
    return top


def test_layers_only_import_downwards():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        layer = _layer(rel)
        allowed = LAYERS[layer] | {layer}
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                depth = len(rel.parts) - 1
                parts = list(rel.parts[:-1])[: max(0, depth - (node.level - 1))]
                target = (
                    (parts + (node.module or "").split("."))[0]
                    if parts
                    else (node.module or "").split(".")[0]
                )
                if not target:
                    continue
                tl = _layer(pathlib.Path(target + ".py")) if target else layer
                if tl not in allowed:
                    bad.append(f"{rel}:{node.lineno} ({layer}) imports {target} ({tl})")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                for m in mods:
                    if m.startswith("offload."):
                        target = m.split(".")[1]
                        tl = _layer(pathlib.Path(target + ".py"))
                        if tl not in allowed:
                            bad.append(f"{rel}:{node.lineno} ({layer}) imports {m} ({tl})")
    assert not bad, "\n".join(bad)


def test_nothing_pickles():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.loads" not in text, path


# A broker's driver is imported by that broker's subpackage and nowhere else, so an install
# without the extra still imports everything but that broker.
DRIVERS = {
    "redis": "brokers/redis",
    "psycopg": "brokers/postgres",
    "psycopg_pool": "brokers/postgres",
}


def test_broker_drivers_are_imported_only_in_their_broker_package():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            for m in mods:
                home = DRIVERS.get(m.split(".")[0])
                if home is not None and not rel.startswith(home + "/"):
                    bad.append(f"{rel}:{node.lineno} imports {m} (only {home}/ may)")
    assert bad == []


def test_no_module_passes_500_lines():
    long = {
        path.relative_to(SRC).as_posix(): n
        for path in SRC.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert long == {}, f"split these modules: {long}"
