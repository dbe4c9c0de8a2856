"""Operator tools over the bus, read-only: the order history (ORDERS + EXEC) and service
discovery. Used by the gateway and the `moon` CLI, never by the agents."""
