"""Services: declaring them, their task functions, sizes, and the executor a worker lacks."""

from __future__ import annotations

import asyncio

import pytest

from offload import App, ConfigError, Service, Worker
from offload.service import format_size, parse_size


@pytest.fixture
def app(tmp_path):
    a = App("svc", broker=f"sqlite:///{tmp_path / 'b.db'}")
    yield a
    a.close()


@pytest.mark.parametrize(
    ("given", "size"),
    [
        ("512MiB", 512 * 2**20),
        ("2GiB", 2 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("100 MB", 100_000_000),
        ("1kib", 1024),
        ("64KB", 64_000),
        ("1TiB", 2**40),
        ("4096", 4096),
        ("10B", 10),
        (1024, 1024),
        (2048.0, 2048),
    ],
)
def test_sizes_parse(given, size):
    assert parse_size(given, "memory") == size


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ("512XB", "unknown unit 'XB'"),
        ("2 gigs", "unknown unit 'gigs'"),
        ("abc", "not a size"),
        ("", "not a size"),
        ("1.5", "not a whole number of bytes"),
        (0, "more than 0 bytes"),
        (-1, "more than 0 bytes"),
        ("0GiB", "more than 0 bytes"),
        ("2PiB", "unknown unit"),
        (2 * 1024**5, "at most 1 PiB"),
        (True, "not a size"),
        (1.5, "not a whole number"),
        (float("nan"), "not a whole number"),
        ([512], "a list is not a size"),
    ],
)
@pytest.mark.parametrize("field", ["memory", "memory_limit"])
def test_bad_sizes_fail_at_declaration_in_one_line_naming_the_field(app, given, needle, field):
    with pytest.raises(ConfigError) as err:
        if field == "memory":
            app.service("idx", memory=given)
        else:
            app.service("idx", executor="process", memory_limit=given)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"app.service('idx'): {field}={given!r}: "), msg
    assert needle in msg, msg
    assert "idx" not in app.services  # nothing half-declared


def test_a_bad_task_memory_limit_names_the_decorator_and_field(app):
    svc = app.service("idx", executor="process")
    with pytest.raises(ConfigError, match=r"^@idx.task: memory_limit='1 ZB': unknown unit"):
        svc.task(memory_limit="1 ZB")


def test_format_size_reads_back():
    assert [format_size(n) for n in (None, 10, 2048, 512 * 2**20, 3 * 2**29)] == [
        "-",
        "10B",
        "2KiB",
        "512MiB",
        "1.5GiB",
    ]


def test_service_profile_and_tasks(app):
    app.queue("indexing")
    idx = app.service("indexer", memory="2GiB", cpu=0.25)
    assert isinstance(idx, Service)
    assert (idx.name, idx.memory, idx.cpu, idx.executor, idx.memory_limit) == (
        "indexer",
        2 * 2**30,
        0.25,
        "thread",
        None,
    )

    @idx.task(queue="indexing", timeout=5, name="build_index")
    def build_index(doc_id: int) -> None: ...

    @app.task(name="plain")
    def plain() -> None: ...

    assert build_index.service is idx and build_index.queue == "indexing"
    assert build_index.timeout == 5
    assert plain.service is app.services["default"]
    assert app.tasks[build_index.name] is build_index
    assert list(idx.tasks) == [build_index.name]
    assert idx.queues == ["indexing"]
    assert set(app.services) == {"default", "indexer"}
    assert build_index(3) is None  # still a plain function when called


def test_bare_decorator_and_default_service_declared_later(app):
    @app.task(name="early")
    def early() -> None: ...

    default = app.services["default"]
    assert not default.declared
    again = app.service("default", memory="1GiB")
    assert again is default and early.service is default
    assert default.declared and default.memory == 2**30
    # declared now: a different profile is refused, the same one is the same object
    assert app.service("default", memory="1GiB") is default
    with pytest.raises(ConfigError, match="declared twice with different profiles"):
        app.service("default", memory="2GiB")

    svc = app.service("emails")

    def bare() -> None: ...

    bare.__qualname__ = "bare"  # as if declared at module level
    tf = svc.task(bare)
    assert tf.service is svc and tf.queue == "default" and tf.name.endswith(".bare")


