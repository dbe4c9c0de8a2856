"""Container health check: `python3 healthcheck.py URL` exits 0 when URL answers 2xx
within 2 s (nats-server's /healthz, the gateway's /health), 1 otherwise."""

import sys
import urllib.error
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
        sys.exit(0 if 200 <= response.status < 300 else 1)
except (OSError, urllib.error.URLError) as e:
    print(f"unhealthy: {sys.argv[1]}: {e}", file=sys.stderr)
    sys.exit(1)
