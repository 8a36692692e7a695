"""The topology file: placements, and one clear line citing file, line and field for every
fault, whether the file is wrong on its own or does not fit the App."""

from __future__ import annotations

import textwrap

import pytest

from offload import App, ConfigError, TopologyError
from offload.topology import load_topology


@pytest.fixture
def app(tmp_path):
    a = App("topo", broker=f"sqlite:///{tmp_path / 'b.db'}")
    a.queue("emails")
    a.queue("indexing")
    a.queue("indexing-large")
    emails = a.service("emails")
    idx = a.service("indexer", memory="2GiB", cpu=0.25)

    @a.task(name="signup")
    def signup() -> None: ...

    @emails.task(queue="emails", name="send_email")
    def send_email() -> None: ...

    @idx.task(queue="indexing", name="build_index")
    def build_index() -> None: ...

    yield a
    a.close()


GOOD = """\
[machines.my-box]            # a custom shape
cpu = 2
memory = "16GiB"
price_per_hour = 0.12

[pools.web]
services = ["default", "emails"]
machine = "e2-standard-2"
replicas = [1, 4]
concurrency = 16

[pools.highmem]
services = [
    "indexer",
]
machine = "my-box"
replicas = [0, 2]
concurrency = 2
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "topology.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_topology_places_services_and_their_queues(app, tmp_path):
    path = write(tmp_path, GOOD)
    p = app.placement(path)
    assert p.path == path and list(p.pools) == ["web", "highmem"]
    web, high = p.pools["web"], p.pools["highmem"]
    assert web.services == ("default", "emails") and p.queues["web"] == ("default", "emails")
    assert high.services == ("indexer",) and p.queues["highmem"] == ("indexing",)
    assert (web.replicas, web.concurrency) == ((1, 4), 16)
    assert (high.replicas, high.concurrency) == ((0, 2), 2)
    assert web.machine.name == "e2-standard-2" and web.machine.provider == "gce"
    assert web.machine.memory == 8 * 2**30 and web.machine.price_per_hour > 0
    assert high.machine.provider == "custom" and high.machine.memory == 16 * 2**30
    assert high.machine.price_per_hour == 0.12
    assert p.pool_of("indexer") == "highmem" and p.pool_of("default") == "web"


def test_no_topology_is_one_pool_all_with_everything(app):
    p = app.placement()
    assert p.path is None and list(p.pools) == ["all"]
    assert set(p.pools["all"].services) == {"default", "emails", "indexer"}
    assert p.queues["all"] == ("default", "emails", "indexing", "indexing-large")
    assert p.pools["all"].replicas == (1, 1) and p.pools["all"].machine is None


def test_the_topology_path_comes_from_the_app_or_the_environment(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("OFFLOAD_TOPOLOGY", path)
    assert App("a", broker="sqlite:///x.db").topology == path
    assert App("a", broker="sqlite:///x.db", topology="other.toml").topology == "other.toml"
    monkeypatch.setenv("OFFLOAD_TOPOLOGY", "")
    assert App("a", broker="sqlite:///x.db").topology is None
    monkeypatch.delenv("OFFLOAD_TOPOLOGY")
    app = App("a", broker="sqlite:///x.db")
    assert app.topology is None
    monkeypatch.setenv("OFFLOAD_TOPOLOGY", path)  # read once, when the App was made
    assert app.topology is None and app.placement().path is None


def test_an_app_topology_is_used_and_an_explicit_one_wins(app, tmp_path):
    path = write(tmp_path, GOOD)
    app.topology = path
    assert list(app.placement().pools) == ["web", "highmem"]
    other = tmp_path / "other.toml"
    other.write_text(
        '[pools.one]\nservices = ["default", "emails", "indexer"]\nmachine = "t3.large"\n'
    )
    assert list(app.placement(other).pools) == ["one"]


def test_inline_tables_and_dotted_keys_are_found_too(app, tmp_path):
    path = write(
        tmp_path,
        """\
        [pools]
        web = { services = ["default", "emails"], machine = "e2-standard-2" }
        high = { services = ["indexer"], machine = "e2-nope-2" }
        """,
    )
    with pytest.raises(TopologyError) as err:
        app.placement(path)
    assert str(err.value).startswith(f"{path}:3: pools.high.machine: unknown machine 'e2-nope-2'")

    path = write(
        tmp_path,
        """\
        pools.web.services = ["default", "emails", "indexer"]
        pools.web.machine = "e2-standard-2"
        pools.web.replicas = [2, 1]
        """,
    )
    with pytest.raises(TopologyError, match=r":3: pools\.web\.replicas: \[2, 1\] must be"):
        app.placement(path)


# (file text, expected line, expected start of the message after "FILE:LINE: ")
FILE_FAULTS = [
    ("[pools.web\nservices = []\n", 1, "invalid TOML: "),
    ('[pools.web]\nservices = ["a"]\nservices = ["b"]\n', 3, "invalid TOML: "),
    ("[pool.web]\nservices = []\n", 1, "pool: unknown table"),
    ('[machines.box]\ncpu = 2\nmemory = "1GiB"\n', 1, "pools: no pool is declared"),
    ("", 1, "pools: no pool is declared"),
    ('[pools.web]\nmachine = "t3.large"\n', 1, "pools.web: services is missing"),
    ('[pools.web]\nservices = ["default"]\n', 1, "pools.web: machine is missing"),
    ('[pools.web]\nmachine = "t3.large"\nservices = []\n', 3, "pools.web.services: is empty"),
    (
        '[pools.web]\nmachine = "t3.large"\nservices = "default"\n',
        3,
        "pools.web.services: 'default' must be a list of service names",
    ),
    (
        '[pools.web]\nservices = ["default"]\n\nmachine = "e2-standard-3"\n',
        4,
        "pools.web.machine: unknown machine 'e2-standard-3'",
    ),
    (
        '[pools.web]\nservices = ["default"]\nmachine = "t3.large"\nreplicas = [3, 1]\n',
        4,
        "pools.web.replicas: [3, 1] must be [min, max]",
    ),
    (
        '[pools.web]\nservices = ["default"]\nmachine = "t3.large"\nreplicas = [0, 0]\n',
        4,
        "pools.web.replicas: [0, 0] must be",
    ),
    (
        '[pools.web]\nservices = ["default"]\nmachine = "t3.large"\nreplicas = "2"\n',
        4,
        "pools.web.replicas: '2' must be",
    ),
    (
        '[pools.web]\nservices = ["default"]\nmachine = "t3.large"\nconcurrency = 0\n',
        4,
        "pools.web.concurrency: 0 must be a whole number > 0",
    ),
    (
        '[pools.web]\nservices = ["default"]\nmachine = "t3.large"\nconcurrency = 2.5\n',
        4,
        "pools.web.concurrency: 2.5 must be a whole number",
    ),
    (
        '[pools.web]\nservices = ["default"]\nmachine = "t3.large"\nconcurrancy = 8\n',
        4,
        "pools.web.concurrancy: unknown field; a pool has services, machine",
    ),
    (
        '[pools."web pool"]\nservices = ["default"]\nmachine = "t3.large"\n',
        1,
        "pools.web pool: a pool name is",
    ),
    ("[pools]\nweb = 3\n", 2, "pools.web: must be a table"),
    (
        '[pools.web]\nservices = ["default", "default"]\nmachine = "t3.large"\n',
        2,
        "pools.web.services: 'default' is listed twice",
    ),
    (
        '[pools.a]\nservices = ["default", "emails"]\nmachine = "t3.large"\n\n'
        '[pools.b]\nservices = [\n  "indexer",\n  "emails",\n]\nmachine = "t3.large"\n',
        8,
        "pools.b.services: service 'emails' is already in pool 'a'",
    ),
    (
        '[machines.box]\ncpu = 2\nmemory = "16XB"\n\n'
        '[pools.web]\nservices = ["default"]\nmachine = "box"\n',
        3,
        "machines.box.memory: '16XB': unknown unit 'XB'",
    ),
    (
        "[machines.box]\ncpu = 2\nmemory = 0\n\n"
        '[pools.web]\nservices = ["default"]\nmachine = "box"\n',
        3,
        "machines.box.memory: 0: must be more than 0 bytes",
    ),
    (
        '[machines.box]\nmemory = "1GiB"\n\n[pools.web]\nservices = ["default"]\nmachine = "box"\n',
        1,
        "machines.box: cpu is missing",
    ),
    (
        '[machines.box]\ncpu = -2\nmemory = "1GiB"\n',
        2,
        "machines.box.cpu: -2 must be a number > 0",
    ),
    (
        '[machines.box]\ncpu = 2\nmemory = "1GiB"\nprice_per_hour = -0.1\n',
        4,
        "machines.box.price_per_hour: -0.1 must be a number >= 0",
    ),
    (
        '[machines.box]\ncpu = 2\nmemory = "1GiB"\ngpu = 1\n',
        4,
        "machines.box.gpu: unknown field; a machine has cpu, memory, price_per_hour",
    ),
    (
        '[pools.web]\nservices = ["default"]\nmachine = "t3.large"\nqueues = ["a", 3]\n',
        4,
        "pools.web.queues: ['a', 3] must be a list of queue names",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), FILE_FAULTS)
def test_every_file_fault_is_one_line_citing_file_line_and_field(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as err:
        load_topology(path)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{path}:{line}: {message}"), msg
    assert isinstance(err.value, ConfigError)


# faults only the App can reveal
APP_FAULTS = [
    (
        '[pools.web]\nservices = [\n  "default",\n  "emails",\n  "indexr",\n]\n'
        'machine = "t3.large"\n',
        5,
        "pools.web.services: unknown service 'indexr'; the app's services are default, emails, "
        "indexer",
    ),
    (
        '[pools.web]\nservices = ["default", "emails"]\nmachine = "t3.large"\n',
        1,
        "pools: service 'indexer' is in no pool; add it to one pool's services (pools: web)",
    ),
    (
        '[pools.web]\nservices = ["default", "emails", "indexer"]\nmachine = "t3.large"\n'
        'queues = ["nope"]\n',
        4,
        "pools.web.queues: queue 'nope' is not declared by the app",
    ),
    (
        '[pools.web]\nservices = ["default", "emails"]\nmachine = "t3.large"\n'
        'queues = ["indexing"]\n\n[pools.high]\nservices = ["indexer"]\nmachine = "t3.large"\n',
        7,
        "pools.high.services: service 'indexer' sends task 'build_index' to queue 'indexing', "
        "which pool 'web' serves",
    ),
]


@pytest.mark.parametrize(("text", "line", "message"), APP_FAULTS)
def test_faults_against_the_app_cite_file_line_and_field(app, tmp_path, text, line, message):
    path = write(tmp_path, text)
    load_topology(path)  # fine on its own
    with pytest.raises(TopologyError) as err:
        app.placement(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}:{line}: {message}"), msg


def test_a_queue_shared_by_services_of_two_pools_is_refused(app, tmp_path):
    shared = app.service("shared")

    @shared.task(queue="emails", name="also_emails")
    def also() -> None: ...

    path = write(
        tmp_path,
        '[pools.web]\nservices = ["default", "emails", "indexer"]\nmachine = "t3.large"\n\n'
        '[pools.other]\nservices = ["shared"]\nmachine = "t3.large"\n',
    )
    with pytest.raises(TopologyError) as err:
        app.placement(path)
    assert str(err.value).startswith(
        f"{path}:6: pools.other.services: service 'shared' sends task 'also_emails' to queue "
        "'emails', which pool 'web' serves"
    ), str(err.value)


def test_the_default_service_must_be_placed_too(tmp_path):
    """It holds the @app.task functions, and the built-in ones every App has."""
    app = App("t", broker=f"sqlite:///{tmp_path / 'b.db'}")
    app.queue("q")
    idx = app.service("indexer")

    @idx.task(name="t", queue="q")
    def t() -> None: ...

    @app.task(name="u", queue="q")
    def u() -> None: ...

    path = write(tmp_path, '[pools.p]\nservices = ["indexer"]\nmachine = "t3.large"\n')
    with pytest.raises(TopologyError, match=r":1: pools: service 'default' \(the home of @app"):
        app.placement(path)


def test_an_on_oom_queue_must_be_served_by_some_pool(tmp_path):
    app = App("t", broker=f"sqlite:///{tmp_path / 'b.db'}")
    app.queue("indexing")
    app.queue("indexing-large")
    idx = app.service("indexer", executor="process", memory_limit="512MiB")

    @idx.task(queue="indexing", on_oom="indexing-large", name="build_index")
    def build_index() -> None: ...

    @app.task(name="plain")
    def plain() -> None: ...

    text = '[pools.high]\nservices = ["indexer", "default"]\nmachine = "e2-highmem-2"\n'
    with pytest.raises(TopologyError) as err:
        app.placement(write(tmp_path, text))
    assert ":2: pools.high.services: task 'build_index' escalates to queue 'indexing-large'" in (
        str(err.value)
    )
    text += '\n[pools.huge]\nservices = []\nmachine = "e2-highmem-8"\n'
    text = text.replace("services = []", 'services = []\nqueues = ["indexing-large"]')
    p = app.placement(write(tmp_path, text))
    assert p.queues == {"high": ("default", "indexing"), "huge": ("indexing-large",)}


def test_an_unreadable_file_is_one_line(app, tmp_path):
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(TopologyError) as err:
        app.placement(missing)
    assert str(err.value).startswith(f"{missing}: cannot read the topology file")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n")
    with pytest.raises(TopologyError, match=r"latin1.toml:1: not UTF-8"):
        load_topology(str(bad))


def test_an_unknown_pool_lists_the_pools(app, tmp_path):
    p = app.placement(write(tmp_path, GOOD))
    with pytest.raises(TopologyError, match=r"pool 'nope' is not declared; pools: web, highmem"):
        p.pool("nope")
    with pytest.raises(TopologyError, match=r"no topology \(one pool 'all'\)"):
        app.placement().pool("web")
