"""docker compose, for real: `make images` (base images built offline), then the whole
system from docker-compose.yml under a unique project name, with three trading-agent
replicas. As the operator, through nats-server's port published by
docker/compose.operator.yml only here, the test sees ticks flow and orders fill; every
bar is decided exactly once (one Signal per (symbol, origin_ts)) across the replicas,
also while one replica's container is stopped; `down -v` leaves no container, volume or
network of the project behind.

Needs a Docker engine (skipped when `docker info` fails). The monitoring configs are
checked without Docker (Prometheus and Grafana images cannot be had here).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import nats
import pytest
import yaml

from services.contract.models import Bar, ExecutionReport, Signal
from services.devstack.natsserver import REPO_ROOT, SERVICE_USERS, password_env_var

sys.path.insert(0, str(REPO_ROOT / "docker"))
from compose_env import hash_env_var  # noqa: E402

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
MONITORING = REPO_ROOT / "docker" / "monitoring"
SERVICES = ["nats", "market-data", "risk", "execution", "trading-agent", "risk-agent", "sentiment-agent",
            "swarm-agent", "gateway"]
REPLICAS = 3
# Decide from 3 bars (not 20) so that orders, and so fills, come within seconds.
TEST_OVERRIDE = """
services:
  trading-agent:
    environment:
      MOONBUS__TRADING_AGENT__MOMENTUM_LOOKBACK: "3"
