"""The worker's event loop: uvloop's when it is installed, the standard library's on request
or when it is not, and a clear refusal (nothing lost) when uvloop is asked for but missing.
Every broker, in process and through ``offload worker``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import warnings

import pytest

from offload import App
from offload.errors import ConfigError
from offload.testing.apps import run_until_idle
from offload.worker.runner import new_loop, run

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (the redis extra has it)")

pytestmark = pytest.mark.timeout(90)


def _loop_seen(url: str, loop: str) -> str:
    """The class of the loop an async and a plain task of a worker on ``loop`` ran beside."""
    app = App("loops", broker=url)
    app.queue("q")
    seen: list[str] = []

    @app.task(queue="q", name="on_loop")
    async def on_loop() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    @app.task(queue="q", name="in_thread")
    def in_thread() -> None:
        seen.append("thread")

    on_loop.send()
    in_thread.send()
    stats = run_until_idle(app, loop=loop, timeout=30)
    app.close()
    assert stats.succeeded == 2 and len(seen) == 2 and "thread" in seen, (stats, seen)
    seen.remove("thread")
    return seen[0]


@pytest.mark.parametrize(
    "kind, module", [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio.unix_events")]
)
def test_a_worker_runs_its_tasks_on_the_loop_it_was_given(broker_url, kind, module):
    assert _loop_seen(broker_url, kind) == module


def test_new_loop_refuses_a_kind_it_does_not_know():
    with pytest.raises(
        ConfigError, match=r"'trio' is not one offload knows.*auto, asyncio, uvloop"
    ):
        new_loop("trio")


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    loop = new_loop("auto")
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    with pytest.raises(ConfigError, match=r"uvloop is not installed: pip install uvloop"):
        new_loop("uvloop")


def test_run_closes_the_coroutine_it_could_not_start(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)

    async def main() -> int:
        return 1

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine 'main' was never awaited" would fail
        coro = main()
        with pytest.raises(ConfigError):
            run(coro, loop="uvloop")
        assert coro.cr_frame is None  # closed
    assert run(main(), loop="asyncio") == 1


APP = """\
import asyncio, os
from offload import App
app = App('cliloops', broker=os.environ['OFFLOAD_BROKER'])
app.queue('q')
@app.task(queue='q', name='which')
async def which() -> None:
    with open(os.environ['SEEN'], 'a') as f:
        f.write(type(asyncio.get_running_loop()).__module__ + '\\n')
"""


def _cli(tmp_path, *args: str, extra_path: str = "", env_loop: str | None = None):
    (tmp_path / "loopsapp.py").write_text(APP)
    env = {
        **os.environ,
        "OFFLOAD_BROKER": f"sqlite:///{tmp_path / 's.db'}",
        "SEEN": str(tmp_path / "seen.txt"),
    }
    env.pop("OFFLOAD_LOOP", None)
    if env_loop is not None:
        env["OFFLOAD_LOOP"] = env_loop
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [extra_path, str(tmp_path), env.get("PYTHONPATH", "")] if p
    )
    send = "import loopsapp as m; m.which.send(); m.app.close()"
    subprocess.run([sys.executable, "-c", send], env=env, cwd=tmp_path, check=True)
    r = subprocess.run(
        [sys.executable, "-m", "offload", "worker", "loopsapp:app", "--burst", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    seen = tmp_path / "seen.txt"
    return r, seen.read_text().split() if seen.exists() else []


def test_offload_worker_takes_its_loop_from_the_option_or_the_environment(tmp_path):
    r, seen = _cli(tmp_path)
    assert r.returncode == 0, r.stderr
    assert seen == ["uvloop"]
    r, seen = _cli(tmp_path, "--loop", "asyncio")
    assert r.returncode == 0, r.stderr
    assert seen == ["uvloop", "asyncio.unix_events"]
    r, seen = _cli(tmp_path, env_loop="asyncio")
    assert r.returncode == 0, r.stderr
    assert seen[-1] == "asyncio.unix_events" and len(seen) == 3


def test_offload_worker_refuses_a_missing_uvloop_and_loses_nothing(tmp_path):
    fake = tmp_path / "no_uvloop"
    (fake / "uvloop").mkdir(parents=True)
    (fake / "uvloop" / "__init__.py").write_text("raise ImportError('uvloop is not here')\n")
    r, seen = _cli(tmp_path, "--loop", "uvloop", extra_path=str(fake))
    assert r.returncode == 1 and seen == []
    assert "Error: the uvloop event loop was asked for but uvloop is not installed" in r.stderr
    assert "--loop asyncio" in r.stderr
    # the task is still queued: auto, without uvloop, runs it (and one more sent) on the
    # standard library's loop
    r, seen = _cli(tmp_path, extra_path=str(fake))
    assert r.returncode == 0, r.stderr
    assert seen == ["asyncio.unix_events"] * 2


def test_offload_worker_refuses_an_unknown_loop(tmp_path):
    r, seen = _cli(tmp_path, "--loop", "trio")
    assert r.returncode == 2 and seen == []
    assert "Invalid value for '--loop'" in r.stderr and "'trio' is not one of" in r.stderr
