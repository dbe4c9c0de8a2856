"""docker compose, for real and with zero set-up: a fresh clone (the tracked files only, no
`.env`, no `.moon`) and `docker compose up -d` once the images exist (`make images`, base
images built offline). The one-shot `credentials` makes every password, hash and token into
volumes and each container gets only its own. With three trading-agent replicas, as the
operator (nats-server's port published by docker/compose.operator.yml only here), the test
sees ticks flow and orders fill; every bar is decided exactly once across the replicas, also
while one replica's container is stopped; the backtest workers load `moonbus_sim`; `down -v`
leaves no container, volume or network of the project behind.

Docker through testcontainers (tests/dockerstack.py): skipped, with the reason, without an
engine. The compose file, the credentials script and the monitoring configs are checked
without Docker (Prometheus and Grafana images cannot be had here).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import nats
import pytest
import yaml

from services.contract.models import Bar, ExecutionReport, Signal
from services.contract.users import SERVICE_USERS
from tests.dockerstack import ComposeProject, compose_command, docker, fresh_clone, moonbus_images  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "docker"))
from credentials import CONTAINERS, TOKENS, password_var  # noqa: E402

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
CREDENTIALS = REPO_ROOT / "docker" / "credentials.py"
MONITORING = REPO_ROOT / "docker" / "monitoring"
SERVICES = ["nats", "market-data", "risk", "execution", "trading-agent", "risk-agent", "sentiment-agent",
            "swarm-agent", "backtest-worker", "gateway"]
ONE_SHOTS = ["credentials", "provision"]
# Off unless [notifier] enabled (MOONBUS_NOTIFIER_ENABLED): then it says so and exits 0.
NOTIFIER = "notifier"
# The secrets a notifier channel's url_env / token_env may name in compose: this container only.
NOTIFIER_SECRETS = {"MOONBUS_WEBHOOK_URL", "DISCORD_WEBHOOK_URL", "SLACK_WEBHOOK_URL", "TELEGRAM_BOT_TOKEN"}
REPLICAS = 3
# Decide from 3 bars (not 20) so that orders, and so fills, come within seconds.
TEST_OVERRIDE = """
services:
  trading-agent:
    environment:
      MOONBUS__TRADING_AGENT__STRATEGY: "momentum"
      MOONBUS__TRADING_AGENT__MOMENTUM_LOOKBACK: "3"