"""


def compose_command() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            return cmd
    return None


def docker_skip_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine: `docker info` failed: {(info.stderr or info.stdout).strip()[:200]}"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    return None


# ---- the monitoring profile's configs (no Docker needed) --------------------------------

def metric_names_defined() -> str:
    """The source of every service: a metric the dashboard uses must be defined in it."""
    files = [*REPO_ROOT.glob("services/**/*.py"), *REPO_ROOT.glob("rust-*/src/**/*.rs")]
    return "\n".join(p.read_text() for p in files)


def test_compose_file_defines_every_service_and_no_fixed_agent_names() -> None:
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    services = spec["services"]
    assert set(SERVICES) <= set(services)
    for name in SERVICES:
        svc = services[name]
        assert "container_name" not in svc, name
        assert svc.get("restart") == "unless-stopped", name
        assert "healthcheck" in svc, name
        if name != "nats":
            assert svc["depends_on"]["nats"]["condition"] == "service_healthy", name
            assert svc["environment"]["NATS_USER"] == name
            assert svc["environment"]["NATS_URL"] == "nats://nats:4222"
        if name.endswith("-agent"):
            assert "ports" not in svc, f"{name} must scale: no fixed host port"
        if name not in ("nats", "market-data"):  # every user of JetStream waits for the provisioning
            assert svc["depends_on"]["provision"]["condition"] == "service_completed_successfully", name
    # The one-shot that provisions JetStream as `admin`: the only container with that password.
    provision = services["provision"]
    assert provision.get("restart") == "no" and provision["command"][-1] == "services.common.streams"
    assert provision["environment"]["NATS_USER"] == "admin"
    assert provision["environment"]["NATS_PASSWORD"] == "${MOONBUS_PW_ADMIN}"
    assert provision["depends_on"]["nats"]["condition"] == "service_healthy"
    # nats-server gets the bcrypt hash of every password the config references, quoted.
    env = services["nats"]["environment"]
    for user in SERVICE_USERS:
        assert env[password_env_var(user)].startswith('"${' + hash_env_var(user) + ":?")
    assert {s for s, v in services.items() if v.get("profiles") == ["monitoring"]} == {"prometheus", "grafana"}


# ---- secrets: each container gets only its own --------------------------------------------

SECRET_NAME = re.compile(r"API_KEY|TOKEN|SECRET|PASSWORD|^MOONBUS_PW")


def llm_services() -> set[str]:
    """The services whose code asks models through services/common/llm."""
    uses = re.compile(r"from services\.common\.llm\b|from services\.common import llm\b|from \.\.common\.llm\b")
    found = set()
    for package in (REPO_ROOT / "services").iterdir():
        if package.name in ("common", "cli") or not (package / "__init__.py").exists():
            continue
        if any(uses.search(f.read_text()) for f in package.rglob("*.py")):
            found.add(package.name.replace("_", "-"))
    return found


def llm_key_names() -> set[str]:
    from services.common.llm.config import DEFAULT_KEY_ENV

    llm = tomllib.loads((REPO_ROOT / "moonbus.toml").read_text())["llm"]
    names = {ep.get("api_key_env", DEFAULT_KEY_ENV[ep["kind"]]) for ep in llm["endpoints"].values()}
    return {n for n in names if n}


def test_each_secret_reaches_only_the_containers_that_use_it() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    config = tomllib.loads((REPO_ROOT / "moonbus.toml").read_text())
    llm_keys = llm_key_names()
    assert llm_keys == {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DEEPSEEK_API_KEY"}
    agents = llm_services()
    assert agents == {"trading-agent", "risk-agent", "sentiment-agent", "swarm-agent"}
    birdeye = config["market_data"]["birdeye"]["api_key_env"]
    secrets = {name: {k for k in (svc.get("environment") or {}) if SECRET_NAME.search(k)}
               for name, svc in services.items()}

    # nats-server: the hashes, nothing else (no plaintext password, no API key).
    assert secrets["nats"] == {password_env_var(u) for u in SERVICE_USERS}
    assert all("PWHASH" in v for k, v in services["nats"]["environment"].items() if k in secrets["nats"])
    for name in SERVICES[1:]:
        env = services[name]["environment"]
        # Its own NATS password and nobody else's.
        assert env["NATS_PASSWORD"] == "${" + password_env_var(name) + "}", name
        expected = {"NATS_PASSWORD"}
        if name in agents:
            expected |= llm_keys
        if name == "market-data":
            expected.add(birdeye)
        if name == "gateway":
            expected.add("MOONBUS_GATEWAY_TOKEN")
            expected |= {k for k in secrets[name] if k.startswith("MOONBUS_GATEWAY_") and k.endswith("TOKEN")}
        assert secrets[name] == expected, f"{name}: {sorted(secrets[name] ^ expected)}"
        for key in expected - {"NATS_PASSWORD"}:
            assert env[key] == "${" + key + ":-}", f"{name}: {key} is passed through from the shell, empty by default"
    for name in ("prometheus", "grafana"):
        assert secrets[name] == set(), name
    assert secrets["provision"] == {"NATS_PASSWORD"}  # the admin's: see the test above
    # Every service's secrets, by name, listed above: nothing leaks through an anchor.
    assert set(SERVICES) | {"provision", "prometheus", "grafana", "backtest-worker"} == set(services)
    # The backtest workers scale (`--scale backtest-worker=N`), all as user `backtest`.
    worker = services["backtest-worker"]
    assert worker["environment"]["NATS_USER"] == "backtest" and "ports" not in worker
    assert worker["environment"]["NATS_PASSWORD"] == "${" + password_env_var("backtest") + "}"
    assert secrets["backtest-worker"] == {"NATS_PASSWORD"}


def test_monitoring_is_not_published() -> None:
    """nats-server's HTTP monitoring has no authentication: moonbus.conf binds it to the
    container's loopback, the health check runs inside, and no compose file publishes it."""
    conf = (REPO_ROOT / "proto/nats/moonbus.conf").read_text()
    assert re.search(r'^http: "127\.0\.0\.1:0"$', conf, re.M)
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert services["nats"]["healthcheck"]["test"][-1].startswith("http://127.0.0.1:8222/")
    operator = yaml.safe_load((REPO_ROOT / "docker/compose.operator.yml").read_text())["services"]
    for spec in (services, operator):
        for name, svc in spec.items():
            for port in svc.get("ports", []):
                assert not str(port).endswith(":8222"), f"{name} publishes the monitoring port: {port}"
                # Published only on the loopback by default.
                assert str(port).startswith(("${MOONBUS_", "127.0.0.1:")), port
                assert ":-127.0.0.1:" in str(port) or str(port).startswith("127.0.0.1:"), port


def test_prometheus_scrapes_every_metrics_endpoint() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["global"]["scrape_timeout"] <= config["global"]["scrape_interval"]  # both "Ns"
    targets: dict[str, str] = {}
    for job in config["scrape_configs"]:
        assert set(job) <= {"job_name", "static_configs", "dns_sd_configs"}, job
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                targets[job["job_name"]] = t
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            targets[job["job_name"]] = f"{sd['names'][0]}:{sd['port']}"
    config = tomllib.loads((REPO_ROOT / "moonbus.toml").read_text())
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    expected = {"gateway": str(config["gateway"]["port"])}
    for service in ["market-data", "risk", "execution"]:
        section = service.replace("-", "_")
        addr = compose[service]["environment"][f"MOONBUS__{section.upper()}__METRICS_ADDR"].strip('"')
        assert addr.split(":")[1] == config[section]["metrics_addr"].split(":")[1], service
        expected[service] = addr.split(":")[1]
    for agent in ["trading-agent", "risk-agent", "sentiment-agent", "swarm-agent"]:
        expected[agent] = str(config[agent.replace("-", "_")]["metrics_port"])
    assert {job: t.split(":")[1] for job, t in targets.items()} == expected
    assert all(t.split(":")[0] == job for job, t in targets.items())


