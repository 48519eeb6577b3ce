"""State the media-server replicas share: resumable sessions, the global session limit,
ephemeral client secrets.

In memory by default (one process: nothing to run). With ``RTMEDIA_REDIS_URL`` the same
state lives in Redis, so a client that reconnects through the load balancer to another
replica resumes its conversation, the session limit holds across replicas and a client
secret minted on one replica opens sessions on all. Redis is never required to serve:
while it is unreachable every call falls back to this process's memory (a warning once
per outage, ``rtmedia_redis_up`` 0, ``rtmedia_redis_errors_total``), and it is tried
again every ``retry_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import is_dataclass
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from streaming import metrics as M
from streaming.auth import SECRET_PREFIX, ClientSecret, MemorySecretStore

log = logging.getLogger(__name__)
T = TypeVar("T")

PREFIX = "rtmedia:"
SLOTS_KEY = PREFIX + "sessions"  # sorted set: slot token -> expiry (Redis server time)
SLOT_TTL_S = 45.0  # a replica that dies without releasing its slots loses them after this
HEARTBEAT_S = 15.0

# Atomic "take a slot if fewer than LIMIT are live": expired slots (their replica died)
# are dropped first. Redis' own clock, so replicas' clocks need not agree.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
return 1
"""
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
return #ARGV - 1
"""


def _secret_key(value: str) -> str:
    return PREFIX + "secret:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")
                                               ).hexdigest()


class MemoryState:
    """This process's share: the embedded default, and Redis' stand-in while it is down."""

    def __init__(self, max_sessions_kept: int = 10_000, max_bytes: int = 256 << 20,
                 clock: Callable[[], float] = time.time):
        self.clock = clock
        self.max_sessions_kept = max_sessions_kept
        self.max_bytes = max_bytes  # histories may hold images: bound the bytes, too
        self._sessions: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._bytes = 0
        self.slots: set[str] = set()
        self._counters: dict[str, tuple[int, float]] = {}
        self.secrets = MemorySecretStore(clock=clock)

    def save_session(self, session_id: str, state: dict, ttl_s: float) -> None:
        self._drop(session_id)
        data = json.dumps(state, separators=(",", ":"))
        self._sessions[session_id] = (self.clock() + ttl_s, data)
        self._bytes += len(data)
        while self._sessions and (len(self._sessions) > self.max_sessions_kept
                                  or self._bytes > self.max_bytes):
            self._drop(next(iter(self._sessions)))  # the least recently saved

    def _drop(self, session_id: str) -> None:
        entry = self._sessions.pop(session_id, None)
        if entry is not None:
            self._bytes -= len(entry[1])

    def load_session(self, session_id: str) -> dict | None:
        entry = self._sessions.get(session_id)
        if entry is None or entry[0] <= self.clock():
            self._drop(session_id)
            return None
        return json.loads(entry[1])

    def count(self, key: str, expires_at: float) -> int:
        """One more in the counter ``key`` (kept until ``expires_at``)."""
        now = self.clock()
        if len(self._counters) > 10_000:
            self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        n, _ = self._counters.get(key, (0, expires_at))
        self._counters[key] = (n + 1, expires_at)
        return n + 1

    def acquire_slot(self, token: str, limit: int) -> bool:
        if len(self.slots) >= limit:
            return False
        self.slots.add(token)
        return True


class StateStore:
    """The interface the server uses; memory only unless ``redis_url`` is given."""

    def __init__(self, redis_url: str = "", *, session_ttl_s: float = 3600.0,
                 retry_s: float = 2.0, timeout_s: float = 0.5):
        self.memory = MemoryState()
        self.session_ttl_s = session_ttl_s
        self.redis_url = redis_url
        self.retry_s = retry_s
        self._redis: Any = None
        self._down_until = 0.0
        self._down = False
        self._held: set[str] = set()  # this replica's slots (re-registered by heartbeat)
        # a release must not fall between the heartbeat's copy of _held and its write:
        # the heartbeat would put the released slot back for SLOT_TTL_S
        self._slots_lock = asyncio.Lock()
        if redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                decode_responses=True)
            M.REDIS_UP.set(0)

    @property
    def shared(self) -> bool:
        return self._redis is not None

    async def _try(self, op: Callable[[], Awaitable[T]], what: str) -> tuple[bool, T | None]:
        """Run a Redis operation: (True, result), or (False, None) when Redis is
        unreachable (then the caller uses memory)."""
        if self._redis is None or time.monotonic() < self._down_until:
            return False, None
        from redis.exceptions import RedisError

        try:
            result = await op()
        except (RedisError, OSError) as exc:  # unreachable, timeout, auth, OOM, read-only
            M.REDIS_ERRORS.inc()
            M.REDIS_UP.set(0)
            self._down_until = time.monotonic() + self.retry_s
            if not self._down:
                self._down = True
                log.warning("Redis at %s unreachable (%s: %s); %s and everything else uses "
                            "this process's memory until it is back", self._safe_url(),
                            type(exc).__name__, exc, what)
            return False, None
        if self._down:
            log.warning("Redis at %s reachable again", self._safe_url())
            self._down = False
        M.REDIS_UP.set(1)
        return True, result

    def _safe_url(self) -> str:
        url = self.redis_url
        return url.split("@", 1)[-1] if "@" in url else url

    # -- sessions -----------------------------------------------------------------------
    async def save_session(self, session_id: str, state: dict) -> None:
        data = json.dumps(state, separators=(",", ":"))
        ok, _ = await self._try(lambda: self._redis.set(
            PREFIX + "session:" + session_id, data, ex=max(1, int(self.session_ttl_s))),
            "session state")
        if not ok:
            self.memory.save_session(session_id, state, self.session_ttl_s)

    async def load_session(self, session_id: str) -> dict | None:
        ok, data = await self._try(lambda: self._redis.get(PREFIX + "session:" + session_id),
                                   "session state")
        if ok and data:
            return json.loads(data)
        return self.memory.load_session(session_id)  # saved here, or during an outage

    # -- the global session limit ------------------------------------------------------
    async def acquire_slot(self, limit: int) -> str | None:
        """A slot token when fewer than ``limit`` sessions are open on all replicas,
        else None. Release it with ``release_slot``."""
        token = secrets.token_hex(8)
        ok, got = await self._try(lambda: self._redis.eval(
            _ACQUIRE, 1, SLOTS_KEY, limit, SLOT_TTL_S, token), "the session limit")
        if ok:
            if not got:
                return None
            self._held.add(token)
            self.memory.slots.add(token)
            return token
        if not self.memory.acquire_slot(token, limit):
            return None
        self._held.add(token)
        return token

    async def release_slot(self, token: str) -> None:
        async with self._slots_lock:
            self._held.discard(token)
            self.memory.slots.discard(token)
            await self._try(lambda: self._redis.zrem(SLOTS_KEY, token), "the session limit")

    async def heartbeat(self) -> None:
        """Keep this replica's slots alive in Redis (and put back those taken while it
        was unreachable); slots of a replica that died expire after SLOT_TTL_S."""
        if self._held:
            async with self._slots_lock:
                held = list(self._held)
                await self._try(lambda: self._redis.eval(_REFRESH, 1, SLOTS_KEY, SLOT_TTL_S,
                                                         *held), "the session limit")
        else:
            await self._try(lambda: self._redis.ping(), "state")

    # -- per-credential rates ---------------------------------------------------------
    async def take_rate(self, who: str, limit: int, window_s: float = 60.0) -> float:
        """Count one event for ``who`` (a digest, never a credential) in the current
        ``window_s`` window shared by all replicas: 0 when it is within ``limit``, else
        the seconds until the window ends."""
        now = time.time()
        window = int(now // window_s)
        key = f"{PREFIX}rate:{who}:{window}"
        wait = (window + 1) * window_s - now

        async def incr() -> int:
            async with self._redis.pipeline(transaction=True) as pipe:
                count, _ = await pipe.incr(key).expire(key, int(window_s * 2)).execute()
            return count

        ok, count = await self._try(incr, "rate limits")
        if not ok:
            count = self.memory.count(key, now + window_s * 2)
        return 0.0 if count <= limit else wait

    # -- client secrets (streaming.auth.SecretStore) -----------------------------------
    async def mint(self, ttl_s: float) -> ClientSecret:
        value = SECRET_PREFIX + secrets.token_urlsafe(32)
        expires_at = time.time() + ttl_s
        ok, _ = await self._try(lambda: self._redis.set(
            _secret_key(value), "1", px=max(1, int(ttl_s * 1000))), "client secrets")
        if ok:
            return ClientSecret(value, expires_at)
        return await self.memory.secrets.mint(ttl_s)  # valid on this replica only

    async def valid(self, value: str) -> bool:
        if not value.startswith(SECRET_PREFIX):
            return False
        ok, found = await self._try(lambda: self._redis.exists(_secret_key(value)),
                                    "client secrets")
        return bool(ok and found) or await self.memory.secrets.valid(value)

    async def close(self) -> None:
        for token in list(self._held):
            await self.release_slot(token)
        if self._redis is not None:
            await self._redis.aclose()


# -- what a session resumes with ---------------------------------------------------------
def snapshot(session: Any) -> dict:
    """A RealtimeSession's resumable state: its settings and conversation (not audio in
    flight). JSON-serialisable; the inverse of ``restore``."""
    from dataclasses import asdict

    agent = session.agent
    return {
        "v": 1, "kind": session.kind, "beta": session.beta, "model": session.model,
        "input_rate": session.input_rate, "output_modalities": session.output_modalities,
        "configured": session.configured, "config": asdict(agent.config),
        "items": [_item_state(i) for i in agent.conversation.items],
    }


def _item_state(item: Any) -> dict:
    """A conversation item as JSON: every field of pipelines.conversation.Item (spans as
    [text, start, end], images as base64)."""
    import base64
    from dataclasses import fields

    out = {}
    for f in fields(item):
        value = getattr(item, f.name)
        if f.name == "spans":
            value = [[s.text, s.start_s, s.end_s] for s in value]
        elif f.name == "images":
            value = [base64.b64encode(b).decode() for b in value]
        out[f.name] = value
    return out


def _item_from_state(data: dict) -> Any:
    import base64
    from dataclasses import fields

    from pipelines.conversation import Item, Span

    known = {f.name for f in fields(Item)}
    values = {k: v for k, v in data.items() if k in known}
    values["spans"] = [Span(t, a, b) for t, a, b in values.get("spans", [])]
    if "images" in values:
        values["images"] = tuple(base64.b64decode(b) for b in values["images"])
    return Item(**values)


def _protocol_item(item: Any) -> dict:
    """How the client sees a restored item (as conversation.item.added would show it)."""
    kind = getattr(item, "type", "message")
    if kind == "function_call":
        return {"id": item.id, "object": "realtime.item", "type": kind, "status": "completed",
                "call_id": item.call_id, "name": item.name, "arguments": item.arguments}
    if kind == "function_call_output":
        return {"id": item.id, "object": "realtime.item", "type": kind,
                "call_id": item.call_id, "output": item.text}
    part = "input_text" if item.role != "assistant" else "output_text"
    content = [{"type": "input_image"} for _ in getattr(item, "images", ())]
    content += [{"type": part, "text": item.text}] if item.text else []
    return {"id": item.id, "object": "realtime.item", "type": "message", "role": item.role,
            "status": "completed", "content": content}


def _rebuild(hint: Any, value: Any) -> Any:
    """A config value back from JSON: dicts become the dataclass the field holds
    (``VadConfig``, an optional end-of-turn config ...), lists of two become tuples."""
    if isinstance(value, dict):
        for cls in (hint, *get_args(hint)):
            if is_dataclass(cls):
                hints = get_type_hints(cls)
                return cls(**{k: _rebuild(hints[k], v) for k, v in value.items() if k in hints})
    if isinstance(value, list) and (hint is tuple or get_origin(hint) is tuple):
        return tuple(value)
    return value


def restore(session: Any, state: dict, session_id: str) -> list[dict]:
    """Give a new RealtimeSession (before ``start()``) the id, settings and conversation
    of ``state``; returns the restored items as protocol items, for the client."""
    from pipelines.agent import AgentConfig

    session.id = session_id
    session.agent.session_id = session_id
    session.kind = state.get("kind", session.kind)
    session.beta = bool(state.get("beta", session.beta))
    session.model = state.get("model", session.model)
    session.input_rate = int(state.get("input_rate", session.input_rate))
    session.output_modalities = list(state.get("output_modalities",
                                               session.output_modalities))
    session.configured = bool(state.get("configured", False))
    config = dict(state.get("config") or {})
    hints = get_type_hints(AgentConfig)
    changes = {k: _rebuild(hints[k], v) for k, v in config.items() if k in hints}
    if session.media is not None:
        changes.pop("output_rate", None)  # WebRTC tracks have their own rate
    session.agent.configure(**changes)
    items = [_item_from_state(i) for i in state.get("items", [])]
    session.agent.conversation.items = items
    if items and hasattr(session.agent, "_last_item"):  # the next item's previous_item_id
        session.agent._last_item = items[-1].id
    out, previous = [], None
    for item in items:
        out.append({"previous_item_id": previous, "item": _protocol_item(item)})
        previous = item.id
    return out


class SessionSaver:
    """Saves one session's state after the events that change it, one write at a time
    (a change during a write is saved right after it), and once more at the end."""

    SAVE_AFTER = frozenset({
        "session.updated", "response.done", "conversation.item.added",
        "conversation.item.created",  # the beta name
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.truncated", "conversation.item.deleted"})

    def __init__(self, store: StateStore, session: Any):
        self.store = store
        self.session = session
        self._dirty = False
        self._task: Any = None

    def after(self, event_type: str) -> None:
        if event_type in self.SAVE_AFTER:
            self._dirty = True
            if self._task is None or self._task.done():
                import asyncio

                self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self.store.save_session(self.session.id, snapshot(self.session))
            except Exception:  # saving must never break the session
                log.exception("session %s: saving its state failed", self.session.id)

    async def final(self) -> None:
        if self._task is not None:
            await self._task
        self._dirty = True
        await self._run()
