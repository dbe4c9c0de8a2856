"""The local dev stack: nats-server management (secure config, credentials, bcrypt hashes,
TLS certificates) and the launcher of `make run` and the tests. Agents never import it,
and the service images do not ship it."""
