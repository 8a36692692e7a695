"""Kubernetes manifests for a topology: per pool a Deployment of workers, a KEDA
ScaledObject that scales it on the broker's own data, and a PodDisruptionBudget.

Pure: the pools, the broker URL and the options in, a list of manifests (plain dicts) and
their YAML text out. ``offload k8s`` (``cli_ops``) loads the app and the topology.

* A pod is one worker process (``offload worker APP --pool NAME``) sized to the pool's
  machine shape less the system reserve (:func:`offload.planner.allocatable`), with
  requests equal to limits (the Guaranteed QoS class: the last to be evicted, so a
  draining worker is not killed for a neighbour's burst). The topology ships in a
  ConfigMap. SIGTERM makes a worker drain for ``--grace`` seconds; the pod's
  ``terminationGracePeriodSeconds`` is that plus :data:`DRAIN_SLACK` for releasing
  leases and flushing metrics, as ``offload run`` allows its workers.
* The scaler reads what waits and what runs, divided by the pool's concurrency: Redis
  (KEDA's ``redis`` scaler: ZCARD of each queue's ``due`` and ``leased`` sets, summed by a
  scaling-modifier formula), PostgreSQL (the ``postgresql`` scaler: one COUNT over the
  tasks table), anything else the ``prometheus`` scaler over offload's ``/metrics``.
  A pool whose topology minimum is 0 scales to zero when nothing waits or runs.
* SQLite is refused: workers on many pods cannot share one SQLite file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError
from .planner import allocatable
from .topology import Pool

__all__ = ["DRAIN_SLACK", "K8sError", "K8sOptions", "dns_name", "manifests", "to_yaml"]

DRAIN_SLACK = 15  # seconds past the drain grace: release leases, flush, exit
TOPOLOGY_PATH = "/etc/offload/topology.toml"
PASSWORD_ENV = "OFFLOAD_BROKER_PASSWORD"
_DNS = re.compile(r"[^a-z0-9-]+")


class K8sError(ConfigError):
    """A topology or broker the manifests cannot be made for: one line saying why."""


@dataclass(frozen=True, slots=True)
class K8sOptions:
    """What ``offload k8s`` was given besides the topology."""

    app_spec: str  # MODULE:APP, as the workers' command names it
    app_name: str
    image: str
    broker_url: str
    namespace: str = "default"
    secret: str = "offload-broker"  # a Secret with key ``url`` (and ``password``)
    grace: float = 30.0
    scaler: str = "auto"  # auto (by the broker URL's scheme) or prometheus
    prometheus_url: str | None = None


def dns_name(name: str) -> str:
    """``name`` as a Kubernetes object name (RFC 1123 label: a-z, 0-9, '-', <= 63)."""
    return _DNS.sub("-", name.lower()).strip("-")[:63].strip("-") or "offload"


def _quantity_cpu(cores: float) -> str:
    return f"{max(1, math.floor(cores * 1000))}m"


def _quantity_memory(size: int) -> str:
    return f"{max(1, size // 1024**2)}Mi"


# -- the scalers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Url:
    scheme: str
    hosts: tuple[str, ...]  # host:port
    user: str | None
    has_password: bool
    path: str
    query: Mapping[str, str]


def _parse_url(url: str) -> _Url:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    netloc = parts.netloc.rpartition("@")[2]
    hosts = tuple(h for h in netloc.split(",") if h)
    return _Url(
        scheme=parts.scheme.lower(),
        hosts=hosts,
        user=unquote(parts.username) if parts.username else None,
        has_password=parts.password is not None,
        path=unquote(parts.path.lstrip("/")),
        query=query,
    )


def _redis_triggers(url: _Url, queues: Sequence[str], concurrency: int) -> list[dict[str, Any]]:
    cluster = url.scheme.endswith("+cluster")
    default_port = 6379
    hosts = [h if ":" in h.rsplit("]", 1)[-1] else f"{h}:{default_port}" for h in url.hosts]
    if not hosts:
        raise K8sError("the Redis broker URL names no host; KEDA's redis scaler needs one")
    prefix = url.query.get("prefix", "offload")
    base: dict[str, str] = {"listLength": str(concurrency), "activationListLength": "0"}
    if cluster:
        base["addresses"] = ",".join(hosts)
    else:
        base["address"] = hosts[0]
        base["databaseIndex"] = url.path or "0"
    if url.scheme.startswith("rediss"):
        base["enableTLS"] = "true"
    if url.user:
        base["username"] = url.user
    if url.has_password:
        base["passwordFromEnv"] = PASSWORD_ENV
    out = []
    for i, q in enumerate(queues):
        for kind in ("due", "leased"):
            out.append(
                {
                    "type": "redis-cluster" if cluster else "redis",
                    "name": f"q{i}_{kind}",
                    "metadata": {**base, "listName": f"{{{prefix}:{q}}}:{kind}"},
                }
            )
    return out


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _postgres_trigger(url: _Url, queues: Sequence[str], concurrency: int) -> dict[str, Any]:
    if not url.hosts or not url.user:
        raise K8sError(
            "the PostgreSQL broker URL must name a host and a user "
            "(postgresql://USER@HOST/DB) for KEDA's postgresql scaler to connect"
        )
    host, _, port = url.hosts[0].rpartition(":") if ":" in url.hosts[0] else (url.hosts[0], "", "")
    schema = url.query.get("schema", "offload")
    listed = ", ".join(_sql_literal(q) for q in queues)
    query = (
        f'SELECT count(*) FROM "{schema}".tasks WHERE queue IN ({listed}) AND '
        "(state = 'leased' OR (state = 'ready' AND "
        "visible_at <= extract(epoch FROM clock_timestamp())))"
    )
    meta = {
        "host": host,
        "port": port or "5432",
        "userName": url.user,
        "dbName": url.path or url.user,
        "sslmode": url.query.get("sslmode", "prefer"),
        "query": query,
        "targetQueryValue": str(concurrency),
        "activationTargetQueryValue": "0",
    }
    if url.has_password:
        meta["passwordFromEnv"] = PASSWORD_ENV
    return {"type": "postgresql", "name": "work", "metadata": meta}


def _promql_regex(queues: Sequence[str]) -> str:
    return "|".join(re.sub(r"([.\\^$*+?()\[\]{}|])", r"\\\\\1", q) for q in queues)


def _prometheus_trigger(server: str, queues: Sequence[str], concurrency: int) -> dict[str, Any]:
    sel = f'{{queue=~"{_promql_regex(queues)}"}}'
    # every offload /metrics reports the broker's counts: max by queue counts each once
    query = (
        f"sum(max by (queue) (offload_queue_ready{sel})) + "
        f"sum(max by (queue) (offload_queue_leased{sel}))"
    )
    return {
        "type": "prometheus",
        "name": "work",
        "metadata": {
            "serverAddress": server,
            "query": query,
            "threshold": str(concurrency),
            "activationThreshold": "0",
        },
    }


def _triggers(opts: K8sOptions, queues: Sequence[str], concurrency: int) -> list[dict[str, Any]]:
    url = _parse_url(opts.broker_url)
    if url.scheme == "sqlite":
        raise K8sError(
            f"broker {url.scheme}://: workers on many pods cannot share one SQLite file; "
            "use Redis or PostgreSQL (OFFLOAD_BROKER or App(broker=...)) to run on Kubernetes"
        )
    if opts.scaler == "auto" and url.scheme.startswith("redis"):
        return _redis_triggers(url, queues, concurrency)
    if opts.scaler == "auto" and url.scheme in ("postgresql", "postgres"):
        return [_postgres_trigger(url, queues, concurrency)]
    if not opts.prometheus_url:
        why = "--scaler prometheus" if opts.scaler == "prometheus" else (
            f"KEDA has no scaler for the broker scheme {url.scheme!r}, so"
        )  # fmt: skip
        raise K8sError(
            f"{why} the pools scale on offload's /metrics through Prometheus: give "
            "--prometheus-url http://PROMETHEUS:9090"
        )
    return [_prometheus_trigger(opts.prometheus_url, queues, concurrency)]


# -- the manifests ---------------------------------------------------------------------------


def manifests(
    opts: K8sOptions,
    pools: Sequence[Pool],
    queues: Mapping[str, Sequence[str]],
    topology_text: str,
    default_concurrency: int,
) -> list[dict[str, Any]]:
    """The ConfigMap holding the topology, then per pool serving a queue a Deployment, a
    ScaledObject and a PodDisruptionBudget. Raises K8sError (one line) for a broker or a
    topology that cannot run on Kubernetes."""
    app = dns_name(opts.app_name)
    names: dict[str, str] = {}
    for p in pools:
        name = dns_name(f"{opts.app_name}-{p.name}")
        if name in names:
            raise K8sError(
                f"pools {names[name]!r} and {p.name!r} both become the Kubernetes name "
                f"{name!r} (lowercase letters, digits and '-'); rename one of them"
            )
        names[name] = p.name
    config = f"{app}-topology"
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": config, "namespace": opts.namespace, "labels": _labels(app)},
            "data": {"topology.toml": topology_text},
        }
    ]
    for p in pools:
        served = list(queues.get(p.name, ()))
        if not served:
            continue  # its services have no task functions: offload worker would refuse
        name = dns_name(f"{opts.app_name}-{p.name}")
        concurrency = p.concurrency or default_concurrency
        triggers = _triggers(opts, served, concurrency)
        labels = {**_labels(app), "offload/pool": dns_name(p.name)}
        docs.append(_deployment(opts, p, name, labels, config))
        docs.append(_scaled_object(opts, p, name, labels, triggers, concurrency))
        docs.append(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": opts.namespace, "labels": labels},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
            }
        )
    return docs


def _labels(app: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "offload", "app.kubernetes.io/instance": app}


def _deployment(
    opts: K8sOptions, pool: Pool, name: str, labels: dict[str, str], config: str
) -> dict[str, Any]:
    assert pool.machine is not None  # a topology's pools always name a shape
    cpu, memory = allocatable(pool.machine)
    if cpu <= 0 or memory <= 0:
        raise K8sError(
            f"pool {pool.name!r}: machine {pool.machine.name!r} leaves nothing for a pod "
            "after the system reserve; give the pool a larger shape"
        )
    resources = {"cpu": _quantity_cpu(cpu), "memory": _quantity_memory(memory)}
    env: list[dict[str, Any]] = [
        {
            "name": "OFFLOAD_BROKER",
            "valueFrom": {"secretKeyRef": {"name": opts.secret, "key": "url"}},
        }
    ]
    if _parse_url(opts.broker_url).has_password:
        env.append(
            {
                "name": PASSWORD_ENV,  # read by the KEDA scaler, never by the worker
                "valueFrom": {
                    "secretKeyRef": {"name": opts.secret, "key": "password", "optional": True}
                },
            }
        )
    grace = f"{opts.grace:g}"
    command = ["offload", "worker", opts.app_spec, "--pool", pool.name]
    command += ["--topology", TOPOLOGY_PATH, "--grace", grace]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": labels},
        "spec": {
            # no `replicas`: the ScaledObject owns the count, and a re-apply must not reset it
            "selector": {"matchLabels": labels},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": math.ceil(opts.grace) + DRAIN_SLACK,
                    "containers": [
                        {
                            "name": "worker",
                            "image": opts.image,
                            "command": command,
                            "env": env,
                            "resources": {"requests": resources, "limits": dict(resources)},
                            "volumeMounts": [
                                {"name": "topology", "mountPath": "/etc/offload", "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [{"name": "topology", "configMap": {"name": config}}],
                },
            },
        },
    }


def _scaled_object(
    opts: K8sOptions,
    pool: Pool,
    name: str,
    labels: dict[str, str],
    triggers: list[dict[str, Any]],
    concurrency: int,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicaCount": pool.replicas[0],
        "maxReplicaCount": pool.replicas[1],
        "pollingInterval": 15,
        "cooldownPeriod": 300,
        "triggers": triggers,
    }
    if len(triggers) > 1:
        # one metric for the pool: all it has waiting and running, per `concurrency` slots
        spec["advanced"] = {
            "scalingModifiers": {
                "formula": " + ".join(t["name"] for t in triggers),
                "target": str(concurrency),
                "activationTarget": "0",
                "metricType": "AverageValue",
            }
        }
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": opts.namespace, "labels": labels},
        "spec": spec,
    }


# -- YAML ------------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(str(value))  # a JSON string is a YAML double-quoted scalar


def _block(text: str) -> bool:
    """Whether ``text`` reads back exactly as a literal block (``|2``): lines of plain
    printable text, one newline at the end."""
    return (
        "\n" in text.rstrip("\n")
        and text.endswith("\n")
        and not text.endswith("\n\n")
        and all(line.isprintable() and line == line.rstrip() for line in text.split("\n"))
    )


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _key(key: Any) -> str:
    """A mapping key, plain where YAML reads it back as that same string."""
    text = str(key)
    plain = _PLAIN_KEY.match(text) and text.lower() not in _YAML_WORDS
    return text if plain else json.dumps(text)


def _emit(value: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, Mapping):
        for k, v in value.items():
            key = _key(k)
            if isinstance(v, (Mapping, list)) and v:
                out.append(f"{pad}{key}:")
                _emit(v, indent + 2, out)
            elif isinstance(v, Mapping):
                out.append(f"{pad}{key}: {{}}")
            elif isinstance(v, list):
                out.append(f"{pad}{key}: []")
            elif isinstance(v, str) and _block(v):
                out.append(f"{pad}{key}: |2")
                out.extend(f"{pad}  {line}" if line else "" for line in v[:-1].split("\n"))
            else:
                out.append(f"{pad}{key}: {_scalar(v)}")
    else:
        for item in value:
            if isinstance(item, (Mapping, list)) and item:
                sub: list[str] = []
                _emit(item, indent + 2, sub)
                out.append(f"{pad}- {sub[0][indent + 2 :]}")
                out.extend(sub[1:])
            else:
                out.append(f"{pad}- {_scalar(item)}")


def to_yaml(docs: Sequence[Mapping[str, Any]]) -> str:
    """One multi-document YAML stream: block style, every string double-quoted (so a
    value such as ``"on"``, ``"0755"`` or ``"1e3"`` stays a string)."""
    chunks = []
    for doc in docs:
        lines: list[str] = []
        _emit(doc, 0, lines)
        chunks.append("---\n" + "\n".join(lines) + "\n")
    return "".join(chunks)
