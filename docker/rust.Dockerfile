# The three Rust services in one image: rust-market-data, rust-risk, rust-execution.
# Build stage: the official Rust image (here: built locally by docker/base-images.sh);
# the cargo registry and target dir are BuildKit cache mounts, so a rebuild after a
# source change compiles only what changed. Runtime: debian slim, binaries only, non-root.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY rust-common rust-common
COPY rust-market-data rust-market-data
COPY rust-risk rust-risk
COPY rust-execution rust-execution
COPY rust-backtest rust-backtest
# The JetStream state the services open (rust-common includes it at compile time).
COPY proto/nats/jetstream.json proto/nats/jetstream.json
# The `ca` secret (the host's CA bundle, when its network needs one) is used for the
# crates.io download only and never stored in a layer. No debug info: small binaries.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export CARGO_HTTP_CAINFO=/run/secrets/ca; fi; \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_INCREMENTAL=0 \
    cargo build --release --locked -p rust-market-data -p rust-risk -p rust-execution \
    && mkdir /out \
    && cp target/release/rust-market-data target/release/rust-risk target/release/rust-execution /out/

FROM ${RUNTIME_IMAGE}
# Live connectors verify TLS with the Mozilla roots of the build image (Debian's
# ca-certificates), not the host's bundle.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin moonbus
WORKDIR /app
COPY --from=build /out/ /usr/local/bin/
COPY moonbus.toml /app/moonbus.toml
COPY data /app/data
COPY docker/entrypoint.sh /usr/local/bin/moonbus-entrypoint
ENV MOONBUS_CONFIG=/app/moonbus.toml RUST_LOG=info
USER moonbus
# Exports this container's credentials (/run/moonbus, see docker/credentials.py), then the command.
ENTRYPOINT ["moonbus-entrypoint"]
CMD ["rust-market-data"]
