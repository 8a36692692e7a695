"""``offload serve``, ``offload run --http`` and ``offload worker --metrics-port`` against a
live server on a loopback port: deny by default, --no-auth only on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from offload.cli import main
from offload.cli_http import HostPort, is_loopback

TOKEN = "serve-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

APP_MODULE = """
import os, pathlib
from offload import App

app = App("serveapp")
app.queue("jobs")
OUT = pathlib.Path(os.environ["SERVE_OUT"])


@app.task(queue="jobs", name="serveapp.touch")
def touch(word: str) -> None:
    with OUT.open("a") as f:
        f.write(word + "\\n")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path, broker_url):
    (tmp_path / "serveapp.py").write_text(textwrap.dedent(APP_MODULE))
    e = dict(os.environ)
    e.update(
        PYTHONPATH=str(tmp_path),
        OFFLOAD_BROKER=broker_url,
        OFFLOAD_API_TOKENS=f"other,{TOKEN}",
        SERVE_OUT=str(tmp_path / "out.txt"),
    )
    return e


def start(env, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "offload", *args],
        env=env,
        cwd=env["PYTHONPATH"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_healthy(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, then a clean exit: uvicorn re-raises the signal after its graceful
    shutdown, so ``serve`` ends as a process killed by SIGTERM, after saying it finished."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), out
    if proc.returncode:
        assert "Application shutdown complete" in out, out
    return out


def test_serve_needs_a_token_or_no_auth_on_loopback(env):
    runner = CliRunner()
    env.pop("OFFLOAD_API_TOKENS")
    r = runner.invoke(main, ["serve", "serveapp:app"], env={"OFFLOAD_API_TOKENS": ""})
    assert r.exit_code == 2 and "no API token configured" in r.output
    for host in ("0.0.0.0", "192.168.1.4", "example.com", "::"):
        r = runner.invoke(main, ["serve", "serveapp:app", "--no-auth", "--host", host])
        assert r.exit_code == 2 and "--no-auth is refused" in r.output, (host, r.output)
    r = runner.invoke(main, ["run", "serveapp:app", "--http", "0.0.0.0:1", "--no-auth"])
    assert r.exit_code == 2 and "--no-auth is refused on --http" in r.output
    r = runner.invoke(main, ["worker", "serveapp:app", "--metrics-port", "8000"])
    assert r.exit_code == 2 and "no API token configured" in r.output
    r = runner.invoke(main, ["run", "serveapp:app", "--no-auth"])
    assert r.exit_code == 2 and "--no-auth only applies with --http" in r.output
    r = runner.invoke(main, ["run", "serveapp:app", "--http", "host:99999"])
    assert r.exit_code == 2 and "port from 1 to 65535" in r.output


def test_serve_live_with_tokens(env):
    port = free_port()
    proc = start(env, "serve", "serveapp:app", "--port", str(port))
    try:
        wait_healthy(proc, port)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/v1/queues").status_code == 401
        assert (
            httpx.get(f"{base}/api/v1/queues", headers={"Authorization": "Bearer x"}).status_code
            == 401
        )
        r = httpx.get(f"{base}/api/v1/queues/jobs", headers=AUTH)
        assert r.status_code == 200 and r.json()["name"] == "jobs"
        r = httpx.post(
            f"{base}/api/v1/tasks", headers=AUTH, json={"task": "serveapp.touch", "args": ["hi"]}
        )
        assert r.status_code == 201, r.text
        assert httpx.get(f"{base}/api/v1/queues/jobs", headers=AUTH).json()["ready"] == 1
        assert "server" not in r.headers  # no version banner
    finally:
        stop(proc)


def test_serve_with_several_worker_processes(env):
    port = free_port()
    proc = start(env, "serve", "serveapp:app", "--port", str(port), "--workers", "2")
    try:
        wait_healthy(proc, port)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/v1/queues").status_code == 401
        for word in ("a", "b", "c", "d"):
            r = httpx.post(
                f"{base}/api/v1/tasks",
                headers=AUTH,
                json={"task": "serveapp.touch", "args": [word]},
            )
            assert r.status_code == 201, r.text
        assert httpx.get(f"{base}/api/v1/queues/jobs", headers=AUTH).json()["ready"] == 4
    finally:
        stop(proc)


def test_serve_no_auth_on_loopback(env):
    port = free_port()
    env.pop("OFFLOAD_API_TOKENS")
    proc = start(env, "serve", "serveapp:app", "--port", str(port), "--no-auth")
    try:
        wait_healthy(proc, port)
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/queues").status_code == 200
    finally:
        out = stop(proc)
    assert "NO AUTH" in out


def test_run_with_http_serves_beside_the_workers(env, tmp_path):
    port = free_port()
    proc = start(env, "run", "serveapp:app", "--http", f"127.0.0.1:{port}")
    try:
        wait_healthy(proc, port)
        base = f"http://127.0.0.1:{port}"
        for word in ("one", "two"):
            r = httpx.post(
                f"{base}/api/v1/tasks",
                headers=AUTH,
                json={"task": "serveapp.touch", "args": [word]},
            )
            assert r.status_code == 201, r.text
        out = tmp_path / "out.txt"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            out.exists() and len(out.read_text().split()) == 2
        ):
            time.sleep(0.1)
        assert sorted(out.read_text().split()) == ["one", "two"]
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert "offload_queue_ready" in httpx.get(f"{base}/metrics", headers=AUTH).text
    finally:
        stop(proc)


def test_worker_metrics_port(env, tmp_path):
    port = free_port()
    sender = start(env, "send", "serveapp:app", "serveapp.touch", "--args", '["x"]')
    assert sender.wait(30) == 0, sender.stdout.read()
    proc = start(env, "worker", "serveapp:app", "--metrics-port", str(port))
    try:
        wait_healthy(proc, port)
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url).status_code == 401
        deadline = time.monotonic() + 30
        samples: dict = {}
        while time.monotonic() < deadline:
            text = httpx.get(url, headers=AUTH).text
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
            }
            if samples.get(("offload_worker_processed_total", (("task", "serveapp.touch"),))):
                break
            time.sleep(0.2)
        assert samples[("offload_worker_processed_total", (("task", "serveapp.touch"),))] == 1
        assert ("offload_queue_ready", (("queue", "jobs"),)) in samples
        # only metrics on a worker's port
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/queues", headers=AUTH).status_code == 404
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        ("[::1]:9000", ("::1", 9000)),
        (":9000", ("127.0.0.1", 9000)),
    ],
)
def test_host_port(text, expected):
    assert HostPort().convert(text, None, None) == expected


def test_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("127.5.5.5") and is_loopback("::1")
    assert is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")
    assert not is_loopback("my-host")
