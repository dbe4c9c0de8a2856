"""The credentials of docker compose and Kubernetes, made once: every NATS user's password,
nats-server's bcrypt hashes of them, the gateway's tokens, and for each container a folder
holding only its own, one file per environment variable.

    python3 credentials.py DIR                # make what is missing in DIR, keep the rest
    python3 credentials.py DIR --show [USER]  # NATS_USER / NATS_PASSWORD of USER (operator)

docker compose runs it as the one-shot `credentials` service on every `up`, DIR being the
volume `credentials`, with each container's own volume mounted at DIR/<container>; the
container mounts that volume, read-only, at /run/moonbus, where docker/entrypoint.sh
exports each file as a variable. For Kubernetes, run it once on your machine with DIR =
k8s/base/secrets: kustomize's secretGenerator makes a Secret per container from it.

    DIR/credentials.json      user -> password (0600), like make run's .moon/credentials.json
    DIR/tokens.json           the gateway's write and read tokens (0600)
    DIR/nats/MOONBUS_PW_<USER>  the bcrypt hash of USER's password, quoted (moonbus.conf)
    DIR/<container>/NATS_PASSWORD  its own password; gateway/ also MOONBUS_GATEWAY_TOKEN
                              and MOONBUS_GATEWAY_READ_TOKEN
    DIR/nats-route/ROUTE_PASSWORD  what the NATS nodes of a Kubernetes cluster route with

A value in the environment wins and is kept: MOONBUS_PW_<USER>, MOONBUS_GATEWAY_TOKEN,
MOONBUS_GATEWAY_READ_TOKEN, MOONBUS_ROUTE_PASSWORD (from your shell or `.env`, e.g.
`make compose-env`'s, which holds make run's passwords). MOONBUS_BCRYPT_COST sets the
bcrypt cost (default 11).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the image: /app, services/ beside it
try:
    from services.contract.users import SERVICE_USERS
except ImportError:  # a checkout: services/ is beside docker/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from services.contract.users import SERVICE_USERS

# Each container (a compose service, a Kubernetes workload) and its NATS user.
CONTAINERS = {
    "provision": "admin",
    "market-data": "market-data",
    "risk": "risk",
    "execution": "execution",
    "trading-agent": "trading-agent",
    "risk-agent": "risk-agent",
    "sentiment-agent": "sentiment-agent",
    "swarm-agent": "swarm-agent",
    "backtest-worker": "backtest",
    "gateway": "gateway",
    "notifier": "notifier",
}
TOKENS = ["MOONBUS_GATEWAY_TOKEN", "MOONBUS_GATEWAY_READ_TOKEN"]
IMAGE_UID = 10001  # the images' user `moonbus`: owns the files when this runs as root


def password_var(user: str) -> str:
    """`market-data` -> `MOONBUS_PW_MARKET_DATA`, the variable moonbus.conf reads."""
    return "MOONBUS_PW_" + user.upper().replace("-", "_")


def write(path: Path, text: str, mode: int = 0o400) -> None:
    """Whole or not at all, never readable by others, the images' user's when root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if os.geteuid() == 0:
        os.chown(tmp, IMAGE_UID, IMAGE_UID)
    tmp.replace(path)


def checked(name: str, value: str) -> str:
    # nats-server reads a password as a quoted config string: no quote, backslash, control.
    if not value.isprintable() or any(c in value for c in '"\\'):
        raise SystemExit(f"{name}: no quotes, backslashes or control characters allowed")
    return value


def load(path: Path, names: list[str], make) -> dict[str, str]:
    """name -> value from the JSON file `path`, the environment's value first, made when
    missing; written back when anything changed."""
    stored = json.loads(path.read_text()) if path.exists() else {}
    values = {}
    for name, env in names:
        values[name] = checked(env, os.environ.get(env) or stored.get(name) or make())
    if values != stored:
        write(path, json.dumps(values, indent=2, sort_keys=True) + "\n", 0o600)
    return values


def hashes(passwords: dict[str, str], folder: Path) -> None:
    """folder/MOONBUS_PW_<USER> = the quoted bcrypt hash; an existing one is kept while it
    still matches the password (a check costs what a hash does: done in parallel)."""
    cost = int(os.environ.get("MOONBUS_BCRYPT_COST") or 11)

    def one(user: str) -> None:
        path = folder / password_var(user)
        password = passwords[user].encode()
        if path.exists() and bcrypt.checkpw(password, path.read_text().strip('"').encode()):
            return
        write(path, '"' + bcrypt.hashpw(password, bcrypt.gensalt(cost)).decode() + '"')

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, passwords))


def make_all(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    passwords = load(root / "credentials.json", [(u, password_var(u)) for u in SERVICE_USERS],
                     lambda: "m" + secrets.token_urlsafe(24))  # a leading letter: always a string
    tokens = load(root / "tokens.json", [(t, t) for t in TOKENS], lambda: secrets.token_urlsafe(32))
    hashes(passwords, root / "nats")
    # The password NATS nodes route to each other with (Kubernetes: k8s/base/nats.yaml); no
    # compose container mounts it (docker-compose.cluster.yml makes its own).
    route = load(root / "route.json", [("ROUTE_PASSWORD", "MOONBUS_ROUTE_PASSWORD")],
                 lambda: "r" + secrets.token_urlsafe(24))
    own = {"nats-route": route}
    for container, user in CONTAINERS.items():
        own[container] = {"NATS_PASSWORD": passwords[user], **(tokens if container == "gateway" else {})}
    for folder, values in own.items():
        for name, value in values.items():
            path = root / folder / name
            if not path.exists() or path.read_text() != value:
                write(path, value)
    print(f"credentials ready in {root}: " + ", ".join(["nats", *CONTAINERS]))


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        raise SystemExit(__doc__)
    root = Path(args[0])
    if args[1:2] == ["--show"]:
        user = args[2] if len(args) > 2 else "operator"
        passwords = json.loads((root / "credentials.json").read_text())
        if user not in passwords:
            raise SystemExit(f"no NATS user {user!r}: one of {', '.join(passwords)}")
        print(f"NATS_USER={user}\nNATS_PASSWORD={passwords[user]}")
        return
    make_all(root)


if __name__ == "__main__":
    main()
