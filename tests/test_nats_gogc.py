"""nats-server's Go collector (GOGC) as every deployment starts it.

At Go's default (GOGC=100) nats-server collected its small heap about every second under
the order flow, and the mark phases showed in the orders' tail (README, "Limits, dead
letters, clocks and durability"): `make run` (natsserver.py), both compose files and the
Kubernetes manifests run it with GOGC=400, and a GOGC in the caller's environment wins.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.devstack.natsserver import NATS_GOGC, NatsServer, load_or_create_credentials


def server_env(server: NatsServer) -> dict[str, str]:
    """The environment the running nats-server process was started with."""
    assert server.process is not None
    raw = Path(f"/proc/{server.process.pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


def test_the_launchers_nats_server_collects_at_5x_its_live_heap(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOGC", raising=False)
    with NatsServer(store_dir=tmp_path, credentials=load_or_create_credentials(tmp_path)) as server:
        assert server_env(server)["GOGC"] == NATS_GOGC == "400"


def test_a_gogc_in_the_callers_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOGC", "100")
    with NatsServer(store_dir=tmp_path, credentials=load_or_create_credentials(tmp_path)) as server:
        assert server_env(server)["GOGC"] == "100"


def test_compose_and_kubernetes_run_nats_server_with_the_same_gogc(repo_root: Path) -> None:
    single = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    assert single["services"]["nats"]["environment"]["GOGC"] == NATS_GOGC
    cluster = yaml.safe_load((repo_root / "docker-compose.cluster.yml").read_text())
    nodes = [name for name, svc in cluster["services"].items() if "nats-server" in svc.get("command", [])]
    assert sorted(nodes) == ["nats", "nats-2", "nats-3"]
    for name in nodes:  # each node's environment (the cluster-node anchor's, merged)
        assert cluster["services"][name]["environment"]["GOGC"] == NATS_GOGC, name
    statefulset = next(doc for doc in yaml.safe_load_all((repo_root / "k8s" / "base" / "nats.yaml").read_text())
                       if doc and doc.get("kind") == "StatefulSet")
    container = next(c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == "nats")
    assert {e["name"]: e.get("value") for e in container["env"]}["GOGC"] == NATS_GOGC
