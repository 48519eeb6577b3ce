"""Shared state in a real redis-server (Debian's package): the store itself (unit tier,
its own redis-server), then across the two replicas of tests/deploy_stack.py: a
conversation resumes on the other replica, the global session limit, client secrets
valid everywhere until they expire, Redis stopped mid-run."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
import websockets

from streaming import metrics as M
from streaming.state_store import SLOTS_KEY, StateStore
from tests.deploy_stack import AUTH, GLOBAL_MAX_SESSIONS, Redis, wait_until


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = Redis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


# -- the store (unit tier) ---------------------------------------------------------------
async def test_store_shares_sessions_slots_and_secrets(redis_server):
    a = StateStore(redis_url=redis_server.url, session_ttl_s=60)
    b = StateStore(redis_url=redis_server.url, session_ttl_s=60)
    try:
        await a.save_session("sess_abc", {"items": [{"text": "hello"}]})
        assert await b.load_session("sess_abc") == {"items": [{"text": "hello"}]}
        assert await b.load_session("sess_missing") is None
        # one limit for both "replicas"
        slots = [await a.acquire_slot(3), await b.acquire_slot(3), await a.acquire_slot(3)]
        assert all(slots) and await b.acquire_slot(3) is None
        await a.release_slot(slots[0])
        fourth = await b.acquire_slot(3)
        assert fourth is not None
        # a secret minted by one is valid on the other, until it expires
        secret = await a.mint(1.0)
        assert await b.valid(secret.value) and not await b.valid(secret.value + "x")
        await asyncio.sleep(1.2)
        assert not await b.valid(secret.value)
        await b.release_slot(fourth)
    finally:
        await a.close()
        await b.close()
    import redis

    assert redis.Redis(port=redis_server.port).zcard(SLOTS_KEY) == 0  # close releases


def test_memory_keeps_sessions_within_its_bounds():
    from streaming.state_store import MemoryState

    now = [0.0]
    memory = MemoryState(max_sessions_kept=3, max_bytes=2_000, clock=lambda: now[0])
    for i in range(4):
        memory.save_session(f"s{i}", {"items": ["x" * 100]}, ttl_s=10)
    assert memory.load_session("s0") is None  # the oldest out past 3
    assert memory.load_session("s3") == {"items": ["x" * 100]}
    memory.save_session("big", {"items": ["y" * 1_500]}, ttl_s=10)  # past 2,000 bytes
    assert memory.load_session("s1") is None and memory.load_session("big")
    now[0] = 11
    assert memory.load_session("big") is None  # expired


async def test_store_falls_back_to_memory_while_redis_is_down(tmp_path, caplog):
    server = Redis(tmp_path / "redis")
    server.start()
    store = StateStore(redis_url=server.url, retry_s=0.2)
    try:
        await store.save_session("sess_before", {"v": 1})
        assert M.REDIS_UP._value.get() == 1
        errors = M.REDIS_ERRORS._value.get()
        server.stop()
        with caplog.at_level(logging.WARNING, "streaming.state_store"):
            secret = await store.mint(30)  # in memory: valid on this replica
            assert await store.valid(secret.value)
            await store.save_session("sess_during", {"v": 2})
            assert await store.load_session("sess_during") == {"v": 2}
            assert await store.acquire_slot(5)
        assert M.REDIS_UP._value.get() == 0
        assert M.REDIS_ERRORS._value.get() > errors
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1  # once per outage, not per call
        server.start()  # same port
        await asyncio.sleep(0.3)
        await store.heartbeat()  # puts the slot taken during the outage back in Redis
        assert M.REDIS_UP._value.get() == 1
        import redis

        assert redis.Redis(port=server.port).zcard(SLOTS_KEY) == 1
        assert await store.valid(secret.value)  # the outage's secret still works here
    finally:
        await store.close()
        server.stop()


async def test_snapshot_restores_settings_and_history_on_a_new_session():
    """The state a replica saves is the session's settings and conversation; a new
    session restored from it (JSON round trip) answers from that history."""
    from dataclasses import replace

    from pipelines.turns import SemanticTurn
    from streaming.realtime import RealtimeSession
    from streaming.state_store import restore, snapshot
    from tests.fakes import FakeClock, fake_services

    clock, sent = FakeClock(), []

    async def send(event: dict) -> None:
        sent.append(event)

    first = RealtimeSession(send, None, services=fake_services(clock))
    await first.start()
    await first.handle(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["text"], "instructions": "Be a pirate.",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}))
    first.agent.configure(semantic=replace(SemanticTurn(), complete_ms=250))
    await first.handle(message("user", "My name is Ada."))
    await first.handle(message("assistant", "Ahoy Ada."))
    first.agent.conversation.add("item_call", "assistant", "")
    first.agent.conversation.items[-1].type = "function_call"
    first.agent.conversation.items[-1].call_id = "call_1"
    first.agent.conversation.items[-1].name = "get_weather"
    first.agent.conversation.items[-1].arguments = '{"city": "Oslo"}'
    first.agent.conversation.items[0].images = (b"\x89PNG fake",)
    await clock.advance(0.1)
    state = json.loads(json.dumps(snapshot(first)))
    await first.close()

    second = RealtimeSession(send, None, services=fake_services(clock))
    items = restore(second, state, first.id)
    assert second.id == first.id and second.input_rate == 16000
    assert second.agent.config.instructions == "Be a pirate."
    assert second.agent.config.semantic == replace(SemanticTurn(), complete_ms=250)
    assert second.agent.config.audio_output is False
    assert [i["item"]["content"][-1]["text"] for i in items[:2]] == ["My name is Ada.",
                                                                     "Ahoy Ada."]
    assert items[0]["item"]["content"][0] == {"type": "input_image"}
    assert items[2]["item"]["type"] == "function_call"
    assert items[2]["item"]["arguments"] == '{"city": "Oslo"}'
    restored = second.agent.conversation.items
    assert [(i.id, i.role, i.text, i.type) for i in restored] == [
        (i.id, i.role, i.text, i.type) for i in first.agent.conversation.items]
    assert restored[0].images == (b"\x89PNG fake",) and restored[2].call_id == "call_1"
    second.agent.conversation.items.pop()  # the fakes answer plain messages
    sent.clear()
    await second.start()
    await second.handle(json.dumps({"type": "response.create"}))
    for _ in range(50):
        await clock.advance(0.1)
        if any(e["type"] == "response.done" for e in sent):
            break
    done = next(e for e in sent if e["type"] == "response.done")
    assert done["response"]["status"] == "completed"
    await second.close()


# -- across the replicas (real tier) -------------------------------------------------------
async def connect(replica, query: str = "", headers: dict | None = None):
    ws = await websockets.connect(replica.ws + query, additional_headers=headers or AUTH,
                                  compression=None, max_size=None)
    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return ws, first


async def until(ws, type_: str, timeout: float = 60) -> dict:
    deadline, seen = time.monotonic() + timeout, []
    while True:
        try:
            event = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        except TimeoutError:
            raise AssertionError(f"no {type_} after {timeout} s; got {seen}") from None
        if event["type"] == type_:
            return event
        seen.append(event["type"])
        assert event["type"] != "error", event


def message(role: str, text: str) -> str:
    part = "input_text" if role == "user" else "output_text"
    return json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": role, "content": [{"type": part, "text": text}]}})


async def resumed_items(ws, n: int) -> list[dict]:
    items = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(n)]
    assert [i["type"] for i in items] == ["conversation.item.added"] * n, items
    return [(i["item"]["role"], i["item"]["content"][0]["text"]) for i in items]


@pytest.mark.triton
async def test_conversation_resumes_on_the_other_replica(deploy_stack):
    """Settings and history saved by one replica (no LLM needed: the history is made
    with conversation.item.create) are what the other one resumes with, and it keeps
    saving: the conversation grows across two reconnects."""
    one, two = deploy_stack.replicas
    ws, created = await connect(one)
    sid = created["session"]["id"]
    await ws.send(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["text"], "max_output_tokens": 16,
        "instructions": "You are a pirate. Answer in five words."}}))
    await until(ws, "session.updated")
    await ws.send(message("user", "My name is Ada."))
    await ws.send(message("assistant", "Ahoy Ada, welcome aboard!"))
    await until(ws, "conversation.item.added")
    await until(ws, "conversation.item.added")
    await ws.close()
    await asyncio.sleep(0.3)  # the final save after the close

    ws, created = await connect(two, f"?resume={sid}")
    session = created["session"]
    assert session["id"] == sid
    assert session["instructions"] == "You are a pirate. Answer in five words."
    assert session["output_modalities"] == ["text"] and session["max_output_tokens"] == 16
    assert await resumed_items(ws, 2) == [("user", "My name is Ada."),
                                          ("assistant", "Ahoy Ada, welcome aboard!")]
    await ws.send(message("user", "Where are we sailing?"))
    await until(ws, "conversation.item.added")
    await ws.close()
    await asyncio.sleep(0.3)
    assert two.metric("rtmedia_sessions_resumed_total") >= 1

    ws, created = await connect(one, f"?resume={sid}")  # and back
    try:
        assert created["session"]["id"] == sid
        assert [text for _, text in await resumed_items(ws, 3)][-1] == "Where are we sailing?"
    finally:
        await ws.close()
    # an unknown id: an error event, and a new session
    ws, created = await connect(two, "?resume=sess_unknown0000")
    try:
        assert created["session"]["id"] != "sess_unknown0000"
        error = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error["type"] == "error" and error["error"]["code"] == "session_not_found"
    finally:
        await ws.close()


@pytest.mark.triton
async def test_global_session_limit_and_secrets_hold_across_replicas(deploy_stack):
    one, two = deploy_stack.replicas
    await asyncio.to_thread(wait_until, lambda: one.sessions_open() + two.sessions_open() == 0,
                            20, "no sessions left from earlier tests")
    # per replica 4, all together GLOBAL_MAX_SESSIONS (5)
    open_ = [await connect(one) for _ in range(3)] + [await connect(two) for _ in range(2)]
    try:
        assert all(first["type"] == "session.created" for _, first in open_)
        for replica in (one, two):
            ws, first = await connect(replica)
            assert first["type"] == "error" and first["error"]["code"] == "session_limit"
            assert str(GLOBAL_MAX_SESSIONS) in first["error"]["message"]
            await ws.close()
        await open_.pop(0)[0].close()  # one ends on replica one: replica two takes one
        deadline = time.monotonic() + 15  # its slot is released once its session closed
        while True:
            ws, first = await connect(two)
            if first["type"] == "session.created" or time.monotonic() > deadline:
                break
            await ws.close()
            await asyncio.sleep(0.2)
        open_.append((ws, first))
        assert first["type"] == "session.created", first
    finally:
        for ws, _ in open_:
            await ws.close()
    # a client secret minted on one replica opens sessions on the other until it expires
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
            one.http + "/v1/realtime/client_secrets", headers=AUTH,
            json={"expires_after": {"anchor": "created_at", "seconds": 4}}) as r:
        assert r.status == 200
        secret = (await r.json())["value"]
    ws, first = await connect(two, headers={"Authorization": "Bearer " + secret})
    assert first["type"] == "session.created"
    await ws.close()
    await asyncio.sleep(4.3)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(two, headers={"Authorization": "Bearer " + secret})
    assert refused.value.response.status_code == 401


@pytest.mark.triton
async def test_redis_stopped_mid_run_sessions_go_on(deploy_stack):
    one, _ = deploy_stack.replicas
    ws, _ = await connect(one)
    try:
        deploy_stack.redis.stop()
        # the open session goes on (its saves fall back to memory) ...
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "instructions": "Be brief."}}))
        await until(ws, "session.updated")
        # ... and new sessions open
        ws2, first2 = await connect(one)
        assert first2["type"] == "session.created"
        await ws2.close()
        assert one.metric("rtmedia_redis_up") == 0
        assert one.metric("rtmedia_redis_errors_total") > 0
        assert "Redis at" in one.log.read_text()
    finally:
        await ws.close()
        deploy_stack.redis.start()  # same port: the replicas reconnect by themselves

    async def back() -> bool:
        ws3, _ = await connect(one)
        await ws3.close()
        return one.metric("rtmedia_redis_up") == 1

    deadline = time.monotonic() + 10
    while not await back():
        assert time.monotonic() < deadline, "the replica did not reconnect to Redis"
        await asyncio.sleep(0.5)


async def test_sessions_per_minute_per_credential_across_two_replicas(redis_server, tmp_path):
    """RTMEDIA_SESSIONS_PER_MINUTE counted in Redis: two media servers (in this process)
    share one count per credential; another credential has its own."""
    import aiohttp

    from tests.test_auth import KEY, keyed_settings, serve

    left = 60 - time.time() % 60
    if left < 5:  # the count is per minute: start in a fresh one
        await asyncio.sleep(left + 0.1)
    auth = {"Authorization": "Bearer " + KEY}
    settings = {"redis_url": redis_server.url, "sessions_per_minute": 3}
    async with serve(keyed_settings(tmp_path, **settings)) as a, \
            serve(keyed_settings(tmp_path, **settings)) as b:

        async def status(server, headers: dict) -> int:
            try:
                async with websockets.connect(server.ws, additional_headers=headers) as ws:
                    assert json.loads(await ws.recv())["type"] == "session.created"
                    return 101
            except websockets.InvalidStatus as exc:
                return exc.response.status_code

        assert [await status(a, auth), await status(b, auth), await status(a, auth)] == [101] * 3
        assert await status(b, auth) == 429
        assert await status(a, auth) == 429
        async with aiohttp.ClientSession() as http, http.post(
                a.http + "/v1/realtime/client_secrets", headers=auth) as r:
            secret = (await r.json())["value"]
        assert await status(b, {"Authorization": "Bearer " + secret}) == 101
