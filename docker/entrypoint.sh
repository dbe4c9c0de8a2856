#!/bin/sh
# Every image's entrypoint: each file in /run/moonbus (this container's own credentials,
# written there by the `credentials` one-shot of docker-compose.yml, one file per
# variable) becomes the environment variable of its name, unless the environment already
# sets it; then runs the command. Nothing mounted there (make run, Kubernetes' env from
# Secrets): the command runs as it is.
set -eu
for file in /run/moonbus/*; do
    [ -f "$file" ] || continue
    name=${file##*/}
    case $name in *[!A-Z0-9_]*|[0-9]*) echo "entrypoint: ignoring $file (not a variable name)" >&2; continue ;; esac
    eval "current=\${$name:-}"
    if [ -z "$current" ]; then
        value=$(cat "$file")
        export "$name=$value"
    fi
done
exec "$@"
