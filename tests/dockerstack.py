"""Docker-backed tests on testcontainers: the engine's client (the test is skipped, with the
reason, where there is none), the moonbus images, a private network, and a compose project
whose containers, volumes and networks are read and stopped through the client.

Fixtures, for any test module (`from tests.dockerstack import docker, moonbus_images,
docker_network  # noqa: F401`):

- `docker`: testcontainers' DockerClient (`.client` is the docker SDK's); skips without an engine.
- `moonbus_images`: `make images` once per session (offline base images, the moonbus images).
- `docker_network`: a testcontainers Network, removed after the test; containers join it with
  `DockerContainer(PYTHON_IMAGE).with_network(net).with_network_aliases("nats-1")`.

testcontainers' DockerCompose drives Compose v2 only (`docker compose ... up --wait`, `ps
--format json`), so ComposeProject runs whichever compose CLI is installed (v2, or the
Debian `docker-compose` v1 here) for up/down and reads everything else from the engine.
Ryuk (testcontainers' reaper) is off: its image cannot be pulled without a registry; the
fixtures remove what they made themselves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
from testcontainers.core.docker_client import DockerClient  # noqa: E402
from testcontainers.core.network import Network  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON_IMAGE = "moonbus/python:latest"
RUST_IMAGE = "moonbus/rust:latest"
_built: list[bool] = []  # `make images` done in this session


@cache
def compose_command() -> tuple[str, ...] | None:
    for cmd in (("docker", "compose"), ("docker-compose",)):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            return cmd
    return None


@cache
def docker_skip_reason() -> str | None:
    """Why Docker-backed tests cannot run here, or None."""
    try:
        DockerClient().client.ping()
    except Exception as e:  # no socket, no permission, engine down: all mean "skip"
        return f"no Docker engine: {type(e).__name__}: {str(e)[:200]}"
    return None


def require_docker() -> DockerClient:
    reason = docker_skip_reason()
    if reason:
        pytest.skip(reason)
    return DockerClient()


@pytest.fixture(scope="session")
def docker() -> DockerClient:
    return require_docker()


@pytest.fixture(scope="session")
def moonbus_images(docker: DockerClient) -> None:
    """`make images`: a no-op when the images are up to date (BuildKit's cache), ~10 min cold.
    MOONBUS_TEST_IMAGES=keep uses the images there are (built from another checkout, say)."""
    if os.environ.get("MOONBUS_TEST_IMAGES") == "keep":
        missing = [i for i in (PYTHON_IMAGE, RUST_IMAGE) if not docker.client.images.list(name=i)]
        assert not missing, f"MOONBUS_TEST_IMAGES=keep, but there is no {missing}: run make images"
        return
    if _built:  # once per session, whichever module imported the fixture first
        return
    build = subprocess.run(["make", "-C", str(REPO_ROOT), "images"], capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, f"make images failed:\n{build.stdout[-5000:]}\n{build.stderr[-5000:]}"
    _built.append(True)


@pytest.fixture
def docker_network(docker: DockerClient) -> Iterator[Network]:
    with Network() as network:
        yield network


def fresh_clone(dest: Path) -> Path:
    """What `git clone` of this repository gives, but with the working tree's version of each
    tracked file (so the test checks what is about to be committed): nothing untracked or
    ignored (.env, .moon, .venv, target) comes along."""
    files = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        src = REPO_ROOT / name
        if name and (src.is_file() or src.is_symlink()):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name, follow_symlinks=False)
    return dest


class ComposeProject:
    """One compose project under a unique name, in `directory`, from `files`."""

    def __init__(self, directory: Path, files: list[Path], env: dict[str, str] | None = None) -> None:
        if compose_command() is None:
            pytest.skip("neither `docker compose` nor `docker-compose` is installed")
        self.project = f"moonbus-test-{uuid.uuid4().hex[:8]}"
        self.directory = directory
        self.cmd = [*compose_command(), "-p", self.project, "--project-directory", str(directory)]
        for f in files:
            self.cmd += ["-f", str(f)]
        self.env = env if env is not None else dict(os.environ)
        self.client = DockerClient().client

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        run = subprocess.run([*self.cmd, *args], env=self.env, cwd=self.directory, capture_output=True, text=True,
                             timeout=timeout)
        if check and run.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
        return run.stdout

    def containers(self, service: str | None = None, all_: bool = False) -> list:
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return self.client.containers.list(all=all_, filters={"label": labels})

    @staticmethod
    def service(container) -> str:
        return container.labels["com.docker.compose.service"]

    @staticmethod
    def health(container) -> str:
        container.reload()
        state = container.attrs["State"]
        return f"{state['Status']} {state.get('Health', {}).get('Status', '')}".strip()

    def wait_healthy(self, expected: int, timeout: float, one_shots: tuple[str, ...] = ("credentials", "provision")) -> None:
        """`expected` long-running containers running and healthy, every one-shot exited 0."""
        deadline = time.monotonic() + timeout
        while True:
            everything = self.containers(all_=True)
            shots = [c for c in everything if self.service(c) in one_shots]
            states = {c.name: self.health(c) for c in everything if c not in shots}
            # (a one-shot with a health check, like a notifier that is off, exits "exited unhealthy")
            done = len(shots) == len(one_shots) and all(
                self.health(c).split()[0] == "exited" and c.attrs["State"]["ExitCode"] == 0 for c in shots)
            if done and len(states) == expected and all(s == "running healthy" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not all {expected} containers healthy: {states}\n{self.logs()}")
            time.sleep(1)

    def port(self, service: str, port: int) -> int:
        return int(self.compose("port", service, str(port)).strip().rsplit(":", 1)[1])

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "30", check=False, timeout=60)[-20000:]

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)

    def leftovers(self) -> dict[str, list[str]]:
        label = {"label": f"com.docker.compose.project={self.project}"}
        return {"containers": [c.name for c in self.containers(all_=True)],
                "volumes": [v.name for v in self.client.volumes.list(filters=label)],
                "networks": [n.name for n in self.client.networks.list(filters=label)]}