def test_grafana_dashboard_is_provisioned_and_uses_real_metrics() -> None:
    grafana = MONITORING / "grafana"
    datasource = yaml.safe_load((grafana / "provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((grafana / "provisioning/dashboards/moonbus.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((grafana / "dashboards/moonbus.json").read_text())
    source = metric_names_defined()
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ["ticks", "decisions", "orders", "latency", "llm", "cost", "pnl", "rejects"]:
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            for name in re.findall(r"\b((?:md|moonbus|risk|exec)_[a-z_]+)", expr):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert f'"{base}"' in source or f"# TYPE {base} " in source, \
                    f"{panel['title']}: {base} is defined nowhere"


def test_compose_config_is_valid(tmp_path: Path) -> None:
    """The compose tool itself accepts the file, with and without the monitoring profile."""
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env_file = tmp_path / "compose.env"
    subprocess.run([sys.executable, str(REPO_ROOT / "docker/compose_env.py"), str(env_file), str(tmp_path / "moon")],
                   check=True, capture_output=True)
    assert env_file.stat().st_mode & 0o077 == 0
    for extra in ([], ["--profile", "monitoring"]):
        run = subprocess.run([*cmd, "--project-directory", str(REPO_ROOT), "--env-file", str(env_file),
                              "-f", str(COMPOSE_FILE), *extra, "config", "--services"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert set(SERVICES) | ({"prometheus", "grafana"} if extra else set()) <= set(run.stdout.split())

    # As compose hands them over: each service its plaintext password, nats-server a
    # bcrypt hash of it (`$$` is how `config` writes a literal `$`).
    run = subprocess.run([*cmd, "--project-directory", str(REPO_ROOT), "--env-file", str(env_file),
                          "-f", str(COMPOSE_FILE), "config"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rendered = yaml.safe_load(run.stdout)["services"]
    nats_env = {k: str(v).replace("$$", "$") for k, v in rendered["nats"]["environment"].items()}
    credentials = json.loads((tmp_path / "moon" / "credentials.json").read_text())
    for name in SERVICES[1:]:
        password = str(rendered[name]["environment"]["NATS_PASSWORD"])
        assert password == credentials[name]
        hashed = nats_env[password_env_var(name)]
        assert hashed.startswith('"$2b$') and hashed.endswith('"'), hashed
        assert bcrypt.checkpw(password.encode(), hashed.strip('"').encode()), name
    for user in SERVICE_USERS:
        assert credentials[user] not in str(rendered["nats"]), f"{user}'s plaintext password reaches nats"


# ---- the real thing ---------------------------------------------------------------------

class Stack:
    """One compose project: `docker compose -p <unique> -f ... --env-file ...`."""

    def __init__(self, tmp: Path) -> None:
        self.project = f"moonbus-test-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.env_file = tmp / "compose.env"
        override = tmp / "test-override.yml"
        override.write_text(TEST_OVERRIDE)
        self.cmd = [*compose_command(), "-p", self.project, "--project-directory", str(REPO_ROOT),
                    "--env-file", str(self.env_file), "-f", str(COMPOSE_FILE),
                    "-f", str(REPO_ROOT / "docker/compose.operator.yml"), "-f", str(override)]
        self.env = {**os.environ, "MOONBUS_NATS_PUBLISH": "127.0.0.1:", "MOONBUS_GATEWAY_PUBLISH": "127.0.0.1:"}

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        run = subprocess.run([*self.cmd, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and run.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
        return run.stdout

    def containers(self, service: str | None = None, all_: bool = False) -> list[str]:
        label = f"com.docker.compose.project={self.project}"
        filters = ["--filter", f"label={label}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        out = subprocess.run(["docker", "ps", "-q", *(["-a"] if all_ else []), *filters],
                             capture_output=True, text=True, check=True).stdout
        return out.split()

    def exit_code(self, container: str) -> int | None:
        out = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", container],
                             capture_output=True, text=True).stdout.split()
        return int(out[1]) if out[:1] == ["exited"] else None

    def health(self, container: str) -> str:
        out = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}} {{if .State.Health}}"
                              "{{.State.Health.Status}}{{end}}", container], capture_output=True, text=True)
        return out.stdout.strip()

    def wait_healthy(self, expected: int, timeout: float) -> None:
        """`expected` containers running and healthy, and the `provision` one-shot done (exit 0)."""
        deadline = time.monotonic() + timeout
        while True:
            provision = set(self.containers("provision", all_=True))
            states = {c: self.health(c) for c in self.containers(all_=True) if c not in provision}
            provisioned = [self.exit_code(c) for c in provision] == [0]
            if provisioned and len(states) == expected and all(s == "running healthy" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not all {expected} containers healthy: {states}\n{self.logs()}")
            time.sleep(1)

    def port(self, service: str, port: int) -> int:
        return int(self.compose("port", service, str(port)).strip().rsplit(":", 1)[1])

    def monitor(self, path: str) -> dict:
        """nats-server's monitoring endpoint, read inside its container (the only place it
        listens)."""
        out = self.compose("exec", "-T", "nats", "python3", "/app/healthcheck.py", "--print",
                           f"http://127.0.0.1:8222{path}", timeout=30)
        return json.loads(out)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "30", check=False, timeout=60)[-20000:]

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        found = {"containers": self.containers(all_=True)}
        for kind in ["volume", "network"]:
            out = subprocess.run(["docker", kind, "ls", "-q", "--filter", label], capture_output=True, text=True,
                                 check=True).stdout
            found[kind + "s"] = out.split()
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = docker_skip_reason()
    if reason:
        pytest.skip(reason)
    build = subprocess.run(["make", "-C", str(REPO_ROOT), "images"], capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, f"make images failed:\n{build.stdout[-5000:]}\n{build.stderr[-5000:]}"
    s = Stack(tmp_path_factory.mktemp("compose"))
    subprocess.run([sys.executable, str(REPO_ROOT / "docker/compose_env.py"), str(s.env_file), str(s.tmp / "moon")],
                   check=True, capture_output=True)
    try:
        s.compose("up", "-d", "--scale", f"trading-agent={REPLICAS}")
        s.wait_healthy(len(SERVICES) - 1 + REPLICAS + 1, timeout=180)  # + 1: the backtest worker
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)


def credentials(stack: Stack) -> dict[str, str]:
    values = dict(line.split("=", 1) for line in stack.env_file.read_text().splitlines()
                  if line and not line.startswith("#"))
    return {"user": "operator", "password": values[password_env_var("operator")].strip("'")}


async def agent_connections(stack: Stack) -> dict[int, int]:
    """cid -> messages it published, for every trading-agent connection nats-server has."""
    connz = await asyncio.to_thread(stack.monitor, "/connz?limit=1024")
    return {c["cid"]: c["in_msgs"] for c in connz["connections"] if c.get("name") == "trading-agent"}


def container_env(container: str) -> dict[str, str]:
    out = subprocess.run(["docker", "inspect", "-f", "{{json .Config.Env}}", container], capture_output=True,
                         text=True, check=True).stdout
    return dict(item.split("=", 1) for item in json.loads(out))


@pytest.mark.e2e
def test_compose_secrets_in_the_running_containers(stack: Stack) -> None:
    """nats-server runs on hashes (no plaintext warning); API keys set in the shell reach
    only their containers; the monitoring port is not published."""
    logs = stack.compose("logs", "--no-color", "nats", timeout=60)
    assert "Server is ready" in logs and "Plaintext passwords detected" not in logs
    plain = {line.split("=", 1)[1].strip("'") for line in stack.env_file.read_text().splitlines()
             if line.startswith("MOONBUS_PW_")}
    nats_env = container_env(stack.containers("nats")[0])
    assert not plain & set(nats_env.values()), "a plaintext password reached the nats container"
    assert not {k for k in nats_env if "API_KEY" in k or "TOKEN" in k}
    for service, unwanted in {"risk": "ANTHROPIC_API_KEY", "execution": "BIRDEYE_API_KEY",
                              "market-data": "OPENAI_API_KEY", "gateway": "DEEPSEEK_API_KEY"}.items():
        assert unwanted not in container_env(stack.containers(service)[0]), service
    assert "ANTHROPIC_API_KEY" in container_env(stack.containers("swarm-agent")[0])
    assert stack.monitor("/varz")["http_host"] == "127.0.0.1"
    assert not re.search(r":[1-9][0-9]*\s*$", stack.compose("port", "nats", "8222", check=False))


@pytest.mark.e2e
async def test_compose_holds_against_the_attack_suite(stack: Stack) -> None:
    """`moon audit`'s attacks, with every service's credential (the passwords of .env),
    against the running containers: every one refused, nothing changed."""
    from services.cli.audit import ATTACKS, SERVICES, Auditor, audit

    creds = json.loads((stack.tmp / "moon" / "credentials.json").read_text())
    results = await audit(Auditor(f"nats://127.0.0.1:{stack.port('nats', 4222)}", creds), safe=True)
    assert len(results) == len(ATTACKS) * len(SERVICES)  # every credential, `supervisor` included
    broken = [r for r in results if not r.held or "skipped" in r.detail]
    assert not broken, broken


async def wait_for(condition, timeout: float, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{stack.logs()}")
        await asyncio.sleep(0.5)


@pytest.mark.e2e
async def test_compose_system_trades_scales_and_loses_nothing(stack: Stack) -> None:
    nc = await nats.connect(f"nats://127.0.0.1:{stack.port('nats', 4222)}", **credentials(stack),
                            allow_reconnect=False)
    ticks: Counter[str] = Counter()
    bars: list[tuple[tuple[str, int], float]] = []
    signals: Counter[tuple[str, int]] = Counter()
    fills: list[ExecutionReport] = []

    async def on_tick(msg) -> None:
        ticks[msg.subject] += 1

    async def on_bar(msg) -> None:
        bar = Bar.model_validate_json(msg.data)
        bars.append(((bar.symbol, bar.end_ts), time.monotonic()))

    async def on_signal(msg) -> None:
        s = Signal.model_validate_json(msg.data)
        signals[(s.symbol, s.origin_ts)] += 1

    async def on_report(msg) -> None:
        report = ExecutionReport.model_validate_json(msg.data)
        if report.status.value in ("FILLED", "PARTIALLY_FILLED"):
            fills.append(report)

    await nc.subscribe("md.tick.>", cb=on_tick)
    await nc.subscribe("md.bar.1s.>", cb=on_bar)
    await nc.subscribe("agent.signal.trading.>", cb=on_signal)
    await nc.subscribe("exec.report.>", cb=on_report)
    try:
        # Ticks flow on every symbol, and the trading agents' orders are filled.
        async def ticking() -> bool:
            return len(ticks) >= 3 and min(ticks.values()) >= 5
        await wait_for(ticking, 60, "ticks on three symbols", stack)

        async def filled() -> bool:
            return bool(fills)
        await wait_for(filled, 120, "a fill", stack)

        # Three replicas in the queue group, each of them deciding.
        async def three() -> bool:
            return len(await agent_connections(stack)) == REPLICAS
        await wait_for(three, 30, f"{REPLICAS} trading-agent connections", stack)
        start = await agent_connections(stack)
        window_start = time.monotonic()
        await asyncio.sleep(8)
        grown = await agent_connections(stack)
        assert all(grown[cid] > start[cid] for cid in start), f"a replica decided nothing: {start} -> {grown}"

        # Stop one replica's container (SIGTERM: it drains); the others take over.
        victim = stack.containers("trading-agent")[0]
        subprocess.run(["docker", "stop", "-t", "10", victim], check=True, capture_output=True)

        async def two() -> bool:
            return len(await agent_connections(stack)) == REPLICAS - 1
        await wait_for(two, 30, "the stopped replica's connection to go", stack)
        await asyncio.sleep(8)
        window_end = time.monotonic() - 3  # the last bars' decisions may still be in flight

        # Every bar of the window, across the stop, decided exactly once; no decision twice.
        decided = [key for key, seen in bars if window_start <= seen <= window_end]
        assert len(decided) >= 3 * 12, f"too few bars in the window: {len(decided)}"

        async def all_decided() -> bool:
            return all(signals[k] >= 1 for k in decided)
        await wait_for(all_decided, 20, "a Signal for every bar of the window", stack)
        assert [k for k in decided if signals[k] != 1] == []
        assert [k for k, n in signals.items() if n > 1] == [], "a decision was made twice"
        assert stack.health(victim).startswith("exited"), "restart policy must leave a stopped container stopped"
    finally:
        await nc.close()

    # `down -v` removes every container, volume and network of the project.
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "10")
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
