# rust:<version>-slim-bookworm, built locally (docker/base-images.sh) from
# debian:bookworm-slim and the host's own Rust toolchain (the context's toolchain/),
# laid out as in the official image: CARGO_HOME=/usr/local/cargo on PATH.
FROM debian:bookworm-slim
ARG DEBIAN_MIRROR=http://deb.debian.org/debian
RUN --mount=type=secret,id=ca \
    echo "deb $DEBIAN_MIRROR bookworm main" >/etc/apt/sources.list \
    && ca=; [ -s /run/secrets/ca ] && ca="-o Acquire::https::CAInfo=/run/secrets/ca"; \
    apt-get $ca update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get $ca install -y -qq --no-install-recommends \
         gcc libc6-dev ca-certificates >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*
COPY toolchain /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && rustc --version && cargo --version
