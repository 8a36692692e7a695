"""The public API is a contract: its names are pinned, and the layers only look down."""

from __future__ import annotations

import ast
import pathlib

import offload

SRC = pathlib.Path(offload.__file__).parent


def test_public_names_are_pinned_and_sorted():
    assert offload.__all__ == sorted(offload.__all__)
    for required in ("App", "Retry", "Fail", "TaskAlreadyExists", "current_task"):
        assert required in offload.__all__
    for name in offload.__all__:
        assert hasattr(offload, name), name


# Each layer may import only itself and the layers listed for it.
LAYERS = {
    "errors": set(),
    "chan": {"errors"},
    "core": {"errors"},
    "brokers": {"core", "errors"},
    "model": {"brokers", "core", "errors", "_sync", "chan"},  # app, task, hooks
    "_sync": set(),
    "testing": {"brokers", "core", "errors", "model", "worker", "_sync"},
    "worker": {"model", "brokers", "core", "errors", "chan", "_sync"},
    "faces": {"worker", "model", "brokers", "core", "errors", "chan", "_sync", "testing"},
}


def _layer(rel: pathlib.Path) -> str:
    top = rel.parts[0].removesuffix(".py")
    if top in ("app", "task", "hooks", "service", "topology", "rpc"):
        return "model"
    if top in ("cli", "http", "planner", "metrics", "__main__", "__init__"):
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
