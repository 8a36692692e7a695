"""The CLI: every command works, and bad input exits non-zero with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from offload.cli import main

APP = "tests.cliapp:app"


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFLOAD_BROKER", f"sqlite:///{tmp_path / 'cli.db'}")
    import importlib

    import tests.cliapp

    importlib.reload(tests.cliapp)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    yield invoke
    tests.cliapp.app.close()


def test_send_queues_dead_requeue_pause_purge(cli):
    r = cli("send", APP, "send_email", "--args", '["a@b.c"]', "--kwargs", '{"subject": "hi"}')
    assert r.exit_code == 0, r.output
    assert "enqueued cli.send_email" in r.output
    r = cli("send", APP, "cli.send_email", "--args", '["boom"]', "--name", "n1", "--delay", "0")
    assert r.exit_code == 0, r.output
    r = cli("send", APP, "cli.send_email", "--args", '["boom"]', "--name", "n1")
    assert r.exit_code == 1 and "already exists" in r.output
    rows = {q["queue"]: q for q in json.loads(cli("queues", APP, "--json").output)}
    assert rows["emails"]["ready"] == 2 and rows["emails"]["rate"] == 20.0
    assert "emails" in cli("queues", APP).output

    r = cli("pause", APP, "emails")
    assert r.exit_code == 0 and json.loads(cli("queues", APP, "--json").output)[1]["paused"]
    assert cli("resume", APP, "emails").exit_code == 0

    import tests.cliapp as mod
    from offload import Retry

    mod.app.queue("emails", retry=Retry(limit=0))
    from offload.testing.apps import run_until_idle

    run_until_idle(mod.app)
    dead = json.loads(cli("dead", APP, "emails", "--json").output)
    assert len(dead) == 1 and "mail server said no" in dead[0]["error"]
    assert dead[0]["args"] == ["boom"]
    assert "mail server said no" in cli("dead", APP, "emails").output
    r = cli("requeue", APP, "emails", dead[0]["id"])
    assert r.exit_code == 0 and "requeued 1" in r.output
    r = cli("purge", APP, "emails", "--yes")
    assert r.exit_code == 0 and "purged 1" in r.output
    r = cli("metrics", APP, "--json")
    assert json.loads(r.output)[0]["task"] == "cli.send_email"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["queues", "tests.nope:app"], "no module named 'tests.nope'"),
        (["queues", "tests.cliapp:missing"], "has no attribute 'missing'"),
        (["queues", "tests.cliapp:not_an_app"], "not an offload.App"),
        (["send", APP, "nosuch"], "task 'nosuch' is not registered"),
        (["send", APP, "send_email", "--args", "[oops"], "invalid JSON '[oops'"),
        (["send", APP, "send_email", "--args", '{"a": 1}'], "must be a JSON array"),
        (["send", APP, "send_email", "--kwargs", "[1]"], "must be a JSON object"),
        (["send", APP, "send_email", "--args", "[]"], "1 required positional argument: 'to'"),
        (
            ["send", APP, "send_email", "--args", '["x"]', "--queue", "nope"],
            "'nope' is not declared",
        ),
        (["send", APP, "send_email", "--args", '["x"]', "--delay", "-1"], "-1"),
        (["pause", APP, "nope"], "queue 'nope' is not declared"),
        (["dead", APP, "nope"], "queue 'nope' is not declared"),
        (["worker", APP, "--queues", "emails,nope"], "queue 'nope' is not declared"),
        (["worker", APP, "--concurrency", "0"], "0"),
        (["delete", APP, "emails"], "exactly one of --id or --name"),
        (["delete", APP, "emails", "--id", "zzz"], "no task 'zzz'"),
        (["requeue", APP, "emails", "zzz"], "no dead task 'zzz'"),
        (["queues", "tests.cliapp_badpolicy:app"], "rate '20/x': unit must be s, m or h"),
    ],
)
def test_bad_input_is_one_clear_line(cli, args, needle):
    r = cli(*args)
    assert r.exit_code != 0
    assert needle in r.output, r.output
    assert "Traceback" not in r.output


def test_every_command_has_help(cli):
    for cmd in (
        "worker",
        "run",
        "send",
        "queues",
        "dead",
        "requeue",
        "pause",
        "resume",
        "purge",
        "delete",
        "metrics",
    ):
        r = cli(cmd, "--help")
        assert r.exit_code == 0 and "Usage:" in r.output, cmd


def test_console_script_runs(tmp_path):
    env = {**os.environ, "OFFLOAD_BROKER": f"sqlite:///{tmp_path / 'c.db'}"}
    out = subprocess.run(
        [sys.executable, "-m", "offload", "queues", APP, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert {q["queue"] for q in json.loads(out.stdout)} == {"default", "emails"}
