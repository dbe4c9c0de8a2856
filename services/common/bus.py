"""The bus client every Python service uses.

- connects with the service's own credentials (NATS_URL / NATS_USER / NATS_PASSWORD),
  retries the first connect and reconnects forever, logs connection events;
- typed publish / subscribe / request with the pydantic models of proto/;
- a message that does not parse goes to `errors.<service>` and never kills a handler;
- registers the NATS service API ($SRV.PING/INFO/STATS) with typed endpoints that
  always reply (a bad request gets `{"error": {"code", "message"}}`);
- orders go to JetStream with Nats-Msg-Id = client_order_id (dedupe) and await the ack.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import PubAck
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service, ServiceConfig
from pydantic import BaseModel, ValidationError

from services.contract import subjects
from services.contract.models import ErrorEvent, ErrorReply, OrderRequest, encode, now_ns
from services.contract.subjects import Endpoint
from services.contract.wire import decoder
from .tls import client_tls_options

# Clocks differ a little; a message dated further ahead of this one is refused where an agent
# keeps the latest by `ts` or a window of time: one such message would hide every later genuine
# one (or empty the window) for as long as it is ahead.
FUTURE_TOLERANCE_NS = 60 * 10**9


def is_ahead(ts: int) -> bool:
    """Whether `ts` is more than FUTURE_TOLERANCE_NS ahead of this clock."""
    return ts > now_ns() + FUTURE_TOLERANCE_NS

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")


class ApiError(Exception):
    """An `*.api.*` endpoint answered with an error reply (or did not answer)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    # The NATS service error code when a handler lets it through: an upstream's error or
    # silence passed on is not the request's fault (RequestError says 400 by default).
    status = 502


class RequestError(ApiError):
    """Raised inside an endpoint handler to answer with a specific error code; `status` is
    the NATS service error code (400: the request's fault; 5xx: the service's, e.g. 503
    for a dependency that is not there)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(code, message)
        self.status = status


class DuplicateOrderId(RuntimeError):
    """A freshly made client_order_id was already taken in ORDERS: the order was not stored."""


class OrderRefused(RuntimeError):
    """The ORDERS stream answered with an error: the order was NOT stored. `reason` is the
    server's, e.g. "store full: maximum bytes exceeded" (ORDERS is discard new: a full store
    refuses new orders rather than drop stored ones) or "message size exceeds maximum allowed".
    Sending it again (same client_order_id) is safe once the cause is gone."""

    def __init__(self, reason: str, code: int | None = None, err_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.err_code = err_code


# The status header of the server's "no responders" answer (nats-py's NO_RESPONDERS_STATUS).
_NO_RESPONDERS = "503"


def _expire(future: asyncio.Future[Msg]) -> None:
    """The stream's answer did not come in time: its waiter gets nats' TimeoutError."""
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


# nats-server's err_code for a store write that failed (JSStreamStoreFailedF).
_STORE_FAILED = 10077


def _refusal_reason(e: nats.js.errors.APIError) -> str:
    description = e.description or f"error {e.code}/{e.err_code}"
    if e.err_code == _STORE_FAILED:
        return f"store full: {description}" if "exceeded" in description else f"store failed: {description}"
    return description


def inbox_prefix(user: str) -> str:
    """The reply-inbox prefix of a NATS user, `_INBOX.<user>`: each user may subscribe only
    its own (proto/nats/moonbus.conf), so nobody reads replies meant for another."""
    return f"_INBOX.{user}"


def server_urls(url: str) -> list[str]:
    """The servers of a NATS_URL: one URL, or a cluster's seeds separated by commas
    (`nats://10.0.0.1:4222,nats://10.0.0.2:4222`, as the `nats` CLI reads it); the client
    connects to one and fails over to the others. rust-common bus.rs `server_addrs` alike."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise ValueError(f"NATS_URL {url!r} names no server")
    return servers


async def flush(nc: Client, timeout: float = 10.0) -> None:
    """`nc.flush()` with everything queued before it written first: then the server has our
    SUBs and PUBs when the PONG comes (a subscription taken in, a permission refused). nats-py
    (2.16) writes flush()'s PING straight to the socket, ahead of what its flusher task has
    not written yet, so a plain flush() can return before the server has them."""
    if nc.is_connected:
        await nc._flush_pending(force_flush=True)  # the flusher writes the queue, then resolves
    await nc.flush(timeout)


def validation_summary(error: ValidationError) -> str:
    """The first few problems of a validation error, one line, fit to send back."""
    parts = []
    for e in error.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "message"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


