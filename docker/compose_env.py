"""Write `.env` for docker compose: the NATS password of every service user, the same
ones `make run` uses (.moon/credentials.json, generated once, mode 0600). Compose reads
`.env` from the project directory; it is never committed.

Usage: python3 docker/compose_env.py [ENV_FILE] [MOON_DIR]
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.common.natsserver import REPO_ROOT, load_or_create_credentials, password_env_var  # noqa: E402


def main() -> None:
    env_file = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / ".env"
    moon_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO_ROOT / ".moon"
    credentials = load_or_create_credentials(moon_dir)
    lines = ["# docker compose: NATS passwords (from .moon/credentials.json). Generated; never commit."]
    lines += [f"{password_env_var(user)}={password}" for user, password in sorted(credentials.items())]
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {env_file}")


if __name__ == "__main__":
    main()
