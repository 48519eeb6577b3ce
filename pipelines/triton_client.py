"""A small asyncio client for Triton's gRPC streaming API, built for decoupled models.

Why not ``tritonclient.grpc.aio.stream_infer`` as is: it cannot ask for the empty
final response that a decoupled model sends when a request is complete, so a
caller cannot tell "no more responses" from "not yet". This client builds the
requests itself (with ``triton_enable_empty_final_response``), multiplexes many
requests over one bidirectional stream, routes each response to the request it
answers, and turns server errors into exceptions. Cancelling a stream cancels
every request on it inside Triton (the model sees ``is_cancelled()``); closing a
stream whose requests are all answered ends it gracefully instead.

Keepalive: the channel pings Triton only while a call is open (``Keepalive``), and a
stream that fails as unavailable before its first response is reopened once on a
fresh connection, so a connection Triton closed while idle does not cost a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import (
    deserialize_bytes_tensor,
    np_to_triton_dtype,
    serialize_byte_tensor,
    triton_to_np_dtype,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# How long close() waits for Triton to end a finished stream before cancelling it.
CLOSE_GRACE_S = 2.0
# How long close() waits for final responses already on their way before it cancels.
CANCEL_GRACE_S = 0.02
_DONE = object()


class TritonUnavailable(ConnectionError):
    """Triton cannot be reached (down, restarting, wrong address)."""


class TritonModelError(RuntimeError):
    """Triton or the model answered a request with an error."""


Tensor = np.ndarray | str | bytes | list[str]


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive between this client and Triton: the one place for its numbers.

    tritonserver's gRPC defaults accept no ping on a connection without calls and
    answer the third early ping with GOAWAY ``too_many_pings``; when that ping rides
    on the first request after a quiet spell, the request fails. So the client pings
    only while a call is open (to notice a dead peer in ``time_ms + timeout_ms``), and
    ``server_flags()`` are the tritonserver flags that accept these pings (``rtmedia``
    starts its tritonserver with them; a Triton run elsewhere needs them too).
    """

    time_ms: int = 20_000  # ping an open call after this long without a ping
    timeout_ms: int = 10_000  # no answer to a ping in this time: the connection is dead
    without_calls: bool = False  # also ping an idle channel (keeps NAT/LB mappings alive)

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.without_calls)),
        ]

    def server_flags(self) -> list[str]:
        """tritonserver flags that accept these pings (twice as often, for timer jitter)."""
        return [
            "--grpc-keepalive-permit-without-calls=1",
            f"--grpc-http2-min-recv-ping-interval-without-data={max(self.time_ms // 2, 1)}",
        ]


def _as_array(value: Tensor) -> np.ndarray:
    if isinstance(value, str | bytes):
        return np.array([value], dtype=np.object_)
    if isinstance(value, list):
        return np.array(value, dtype=np.object_)
    return value


def build_request(
    model: str,
    inputs: Mapping[str, Tensor],
    *,
    request_id: str = "",
    sequence_id: int = 0,
    sequence_start: bool = False,
    sequence_end: bool = False,
    parameters: Mapping[str, str | int | float | bool] | None = None,
) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, value in inputs.items():
        arr = _as_array(value)
        dtype = np_to_triton_dtype(arr.dtype)
        req.inputs.add(name=name, datatype=dtype, shape=list(arr.shape))
        if dtype == "BYTES":
            encoded = [v.encode() if isinstance(v, str) else v for v in arr.flatten()]
            # serialize_byte_tensor gives a 0-d object array holding the bytes.
            raw = serialize_byte_tensor(np.array(encoded, dtype=np.object_))
            req.raw_input_contents.append(raw.item() if raw.size else b"")
        else:
            req.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
    if sequence_id:
        req.parameters["sequence_id"].int64_param = sequence_id
        req.parameters["sequence_start"].bool_param = sequence_start
        req.parameters["sequence_end"].bool_param = sequence_end
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    for key, value in (parameters or {}).items():
        p = req.parameters[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = str(value)
    return req


def decode_outputs(resp: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    out = {}
    for tensor, raw in zip(resp.outputs, resp.raw_output_contents, strict=False):
        shape = list(tensor.shape)
        if tensor.datatype == "BYTES":
            arr = deserialize_bytes_tensor(raw) if raw else np.array([], dtype=np.object_)
        else:
            arr = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype))
        out[tensor.name] = arr.reshape(shape)
    return out


@dataclass
class Response:
    outputs: dict[str, np.ndarray]
    final: bool

    def text(self, name: str) -> str:
        value = self.outputs[name].flatten()[0]
        return value.decode() if isinstance(value, bytes) else str(value)


