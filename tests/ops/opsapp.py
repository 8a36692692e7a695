"""A small shop for the planner and the manifests: a CPU-bound web service, a
memory-hungry CPU-light indexer, and the default service (its built-in push task).

One App per broker kind, so a test picks the URL scheme it needs; none connects until
used. The hosts are Kubernetes service names, never dialled by these tests."""

from __future__ import annotations

import os

from offload import App


def _make(name: str, broker: str) -> App:
    app = App(name, broker=broker)
    app.queue("web")
    app.queue("indexing")
    web = app.service("web")
    indexer = app.service("indexer")

    @web.task(queue="web", name="render_page")
    def render_page(page: int) -> None:
        """The CPU-bound web side."""

    @indexer.task(queue="indexing", name="build_index")
    def build_index(doc: int) -> None:
        """The memory-hungry, CPU-light side."""

    return app


app = _make("shop", os.environ.get("OPSAPP_BROKER", "sqlite:///opsapp.db"))
redis_app = _make("shop", "redis://:s3cret@redis:6379/2?prefix=shop")
redis_cluster_app = _make("shop", "redis+cluster://redis-0:7000")
postgres_app = _make("shop", "postgresql://offload:pw@postgres:5432/shop?schema=shop_q")