def test_redeclaring_a_service(app):
    a = app.service("indexer", memory="2GiB")
    assert app.service("indexer", memory=2 * 2**30) is a
    with pytest.raises(ConfigError, match=r"service 'indexer' is declared twice"):
        app.service("indexer", memory="4GiB")


def test_process_executor_and_memory_limits_are_stored(app):
    idx = app.service("indexer", executor="process", memory_limit="512MiB")

    @idx.task(queue="indexing", memory_limit="1GiB", on_oom="indexing-large", name="b")
    def build_index(doc_id: int) -> None: ...

    @idx.task(queue="indexing", name="small")
    def small() -> None: ...

    assert idx.executor == "process" and idx.memory_limit == 512 * 2**20
    assert build_index.memory_limit == 2**30 and build_index.on_oom == "indexing-large"
    assert small.memory_limit is None and small.on_oom is None  # the service's limit applies


@pytest.mark.parametrize(
    ("declare", "needle"),
    [
        (lambda app: app.service("x", executor="fork"), "executor='fork': use 'thread'"),
        (lambda app: app.service("x", memory_limit="1GiB"), "executor='process'"),
        (lambda app: app.service("x", cpu=0), "cpu=0: give the vCPUs"),
        (lambda app: app.service("x", cpu=True), "cpu=True"),
        (lambda app: app.service("x", cpu=float("inf")), "cpu=inf"),
        (lambda app: app.service("bad name"), "service name 'bad name'"),
        (lambda app: app.service("x").task(memory_limit="1GiB"), "memory_limit needs"),
        (lambda app: app.service("x").task(on_oom="big"), "on_oom needs"),
        (
            lambda app: app.service("x", executor="process").task(queue="q", on_oom="q"),
            "on_oom='q' is the task's own queue",
        ),
        (
            lambda app: app.service("x", executor="process").task(on_oom="no spaces"),
            "on_oom='no spaces'",
        ),
        (lambda app: app.service("x").task(timeout=-1), "@x.task: timeout"),
        (lambda app: app.service("x").task(42), "@x.task needs a function"),
    ],
)
def test_declaration_errors_are_one_clear_line(app, declare, needle):
    with pytest.raises(ConfigError) as err:
        declare(app)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_task_name_is_still_unique_across_services(app):
    a, b = app.service("a"), app.service("b")

    @a.task(name="same")
    def one() -> None: ...

    with pytest.raises(ConfigError, match="registered twice"):

        @b.task(name="same")
        def two() -> None: ...


def _process_app(app):
    app.queue("indexing")
    app.queue("emails")
    idx = app.service("indexer", executor="process", memory_limit="512MiB")

    @idx.task(queue="indexing", name="build_index")
    def build_index(doc_id: int) -> None: ...

    @app.task(queue="emails", name="send_email")
    def send_email() -> None: ...

    return build_index, send_email


def test_a_worker_refuses_process_tasks_a_child_could_not_import(app):
    build_index, send_email = _process_app(app)  # defined inside a function: <locals>
    with pytest.raises(ConfigError) as err:
        Worker(app)
    msg = str(err.value)
    assert "service 'indexer'" in msg and "build_index" in msg and "<locals>" in msg
    assert "top level of an importable module" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="service 'indexer'"):
        Worker(app, queues=["indexing"])
    # the other queues are served as ever
    send_email.send()
    build_index.send(1)
    stats = asyncio.run(Worker(app, queues=["emails"], burst=True).run())
    assert stats.succeeded == 1
    assert app.stats("indexing").ready == 1  # never run on a thread


def test_an_on_oom_queue_counts_as_the_process_services_queue(app):
    app.queue("big")
    idx = app.service("indexer", executor="process")

    @idx.task(queue="indexing", on_oom="big", name="t")
    def t() -> None: ...

    with pytest.raises(ConfigError, match="service 'indexer'"):
        Worker(app, queues=["big"])
