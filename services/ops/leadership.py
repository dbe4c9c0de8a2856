"""Who is active among the instances of risk and of execution (failover, rust-common
leader.rs): one JSON lease record per service in the KV bucket `moonbus`, key
`leader.<service>`, written only by that service's instances. Read by `moon status`.

    leases = await read_leadership(nc)   # {"risk": Lease(holder="risk-standby-4242-...", ...)}

A lease whose holder has not renewed it within its ttl (and did not release it) has no
active instance behind it: the standby is about to take over, or there is none.
"""

from __future__ import annotations

import time

from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict

from services.contract import subjects as S
from services.ops.supervision import read_records


class Lease(BaseModel):
    """The value of `leader.<service>` (rust-common leader.rs `LeaseRecord`)."""

    model_config = ConfigDict(extra="ignore")

    holder: str  # the active instance's id (MOONBUS_INSTANCE-pid-start)
    acquired_ts: int  # active since (ns)
    renewed_ts: int  # its last renewal (ns)
    acting_until_ts: int  # it stops acting by then without a renewal (its clock)
    ttl_ms: int
    takeover_ts: int | None = None  # the last takeover (ns), from previous_holder
    previous_holder: str | None = None
    takeovers: int = 0
    released: bool = False  # released on a graceful stop: free to take at once

    def lapsed(self, now_ns: int | None = None) -> bool:
        """Released, or not renewed within its ttl: no instance is active under it."""
        return self.released or (now_ns or time.time_ns()) - self.renewed_ts > self.ttl_ms * 1_000_000

    def as_dict(self, now_ns: int | None = None) -> dict:
        return {**self.model_dump(), "lapsed": self.lapsed(now_ns)}


async def read_leadership(nc: Client, timeout: float = 5.0) -> tuple[dict[str, Lease], list[str]]:
    """Every `leader.*` lease by direct gets: ({service: lease}, problems). Raises
    StreamReadError when the bucket cannot be read."""
    return await read_records(nc, S.kv_leader, Lease, "a lease record", timeout)


__all__ = ["Lease", "read_leadership"]