"""
SECRET_NAME = re.compile(r"API_KEY|TOKEN|SECRET|PASSWORD|PRIVATE_KEY|KEYPAIR|WEBHOOK|^MOONBUS_PW")
# The real venues' keys (README "Real venues": the adapters' default variables): execution only.
VENUE_KEYS = {"BINANCE_API_KEY", "BINANCE_API_SECRET", "BINANCE_PRIVATE_KEY", "ASTER_API_KEY", "ASTER_API_SECRET",
              "HYPERLIQUID_AGENT_PRIVATE_KEY", "MOONBUS_JUPITER_KEYPAIR", "JUPITER_API_KEY"}


def compose_spec() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def secret_volumes(svc: dict) -> list[str]:
    return [v for v in svc.get("volumes", []) if v.startswith(("secrets-", "credentials:"))]


# ---- the compose file and the credentials (no Docker needed) ----------------------------

def test_compose_file_defines_every_service_and_no_fixed_agent_names() -> None:
    services = compose_spec()
    assert set(SERVICES) | set(ONE_SHOTS) | {NOTIFIER, "prometheus", "grafana"} == set(services)
    for name in SERVICES:
        svc = services[name]
        assert "container_name" not in svc, name
        assert svc.get("restart") == "unless-stopped", name
        assert "healthcheck" in svc, name
        if name != "nats":
            assert svc["depends_on"]["nats"]["condition"] == "service_healthy", name
            assert svc["environment"]["NATS_USER"] == CONTAINERS[name]
            assert svc["environment"]["NATS_URL"] == "nats://nats:4222"
        if name.endswith(("-agent", "-worker")):
            assert "ports" not in svc, f"{name} must scale: no fixed host port"
        if name not in ("nats", "market-data"):  # every user of JetStream waits for the provisioning
            assert svc["depends_on"]["provision"]["condition"] == "service_completed_successfully", name
    # Credentials first: nats-server starts on the hashes the one-shot made.
    assert services["nats"]["depends_on"]["credentials"]["condition"] == "service_completed_successfully"
    # The one-shot that provisions JetStream as `admin`: the only container with that password.
    provision = services["provision"]
    assert provision.get("restart") == "no" and provision["command"][-1] == "services.common.streams"
    assert provision["environment"]["NATS_USER"] == "admin" == CONTAINERS["provision"]
    assert provision["depends_on"]["nats"]["condition"] == "service_healthy"
    assert {s for s, v in services.items() if v.get("profiles") == ["monitoring"]} == {"prometheus", "grafana"}


def test_the_notifier_is_off_unless_enabled_and_runs_as_its_own_user() -> None:
    """Like the agents (its own NATS user and credentials, healthy = connected), but off by
    default: [notifier] enabled comes from MOONBUS_NOTIFIER_ENABLED (unset: false), and a
    notifier that is off exits 0, which `on-failure` does not restart (`unless-stopped` would,
    for ever). No port, no replicas: one notifier, or every notification goes out twice."""
    svc = compose_spec()[NOTIFIER]
    assert svc["command"] == ["python3", "-m", "services.notifier"]
    assert svc["restart"] == "on-failure" and "container_name" not in svc and "ports" not in svc
    env = svc["environment"]
    assert (env["NATS_USER"], CONTAINERS[NOTIFIER], env["NATS_URL"]) == ("notifier", "notifier", "nats://nats:4222")
    assert env["MOONBUS__NOTIFIER__ENABLED"] == "${MOONBUS_NOTIFIER_ENABLED:-false}"
    assert svc["healthcheck"] == compose_spec()["trading-agent"]["healthcheck"]
    assert svc["depends_on"]["nats"]["condition"] == "service_healthy"
    assert "deploy" not in svc and "scale" not in svc
    # What the environment says is what the notifier reads: off by default, on with "true".
    from services.common.config import load, section
    from services.notifier.config import NotifierConfig

    def enabled(value: str) -> bool:
        return section(load(REPO_ROOT / "moonbus.toml", {"MOONBUS__NOTIFIER__ENABLED": value}), "notifier",
                       NotifierConfig).enabled

    assert (enabled("false"), enabled("true")) == (False, True)
    # The variables it passes are the ones the documented channels name (moonbus.toml).
    documented = set(re.findall(r'(?:url_env|token_env) = "([A-Z_]+)"', (REPO_ROOT / "moonbus.toml").read_text()))
    assert documented and documented <= NOTIFIER_SECRETS


def test_each_container_mounts_only_its_own_credentials() -> None:
    """One volume per container, read-only at /run/moonbus; only the `credentials`
    one-shot (no network, run on every `up`) mounts them all, and the master volume."""
    services = compose_spec()
    for name in [*SERVICES, "provision", NOTIFIER]:
        assert secret_volumes(services[name]) == [f"secrets-{name}:/run/moonbus:ro"], name
    init = services["credentials"]
    assert init["restart"] == "no" and init["network_mode"] == "none"
    assert init["command"] == ["python3", "/app/credentials.py", "/moonbus"]
    assert secret_volumes(init) == ["credentials:/moonbus", "secrets-nats:/moonbus/nats",
                                    *(f"secrets-{c}:/moonbus/{c}" for c in CONTAINERS)]
    assert set(CONTAINERS) <= set(services)
    volumes = yaml.safe_load(COMPOSE_FILE.read_text())["volumes"]
    assert {f"secrets-{c}" for c in ["nats", *CONTAINERS]} | {"credentials"} <= set(volumes)


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
    services = compose_spec()
    config = tomllib.loads((REPO_ROOT / "moonbus.toml").read_text())
    llm_keys = llm_key_names()
    assert llm_keys == {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DEEPSEEK_API_KEY"}
    # The containers that run them (package backtest: the backtest workers).
    agents = {"backtest-worker" if s == "backtest" else s for s in llm_services()}
    assert agents == {"trading-agent", "risk-agent", "sentiment-agent", "swarm-agent", "backtest-worker"}
    birdeye = config["market_data"]["birdeye"]["api_key_env"]
    secrets = {name: {k for k in (svc.get("environment") or {}) if SECRET_NAME.search(k)}
               for name, svc in services.items()}
    # No password, hash or token in any environment but the generator's (the overrides).
    assert secrets["credentials"] == {password_var(u) for u in SERVICE_USERS} | set(TOKENS)
    for name in secrets["credentials"]:
        assert services["credentials"]["environment"][name] == "${" + name + ":-}", name
    for name in [*SERVICES, "provision", NOTIFIER, "prometheus", "grafana"]:
        expected = set()
        if name == NOTIFIER:
            expected |= NOTIFIER_SECRETS
        if name in agents:
            expected |= llm_keys
        if name == "market-data":
            expected.add(birdeye)
        if name == "execution":
            adapters = "".join(p.read_text() for p in (REPO_ROOT / "rust-execution/src/live").glob("*.rs"))
            for key in VENUE_KEYS:  # Binance and Aster build theirs: "{env_prefix}_API_KEY"
                prefix, _, rest = key.partition("_")
                built = prefix in ("BINANCE", "ASTER") and f'"{{env_prefix}}_{rest}"' in adapters
                assert f'"{key}"' in adapters or built, f"{key}: not a variable the adapters read"
            expected |= VENUE_KEYS
        assert secrets[name] == expected, f"{name}: {sorted(secrets[name] ^ expected)}"
        for key in expected:
            assert services[name]["environment"][key] == "${" + key + ":-}", f"{name}: {key} passed from the shell"


def test_credentials_script_makes_keeps_and_takes_overrides(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOONBUS_PW_", "MOONBUS_GATEWAY_"))}
    env["MOONBUS_BCRYPT_COST"] = "4"
    root = tmp_path / "c"

    def run(*args: str, **extra: str) -> str:
        return subprocess.run([sys.executable, str(CREDENTIALS), str(root), *args], env={**env, **extra},
                              check=True, capture_output=True, text=True).stdout

    run()
    passwords = json.loads((root / "credentials.json").read_text())
    assert set(passwords) == set(SERVICE_USERS) and len(set(passwords.values())) == len(SERVICE_USERS)
    assert (root / "credentials.json").stat().st_mode & 0o077 == 0 and root.stat().st_mode & 0o077 == 0
    # Each container's folder: its own password (the gateway also its tokens), 0400.
    tokens = json.loads((root / "tokens.json").read_text())
    for container, user in CONTAINERS.items():
        files = list((root / container).iterdir())
        expected = {"NATS_PASSWORD": passwords[user], **(tokens if container == "gateway" else {})}
        assert {f.name: f.read_text() for f in files} == expected, container
        assert all(f.stat().st_mode & 0o777 == 0o400 for f in files), container
    # nats-server's folder: a quoted bcrypt hash of every password, no password.
    hashes = {f.name: f.read_text() for f in (root / "nats").iterdir()}
    assert set(hashes) == {password_var(u) for u in SERVICE_USERS}
    for user in SERVICE_USERS:
        hashed = hashes[password_var(user)]
        assert hashed.startswith('"$2b$04$') and bcrypt.checkpw(passwords[user].encode(), hashed.strip('"').encode())

    # A second start keeps everything (the hashes too); an override wins and is rehashed.
    run()
    assert json.loads((root / "credentials.json").read_text()) == passwords
    assert {f.name: f.read_text() for f in (root / "nats").iterdir()} == hashes
    run(MOONBUS_PW_RISK="from-my-env", MOONBUS_GATEWAY_TOKEN="write-token")
    assert (root / "risk" / "NATS_PASSWORD").read_text() == "from-my-env"
    assert bcrypt.checkpw(b"from-my-env", (root / "nats" / "MOONBUS_PW_RISK").read_text().strip('"').encode())
    assert (root / "nats" / "MOONBUS_PW_EXECUTION").read_text() == hashes["MOONBUS_PW_EXECUTION"]
    assert (root / "gateway" / "MOONBUS_GATEWAY_TOKEN").read_text() == "write-token"
    route = (root / "nats-route" / "ROUTE_PASSWORD").read_text()
    assert route.startswith("r") and route not in passwords.values()
    assert run("--show") == f"NATS_USER=operator\nNATS_PASSWORD={passwords['operator']}\n"
    bad = subprocess.run([sys.executable, str(CREDENTIALS), str(root)], env={**env, "MOONBUS_PW_RISK": 'a"b'},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "MOONBUS_PW_RISK" in bad.stderr


# ---- the monitoring profile's configs (no Docker needed) --------------------------------

def metric_names_defined() -> str:
    """The source of every service: a metric the dashboard uses must be defined in it."""
    files = [*REPO_ROOT.glob("services/**/*.py"), *REPO_ROOT.glob("rust-*/src/**/*.rs")]
    return "\n".join(p.read_text() for p in files)


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
    for agent in ["trading-agent", "risk-agent", "sentiment-agent", "swarm-agent", "notifier"]:
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


def test_compose_config_is_valid_without_any_set_up(tmp_path: Path) -> None:
    """The compose tool accepts a fresh clone's file with no `.env` at all, with and without
    the monitoring profile; `make compose-env`'s `.env` reaches the `credentials` one-shot only."""
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    bare = {k: v for k, v in os.environ.items() if not k.startswith("MOONBUS_")}
    clean = fresh_clone(tmp_path / "clone")
    for extra in ([], ["--profile", "monitoring"]):
        run = subprocess.run([*cmd, *extra, "config", "--services"], cwd=clean, env=bare, capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stderr
        monitoring = {"prometheus", "grafana"} if extra else set()
        assert set(SERVICES) | set(ONE_SHOTS) | {NOTIFIER} | monitoring <= set(run.stdout.split())

    subprocess.run([sys.executable, str(REPO_ROOT / "docker/compose_env.py"), str(clean / ".env"),
                    str(tmp_path / "moon")], check=True, capture_output=True)
    assert (clean / ".env").stat().st_mode & 0o077 == 0
    run = subprocess.run([*cmd, "config"], cwd=clean, env=bare, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rendered = yaml.safe_load(run.stdout)["services"]
    credentials = json.loads((tmp_path / "moon" / "credentials.json").read_text())
    for user in SERVICE_USERS:
        assert str(rendered["credentials"]["environment"][password_var(user)]) == credentials[user], user
    for name, svc in rendered.items():
        if name != "credentials":
            values = {str(v) for v in (svc.get("environment") or {}).values()}
            assert not set(credentials.values()) & values, name


# ---- the images -------------------------------------------------------------------------

def test_images_export_their_own_credentials_and_carry_moonbus_sim(moonbus_images, tmp_path: Path) -> None:
    """The entrypoint of both images exports each file of /run/moonbus (the environment
    wins); the Python image has `moonbus_sim` for the backtest workers. testcontainers'
    DockerContainer, as a cluster or failover test would start a node."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    from tests.dockerstack import PYTHON_IMAGE, RUST_IMAGE

    own = tmp_path / "own"
    own.mkdir()
    (own / "NATS_PASSWORD").write_text("from-the-file")
    (own / "NATS_USER").write_text("ignored: the environment wins")
    (own / "not-a-variable").write_text("x")
    own.chmod(0o755)
    for f in own.iterdir():
        f.chmod(0o444)  # the images' user is not this one
    script = 'echo "user=$NATS_USER password=$NATS_PASSWORD"'
    # Kept running after: the wait reads the logs of a live container.
    for image, command in [(PYTHON_IMAGE, ["sh", "-c", script + "; python3 -c 'import moonbus_sim; print(\"sim ok\")'; sleep 60"]),
                           (RUST_IMAGE, ["sh", "-c", script + "; echo sim ok; sleep 60"])]:
        container = (DockerContainer(image).with_command(command).with_env("NATS_USER", "risk")
                     .with_volume_mapping(str(own), "/run/moonbus", "ro")
                     .waiting_for(LogMessageWaitStrategy("sim ok").with_startup_timeout(60)))
        with container:
            out, err = container.get_logs()
        assert b"user=risk password=from-the-file" in out, (image, out, err)
        assert b"not-a-variable" in err and b"ignoring" in err, (image, err)


# ---- the real thing ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(moonbus_images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeProject]:
    clone = fresh_clone(tmp_path_factory.mktemp("clone"))
    override = clone / "test-override.yml"
    override.write_text(TEST_OVERRIDE)
    # Nothing from this shell's MOONBUS_* (a password, a token): zero set-up. Only the
    # published ports move to free ones, beside whatever else runs on this machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOONBUS_")}
    env.update(MOONBUS_NATS_PUBLISH="127.0.0.1:", MOONBUS_GATEWAY_PUBLISH="127.0.0.1:")
    s = ComposeProject(clone, [clone / "docker-compose.yml", clone / "docker/compose.operator.yml", override], env)
    try:
        s.compose("up", "-d", "--scale", f"trading-agent={REPLICAS}")
        # the notifier is off (no MOONBUS_NOTIFIER_ENABLED): it must exit 0, like a one-shot
        s.wait_healthy(len(SERVICES) - 1 + REPLICAS, timeout=180, one_shots=(*ONE_SHOTS, NOTIFIER))
        yield s
    finally:
        s.down()


def stored_credentials(stack: ComposeProject) -> dict[str, str]:
    """Every password, as the operator reads them: from the `credentials` volume."""
    return json.loads(stack.compose("run", "--rm", "-T", "credentials", "cat", "/moonbus/credentials.json", timeout=60))


def operator(stack: ComposeProject) -> dict[str, str]:
    """The operator's login, as the README tells to read it."""
    shown = stack.compose("run", "--rm", "-T", "credentials", "python3", "/app/credentials.py", "/moonbus", "--show",
                          timeout=60)
    values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    return {"user": values["NATS_USER"], "password": values["NATS_PASSWORD"]}


def monitor(stack: ComposeProject, path: str) -> dict:
    """nats-server's monitoring endpoint, read inside its container (the only place it listens)."""
    code, out = stack.containers("nats")[0].exec_run(
        ["python3", "/app/healthcheck.py", "--print", f"http://127.0.0.1:8222{path}"])
    assert code == 0, out
    return json.loads(out)


def files_in(container, folder: str = "/run/moonbus") -> dict[str, str]:
    """name -> content of every file the container can read there."""
    script = f'for f in {folder}/*; do printf "%s\\t%s\\n" "${{f##*/}}" "$(cat "$f")"; done'
    code, out = container.exec_run(["sh", "-c", script])
    assert code == 0, out
    return dict(line.split("\t", 1) for line in out.decode().splitlines())


def env_of(container) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])