class Bus:
    def __init__(self, service: str, version: str = "0.1.0") -> None:
        self.service = service
        self.version = version
        self.nc: Client | None = None
        self._micro: Service | None = None
        self.errors_published = 0
        self._acks: tuple[str, dict[str, asyncio.Future[Msg]]] = ("", {})  # publish_order's replies
        self._acks_nc: Client | None = None  # the connection they are subscribed on
        self._ack_seq = 0

    # ------------------------------------------------------------ connection

    async def connect(self, url: str | None = None, user: str | None = None, password: str | None = None,
                      ca: str | None = None) -> None:
        """Connect to `url` (one URL or a cluster's seeds, comma-separated: `server_urls`) as
        `user` (defaults: NATS_URL, NATS_USER, NATS_PASSWORD). With a CA
        file (`ca`, default NATS_CA) the connection is TLS and the server must present a
        certificate of that CA for the URL's host; a `tls://` URL alone uses the system's CAs."""
        url = url or os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
        user = user or os.environ.get("NATS_USER")
        options: dict[str, Any] = client_tls_options(url, ca or os.environ.get("NATS_CA"))
        if user:
            options["user"] = user
            options["password"] = password if password is not None else os.environ.get("NATS_PASSWORD", "")
            options["inbox_prefix"] = inbox_prefix(user)

        async def on_error(e: Exception) -> None:
            log.warning("nats error: %s", e)

        async def on_disconnect() -> None:
            if self.nc is not None and (self.nc.is_closed or self.nc.is_draining):
                return  # our own close(), not an outage
            log.warning("disconnected from NATS, reconnecting")

        async def on_reconnect() -> None:
            log.info("reconnected to NATS")

        self.nc = await nats.connect(
            server_urls(url),
            name=self.service,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            **options,
        )
        log.info("connected to NATS at %s as %s", url, options.get("user", "(anonymous)"))

    @property
    def client(self) -> Client:
        if self.nc is None:
            raise RuntimeError("Bus.connect() first")
        return self.nc

    async def close(self) -> None:
        if self._micro is not None:
            await self._micro.stop()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.drain()

    # ------------------------------------------------------------ messages

    async def publish(self, subject: str, message: BaseModel) -> None:
        await self.client.publish(subject, encode(message))

    async def publish_order(self, subject: str, order: OrderRequest, timeout: float = 2.0,
                            fresh: bool = False) -> PubAck:
        """Into the ORDERS stream; the stream drops a second copy of the same client_order_id.

        fresh: the id was just made for this order, so a "duplicate" answer means something
        else is stored under it (another publisher got there first, SECURITY.md): this order
        was NOT stored, and DuplicateOrderId says so. An error answer of the stream (full,
        order too large) raises OrderRefused with the server's reason; no answer in time
        raises nats.errors.TimeoutError (stored or not: resend with the same id)."""
        try:
            ack = await self._publish_to_stream(subject, encode(order), order.client_order_id, timeout)
        except nats.js.errors.APIError as e:
            raise OrderRefused(_refusal_reason(e), e.code, e.err_code) from None
        if fresh and ack.duplicate:
            raise DuplicateOrderId(f"ORDERS already holds a message with id {order.client_order_id} "
                                   f"(seq {ack.seq}): this new order was not stored")
        return ack

    async def _publish_to_stream(self, subject: str, payload: bytes, msg_id: str, timeout: float) -> PubAck:
        """`JetStreamContext.publish(subject, payload, timeout, headers={"Nats-Msg-Id": msg_id})`
        (the same answers and errors: the stream's PubAck, its APIError, NoStreamResponseError
        when no stream takes the subject, nats' TimeoutError), with the stream's answer taken
        on one reply subscription of this Bus (`<inbox>.<n>`) and awaited directly: nats-py's
        request makes a NUID and random token per call and waits through `wait_for` and two
        more callbacks, half of an agent's CPU per order (bench/agent_decisions.py)."""
        prefix, waiting = self._acks if self._acks_nc is self.nc else await self._ack_inbox()
        self._ack_seq += 1
        token = str(self._ack_seq)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        waiting[token] = future
        # One timer that fails the future (asyncio.timeout's context manager cost ~5 % of
        # an agent's CPU per order: its object, loop lookups and a reschedule).
        try:
            await self.client.publish(subject, payload, reply=prefix + token, headers={"Nats-Msg-Id": msg_id})
            timer = loop.call_later(timeout, _expire, future)
            try:
                msg = await future
            finally:
                timer.cancel()
        finally:
            waiting.pop(token, None)
        if msg.headers and msg.headers.get(nats.js.api.Header.STATUS) == _NO_RESPONDERS:
            raise nats.js.errors.NoStreamResponseError
        answer = json.loads(msg.data)
        if "error" in answer:
            raise nats.js.errors.APIError.from_error(answer["error"])
        # What PubAck.from_response reads, without its walk over the dataclass's fields
        # (~2 % of an agent's CPU per order)
        return PubAck(stream=answer["stream"], seq=answer["seq"], domain=answer.get("domain"),
                      duplicate=answer.get("duplicate"))

    async def _ack_inbox(self) -> tuple[str, dict[str, asyncio.Future[Msg]]]:
        """The reply subscription of `_publish_to_stream` (one per connection), subscribed
        before the first order goes out (the SUB precedes the PUB on the connection)."""
        nc = self.client
        prefix = nc.new_inbox() + "."
        waiting: dict[str, asyncio.Future[Msg]] = {}
        skip = len(prefix)

        async def on_answer(msg: Msg) -> None:
            future = waiting.pop(msg.subject[skip:], None)
            if future is not None and not future.done():
                future.set_result(msg)

        self._acks, self._acks_nc = (prefix, waiting), nc  # concurrent first orders share it
        try:
            await nc.subscribe(prefix + "*", cb=on_answer)
        except BaseException:
            self._acks_nc = None
            raise
        return prefix, waiting

    async def refused_as_ahead(self, ts: int, subject: str, payload: bytes) -> bool:
        """Whether `ts` is more than FUTURE_TOLERANCE_NS ahead of this clock: then the message
        is refused, on errors.<service>."""
        if not is_ahead(ts):
            return False
        await self.report_error(subject, f"ts {ts} is more than {FUTURE_TOLERANCE_NS // 10**9} s ahead of "
                                         "this clock: refused", payload)
        return True

    async def report_error(self, subject: str, reason: str, payload: bytes) -> None:
        log.warning("rejected input on %s: %s", subject, reason)
        self.errors_published += 1
        event = ErrorEvent(
            service=self.service,
            subject=subject[:256],
            reason=reason[:1000],
            excerpt=payload[:800].decode("utf-8", "replace")[:200],
            ts=now_ns(),
        )
        try:
            await self.client.publish(subjects.errors(self.service), encode(event))
        except Exception as e:  # the error path must never raise into a handler
            log.error("could not publish error event: %s", e)

    async def subscribe(
        self,
        subject: str,
        model: type[M],
        handler: Callable[[M, Msg], Awaitable[None]],
        queue: str = "",
    ) -> Any:
        """Typed subscription. Bad payloads go to errors.<service> (the model's reasons); a
        handler that raises is logged and reported, and the subscription carries on. Decoded
        by `wire.decoder`: what the model builds, faster where the model allows."""
        decode = decoder(model)

        async def on_message(msg: Msg) -> None:
            try:
                message = decode(msg.data)
            except ValidationError as e:
                await self.report_error(msg.subject, validation_summary(e), msg.data)
                return
            try:
                await handler(message, msg)
            except Exception as e:
                log.exception("handler for %s failed", msg.subject)
                await self.report_error(msg.subject, f"handler failed: {e!r}", msg.data)

        return await self.client.subscribe(subject, queue=queue, cb=on_message)

    async def request(self, subject: str, message: BaseModel, reply_model: type[R], timeout: float = 2.0) -> R:
        """Request/reply; an error reply or no answer raises ApiError."""
        try:
            msg = await self.client.request(subject, encode(message), timeout=timeout)
        except nats.errors.NoRespondersError:
            raise ApiError("no_responders", f"nobody serves {subject}") from None
        except nats.errors.TimeoutError:
            raise ApiError("timeout", f"no answer from {subject} within {timeout}s") from None
        if b'"error"' in msg.data[:20]:
            try:
                err = ErrorReply.model_validate_json(msg.data).error
                raise ApiError(err.code, err.message)
            except ValidationError:
                pass
        return reply_model.model_validate_json(msg.data)

    async def call(self, endpoint: Endpoint[Any, R], request: BaseModel, timeout: float = 2.0) -> R:
        """One request to a typed endpoint (services/contract/subjects.py): the reply decoded
        into the endpoint's reply model; an error reply or no answer raises ApiError."""
        if not isinstance(request, endpoint.request_model):
            raise TypeError(f"{endpoint.subject} takes {endpoint.request_model.__name__}, "
                            f"not {type(request).__name__}")
        return await self.request(endpoint.subject, request, endpoint.reply_model, timeout)

    # ------------------------------------------------------------ NATS service API

    async def serve(
        self,
        description: str,
        endpoints: dict[str, tuple[type[BaseModel], Callable[[Any], Awaitable[BaseModel]]]],
        concurrency: int = 1,
    ) -> Service:
        """Register on $SRV.* with one endpoint per subject; each handler takes the parsed
        request and returns the reply model. The reply is always sent.

        An endpoint answers one request at a time (nats-py runs a subscription's callbacks
        one after another), unless `concurrency` > 1: then up to that many at once, each in
        a task; the next request waits for room (it stays queued in the client)."""
        self._micro = await add_service(
            self.client,
            ServiceConfig(name=self.service, version=self.version, description=description),
        )
        for subject, (request_model, handler) in endpoints.items():
            await self._micro.add_endpoint(
                EndpointConfig(
                    name=subject.replace(".", "-"),
                    subject=subject,
                    handler=self._concurrent(self._endpoint(subject, request_model, handler), concurrency),
                )
            )
        return self._micro

    def _endpoint(
        self,
        subject: str,
        request_model: type[BaseModel],
        handler: Callable[[Any], Awaitable[BaseModel]],
    ) -> Callable[[Request], Awaitable[None]]:
        async def handle(req: Request) -> None:
            try:
                request = request_model.model_validate_json(req.data or b"{}")
                reply = await handler(request)
                await req.respond(encode(reply))
            except ValidationError as e:
                await self._reply_error(req, "bad_request", validation_summary(e), 400)
            except ApiError as e:
                await self._reply_error(req, e.code, e.message, e.status)
            except Exception as e:
                log.exception("endpoint %s failed", subject)
                await self._reply_error(req, "internal", repr(e), 500)

        return handle

    @staticmethod
    def _concurrent(handle: Callable[[Request], Awaitable[None]], limit: int) -> Callable[[Request], Awaitable[None]]:
        if limit <= 1:
            return handle
        room = asyncio.Semaphore(limit)
        running: set[asyncio.Task[None]] = set()

        async def run(req: Request) -> None:
            try:
                await handle(req)  # (it answers every failure itself)
            finally:
                room.release()

        async def start(req: Request) -> None:
            await room.acquire()
            task = asyncio.create_task(run(req))
            running.add(task)  # (a task nobody holds may be collected before it ends)
            task.add_done_callback(running.discard)

        return start

    @staticmethod
    async def _reply_error(req: Request, code: str, message: str, status: int) -> None:
        """The ErrorReply body (its snake_case `code` is the contract); the NATS service error
        code header says whose fault it was: 4xx the request's, 5xx the service's."""
        body = ErrorReply.model_validate({"error": {"code": code, "message": message}})
        await req.respond(encode(body), headers={"Nats-Service-Error": message[:200],
                                                 "Nats-Service-Error-Code": str(status)})


