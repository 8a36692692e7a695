"""``offload k8s``: manifests that validate against Kubernetes' schemas and KEDA's CRD
schema, scalers that count what the broker really holds, and one clear line for a
topology or broker that cannot run on Kubernetes."""

from __future__ import annotations

import json
import pathlib

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from offload.catalog import load_catalog
from offload.cli import main
from offload.k8s import K8sOptions, manifests, to_yaml
from offload.planner import allocatable
from tests.conftest import _drop_pg_schema, _drop_redis_prefix, _param, make_url
from tests.ops.opsapp import _make

HERE = pathlib.Path(__file__).parent
KEDA_SCHEMA = json.loads((HERE / "keda_scaledobject_v2.20.1.schema.json").read_text())
K8S_VERSION = "1.30"

TOPOLOGY = """\
# two pools: the web side, and the indexer that scales to zero
[pools.web]
services = ["default", "web"]
machine = "e2-standard-2"
replicas = [1, 4]
concurrency = 16

[pools.highmem]
services = ["indexer"]
machine = "e2-highmem-2"
replicas = [0, 2]
concurrency = 2
"""


@pytest.fixture
def topology(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(TOPOLOGY)
    return str(path)


def k8s(*args):
    return CliRunner().invoke(main, ["k8s", *args], catch_exceptions=False)


def validate(text: str) -> list[dict]:
    docs = list(yaml.safe_load_all(text))
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            jsonschema.Draft7Validator(KEDA_SCHEMA).validate(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    return docs


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("spec", ["redis_app", "redis_cluster_app", "postgres_app"])
def test_manifests_validate_against_kubernetes_and_keda(topology, spec):
    result = k8s(f"tests.ops.opsapp:{spec}", "--topology", topology, "--image", "shop:1.2",
                 "--namespace", "shop", "--broker-url-secret", "shop-broker")  # fmt: skip
    assert result.exit_code == 0, result.output
    docs = validate(result.output)
    assert [d["kind"] for d in docs] == ["ConfigMap"] + [
        "Deployment", "ScaledObject", "PodDisruptionBudget"
    ] * 2  # fmt: skip
    assert docs[0]["data"]["topology.toml"] == TOPOLOGY  # shipped byte for byte
    deployments = by_kind(docs, "Deployment")
    scaled = by_kind(docs, "ScaledObject")
    assert set(deployments) == set(scaled) == set(by_kind(docs, "PodDisruptionBudget"))
    web = deployments["shop-web"]["spec"]["template"]["spec"]
    (container,) = web["containers"]
    assert container["command"][:5] == [
        "offload", "worker", f"tests.ops.opsapp:{spec}", "--pool", "web"
    ]  # fmt: skip
    grace = float(container["command"][container["command"].index("--grace") + 1])
    assert web["terminationGracePeriodSeconds"] > grace
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["OFFLOAD_BROKER"] == {"name": "shop-broker", "key": "url"}
    # a pod per replica: the shape less the system reserve, requests == limits
    cpu, memory = allocatable(load_catalog()["e2-standard-2"])
    res = container["resources"]
    assert res["requests"] == res["limits"]
    assert int(res["requests"]["cpu"].removesuffix("m")) == int(cpu * 1000)
    assert int(res["requests"]["memory"].removesuffix("Mi")) == memory // 1024**2
    assert 0 < memory < load_catalog()["e2-standard-2"].memory
    assert scaled["shop-web"]["spec"]["minReplicaCount"] == 1
    assert scaled["shop-web"]["spec"]["maxReplicaCount"] == 4
    assert scaled["shop-highmem"]["spec"]["minReplicaCount"] == 0  # scales to zero
    kinds = {t["type"] for s in scaled.values() for t in s["spec"]["triggers"]}
    expected = {"redis_app": "redis", "redis_cluster_app": "redis-cluster"}.get(spec, "postgresql")
    assert kinds == {expected}


def test_prometheus_scaler_on_offloads_metrics(topology):
    prometheus = ["--scaler", "prometheus", "--prometheus-url", "http://prometheus:9090"]
    result = k8s("tests.ops.opsapp:redis_app", "--topology", topology, "--image", "x", *prometheus)
    assert result.exit_code == 0, result.output
    docs = validate(result.output)
    (trigger,) = by_kind(docs, "ScaledObject")["shop-web"]["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert 'offload_queue_ready{queue=~"default|web"}' in trigger["metadata"]["query"]
    assert trigger["metadata"]["threshold"] == "16"


def test_prometheus_scaler_without_a_server_is_one_line(topology):
    result = k8s("tests.ops.opsapp:redis_app", "--topology", topology, "--image", "x",
                 "--scaler", "prometheus")  # fmt: skip
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "--prometheus-url" in result.output


def test_sqlite_broker_is_refused_in_one_line(topology):
    result = k8s("tests.ops.opsapp:app", "--topology", topology, "--image", "shop:1")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith("Error: ") and "cannot share one SQLite file" in result.output


@pytest.mark.parametrize(
    ("text", "expected", "status"),
    [
        (TOPOLOGY.replace('"indexer"]', '"indexr"]'), "unknown service 'indexr'", 1),
        (TOPOLOGY.replace("[pools.web]", "[pools.web"), "invalid TOML", 1),
        (TOPOLOGY.replace("[pools.highmem]", "[pools.WEB]"), "both become the Kubernetes", 1),
    ],
)
def test_a_bad_topology_is_one_clear_line(tmp_path, text, expected, status):
    path = tmp_path / "t.toml"
    path.write_text(text)
    result = k8s("tests.ops.opsapp:redis_app", "--topology", str(path), "--image", "x")
    assert result.exit_code == status, result.output
    assert result.output.count("\n") == 1 and expected in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--namespace", "Shop_1"], "--namespace"),
        (["--grace", "-1"], "--grace"),
        ([], "--image"),
    ],
)
def test_bad_flags_are_usage_errors(topology, args, expected):
    image = [] if not args else ["--image", "x"]
    result = k8s("tests.ops.opsapp:redis_app", "--topology", topology, *image, *args)
    assert result.exit_code == 2
    assert expected in result.output


def test_yaml_reads_back_exactly():
    doc = {
        "a": ["on", "0755", "1e3", "", "x: y", "#c", "null", 'q"uote', "tab\tin"],
        "yes": {"nested": [{"k": 1, "l": [True, None, 2.5]}], "empty": {}, "none": []},
        "text": "line one\n  indented\n\nlast\n",
        "odd": "trailing \nspace\n",
    }
    assert yaml.safe_load(to_yaml([doc])) == doc


# -- the scalers count what the broker holds ---------------------------------------------------


@pytest.fixture(params=["redis", "postgres"])
def shop(request, tmp_path):
    url = make_url(request.param, tmp_path)
    app = _make("shop", url)
    try:
        yield request.param, url, app
    finally:
        app.close()
        (_drop_redis_prefix if request.param == "redis" else _drop_pg_schema)(url)


def test_the_scaler_counts_the_pools_waiting_and_running_tasks(shop, tmp_path):
    kind, url, app = shop
    for i in range(3):
        app.tasks["render_page"].send(i)
    app.tasks["build_index"].send(1)
    app.tasks["render_page"].send_with([9], {}, delay=3600)  # scheduled: not work yet
    # one web task running (leased, as a worker's claim leaves it): still the pool's work
    (claimed,) = app.registry.call(lambda b: b.claim(["web"], 1))
    assert claimed.queue == "web"
    path = tmp_path / "t.toml"
    path.write_text(TOPOLOGY)
    placement = app.placement(str(path))
    opts = K8sOptions("m:app", "shop", "img", url)
    docs = manifests(opts, list(placement.pools.values()), placement.queues, TOPOLOGY, 32)
    scaled = by_kind(docs, "ScaledObject")
    counts = {name: _count(kind, url, so["spec"]["triggers"]) for name, so in scaled.items()}
    expected_web = 3 if kind == "postgres" else 4  # Redis's due set holds the scheduled one
    assert counts == {"shop-web": expected_web, "shop-highmem": 1}


def _count(kind: str, url: str, triggers: list[dict]) -> int:
    if kind == "redis":
        import redis

        r = redis.Redis.from_url(url.split("?")[0])
        try:
            return sum(r.zcard(t["metadata"]["listName"]) for t in triggers)
        finally:
            r.close()
    import psycopg

    (trigger,) = triggers
    base = url.split("?")[0]
    assert _param(url, "schema") in trigger["metadata"]["query"]
    with psycopg.connect(base) as conn:
        return conn.execute(trigger["metadata"]["query"]).fetchone()[0]
