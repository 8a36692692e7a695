"""Apps for CLI tests."""

from __future__ import annotations

import os

from offload import App

app = App("cli", broker=os.environ.get("OFFLOAD_BROKER", "sqlite:///cli.db"))
app.queue("emails", rate="20/s", max_concurrent=2)


@app.task(queue="emails", name="cli.send_email")
def send_email(to: str, subject: str = "") -> None:
    if to == "boom":
        raise RuntimeError("mail server said no")


not_an_app = 42
