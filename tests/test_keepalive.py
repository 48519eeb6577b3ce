"""gRPC keepalive between our client and tritonserver, and streams reopened on a fresh
connection (issue 7, defect 1: "the first question after a quiet spell is lost").

What went wrong: the client pinged every 10 s also with no call open; tritonserver's
defaults count such pings as abuse, and gRPC held the third one back until the next
request, which carried it: Triton answered with GOAWAY ``too_many_pings`` and the
request died. The tests speed this up (a ping every second) instead of waiting minutes.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bench.stack import free_port
from pipelines.services import synthesize
from pipelines.triton_client import (
    Keepalive,
    TritonClient,
    TritonModelError,
    TritonStream,
    TritonUnavailable,
)
from streaming.settings import Settings
from streaming.triton_server import TritonServer

# A quiet spell of 5 s: the idle pings at 1, 2 and 3 s give two strikes and gRPC holds
# the next ping back until the second request (see IdlePinger).
IDLE_S = 5.0
KEEPALIVE_FLAGS = ("--grpc-keepalive", "--grpc-http2")


# -- the reopen, against a fake Triton --------------------------------------------------------
class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """ModelStreamInfer that echoes TEXT, and fails calls as its plan says:
    "before": UNAVAILABLE on the first request, before answering anything;
    "after": UNAVAILABLE on the second request, after answering the first.
    Requests to the model "hold" are never answered."""

    def __init__(self) -> None:
        self.plan: dict[int, str] = {}
        self.calls = 0
        self.received: list[tuple[int, str]] = []  # (call, request id)
        self.ended: list[tuple[int, str]] = []  # (call, "half-closed" | "cancelled")

    async def ModelStreamInfer(self, request_iterator, context):
        self.calls += 1
        call, mode, answered = self.calls, self.plan.get(self.calls), 0
        try:
            async for req in request_iterator:
                self.received.append((call, req.id))
                if mode == "before" or (mode == "after" and answered):
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost (fake)")
                if req.model_name == "hold":
                    continue
                resp = service_pb2.ModelInferResponse(model_name=req.model_name, id=req.id)
                resp.outputs.add(name="TEXT", datatype="BYTES", shape=[1])
                resp.raw_output_contents.append(req.raw_input_contents[0])
                resp.parameters["triton_final_response"].bool_param = True
                answered += 1
                yield service_pb2.ModelStreamInferResponse(infer_response=resp)
            # The requests end both when the client half-closes and when it cancels; a
            # cancel also cancels this handler, at once.
            await asyncio.sleep(0.2)
            self.ended.append((call, "half-closed"))
        except asyncio.CancelledError:
            self.ended.append((call, "cancelled"))
            raise


@pytest.fixture
async def fake():
    servicer = FakeTriton()
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = TritonClient(f"127.0.0.1:{port}")
    yield servicer, client
    await client.close()
    await server.stop(None)


async def _until(check, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_stream_that_fails_before_any_response_is_reopened_once(fake):
    servicer, client = fake
    servicer.plan = {1: "before"}
    first_channel = client._channel
    async with client.stream() as stream:
        out = [r.text("TEXT") async for r in stream.infer("echo", {"TEXT": "hello"})]
    assert out == ["hello"]
    assert servicer.calls == 2
    (c1, rid1), (c2, rid2) = servicer.received
    assert (c1, c2) == (1, 2) and rid1 == rid2  # the same request, sent again
    assert client._channel is not first_channel  # on a fresh connection
    assert not client._retired  # the old channel is closed once no stream uses it


async def test_a_stream_that_answered_is_not_reopened(fake):
    servicer, client = fake
    servicer.plan = {1: "after"}
    async with client.stream() as stream:
        assert [r.text("TEXT") async for r in stream.infer("echo", {"TEXT": "one"})] == ["one"]
        with pytest.raises(TritonUnavailable, match="connection lost"):
            [r async for r in stream.infer("echo", {"TEXT": "two"})]
    assert servicer.calls == 1  # nothing resent: that could repeat output


async def test_a_stream_is_reopened_only_once(fake):
    servicer, client = fake
    servicer.plan = {1: "before", 2: "before"}
    async with client.stream() as stream:
        with pytest.raises(TritonUnavailable, match="connection lost"):
            [r async for r in stream.infer("echo", {"TEXT": "x"})]
    assert servicer.calls == 2


async def test_close_ends_a_finished_stream_and_cancels_an_unfinished_one(fake):
    """Cancelling a finished stream can leave its state behind in tritonserver (and its
    models loaded at shutdown): a stream whose requests are all answered is ended."""
    servicer, client = fake
    async with client.stream() as stream:
        assert [r.text("TEXT") async for r in stream.infer("echo", {"TEXT": "a"})] == ["a"]
    await _until(lambda: len(servicer.ended) == 1)
    assert servicer.ended == [(1, "half-closed")]  # ended by the client, not cancelled

    stream = client.stream()
    stream.send("hold", {"TEXT": "b"})  # never answered: close() must cancel it
    await _until(lambda: len(servicer.received) == 2)
    await asyncio.wait_for(stream.close(), 1.0)
    await _until(lambda: len(servicer.ended) == 2)
    assert servicer.ended[1] == (2, "cancelled")
    assert not client.open_streams


# -- keepalive against a real tritonserver ------------------------------------------------------
class IdlePinger(TritonClient):
    """A client whose pings make a quiet spell fail within seconds, not minutes.

    Pings every second; after three pings without data gRPC holds the next one back
    until the client sends data again (by default after two, then one a minute: that
    is how the old 10 s pings lost a request after a few minutes), so the request
    after the quiet spell carries the ping that Triton rejects. No BDP pings (they
    would make the count vary) and a connection of its own. ``reopen=False``: a
    failed stream is not reopened, as before the fix.
    """

    def __init__(self, url: str, keepalive: Keepalive, *, reopen: bool):
        self.reopen = reopen
        super().__init__(url, keepalive)

    def channel_options(self) -> list[tuple[str, int]]:
        options = dict(super().channel_options())
        options.update({"grpc.http2.max_pings_without_data": 3, "grpc.http2.bdp_probe": 0,
                        "grpc.use_local_subchannel_pool": 1})
        return list(options.items())

    def stream(self, timeout: float | None = None) -> TritonStream:
        if self.reopen:
            return super().stream(timeout)
        return TritonStream(self._stub, timeout, self.open_streams)


OLD_PINGS = Keepalive(time_ms=1000, without_calls=True)  # the old policy, 10x faster
NEW_PINGS = Keepalive(time_ms=1000)  # the new policy: pings only with a call open


class TritonWithDefaults(TritonServer):
    """tritonserver as run elsewhere without our keepalive flags (its defaults)."""

    def command(self) -> list[str]:
        return [a for a in super().command() if not a.startswith(KEEPALIVE_FLAGS)]


def _piper_server(cls, model_store, tmp_path_factory, artifacts, name: str, **settings):
    s = Settings.from_env().replace(
        models_dir=model_store.root, state_dir=tmp_path_factory.mktemp(name),
        triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(), placement="cpu", **settings)
    return cls(s, models=["piper"], log_path=artifacts / f"{name}.log").start(wait_s=120)


@pytest.fixture(scope="module")
def triton_accepting_pings(model_store, tmp_path_factory, artifacts):
    """The tritonserver that rtmedia starts, for clients that ping every second."""
    server = _piper_server(TritonServer, model_store, tmp_path_factory, artifacts,
                           "tritonserver-keepalive", triton_keepalive_ms=OLD_PINGS.time_ms,
                           triton_keepalive_without_calls=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def triton_defaults(model_store, tmp_path_factory, artifacts):
    server = _piper_server(TritonWithDefaults, model_store, tmp_path_factory, artifacts,
                           "tritonserver-defaults")
    yield server
    server.stop()


async def _quiet_spell(client: TritonClient) -> list[str]:
    """A request, IDLE_S with no call open, another request: how each went."""
    results = []
    try:
        for i in range(2):
            if i:
                await asyncio.sleep(IDLE_S)
            try:
                chunks = [c async for c in synthesize(client, "Hello.")]
                results.append("ok" if chunks else "no audio")
            except (TritonUnavailable, TritonModelError) as exc:
                results.append(f"failed: {exc}")
    finally:
        await client.close()
    return results


def test_rtmedia_starts_triton_with_flags_that_accept_the_client_pings(tmp_path):
    settings = Settings(triton_keepalive_ms=30_000, state_dir=tmp_path)
    keepalive = settings.triton_keepalive()
    options = dict(keepalive.channel_options())
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_permit_without_calls"] == 0  # no pings while idle
    command = TritonServer(settings, models=["piper"]).command()
    assert "--grpc-keepalive-permit-without-calls=1" in command
    assert "--grpc-http2-min-recv-ping-interval-without-data=15000" in command


@pytest.mark.triton
async def test_idle_pings_that_triton_was_started_to_accept(triton_accepting_pings):
    client = IdlePinger(triton_accepting_pings.grpc_url, OLD_PINGS, reopen=False)
    assert await _quiet_spell(client) == ["ok", "ok"]


@pytest.mark.triton
async def test_quiet_spell_against_triton_defaults(triton_defaults):
    """The old client loses the request after the quiet spell (the defect, reproduced);
    reopening the stream saves it; the new policy sends no ping to reject."""
    url = triton_defaults.grpc_url
    old, reopened, new = await asyncio.gather(
        _quiet_spell(IdlePinger(url, OLD_PINGS, reopen=False)),
        _quiet_spell(IdlePinger(url, OLD_PINGS, reopen=True)),
        _quiet_spell(IdlePinger(url, NEW_PINGS, reopen=False)),
    )
    # the GOAWAY surfaces as "Too many pings", or as "Internal error from Core" when
    # grpcio was writing the request as the connection closed (the symptom)
    assert old[0] == "ok" and old[1].startswith("failed") and (
        "Too many pings" in old[1] or "Internal error from Core" in old[1]), old
    assert reopened == ["ok", "ok"]
    assert new == ["ok", "ok"]
