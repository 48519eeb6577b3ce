"""A small asyncio client for Triton's gRPC streaming API, built for decoupled models.

Why not ``tritonclient.grpc.aio.stream_infer`` as is: it cannot ask for the empty
final response that a decoupled model sends when a request is complete, so a
caller cannot tell "no more responses" from "not yet". This client builds the
requests itself (with ``triton_enable_empty_final_response``), multiplexes many
requests over one bidirectional stream, routes each response to the request it
answers, and turns server errors into exceptions. Cancelling a stream cancels
every request on it inside Triton (the model sees ``is_cancelled()``).
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
_DONE = object()


class TritonUnavailable(ConnectionError):
    """Triton cannot be reached (down, restarting, wrong address)."""


class TritonModelError(RuntimeError):
    """Triton or the model answered a request with an error."""


Tensor = np.ndarray | str | bytes | list[str]


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
    """One bidirectional gRPC stream; many requests, responses routed by request id."""

    _ids = itertools.count(1)

    def __init__(self, stub: service_pb2_grpc.GRPCInferenceServiceStub, timeout: float | None,
                 registry: set | None = None):
        self._registry = registry
        if registry is not None:
            registry.add(self)
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._pending: dict[str, asyncio.Queue] = {}
        self._call = stub.ModelStreamInfer(self._requests(), timeout=timeout)
        self._reader = asyncio.create_task(self._read())
        self._error: BaseException | None = None

    async def _requests(self):
        while (item := await self._outbox.get()) is not _DONE:
            yield item

    async def _read(self) -> None:
        try:
            async for msg in self._call:
                rid = msg.infer_response.id
                queue = self._pending.get(rid)
                if queue is None:
                    continue
                if msg.error_message:
                    queue.put_nowait(TritonModelError(msg.error_message))
                    continue
                params = msg.infer_response.parameters
                final = "triton_final_response" in params and \
                    params["triton_final_response"].bool_param
                queue.put_nowait(Response(decode_outputs(msg.infer_response), final))
        except grpc.aio.AioRpcError as exc:
            self._error = _translate(exc)
        except asyncio.CancelledError:
            self._error = asyncio.CancelledError()
            raise
        finally:
            err = self._error or TritonUnavailable("Triton closed the stream")
            for queue in self._pending.values():
                queue.put_nowait(err)

    def send(self, model: str, inputs: Mapping[str, Tensor], **kwargs) -> asyncio.Queue:
        """Queue a request; return the queue its responses (or an exception) arrive on."""
        if self._reader.done():
            raise self._error or TritonUnavailable("stream closed")
        rid = f"r{next(self._ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        self._pending[rid] = queue
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
        """Cancel the stream: Triton cancels every request still running on it."""
        if self._registry is not None:
            self._registry.discard(self)
        self._call.cancel()
        self._outbox.put_nowait(_DONE)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

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

    def __init__(self, url: str):
        self.url = url
        self._channel = grpc.aio.insecure_channel(url, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Reconnect within ~2 s of a Triton restart (gRPC's default backoff grows to
            # 120 s, so a restarted server could stay unused for minutes).
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.open_streams: set[TritonStream] = set()  # leak checks and metrics

    def stream(self, timeout: float | None = None) -> TritonStream:
        return TritonStream(self._stub, timeout, self.open_streams)

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
        await self._channel.close()