class JsonFormatter(logging.Formatter):
    """One JSON object per line (json.dumps: valid JSON whatever the message holds)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(service: str) -> None:
    """Readable logs by default; MOONBUS_LOG_FORMAT=json for one JSON object per line."""
    level = os.environ.get("MOONBUS_LOG_LEVEL", "INFO").upper()
    if os.environ.get("MOONBUS_LOG_FORMAT") == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter(service))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop every Python service runs on: uvloop's (libuv) where it is installed,
    which is the default install on Linux and macOS: a nats-py request/reply between two
    processes ~25 % shorter than on asyncio's own loop, one trading agent ~5 % more decisions
    a second with an order each (README, bench agent_decisions).
    MOONBUS_EVENT_LOOP=asyncio chooses asyncio's own loop (None: asyncio's default)."""
    choice = os.environ.get("MOONBUS_EVENT_LOOP", "uvloop").strip().lower()
    if choice not in ("uvloop", "asyncio"):
        raise ValueError(f"MOONBUS_EVENT_LOOP={choice!r}: expected 'uvloop' or 'asyncio'")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # Windows has no uvloop: asyncio's loop, as MOONBUS_EVENT_LOOP=asyncio
        return None
    return uvloop.new_event_loop


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(coro) on the services' event loop (loop_factory)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a service's main(stop_event) until SIGINT/SIGTERM sets the event."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    run_async(runner())
