#!/usr/bin/env bash
# Print the path of a docker CLI that builds with BuildKit (RUN --mount, --secret):
# `docker` when it has the buildx plugin, else a CLI older than 23 (BuildKit built in,
# e.g. Debian's docker.io /usr/bin/docker beside a newer client without buildx).
# DOCKER_BUILD_CLI overrides.
set -euo pipefail
if [ -n "${DOCKER_BUILD_CLI:-}" ]; then echo "$DOCKER_BUILD_CLI"; exit 0; fi
if docker buildx version >/dev/null 2>&1; then command -v docker; exit 0; fi
for cli in $(which -a docker | awk '!seen[$0]++'); do
    major=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then echo "$cli"; exit 0; fi
done
echo "no docker CLI can build with BuildKit here: install the buildx plugin" >&2
exit 1
