"""An app whose names look like rich markup and emoji codes, for the CLI's output tests.

Queue names may hold ':', so ``ops:fire:`` is a legal queue that a console with emoji codes
on would print as a flame; task names may hold anything, brackets included.
"""

from __future__ import annotations

import os

from offload import App, Retry

app = App("markup", broker=os.environ.get("OFFLOAD_BROKER", "sqlite:///cli.db"))
app.queue("ops:fire:", retry=Retry(limit=0))


@app.task(queue="ops:fire:", name="job[/x][red]")
def explode(message: str, *extra: object) -> None:
    """Fails with the caller's own text, so the dead letter's error is user-provided."""
    raise RuntimeError(message)
