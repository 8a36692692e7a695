"""An app for ``offload profile`` on every broker: a thread service, a process service
(measured exactly in its child) and one that never runs. Broker: $OFFLOAD_BROKER."""

from __future__ import annotations

import os

from offload import App, Retry

app = App("profconf", broker=os.environ.get("OFFLOAD_BROKER") or None)
for _q in ("threads", "children", "never"):
    app.queue(_q, retry=Retry(limit=0))
threads = app.service("threads")
children = app.service("children", executor="process", memory_limit="512MiB")
idle = app.service("idle", executor="process")

MiB = 1024 * 1024


def _hold(mib: int) -> int:
    block = bytearray(mib * MiB)
    for i in range(0, len(block), 4096):  # touched: resident, not just reserved
        block[i] = 1
    return len(block) // MiB


@threads.task(queue="threads", name="threads.hold")
def hold_in_thread(mib: int) -> int:
    return _hold(mib)


@children.task(queue="children", name="children.hold")
def hold_in_child(mib: int) -> int:
    return _hold(mib)


@idle.task(queue="never", name="idle.hold")
def hold_never(mib: int) -> int:  # pragma: no cover - no worker serves "never"
    return _hold(mib)
