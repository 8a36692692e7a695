"""An idle worker imports only what it runs: every module costs resident memory in every
worker process, for as long as it lives.

Each check runs a fresh interpreter (this one has imported pytest and half the library) and
reads the module table it ends with.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import _drop_pg_schema, _drop_redis_prefix, make_url

# What an idle worker needs none of. The stdlib ones came with importlib.resources (reading
# the SQLite broker's SQL), hashlib/tempfile (the doorbell's rare long-path case) and random
# (jitter under lock contention): about 1.8 MB of resident memory together.
NOT_IN_AN_IDLE_WORKER = {
    "hashlib",
    "importlib.readers",
    "importlib.resources",
    "pathlib",
    "random",
    "shutil",
    "tempfile",
    "zipfile",
}
# Never loaded by a worker or a plain ``import offload``: terminal output of the other
# commands, the channel library and the conformance suite.
NEVER_IN_A_WORKER = {"rich", "offload.chan", "offload.testing"}

APP = '''
import atexit
import os
import sys

from offload import App

app = App("footprint")


@app.task
async def noop() -> None:
    """Never sent: the worker only looks for work and finds none."""


@atexit.register
def _dump() -> None:
    # at exit: after the broker was opened, its SQL read and the claim loop ran
    with open(os.environ["FOOTPRINT_OUT"], "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
'''


def _env(tmp_path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    return env


def _modules_after(code: str, tmp_path) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + "\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


# What none of an idle worker's work needs, on any broker: the commands a worker never runs
# (plan, k8s, profile, periodic, the autoscaler of `offload run`), the HTTP face (only with
# --metrics-port), the planner's model and croniter (no periodic task is declared). Each one
# costs resident memory in every worker process (docs/benchmarks.md, "idle worker RSS").
NOT_IN_A_PLAIN_WORKER = {
    "ctypes",
    "offload.profile",
    "offload.autoscale",
    "offload.catalog",
    "offload.cli_calls",
    "offload.cli_ops",
    "offload.cli_profile",
    "offload.http",
    "offload.k8s",
    "offload.planner",
    "offload.push",
    "offload.supervisor",
    "offload.topology",
    "croniter",
    "jinja2",
    "prometheus_client",
    "starlette",
    "uvicorn",
}
# Per broker: the modules that show it really opened, and the other brokers' drivers.
OPENED = {
    "sqlite": {"offload.brokers.sqlite.queries", "sqlite3"},
    "redis": {"offload.brokers.redis.broker", "redis.asyncio"},
    "postgres": {"offload.brokers.postgres.broker", "psycopg_pool"},
}
OTHER_DRIVERS = {
    "sqlite": {
        "redis",
        "psycopg",
        "psycopg_pool",
        "offload.brokers.redis",
        "offload.brokers.postgres",
    },
    "redis": {
        "sqlite3",
        "psycopg",
        "psycopg_pool",
        "offload.brokers.sqlite",
        "offload.brokers.postgres",
    },
    "postgres": {"sqlite3", "redis", "offload.brokers.sqlite", "offload.brokers.redis"},
}


def _idle_worker_modules(url: str, tmp_path) -> set[str]:
    """The module table of ``offload worker`` with its default settings, at exit after a
    --burst run that opened the broker, ran the claim loop and found no work."""
    (tmp_path / "footapp.py").write_text(APP)
    dump = tmp_path / "modules.txt"
    env = _env(tmp_path) | {"OFFLOAD_BROKER": url, "FOOTPRINT_OUT": str(dump)}
    out = subprocess.run(
        [sys.executable, "-m", "offload", "worker", "footapp:app", "--burst"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "stopped after" in out.stderr  # the worker ran its loop, then found no work
    return set(dump.read_text().split())


def test_idle_sqlite_worker_imports_nothing_it_does_not_use(tmp_path):
    db = tmp_path / "idle.db"
    modules = _idle_worker_modules(f"sqlite:///{db}", tmp_path)
    # the broker really opened: its schema and queries were read and the file exists
    assert {"offload.worker.runtime", "offload.brokers.sqlite.queries", "sqlite3"} <= modules
    assert db.exists()
    assert sorted(modules & (NOT_IN_AN_IDLE_WORKER | NEVER_IN_A_WORKER)) == []


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres"])
def test_idle_worker_loads_no_other_command_face_or_driver(kind, tmp_path):
    url = make_url(kind, tmp_path)
    try:
        modules = _idle_worker_modules(url, tmp_path)
    finally:
        if kind == "redis":
            _drop_redis_prefix(url)
        elif kind == "postgres":
            _drop_pg_schema(url)
    assert {"offload.worker.runtime", *OPENED[kind]} <= modules
    unused = NOT_IN_A_PLAIN_WORKER | NEVER_IN_A_WORKER | OTHER_DRIVERS[kind]
    if kind == "postgres":
        unused.discard("ctypes")  # psycopg loads it itself
    assert sorted(modules & unused) == []


def test_commands_a_worker_never_runs_load_when_used(tmp_path):
    """The lazily imported commands are listed by ``--help`` and run as before."""
    env = _env(tmp_path)
    listed = subprocess.run(
        [sys.executable, "-m", "offload", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    for name in ("plan", "k8s", "profile", "periodic", "worker"):
        assert f"  {name} " in listed.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "offload", "plan", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert helped.returncode == 0, helped.stderr
    assert "Usage:" in helped.stdout and "plan" in helped.stdout


# What a broker loads when it is chosen, never at import: the client libraries and
# offload's broker packages that use them.
BROKER_DRIVERS = {
    "psycopg",
    "psycopg_pool",
    "redis",
    "sqlite3",
    "offload.brokers.postgres",
    "offload.brokers.redis",
    "offload.brokers.sqlite",
}
# The queue machinery and the command line: what the channel library never needs.
QUEUE_MACHINERY = {"offload.app", "offload.brokers", "offload.worker", "msgspec", "click", "rich"}


def _offload_modules(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m == "offload" or m.startswith("offload."))


def test_plain_import_costs_one_module(tmp_path):
    """``offload/__init__`` imports its public names on first use, so a bare import (and
    with it every ``import offload.<part>``) costs the package module alone."""
    modules = _modules_after("import sys\nimport offload", tmp_path)
    assert _offload_modules(modules) == ["offload"]
    assert sorted(modules & (QUEUE_MACHINERY | BROKER_DRIVERS | NEVER_IN_A_WORKER)) == []


def test_chan_imports_nothing_of_the_queue_machinery(tmp_path):
    modules = _modules_after("import sys\nimport offload.chan", tmp_path)
    assert "offload.chan.context" in modules  # it really loaded
    assert _offload_modules(modules) == sorted(
        {"offload", "offload.errors"} | {m for m in modules if m.startswith("offload.chan")}
    )
    assert sorted(modules & (QUEUE_MACHINERY | BROKER_DRIVERS)) == []


def test_public_names_load_neither_the_cli_nor_a_broker_driver(tmp_path):
    modules = _modules_after(
        "import sys\nfrom offload import App, Retry, QueuePolicy, current_task", tmp_path
    )
    assert "offload.app" in modules
    assert (
        sorted(
            modules
            & (NEVER_IN_A_WORKER | BROKER_DRIVERS | {"click", "offload.cli", "offload.worker"})
        )
        == []
    )


@pytest.mark.skipif(importlib.util.find_spec("redis") is None, reason="redis-py not installed")
def test_redis_worker_entry_path_loads_no_extras(tmp_path):
    modules = _modules_after(
        "import sys\nimport offload.cli, offload.worker.runtime, offload.brokers.redis", tmp_path
    )
    assert "offload.brokers.redis" in modules
    assert sorted(modules & NEVER_IN_A_WORKER) == []
