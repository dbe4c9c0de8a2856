#!/usr/bin/env bash
# Build, without any image registry, the three base images the moonbus Dockerfiles use,
# under the official names, so the same Dockerfiles and docker-compose.yml work here
# offline and, unchanged, online with the public images:
#
#   debian:bookworm-slim          debootstrap --variant=minbase (docker import)
#   python:3.11-slim-bookworm     + Debian's python3 (3.11), python3-venv, ca-certificates
#   rust:<RUST_VERSION>-slim-bookworm  + gcc, libc6-dev, and THIS machine's Rust toolchain
#                                 (rustup's, copied: nothing is downloaded)
#
# An image that already exists is kept (FORCE=1 rebuilds). The Debian mirror is the one
# this host's apt uses (DEBIAN_MIRROR overrides); containers trust the host's CA bundle
# only through a BuildKit secret, it is never stored in an image.
#
# Usage: docker/base-images.sh            (make base-images)
set -euo pipefail
cd "$(dirname "$0")"

SUITE=bookworm
RUST_VERSION=${RUST_VERSION:-$(rustc --version | awk '{print $2}' | cut -d. -f1,2)}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
export DOCKER_BUILDKIT=1
DOCKER_BUILD=$(./buildkit-cli.sh)   # a docker CLI that builds with BuildKit

host_mirror() {  # the first Debian archive URI of the host's apt sources
    local uri
    uri=$(grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk '{print $2}' | grep -v -- '-security' | head -n 1 || true)
    [ -n "$uri" ] || uri=$(grep -hE '^\s*deb\s' /etc/apt/sources.list 2>/dev/null \
          | awk '{print $2}' | grep -v -- '-security' | head -n 1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}

exists() { docker image inspect "$1" >/dev/null 2>&1 && [ -z "${FORCE:-}" ]; }

secret_args=()
[ -r "$CA_BUNDLE" ] && secret_args=(--secret "id=ca,src=$CA_BUNDLE")

if exists debian:$SUITE-slim; then
    echo "debian:$SUITE-slim exists"
else
    if ! command -v debootstrap >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
        else
            echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1
        fi
    fi
    root=$(mktemp -d /tmp/moonbus-rootfs.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    echo "debootstrap $SUITE from $DEBIAN_MIRROR"
    debootstrap --variant=minbase "$SUITE" "$root" "$DEBIAN_MIRROR" >/dev/null
    # As small as the official slim image: no apt lists, caches, docs or man pages.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
           "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
           "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/*
    echo "deb $DEBIAN_MIRROR $SUITE main" >"$root/etc/apt/sources.list"
    tar -C "$root" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["bash"]' - "debian:$SUITE-slim"
    rm -rf "$root"; trap - EXIT
fi

if exists python:3.11-slim-$SUITE; then
    echo "python:3.11-slim-$SUITE exists"
else
    "$DOCKER_BUILD" build "${secret_args[@]}" --build-arg "DEBIAN_MIRROR=$DEBIAN_MIRROR" \
        -t "python:3.11-slim-$SUITE" -f base/python.Dockerfile base
fi

if exists rust:$RUST_VERSION-slim-$SUITE; then
    echo "rust:$RUST_VERSION-slim-$SUITE exists"
else
    toolchain=$(rustc --print sysroot)
    ctx=$(mktemp -d /tmp/moonbus-rust.XXXXXX)
    trap 'rm -rf "$ctx"' EXIT
    # The compiler, cargo and the standard library; not the docs (share/) or the rustup proxies.
    mkdir -p "$ctx/toolchain"
    cp -a "$toolchain"/bin "$toolchain"/lib "$toolchain"/libexec "$ctx/toolchain/"
    cp base/rust.Dockerfile "$ctx/Dockerfile"
    "$DOCKER_BUILD" build "${secret_args[@]}" --build-arg "DEBIAN_MIRROR=$DEBIAN_MIRROR" \
        -t "rust:$RUST_VERSION-slim-$SUITE" "$ctx"
    rm -rf "$ctx"; trap - EXIT
fi
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E "^(debian|python|rust):"
