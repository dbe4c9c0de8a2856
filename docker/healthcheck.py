"""Container health check: `python3 healthcheck.py URL` exits 0 when URL answers 2xx
within 2 s (nats-server's /healthz, the gateway's /health), 1 otherwise.

`python3 healthcheck.py --print URL` also writes the body to stdout: how to read
nats-server's monitoring endpoints, which listen on 127.0.0.1 inside its container only
(`docker compose exec nats python3 /app/healthcheck.py --print http://127.0.0.1:8222/varz`)."""

import sys
import urllib.error
import urllib.request

args = sys.argv[1:]
show = args[:1] == ["--print"]
url = args[-1]
try:
    with urllib.request.urlopen(url, timeout=2) as response:
        if show:
            sys.stdout.buffer.write(response.read())
        sys.exit(0 if 200 <= response.status < 300 else 1)
except (OSError, urllib.error.URLError) as e:
    print(f"unhealthy: {url}: {e}", file=sys.stderr)
    sys.exit(1)