class TritonStream:
    """One bidirectional gRPC stream; many requests, responses routed by request id.

    When the stream fails as unavailable before any response arrived (a connection
    that Triton or the network closed while it was idle, a restarted Triton), it is
    opened once more on a fresh connection from ``client`` and the requests written so
    far are sent again. After the first response nothing is resent (that would repeat
    output): errors then reach the caller.
    """

    _ids = itertools.count(1)

    def __init__(self, stub: service_pb2_grpc.GRPCInferenceServiceStub, timeout: float | None,
                 registry: set | None = None, *, client: TritonClient | None = None):
        self._registry = registry
        if registry is not None:
            registry.add(self)
        self._client = client
        self._deadline = None if timeout is None else \
            asyncio.get_running_loop().time() + timeout
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._pending: dict[str, asyncio.Queue] = {}
        self._unanswered: set[str] = set()  # requests whose final response has not come
        self._all_answered = asyncio.Event()
        self._sent: list | None = []  # written before the first response; None after it
        self._closing = False
        self._error: BaseException | None = None
        self.stub = stub
        self._call, self._writer = self._open(stub)
        self._reader = asyncio.create_task(self._read())

    def _open(self, stub: service_pb2_grpc.GRPCInferenceServiceStub):
        self.stub = stub
        timeout = None
        if self._deadline is not None:
            timeout = max(self._deadline - asyncio.get_running_loop().time(), 0.001)
        call = stub.ModelStreamInfer(timeout=timeout)
        return call, asyncio.create_task(self._write(call, list(self._sent or ())))

    async def _write(self, call, replay: list) -> None:
        """Write the requests of the outbox (after ``replay``) until the stream closes."""
        try:
            for item in replay:
                await call.write(item)
            while not self._closing:
                item = await self._outbox.get()
                if item is _DONE:
                    break
                if self._sent is not None:
                    self._sent.append(item)
                await call.write(item)
            await call.done_writing()
        except Exception:  # the call failed: the reader reports its status
            pass

    async def _read(self) -> None:
        reopened = False
        try:
            while True:
                try:
                    async for msg in self._call:
                        self._sent = None
                        self._route(msg)
                    break
                except grpc.aio.AioRpcError as exc:
                    if reopened or not self._may_reopen(exc):
                        self._error = _translate(exc)
                        break
                    reopened = True
                    await self._reopen()
        except asyncio.CancelledError:
            self._error = asyncio.CancelledError()
            raise
        finally:
            err = self._error or TritonUnavailable("Triton closed the stream")
            for queue in self._pending.values():
                queue.put_nowait(err)

    def _route(self, msg: service_pb2.ModelStreamInferResponse) -> None:
        rid = msg.infer_response.id
        params = msg.infer_response.parameters
        final = "triton_final_response" in params and \
            params["triton_final_response"].bool_param
        if final:
            self._unanswered.discard(rid)
            if not self._unanswered:
                self._all_answered.set()
        queue = self._pending.get(rid)
        if queue is None:
            return
        if msg.error_message:
            queue.put_nowait(TritonModelError(msg.error_message))
            return
        queue.put_nowait(Response(decode_outputs(msg.infer_response), final))

    def _may_reopen(self, exc: grpc.aio.AioRpcError) -> bool:
        """Nothing answered yet and the connection failed (not Triton, not the caller)."""
        if self._sent is None or self._client is None or self._closing:
            return False
        if self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline:
            return False
        # INTERNAL "Internal error from Core": grpcio failed to write on a connection
        # that was closing (the message never left).
        return exc.code() == grpc.StatusCode.UNAVAILABLE or (
            exc.code() == grpc.StatusCode.INTERNAL
            and exc.details() == "Internal error from Core")

    async def _reopen(self) -> None:
        self._writer.cancel()
        await asyncio.wait({self._writer})
        stub = self._client.reconnect(self.stub)  # type: ignore[union-attr]
        self._call, self._writer = self._open(stub)

    def send(self, model: str, inputs: Mapping[str, Tensor], **kwargs) -> asyncio.Queue:
        """Queue a request; return the queue its responses (or an exception) arrive on."""
        if self._reader.done():
            raise self._error or TritonUnavailable("stream closed")
        if self._closing:
            raise TritonUnavailable("stream closed")
        rid = f"r{next(self._ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        self._pending[rid] = queue
        self._unanswered.add(rid)
        self._all_answered.clear()
        self._outbox.put_nowait(build_request(model, inputs, request_id=rid, **kwargs))
        queue.rid = rid  # type: ignore[attr-defined]
        return queue

    async def responses(self, queue: asyncio.Queue) -> AsyncIterator[Response]:
        """Yield a request's responses up to and including its final one."""
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.outputs:
                    yield item
                if item.final:
                    return
        finally:
            self._pending.pop(queue.rid, None)  # type: ignore[attr-defined]

    async def infer(self, model: str, inputs: Mapping[str, Tensor], **kwargs
                    ) -> AsyncIterator[Response]:
        async for item in self.responses(self.send(model, inputs, **kwargs)):
            yield item

    async def close(self) -> None:
        """Close the stream: Triton cancels every request still running on it.

        A stream whose requests are all answered is ended, not cancelled: cancelling
        a finished stream can leave its state behind in tritonserver 2.51 (a stream
        handler that waits forever for a callback), which keeps the model it used
        from unloading, so tritonserver cannot stop ("Exit timeout expired").
        """
        if self._registry is not None:
            self._registry.discard(self)
        try:
            if self._unanswered and not self._reader.done():
                # A final response may be on its way: cancelling right when it is
                # written is what leaves the stream's state behind in tritonserver.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._all_answered.wait(), CANCEL_GRACE_S)
            if not self._unanswered and not self._reader.done() and not self._closing:
                self._closing = True
                self._outbox.put_nowait(_DONE)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._reader), CLOSE_GRACE_S)
        finally:
            self._closing = True
            self._call.cancel()
            self._outbox.put_nowait(_DONE)
            self._writer.cancel()
            self._reader.cancel()
            for task in (self._writer, self._reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._client is not None:
                self._client.stream_closed()

    async def __aenter__(self) -> TritonStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _translate(exc: grpc.aio.AioRpcError) -> Exception:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return TritonUnavailable(f"Triton unavailable: {exc.details()}")
    if exc.code() == grpc.StatusCode.CANCELLED:
        return asyncio.CancelledError()
    return TritonModelError(exc.details() or str(exc.code()))


class TritonClient:
    """One gRPC channel to a Triton server (HTTP/2 multiplexes every stream on it)."""

    def __init__(self, url: str, keepalive: Keepalive | None = None):
        self.url = url
        self.keepalive = keepalive or Keepalive()
        self._channel = self._connect()
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        # channels replaced by reconnect(), closed once no open stream uses them
        self._retired: dict[service_pb2_grpc.GRPCInferenceServiceStub, grpc.aio.Channel] = {}
        self._closing: set[asyncio.Task] = set()
        self.open_streams: set[TritonStream] = set()  # leak checks and metrics

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            *self.keepalive.channel_options(),
            # Reconnect within ~2 s of a Triton restart (gRPC's default backoff grows to
            # 120 s, so a restarted server could stay unused for minutes).
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]

    def _connect(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.url, options=self.channel_options())

    def stream(self, timeout: float | None = None) -> TritonStream:
        return TritonStream(self._stub, timeout, self.open_streams, client=self)

    def reconnect(self, failed: service_pb2_grpc.GRPCInferenceServiceStub
                  ) -> service_pb2_grpc.GRPCInferenceServiceStub:
        """A stub on a new channel, replacing ``failed`` (once: a stream that failed on
        an already replaced channel gets the current one)."""
        if failed is self._stub:
            self._retired[self._stub] = self._channel
            self._channel = self._connect()
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.stream_closed()
        return self._stub

    def stream_closed(self) -> None:
        """Close the replaced channels that no open stream uses any more."""
        in_use = {s.stub for s in self.open_streams}
        for stub in [s for s in self._retired if s not in in_use]:
            task = asyncio.ensure_future(self._retired.pop(stub).close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _unary(self, method: str, request, timeout: float = 5.0):
        try:
            return await getattr(self._stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc) from exc

    async def server_ready(self) -> bool:
        try:
            resp = await self._unary("ServerReady", service_pb2.ServerReadyRequest(), 2.0)
        except (TritonUnavailable, TritonModelError):
            return False
        return resp.ready

    async def model_ready(self, name: str) -> bool:
        try:
            resp = await self._unary("ModelReady", service_pb2.ModelReadyRequest(name=name), 2.0)
        except (TritonUnavailable, TritonModelError):
            return False
        return resp.ready

    async def load(self, name: str, timeout: float = 300.0) -> None:
        await self._unary("RepositoryModelLoad",
                          service_pb2.RepositoryModelLoadRequest(model_name=name), timeout)

    async def unload(self, name: str) -> None:
        await self._unary("RepositoryModelUnload",
                          service_pb2.RepositoryModelUnloadRequest(model_name=name))

    async def index(self) -> list[dict]:
        resp = await self._unary("RepositoryIndex", service_pb2.RepositoryIndexRequest())
        return [{"name": m.name, "state": m.state, "reason": m.reason} for m in resp.models]

    async def close(self) -> None:
        for channel in [self._channel, *self._retired.values()]:
            await channel.close()
        self._retired.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
