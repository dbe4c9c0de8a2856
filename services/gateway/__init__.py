"""Gateway: the HTTP edge (FastAPI) in front of the bus.

- `app`: `create_app()`: error mapping, /health, /metrics, the dashboard page;
- `routes`: the REST API (/api/...), the live stream (/api/stream, Server-Sent Events);
- `context`: bus requests (counted, errors mapped), the token checks, the error reply;
- `guard`: before any route: the Host allow-list, the tokens, the body size; security headers;
- `config`: the [gateway] section, the allowed hosts, the refusal to listen beyond localhost unguarded;
- `live`: the subscriptions, the latest state and the fan-out to open streams;
- `metrics`: the Prometheus metrics; `static/`: the dashboard (plain HTML/JS);
- `service`: `main(stop)` serves it with uvicorn on [gateway] host/port (`python -m services.gateway`).
"""
