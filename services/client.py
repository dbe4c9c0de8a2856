"""The public Python client of moonbus, for your own scripts and notebooks.

Every call is one typed endpoint of services/contract/subjects.py (the models of
services/contract/models.py in and out); the connection is found as `moon` finds it:
arguments, then NATS_URL / NATS_USER / NATS_PASSWORD / NATS_CA, then .moon/nats.env
(written by `make run`); the user defaults to `operator`.

    async with MoonbusClient() as moon:                  # asyncio
        tick = await moon.get_realtime_price("BTC-USD")
        async for bar in moon.bars("BTC-USD", interval="1m"):
            print(bar.close)

    with BlockingMoonbusClient() as moon:                # plain scripts, notebooks
        print(moon.get_bulk_prices(["BTC-USD", "ETH-USD"]).prices)
        for report in moon.reports(limit=3):
            print(report.status)

An error reply, nobody serving an endpoint or no answer in time raises ApiError (with
`.code`: `no_responders`, `timeout`, `unknown_symbol`, ...); a connection that cannot be
made raises ConnectError. Orders go into ORDERS as agent `operator`, so execution and
risk check them like any other order.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from pydantic import BaseModel, ValidationError

from services.cli.connection import CliError, Target
from services.ops import orderlog
from services.contract import subjects as S
from services.common.bus import ApiError, Bus, flush, inbox_prefix, server_urls
from services.contract.catalogue import model_for
from services.contract.models import (
    Bar,
    ExecutionReport,
    KillSwitchRequest,
    KillSwitchState,
    MonitorStartRequest,
    MonitorStatusReply,
    MonitorStatusRequest,
    MonitorStopRequest,
    OrderRequest,
    OrderType,
    PositionsReply,
    PositionsRequest,
    PriceAlert,
    PriceRequest,
    PricesReply,
    PricesRequest,
    Side,
    Tick,
    TimeInForce,
    VersionReply,
    now_ns,
)
from services.ops.orderlog import OrderTrail
from services.common.tls import client_tls_options

__all__ = ["ApiError", "BlockingMoonbusClient", "ConnectError", "MoonbusClient"]

DEFAULT_USER = "operator"
AGENT = "operator"  # the agent token the operator user may publish orders as
M = TypeVar("M", bound=BaseModel)


class ConnectError(RuntimeError):
    """NATS could not be reached, or refused the credentials."""


class MoonbusClient:
    """The asyncio client. `await connect()` (or `async with`) before any call."""

    def __init__(self, url: str | None = None, user: str | None = None, password: str | None = None,
                 ca: str | None = None, env_file: Path | None = None, timeout: float = 3.0) -> None:
        try:  # the same resolution as `moon`
            target = Target.resolve(url, user, password, env_file)
        except CliError as e:
            raise ConnectError(str(e)) from None
        self.url = target.url
        self.user = target.user or DEFAULT_USER
        self._password = target.password or ""
        self.ca = ca or target.ca
        self.timeout = timeout
        self._bus = Bus("moonbus-client")

    # ------------------------------------------------------------ connection

    @property
    def nc(self) -> Client:
        if self._bus.nc is None:
            raise RuntimeError("MoonbusClient.connect() first")
        return self._bus.nc

    async def connect(self) -> MoonbusClient:
        """Connect (TLS with a CA file or a tls:// URL); reconnects by itself after that."""
        options: dict[str, Any] = client_tls_options(self.url, self.ca)
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e) or type(e).__name__)

        try:  # nats-py retries a first connect forever when reconnecting is on: bounded here
            self._bus.nc = await asyncio.wait_for(nats.connect(
                server_urls(self.url), name="moonbus-client", user=self.user, password=self._password,
                inbox_prefix=inbox_prefix(self.user), connect_timeout=self.timeout,
                allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                error_cb=on_error, **options,
            ), self.timeout + 1.0)
        except Exception as e:
            text = " ".join([str(e), *errors]).lower()
            if "authorization" in text or "authentication" in text:
                raise ConnectError(f"NATS at {self.url} refused the credentials of {self.user}") from None
            detail = next((x for x in reversed(errors) if x), "") or str(e) or type(e).__name__
            raise ConnectError(f"cannot reach NATS at {self.url}: {detail}") from None
        return self

    async def close(self) -> None:
        if self._bus.nc is not None and not self._bus.nc.is_closed:
            await self._bus.nc.close()

    async def __aenter__(self) -> MoonbusClient:
        return await self.connect()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def call(self, endpoint: S.Endpoint[Any, M], request: BaseModel, timeout: float | None = None) -> M:
        """Any typed endpoint of services/contract/subjects.py."""
        return await self._bus.call(endpoint, request, timeout or self.timeout)

    # ------------------------------------------------------------ market data (the original's calls)

    async def get_realtime_price(self, symbol: str, venue: str | None = None) -> Tick:
        """The latest tick of `symbol` (md.api.price)."""
        return (await self.call(S.MD_PRICE_API, PriceRequest(symbol=symbol, venue=venue))).tick

    async def get_bulk_prices(self, symbols: list[str], venue: str | None = None) -> PricesReply:
        """The latest tick of each symbol; unknown ones are listed in `.missing` (md.api.prices)."""
        return await self.call(S.MD_PRICES_API, PricesRequest(symbols=symbols, venue=venue))

    async def start_price_monitor(self, symbol: str, threshold_pct: float = 2.0,
                                  window_s: float = 60.0) -> MonitorStatusReply:
        """Alert on md.alert.<symbol> (see `alerts()`) when it moves threshold_pct within window_s."""
        request = MonitorStartRequest(symbol=symbol, threshold_pct=threshold_pct, window_s=window_s)
        return await self.call(S.MD_MONITOR_START_API, request)

    async def is_monitor_active(self, symbol: str) -> bool:
        reply = await self.call(S.MD_MONITOR_STATUS_API, MonitorStatusRequest(symbol=symbol))
        return any(m.symbol == symbol for m in reply.monitors)

    async def stop_price_monitor(self, symbol: str) -> MonitorStatusReply:
        return await self.call(S.MD_MONITOR_STOP_API, MonitorStopRequest(symbol=symbol))

    async def monitors(self) -> MonitorStatusReply:
        return await self.call(S.MD_MONITOR_STATUS_API, MonitorStatusRequest())

    async def version(self, service: str = "market-data") -> VersionReply:
        """`market-data`, `risk` or `execution`."""
        if service not in S.VERSION_APIS:
            raise ValueError(f"version of {service!r}: one of {', '.join(S.VERSION_APIS)}")
        return await self.call(S.VERSION_APIS[service], S.VersionRequest())

    # ------------------------------------------------------------ risk

    async def positions(self, symbol: str | None = None) -> PositionsReply:
        """Positions and PnL, with the account (risk.api.positions)."""
        return await self.call(S.RISK_POSITIONS_API, PositionsRequest(symbol=symbol))

    async def kill_switch_status(self) -> KillSwitchState:
        return await self._kill_switch("status", "", False)

    async def engage_kill_switch(self, reason: str, flatten: bool = False) -> KillSwitchState:
        """Stop all risk-increasing orders; `flatten` also closes every position."""
        return await self._kill_switch("engage", reason, flatten)

    async def release_kill_switch(self, reason: str = "") -> KillSwitchState:
        return await self._kill_switch("release", reason, False)

    async def _kill_switch(self, action: str, reason: str, flatten: bool) -> KillSwitchState:
        request = KillSwitchRequest(action=action, actor="moonbus-client", reason=reason, flatten=flatten)
        return await self.call(S.risk_killswitch_api(self.user), request)

    # ------------------------------------------------------------ orders

    async def orders(self, limit: int = 20, symbol: str | None = None) -> list[OrderTrail]:
        """The last orders in ORDERS (oldest first) with their reports from EXEC; read-only."""
        return await orderlog.recent_orders(self.nc, limit, symbol)

    async def submit_order(self, symbol: str, side: Side | str, quantity: Decimal | str,
                           order_type: OrderType | str = OrderType.MARKET, limit_price: Decimal | str | None = None,
                           venue: str = "sim", time_in_force: TimeInForce | str = TimeInForce.GTC,
                           reduce_only: bool = False, client_order_id: str | None = None) -> OrderRequest:
        """Store an order in ORDERS as agent `operator` (orders.submit.operator.<symbol>);
        execution and risk take it from there: watch `reports(symbol)` or `orders()`. Returns
        the order as stored (its client_order_id identifies it)."""
        ts = now_ns()
        order = OrderRequest(client_order_id=client_order_id or f"cli-{uuid.uuid4().hex[:20]}", agent=AGENT,
                             symbol=symbol, venue=venue, side=Side(side), type=OrderType(order_type),
                             quantity=Decimal(str(quantity)),
                             limit_price=None if limit_price is None else Decimal(str(limit_price)),
                             time_in_force=TimeInForce(time_in_force), reduce_only=reduce_only,
                             origin_ts=ts, ts=ts)
        await self._bus.publish_order(S.orders_submit(AGENT, symbol), order, self.timeout,
                                      fresh=client_order_id is None)
        return order

    # ------------------------------------------------------------ typed subscriptions

    async def subscribe(self, subject: str, model: type[M] | None = None,
                        limit: int | None = None) -> AsyncIterator[Any]:
        """The decoded messages on `subject` (a pattern), as they arrive; the model is the
        contract's for each subject (services/contract/catalogue.py) unless given. Messages that
        do not parse are skipped. Ends after `limit` messages, or when the loop breaks."""
        sub = await self.nc.subscribe(subject)
        await flush(self.nc)
        seen = 0
        try:
            async for msg in sub.messages:
                decoder = model or model_for(msg.subject)
                if decoder is None:
                    continue
                try:
                    message = decoder.model_validate_json(msg.data)
                except ValidationError:
                    continue
                yield message
                seen += 1
                if limit is not None and seen >= limit:
                    return
        finally:
            if not self.nc.is_closed:
                await sub.unsubscribe()

    def ticks(self, symbol: str = "*", venue: str = "*", limit: int | None = None) -> AsyncIterator[Tick]:
        return self.subscribe(S.tick(venue, symbol), Tick, limit)

    def bars(self, symbol: str = "*", interval: str = "*", venue: str = "*",
             limit: int | None = None) -> AsyncIterator[Bar]:
        return self.subscribe(S.bar(interval, venue, symbol), Bar, limit)

    def alerts(self, symbol: str = "*", limit: int | None = None) -> AsyncIterator[PriceAlert]:
        return self.subscribe(S.alert(symbol), PriceAlert, limit)

    def reports(self, symbol: str = "*", limit: int | None = None) -> AsyncIterator[ExecutionReport]:
        return self.subscribe(S.exec_report(symbol), ExecutionReport, limit)


class BlockingMoonbusClient:
    """The same calls without asyncio: an event loop runs in a thread of its own. Every
    method of MoonbusClient is here with the same arguments; the subscriptions are plain
    iterators (`for tick in moon.ticks("BTC-USD", limit=5)`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._client = MoonbusClient(*args, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="moonbus-client", daemon=True)
        self._thread.start()
        try:
            self._run(self._client.connect())
        except BaseException:
            self._stop()
            raise

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _iterate(self, agen: AsyncIterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if self._loop.is_running():
                self._run(agen.aclose())  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Callable[..., Any]:
        attribute = getattr(self._client, name)
        if name.startswith("_") or not callable(attribute):
            return attribute
        if inspect.iscoroutinefunction(attribute):
            return lambda *args, **kwargs: self._run(attribute(*args, **kwargs))

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            return self._iterate(result) if inspect.isasyncgen(result) else result

        return call

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._client.close())
        self._stop()

    def _stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> BlockingMoonbusClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