async def agent_connections(stack: ComposeProject) -> dict[int, int]:
    """cid -> messages it published, for every trading-agent connection nats-server has."""
    connz = await asyncio.to_thread(monitor, stack, "/connz?limit=1024")
    return {c["cid"]: c["in_msgs"] for c in connz["connections"] if c.get("name") == "trading-agent"}


@pytest.mark.e2e
def test_compose_credentials_each_container_its_own(stack: ComposeProject) -> None:
    """Made on the first start; each running container holds only its own (nats-server only
    the hashes: no plaintext warning), none in an environment; API keys reach only their
    containers; the monitoring port is not published; the backtest workers have moonbus_sim."""
    passwords = stored_credentials(stack)
    assert set(passwords) == set(SERVICE_USERS)
    logs = stack.compose("logs", "--no-color", "nats", timeout=60)
    assert "Server is ready" in logs and "Plaintext passwords detected" not in logs
    notifier = stack.compose("logs", "--no-color", NOTIFIER, timeout=60)
    assert "notifier off ([notifier] enabled = false)" in notifier, notifier
    for name in SERVICES:
        for container in stack.containers(name):
            own = files_in(container)
            if name == "nats":
                assert set(own) == {password_var(u) for u in SERVICE_USERS}
                assert not set(passwords.values()) & set(own.values()), "a plaintext password reached nats"
            else:
                assert set(own) == {"NATS_PASSWORD", *(TOKENS if name == "gateway" else [])}, name
                assert own["NATS_PASSWORD"] == passwords[CONTAINERS[name]], name
            assert not set(passwords.values()) & set(env_of(container).values()), f"{name}: password in env"
    assert "ANTHROPIC_API_KEY" in env_of(stack.containers("swarm-agent")[0])
    for service, unwanted in {"risk": "ANTHROPIC_API_KEY", "execution": "BIRDEYE_API_KEY",
                              "market-data": "OPENAI_API_KEY", "gateway": "DEEPSEEK_API_KEY"}.items():
        assert unwanted not in env_of(stack.containers(service)[0]), service
    assert monitor(stack, "/varz")["http_host"] == "127.0.0.1"
    assert not re.search(r":[1-9][0-9]*\s*$", stack.compose("port", "nats", "8222", check=False))
    worker = stack.containers("backtest-worker")[0]
    code, out = worker.exec_run(["python3", "-c", "import moonbus_sim; print(moonbus_sim.__file__)"])
    assert code == 0 and out.strip().endswith(b"moonbus_sim.abi3.so"), out


@pytest.mark.e2e
async def test_compose_holds_against_the_attack_suite(stack: ComposeProject) -> None:
    """`moon audit`'s attacks, with every service's credential (from the `credentials`
    volume), against the running containers: every one refused, nothing changed."""
    from services.cli.audit import ATTACKS, Auditor, audit
    from services.cli.audit import SERVICES as AUDITED

    creds = stored_credentials(stack)
    results = await audit(Auditor(f"nats://127.0.0.1:{stack.port('nats', 4222)}", creds), safe=True)
    assert len(results) == len(ATTACKS) * len(AUDITED)  # every credential, `supervisor` included
    broken = [r for r in results if not r.held or "skipped" in r.detail]
    assert not broken, broken


async def wait_for(condition, timeout: float, what: str, stack: ComposeProject) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{stack.logs()}")
        await asyncio.sleep(0.5)


@pytest.mark.e2e
async def test_compose_system_trades_scales_and_loses_nothing(stack: ComposeProject) -> None:
    nc = await nats.connect(f"nats://127.0.0.1:{stack.port('nats', 4222)}", **operator(stack),
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
        victim.stop(timeout=10)

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
    stack.down()
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
