"""The Kubernetes manifests (k8s/): the base and each overlay rendered by `kubectl kustomize`
(or `kustomize build`), after docker/credentials.py made the secrets' files as the README
says, and every object validated offline against the Kubernetes schemas
(kubernetes-validate, strict: an unknown field fails). Then what the system needs of them:
NATS clustered over a StatefulSet with JetStream volumes, a workload per service, each
with probes, requests and limits and only its own credentials, the autoscalers. And the
NATS pods run for real, as containers (testcontainers), with the command and environment
the StatefulSet gives them: a 3-node JetStream cluster whose routes refuse a wrong password.

Skipped, with the reason, where neither kubectl nor kustomize is installed (.ci/run
installs Debian's kubernetes-client where kubectl is missing); the containers' test also
where there is no Docker engine.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "docker"))
from credentials import CONTAINERS, TOKENS, password_var  # noqa: E402

from services.contract.users import SERVICE_USERS  # noqa: E402
from tests.dockerstack import docker, docker_network, moonbus_images  # noqa: E402,F401

K8S_VERSION = "1.32.0"  # the schemas validated against; kubernetes-validate ships them
KUSTOMIZATIONS = ["base", "overlays/local", "overlays/production"]
DEPLOYMENTS = {"market-data", "risk", "execution", "trading-agent", "risk-agent", "sentiment-agent",
               "swarm-agent", "backtest-worker", "gateway", "notifier"}
SINGLE = {"market-data", "risk", "execution"}  # never two at once
AUTOSCALED = {"trading-agent", "backtest-worker"}


def renderer() -> list[str] | None:
    if shutil.which("kubectl") and subprocess.run(["kubectl", "kustomize", "--help"],
                                                  capture_output=True).returncode == 0:
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """kustomization -> its objects, rendered from a copy of k8s/ with fresh secrets."""
    cmd = renderer()
    if cmd is None:
        pytest.skip("neither `kubectl kustomize` nor `kustomize` is installed (.ci/run installs kubectl)")
    k8s = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(REPO_ROOT / "k8s", k8s, ignore=shutil.ignore_patterns("secrets"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOONBUS_PW_", "MOONBUS_GATEWAY_"))}
    subprocess.run([sys.executable, str(REPO_ROOT / "docker/credentials.py"), str(k8s / "base/secrets")],
                   env={**env, "MOONBUS_BCRYPT_COST": "4"}, check=True, capture_output=True)
    out = {}
    for name in KUSTOMIZATIONS:
        run = subprocess.run([*cmd, str(k8s / name)], capture_output=True, text=True)
        assert run.returncode == 0, f"{name}: {run.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return out


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(rendered, name: str) -> None:
    objects = rendered[name]
    assert len(objects) > 20
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {e.message} at {e.path}") from None


def test_an_invalid_object_is_refused() -> None:
    """The validation above can fail: a misspelled field and a wrong type are caught."""
    deployment = yaml.safe_load((REPO_ROOT / "k8s/base/risk.yaml").read_text())
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    del deployment["spec"]["replica"]
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_nats_is_a_three_node_cluster_with_jetstream_volumes(rendered, name: str) -> None:
    objects = rendered[name]
    nats = by_kind(objects, "StatefulSet")["nats"]
    services = by_kind(objects, "Service")
    headless = services[nats["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    replicas = nats["spec"]["replicas"]
    assert replicas == 3
    args = container(nats)["command"]
    assert args[:3] == ["nats-server", "-c", "/app/proto/nats/cluster.conf"]
    assert args[args.index("-n") + 1] == "$(POD_NAME)" and args[args.index("-sd") + 1] == "/data"
    env = {e["name"]: e for e in container(nats)["env"]}
    # One route per node, by the StatefulSet's stable names through the headless Service,
    # each with the route password (from the Secret, never written in the manifest).
    routes = json.loads(env["MOONBUS_CLUSTER_ROUTES"]["value"])
    assert routes == [f"nats://route:$(ROUTE_PASSWORD)@nats-{i}.{headless['metadata']['name']}:6222"
                      for i in range(replicas)]
    assert env["MOONBUS_PW_ROUTE"]["value"] == '"$(ROUTE_PASSWORD)"'
    assert json.loads(env["MOONBUS_CLUSTER_LISTEN"]["value"]) == "0.0.0.0:6222"
    assert {m["mountPath"]: m["name"] for m in container(nats)["volumeMounts"]} == {"/data": "data"}
    assert [t["metadata"]["name"] for t in nats["spec"]["volumeClaimTemplates"]] == ["data"]
    assert services["nats"]["spec"]["selector"] == nats["spec"]["selector"]["matchLabels"]
    env = by_kind(objects, "ConfigMap")
    (config,) = [c for n, c in env.items() if n.startswith("moonbus-env")]
    assert config["data"]["MOONBUS__JETSTREAM__REPLICAS"] == "3"
    assert config["data"]["NATS_URL"] == "nats://nats:4222"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_each_service_a_workload_with_probes_resources_and_only_its_own_secret(rendered, name: str) -> None:
    objects = rendered[name]
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == DEPLOYMENTS
    secrets = by_kind(objects, "Secret")
    workloads = {**deployments, "nats": by_kind(objects, "StatefulSet")["nats"],
                 "provision": by_kind(objects, "Job")["provision"]}
    used = []
    for workload_name, workload in workloads.items():
        c = container(workload)
        resources = c["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
        if workload_name != "provision":
            assert "readinessProbe" in c and "livenessProbe" in c, workload_name
        refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e
                and not e["secretRef"].get("optional")]
        assert len(refs) == 1, workload_name
        (secret,) = refs
        used.append(secret)
        assert secret in secrets, f"{workload_name}: {secret} is not rendered (a hash suffix not followed?)"
        keys = set(secrets[secret]["data"])
        if workload_name == "nats":
            assert keys == {password_var(u) for u in SERVICE_USERS} | {"ROUTE_PASSWORD"}
        else:
            assert keys == {"NATS_PASSWORD", *(TOKENS if workload_name == "gateway" else [])}, workload_name
            user = next(e["value"] for e in c["env"] if e["name"] == "NATS_USER")
            assert user == CONTAINERS[workload_name], workload_name
        assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in c.get("env", [])), workload_name
    assert len(used) == len(set(used)), "two workloads share a Secret"
    assert set(used) == {n for n in secrets}
    for single in SINGLE:
        spec = deployments[single]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", single


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_notifier_is_off_unless_enabled_and_its_webhooks_come_from_a_secret(rendered, name: str) -> None:
    """No notifier pod unless an overlay turns it on: replicas 0, and never two at once
    (Recreate; two would send everything twice). [notifier] enabled and the channels come
    from an optional ConfigMap `notifier-config`, the webhook URLs and bot token from an
    optional Secret `notifier-webhooks` the operator makes: nothing of them is in the manifests."""
    notifier = by_kind(rendered[name], "Deployment")["notifier"]
    assert notifier["spec"]["replicas"] == 0 and notifier["spec"]["strategy"]["type"] == "Recreate"
    c = container(notifier)
    assert c["command"] == ["python3", "-m", "services.notifier"]
    optional = {(k, e[k]["name"]) for e in c["envFrom"] for k in ("configMapRef", "secretRef")
                if k in e and e[k].get("optional")}
    assert optional == {("configMapRef", "notifier-config"), ("secretRef", "notifier-webhooks")}
    assert [e["name"] for e in c["env"]] == ["NATS_USER"]  # no URL, token or switch written here
    assert not {"notifier-config", "notifier-webhooks"} & {o["metadata"]["name"].rsplit("-", 1)[0]
                                                         for o in rendered[name] if o["kind"] in ("ConfigMap", "Secret")}
    config = tomllib.loads((REPO_ROOT / "moonbus.toml").read_text())["notifier"]
    assert config["enabled"] is False
    assert {p["containerPort"] for p in c["ports"]} == {config["metrics_port"]}
    assert c["livenessProbe"]["httpGet"]["port"] == config["metrics_port"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_the_agents_and_backtest_workers_autoscale(rendered, name: str) -> None:
    objects = rendered[name]
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    deployments = by_kind(objects, "Deployment")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == AUTOSCALED
    for hpa in hpas.values():
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "the HPA owns the replica count"
        assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        assert "cpu" in container(target)["resources"]["requests"]  # utilisation needs a request
    if name == "overlays/production":
        assert hpas["backtest-worker"]["spec"]["maxReplicas"] == 32


def test_overlays_set_the_namespace_and_production_the_registry(rendered) -> None:
    for name in ["overlays/local", "overlays/production"]:
        namespaced = [o for o in rendered[name] if o["kind"] != "Namespace"]
        assert {o["metadata"].get("namespace") for o in namespaced} == {"moonbus"}, name
    images = {container(w)["image"] for w in [*by_kind(rendered["overlays/production"], "Deployment").values(),
                                               by_kind(rendered["overlays/production"], "StatefulSet")["nats"]]}
    assert images == {"registry.example.com/moonbus/python:0.1.0", "registry.example.com/moonbus/rust:0.1.0"}
    nats = by_kind(rendered["overlays/production"], "StatefulSet")["nats"]
    assert nats["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert by_kind(rendered["overlays/production"], "PodDisruptionBudget")["nats"]["spec"]["maxUnavailable"] == 1


# ---- the NATS StatefulSet's pods, as containers ------------------------------------------

def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and env values."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)


def test_the_nats_pods_form_a_jetstream_cluster(rendered, request: pytest.FixtureRequest) -> None:
    """The base's nats pods as Kubernetes would start them (its command and environment, the
    Secret's values, each pod's name and its DNS name under the headless Service), run as
    three containers on a private network: they route to each other with the route
    password and elect a JetStream meta leader; a route with another password is refused."""
    from testcontainers.core.container import DockerContainer

    from tests.dockerstack import PYTHON_IMAGE

    request.getfixturevalue("moonbus_images")  # after `rendered`: no image build where it skips
    docker_network = request.getfixturevalue("docker_network")
    objects = rendered["base"]
    nats = by_kind(objects, "StatefulSet")["nats"]
    c = container(nats)
    (secret_name,) = [e["secretRef"]["name"] for e in c["envFrom"]]
    secret = {k: base64.b64decode(v).decode() for k, v in by_kind(objects, "Secret")[secret_name]["data"].items()}
    headless = nats["spec"]["serviceName"]
    nodes = []
    try:
        for i in range(nats["spec"]["replicas"]):
            env = {**secret, "POD_NAME": f"nats-{i}"}
            for e in c["env"]:
                if "value" in e:
                    env[e["name"]] = expand(e["value"], env)
            node = (DockerContainer(PYTHON_IMAGE).with_network(docker_network)
                    .with_network_aliases(f"nats-{i}.{headless}")
                    .with_kwargs(entrypoint=[expand(a, env) for a in c["command"]]))
            for k, v in env.items():
                node = node.with_env(k, v)
            nodes.append(node.start())

        def healthz(node) -> int:
            return node.exec(["python3", "/app/healthcheck.py", "http://127.0.0.1:8222/healthz"]).exit_code

        deadline = time.monotonic() + 60
        while not all(healthz(n) == 0 for n in nodes):
            assert time.monotonic() < deadline, [n.get_logs() for n in nodes]
            time.sleep(1)
        for node in nodes:
            out = node.exec(["python3", "/app/healthcheck.py", "--print", "http://127.0.0.1:8222/routez"]).output
            assert json.loads(out)["num_routes"] >= len(nodes) - 1, out
        jsz = json.loads(nodes[0].exec(["python3", "/app/healthcheck.py", "--print",
                                        "http://127.0.0.1:8222/jsz"]).output)
        assert jsz["meta_cluster"]["cluster_size"] == len(nodes) and jsz["meta_cluster"]["leader"]

        # A fourth server with the wrong route password is not let in.
        env = {**secret, "POD_NAME": "intruder", "ROUTE_PASSWORD": "wrong"}
        for e in c["env"]:
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
        intruder = (DockerContainer(PYTHON_IMAGE).with_network(docker_network)
                    .with_kwargs(entrypoint=[expand(a, env) for a in c["command"]]))
        for k, v in env.items():
            intruder = intruder.with_env(k, v)
        nodes.append(intruder.start())
        time.sleep(5)
        routez = json.loads(nodes[0].exec(["python3", "/app/healthcheck.py", "--print",
                                           "http://127.0.0.1:8222/routez"]).output)
        assert {r["remote_name"] for r in routez["routes"]} == {"nats-1", "nats-2"}, routez
        assert b'authentication error - User "route"' in nodes[0].get_logs()[1]
    finally:
        for node in nodes:
            node.stop()
