"""Gateway: the HTTP edge (FastAPI) in front of the bus APIs.

- `app`: `create_app()`, the routes and the error mapping;
- `service`: `main(stop)` serves it with uvicorn on [gateway] host/port (`python -m services.gateway`).
"""
