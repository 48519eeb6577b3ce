"""The media server: HTTP + WebSocket (aiohttp), health, readiness, metrics, the web demo.

Endpoints (access needed when RTMEDIA_API_KEY is set; see streaming/auth.py):
  GET  /v1/realtime                  WebSocket, OpenAI Realtime protocol     key or client secret
  GET  /v1/realtime?intent=transcription   captions only                   key or client secret
  POST /v1/realtime/calls            WebRTC SDP offer -> answer              key or client secret
  POST /v1/realtime/client_secrets   mint an ephemeral client secret         key (demo pages: see
                                                                             RTMEDIA_DEMO_PAGES_MINT)
  GET  /v1/config                    ICE servers, avatar, mouth area         open; TURN credentials
                                                                             only with a credential
  GET  /healthz                      the process is up                       open
  GET  /readyz                       200 only when the models are ready      open; reasons only
                                                                             with the key
  GET  /metrics                      Prometheus                              key (or a separate
                                                                             listener: METRICS_PORT)
  POST /v1/chat/completions          OpenAI chat (text, images, video; SSE)  key
  GET  /v1/models, POST /v1/models/NAME/load|unload   heavy models     key
  GET  /                             the web demo (static files)             open
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from pathlib import Path

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipelines.router import ModelRouter
from streaming import auth, chat_completions, forwarded
from streaming import metrics as M
from streaming.auth import ACCESS, Access
from streaming.realtime import Limits, RealtimeSession
from streaming.settings import Settings
from streaming.state_store import SessionSaver, StateStore, restore

log = logging.getLogger(__name__)
WEB_DEMO = Path(__file__).resolve().parent.parent / "web_demo"
# An HTTP request body (SDP offers are a few kB, client-secret requests less).
MAX_BODY_BYTES = 1 << 20
WS_HEARTBEAT_S = 20.0


async def claim_session(settings: Settings, store: StateStore,
                        sessions: set) -> tuple[object | None, int | None]:
    """Room for one more session: this process's limit, then the one of all replicas
    together (a slot held in the shared store). ``(slot, None)`` when it may start;
    ``(None, limit)`` when it is refused at ``limit`` (counted in the metrics)."""
    slot, limit = None, settings.max_sessions
    at_limit = len(sessions) >= limit
    if not at_limit and settings.global_max_sessions:  # all replicas together
        slot = await store.acquire_slot(settings.global_max_sessions)
        at_limit, limit = slot is None, settings.global_max_sessions
    if not at_limit:
        return slot, None
    M.SESSIONS_REFUSED.inc()
    M.ERRORS.labels("session_limit").inc()
    return None, limit


def hard_message_cap(settings: Settings) -> int:
    """Bytes of one WebSocket message (aiohttp counts the frame's UTF-8 bytes): between
    max_message_bytes and this the client gets an error event and the session goes on,
    above it the socket closes with 1009 before the message is buffered whole."""
    return max(2 * settings.max_message_bytes, 64 << 10)

ROUTER = web.AppKey("router", ModelRouter)
SETTINGS = web.AppKey("settings", Settings)
SESSIONS = web.AppKey("sessions", set)
AVATAR = web.AppKey("avatar", object)
AUTH = web.AppKey("auth", auth.Auth)
METRICS_RUNNER = web.AppKey("metrics_runner", web.AppRunner)
# Set on SIGTERM: /readyz answers 503 and new sessions are refused (503, so a proxy retries
# another replica) while the open ones finish (see drain()).
DRAINING = web.AppKey("draining", asyncio.Event)
# Resumable sessions, the global session limit, client secrets (Redis or this process)
STATE = web.AppKey("state", StateStore)
HEARTBEAT = web.AppKey("heartbeat", asyncio.Task)
RESUME_ID = re.compile(r"sess_[A-Za-z0-9]{1,64}")

# What each route needs; a route missing here needs the key (static pages are open).
ROUTE_ACCESS = {
    "/v1/realtime": Access.SECRET,
    "/v1/realtime/calls": Access.SECRET,
    "/v1/realtime/client_secrets": Access.NONE,  # the handler decides (key or demo page)
    "/v1/config": Access.NONE,  # TURN credentials only with a credential
    "/healthz": Access.NONE,
    "/readyz": Access.NONE,  # details only with the key
    "/metrics": Access.KEY,
    "/": Access.NONE,  # redirect to the page
}


def required_access(request: web.Request) -> Access:
    route = request.match_info.route
    resource = route.resource
    if resource is None or isinstance(resource, web.StaticResource):
        return Access.NONE  # 404 / 405 answers, and the static pages
    return ROUTE_ACCESS.get(resource.canonical, Access.KEY)


def make_router(settings: Settings) -> ModelRouter:
    url = settings.triton_url or f"{settings.triton_host}:{settings.triton_grpc_port}"
    return ModelRouter(url, dict(settings.triton_urls), {
        "stt": settings.stt_model, "tts": settings.tts_model, "agent": settings.llm_model,
        "stt_multilingual": settings.stt_multilingual_model, "turn": settings.turn_model,
        "avatar": settings.avatar_model}, keepalive=settings.triton_keepalive())


def create_app(settings: Settings, router: ModelRouter | None = None,
               secrets: auth.SecretStore | None = None) -> web.Application:
    state = StateStore(settings.redis_url, session_ttl_s=settings.session_state_ttl_s)
    guard = auth.Auth(settings.api_key, secrets or state, auth.Origins(settings.allowed_origins),
                      demo_pages_mint=settings.demo_pages_mint)
    auth.install_log_redaction(settings.api_key)
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[
        forwarded.middleware(forwarded.parse_networks(settings.trusted_proxies)),
        auth.middleware(guard, required_access)])
    app[SETTINGS] = settings
    app[AUTH] = guard
    app[ROUTER] = router or make_router(settings)
    app[SESSIONS] = set()
    app[DRAINING] = asyncio.Event()
    app[STATE] = state
    # POST /v1/chat/completions, /v1/models; heavy models loaded on first use
    chat_completions.install(app, app[ROUTER], settings)
    app.router.add_get("/v1/realtime", realtime_ws)
    app.router.add_post("/v1/realtime/calls", realtime_call)
    app.router.add_post("/v1/realtime/client_secrets", client_secrets)
    app.router.add_get("/v1/config", client_config)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if WEB_DEMO.is_dir():
        app.router.add_get("/", index)
        app.router.add_static("/", WEB_DEMO, show_index=False)
    app.on_startup.append(_load_avatar)
    app.on_startup.append(_start_metrics_listener)
    app.on_startup.append(_start_heartbeat)
    app.on_shutdown.append(_close_sessions)
    app.on_cleanup.append(_stop_metrics_listener)
    app.on_cleanup.append(lambda a: a[ROUTER].close())
    app.on_cleanup.append(_stop_state)
    return app


async def _start_heartbeat(app: web.Application) -> None:
    """With Redis: keep this replica's session slots alive there (see StateStore)."""
    store = app[STATE]
    if not store.shared:
        return

    async def beat() -> None:
        from streaming.state_store import HEARTBEAT_S

        while True:
            await store.heartbeat()
            await asyncio.sleep(HEARTBEAT_S)

    app[HEARTBEAT] = asyncio.create_task(beat())


async def _stop_state(app: web.Application) -> None:
    task = app.get(HEARTBEAT)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await app[STATE].close()


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/index.html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Open for probes; which model is not ready, and where Triton is, only with the key."""
    if request.app[DRAINING].is_set():
        return web.json_response({"ready": False, "draining": True}, status=503)
    router: ModelRouter = request.app[ROUTER]
    problems = []
    for use_case in ("stt", "tts", "agent"):
        route = router.route(use_case)
        if not await route.client.model_ready(route.model):
            problems.append(f"{use_case}: model {route.model!r} not ready at "
                            f"{route.client.url}")
    status = 503 if problems else 200
    body: dict = {"ready": not problems}
    if request[ACCESS] >= Access.KEY:
        body["problems"] = problems
    return web.json_response(body, status=status)


async def metrics(request: web.Request) -> web.Response:
    router: ModelRouter = request.app[ROUTER]
    M.TRITON_STREAMS.set(router.open_streams())
    # fresh at every scrape, for the alert rules; asked together (Triton down: one 2 s
    # deadline, not one per model, well inside Prometheus' scrape timeout)
    routes = {uc: router.route(uc) for uc in ("stt", "tts", "agent")}
    ready = await asyncio.gather(*(r.client.model_ready(r.model) for r in routes.values()))
    for (use_case, route), ok in zip(routes.items(), ready, strict=True):
        M.MODEL_READY.labels(use_case, route.model).set(1 if ok else 0)
    body = generate_latest(M.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _start_metrics_listener(app: web.Application) -> None:
    """``RTMEDIA_METRICS_PORT``: /metrics without auth on its own address (for a
    Prometheus on a private network); the main port's /metrics still needs the key."""
    settings: Settings = app[SETTINGS]
    if not settings.metrics_port:
        return
    side = web.Application()
    side[ROUTER] = app[ROUTER]
    side.router.add_get("/metrics", metrics)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    app[METRICS_RUNNER] = runner
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)


async def _stop_metrics_listener(app: web.Application) -> None:
    runner = app.get(METRICS_RUNNER)
    if runner is not None:
        await runner.cleanup()


async def client_secrets(request: web.Request) -> web.Response:
    """``POST /v1/realtime/client_secrets`` (OpenAI's shape): an ephemeral secret a page
    or device uses instead of the API key, for at most ``RTMEDIA_CLIENT_SECRET_TTL_S``.
    Needs the key, or (``RTMEDIA_DEMO_PAGES_MINT=1``) a page of this server's own origin.
    Body (optional): ``{"expires_after": {"anchor": "created_at", "seconds": N},
    "session": {...}}``; the session is echoed, not applied (send ``session.update``)."""
    guard: auth.Auth = request.app[AUTH]
    settings: Settings = request.app[SETTINGS]
    if request[ACCESS] < Access.KEY and not guard.may_mint_for_page(request):
        return auth.unauthorized("minting a client secret needs the API key")
    ttl = settings.client_secret_ttl_s
    body: dict = {}
    if request.can_read_body:
        try:
            body = json.loads(await request.text() or "{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
            after = body.get("expires_after") or {}
            if not isinstance(after, dict) or after.get("anchor", "created_at") != "created_at":
                raise ValueError("expires_after")
            seconds = after.get("seconds", ttl)
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                    or not 1 <= seconds:
                raise ValueError("expires_after.seconds")
            session = body.get("session")
            if session is not None and not isinstance(session, dict):
                raise ValueError("session")
        except ValueError as exc:
            return web.json_response({"error": {
                "type": "invalid_request_error", "code": "invalid_request",
                "message": f"invalid body ({str(exc)[:80]}): expected "
                           '{"expires_after": {"anchor": "created_at", "seconds": N}}'}},
                status=400)
        ttl = min(float(seconds), ttl)
    try:
        secret = await guard.store.mint(ttl)
    except auth.SecretStoreFull:
        return web.json_response({"error": {"type": "server_error", "code": "too_many_secrets",
                                            "message": "too many live client secrets"}},
                                 status=503)
    log.info("client secret minted for %s, valid %.0f s", request.remote, ttl)
    return web.json_response({"value": secret.value, "expires_at": int(secret.expires_at),
                              "session": body.get("session") or {"type": "realtime"}})


async def realtime_ws(request: web.Request) -> web.StreamResponse:
    settings: Settings = request.app[SETTINGS]
    sessions: set = request.app[SESSIONS]
    if request.app[DRAINING].is_set():
        return draining_refusal()
    if (refused := await session_rate_refusal(request)) is not None:
        return refused
    # The handshake never sees the credential subprotocol: aiohttp would log it (a
    # WARNING: no overlap with ours) and must not echo it back as the chosen protocol.
    handshake = auth.without_credential_protocols(request)
    offered = auth.offered_protocols(handshake.headers)
    ws = web.WebSocketResponse(max_msg_size=hard_message_cap(settings), compress=False,
                               heartbeat=WS_HEARTBEAT_S, protocols=["realtime"])
    await ws.prepare(handshake)
    kind = "transcription" if request.query.get("intent") == "transcription" else "realtime"
    beta = ("realtime=v1" in request.headers.get("OpenAI-Beta", "")
            or "openai-beta.realtime-v1" in offered)
    store: StateStore = request.app[STATE]
    slot, limit = await claim_session(settings, store, sessions)
    if limit is not None:
        await ws.send_json({"type": "error", "event_id": "event_refused", "error": {
            "type": "server_error", "code": "session_limit",
            "message": f"the server is at its limit of {limit} concurrent "
                       "sessions; try again later"}})
        await _close(ws, request, 1013, b"session limit")
        return ws

    send_lock = asyncio.Lock()
    dropping: list[asyncio.Task] = []

    def drop(reason: str) -> None:
        """The client does not read what we send: close it (1008) rather than queue
        without limit. The error event goes into the transport's buffer (the client
        sees it if it ever reads), then the connection is aborted."""
        if dropping:
            return
        M.ERRORS.labels("client_not_reading").inc()
        log.info("session %s: %s; closing it", session.id, reason)
        dropping.append(asyncio.create_task(_drop_unread(ws, request, reason)))

    async def send(event: dict) -> None:
        if ws.closed or dropping:
            raise ConnectionError("websocket closed")
        data = json.dumps(event, separators=(",", ":"))
        async with send_lock:
            transport = request.transport
            unsent = transport.get_write_buffer_size() if transport is not None else 0
            if unsent > settings.max_send_buffer_bytes:
                drop(f"{unsent} bytes unsent")
                raise ConnectionError("client not reading")
            try:
                async with asyncio.timeout(settings.send_timeout_s):
                    await ws.send_str(data)
            except TimeoutError:
                drop(f"a send blocked for {settings.send_timeout_s:.0f} s")
                raise ConnectionError("client not reading") from None
        saver.after(event["type"])

    session = RealtimeSession(send, request.app[ROUTER], kind=kind, beta=beta,
                              limits=Limits(max_message_bytes=settings.max_message_bytes),
                              model=request.query.get("model") or "rtmedia-voice",
                              audio_lead_s=settings.ws_audio_lead_ms / 1000)
    saver = SessionSaver(store, session)
    resume_id = request.query.get("resume")
    resumed = await _resume(store, session, resume_id)
    sessions.add(session)
    M.SESSIONS_ACTIVE.labels(kind).inc()
    M.SESSIONS_TOTAL.labels(kind).inc()
    loop = asyncio.get_running_loop()
    try:
        await session.start()
        _announce_resume(session, resume_id, resumed)
        # Idle means no client message: pings and pongs (ours or the client's) are
        # answered inside ws.receive() and must not keep a silent session alive.
        last_message = loop.time()
        while True:
            left = last_message + settings.idle_timeout_s - loop.time()
            if left <= 0:
                session.error("idle_timeout", f"no message for "
                              f"{settings.idle_timeout_s:g} s; closing the session",
                              type_="server_error")
                await session.drain()
                await _close(ws, request, 1000, b"idle timeout")
                break
            try:
                async with asyncio.timeout(left):
                    msg = await ws.receive()
            except TimeoutError:
                continue
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                last_message = loop.time()
                await session.handle(msg.data)
            elif msg.type == WSMsgType.ERROR:
                log.info("websocket error: %s", ws.exception())
                break
            else:  # CLOSE, CLOSING, CLOSED
                break
    finally:
        sessions.discard(session)
        M.SESSIONS_ACTIVE.labels(kind).dec()
        await session.close()
        await saver.final()
        if slot is not None:
            await store.release_slot(slot)
        if dropping:
            await asyncio.gather(*dropping, return_exceptions=True)
        elif not ws.closed:
            await _close(ws, request, 1000, b"")
    return ws


async def _close(ws: web.WebSocketResponse, request: web.Request, code: int, message: bytes,
                 timeout: float = 5.0, drain: bool = True) -> None:
    """Close within ``timeout`` even when the client reads nothing (then abort: closing
    the transport would wait for its unread buffer to drain)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await ws.close(code=code, message=message, drain=drain)
    transport = request.transport
    if transport is not None and transport.get_write_buffer_size():
        transport.abort()


async def _drop_unread(ws: web.WebSocketResponse, request: web.Request, reason: str) -> None:
    error = {"type": "error", "event_id": "event_client_not_reading", "error": {
        "type": "server_error", "code": "client_not_reading",
        "message": f"the client does not read what the server sends ({reason}); "
                   "closing the session"}}
    with contextlib.suppress(Exception):
        async with asyncio.timeout(0.2):  # written at once; waiting for it to drain is moot
            await ws.send_str(json.dumps(error, separators=(",", ":")))
    await _close(ws, request, 1008, b"client not reading", timeout=1.0, drain=False)
    if request.transport is not None:
        request.transport.abort()


async def _load_avatar(app: web.Application) -> None:
    """The avatar for WebRTC sessions, loaded once from the model store at start-up."""
    from streaming.webrtc import load_avatar

    settings: Settings = app[SETTINGS]
    try:
        app[AVATAR] = load_avatar(settings.models_dir, settings.avatar_name)
    except FileNotFoundError as exc:
        log.warning("WebRTC avatar sessions unavailable: %s", exc)
        app[AVATAR] = None


def _avatar(app: web.Application):
    return app.get(AVATAR)


async def client_config(request: web.Request) -> web.Response:
    """What the web pages need to know: ICE servers, the avatar and its mouth area.
    ICE servers with credentials (TURN) only for a caller with a key or client secret."""
    settings: Settings = request.app[SETTINGS]
    avatar = _avatar(request.app)
    ice = settings.ice_servers
    if request[ACCESS] < Access.SECRET:
        ice = [s for s in ice if not ({"username", "credential"} & set(s))]
    return web.json_response({
        "ice_servers": ice, "avatar": settings.avatar_name,
        "mouth": list(avatar.mouth_region()) if avatar else None})


async def realtime_call(request: web.Request) -> web.Response:
    """WebRTC: POST an SDP offer (application/sdp, or JSON {"sdp": ...}), get the answer.

    The client opens a data channel (any label; OpenAI uses "oai-events") for the
    protocol events; reply audio and the avatar video come as media tracks."""
    from streaming.webrtc import WebRTCSession

    settings: Settings = request.app[SETTINGS]
    sessions: set = request.app[SESSIONS]
    body = await request.text()
    as_json = request.content_type == "application/json"
    if as_json:
        try:
            body = json.loads(body)["sdp"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": {"code": "invalid_offer", "message":
                                                'expected {"sdp": "...", "type": "offer"}'}},
                                     status=400)
    if "m=" not in body:
        return web.json_response({"error": {"code": "invalid_offer",
                                            "message": "the body is not an SDP offer"}},
                                 status=400)
    if request.app[DRAINING].is_set():
        return draining_refusal()
    if (refused := await session_rate_refusal(request)) is not None:
        return refused
    avatar = _avatar(request.app)
    if avatar is None:
        return web.json_response({"error": {"code": "avatar_missing", "message":
                                            f"no avatar {settings.avatar_name!r} in the model "
                                            "store; run `rtmedia models install-defaults`"}},
                                 status=503)
    store: StateStore = request.app[STATE]
    slot, limit = await claim_session(settings, store, sessions)
    if limit is not None:
        return web.json_response({"error": {"code": "session_limit", "message":
                                            f"the server is at its limit of "
                                            f"{limit} sessions"}}, status=503)
    kind = "transcription" if request.query.get("intent") == "transcription" else "realtime"

    savers: list[SessionSaver] = []

    def closed(s) -> None:
        sessions.discard(s)
        M.SESSIONS_ACTIVE.labels("webrtc").dec()
        for saver in savers:  # the last state, for a later ?resume=
            final = asyncio.create_task(saver.final())
            _WATCHES.add(final)
            final.add_done_callback(_WATCHES.discard)
        if slot is not None:
            release = asyncio.create_task(store.release_slot(slot))
            _WATCHES.add(release)
            release.add_done_callback(_WATCHES.discard)

    rtc = WebRTCSession(request.app[ROUTER], avatar, settings.avatar_name, kind=kind,
                        ice_servers=settings.ice_servers,
                        limits=Limits(max_message_bytes=settings.max_message_bytes),
                        on_closed=closed, max_send_buffer_bytes=settings.max_send_buffer_bytes)
    rtc.media.video.audio_lead_s = settings.av_audio_lead_ms / 1000
    saver = SessionSaver(store, rtc.session)
    savers.append(saver)
    send_on_channel = rtc.session._send

    async def send_and_save(event: dict) -> None:  # saves after the events that change it
        await send_on_channel(event)
        saver.after(event["type"])

    rtc.session._send = send_and_save
    resume_id = request.query.get("resume")
    resumed = await _resume(store, rtc.session, resume_id)
    sessions.add(rtc)
    M.SESSIONS_ACTIVE.labels("webrtc").inc()
    M.SESSIONS_TOTAL.labels("webrtc").inc()
    try:
        answer = await rtc.answer(body)
    except Exception as exc:
        await rtc.close()
        return web.json_response({"error": {"code": "invalid_offer", "message": str(exc)}},
                                 status=400)
    _announce_resume(rtc.session, resume_id, resumed)
    watch = asyncio.create_task(_webrtc_idle_watch(rtc, settings.idle_timeout_s))
    _WATCHES.add(watch)
    watch.add_done_callback(_WATCHES.discard)
    if as_json:
        return web.json_response({"sdp": answer, "type": "answer"}, status=201)
    return web.Response(text=answer, status=201, content_type="application/sdp")


_WATCHES: set[asyncio.Task] = set()


async def _webrtc_idle_watch(rtc, idle_s: float) -> None:
    """Idle on WebRTC: browsers send microphone packets all the time (silence too), so
    packets are no sign of life (a peer that sends none is dropped after 5 s by the
    session itself). Idle means no data-channel message, no speech heard (VAD) and no
    reply being generated or played, for ``idle_s``; then an ``idle_timeout`` error on
    the data channel and the call is closed."""
    loop = asyncio.get_running_loop()
    session = rtc.session
    last = loop.time()
    handle = session.handle

    async def handle_counted(raw) -> None:  # every data-channel message passes here
        nonlocal last
        last = loop.time()
        await handle(raw)

    session.handle = handle_counted
    poll = min(0.25, idle_s / 4)
    while not rtc.closed:
        await asyncio.sleep(poll)
        agent = session.agent
        if agent.turns.speaking or agent.speaking:
            last = loop.time()
        elif loop.time() - last >= idle_s:
            session.error("idle_timeout", f"no message and no speech for {idle_s:g} s; "
                          "closing the session", type_="server_error")
            await session.drain()
            await rtc.close()
            return


async def session_rate_refusal(request: web.Request) -> web.Response | None:
    """``RTMEDIA_SESSIONS_PER_MINUTE``: new sessions per credential (the client's address
    without one), counted across the replicas sharing the Redis; 429 past it."""
    settings: Settings = request.app[SETTINGS]
    if not settings.sessions_per_minute:
        return None
    who = (auth.bearer_token(request.headers) or auth.protocol_token(request.headers)
           or f"addr:{request.remote}")
    digest = hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    wait = await request.app[STATE].take_rate(digest, settings.sessions_per_minute)
    if not wait:
        return None
    M.SESSIONS_REFUSED.inc()
    M.ERRORS.labels("session_rate_limited").inc()
    return web.json_response({"error": {
        "type": "rate_limit_error", "code": "session_rate_limited",
        "message": f"at most {settings.sessions_per_minute} new sessions a minute per "
                   f"credential; retry in {wait:.0f} s"}},
        status=429, headers={"Retry-After": str(max(1, round(wait)))})


async def _resume(store: StateStore, session: RealtimeSession, resume_id: str | None
                  ) -> list[dict] | None:
    """``?resume=sess_…``: give the new session (before ``start()``) the saved state of
    that id; the restored items, or None (nothing asked, or nothing saved)."""
    if not resume_id or not RESUME_ID.fullmatch(resume_id):
        return None
    state = await store.load_session(resume_id)
    M.SESSIONS_RESUMED.labels(str(state is not None).lower()).inc()
    return None if state is None else restore(session, state, resume_id)


def _announce_resume(session: RealtimeSession, resume_id: str | None,
                     resumed: list[dict] | None) -> None:
    """After session.created: the conversation so far, as the client last saw it, or
    why there is none."""
    for item in resumed or ():
        session.emit("conversation.item.added", **item)
    if resume_id and resumed is None:
        session.error("session_not_found", f"no session {resume_id[:80]!r} to resume "
                      "(expired, or never saved); this is a new session", param="resume")


def draining_refusal() -> web.Response:
    """A new session while draining: 503 before any upgrade, which nginx
    (``proxy_next_upstream http_503``) retries on another replica."""
    M.SESSIONS_REFUSED.inc()
    return web.json_response({"error": {"type": "server_error", "code": "draining", "message":
                                         "this replica is shutting down; connect again"}},
                             status=503, headers={"Retry-After": "1"})


async def drain(app: web.Application, grace_s: float, stop: asyncio.Event | None = None
                ) -> int:
    """Stop taking sessions and wait up to ``grace_s`` (or until ``stop`` is set) for the
    open ones to end; those still open get an ``error`` (``server_shutdown``). Returns
    how many were still open. The listener stays up meanwhile: a proxy or probe sees
    the 503s, not refused connections."""
    app[DRAINING].set()
    M.DRAINING.set(1)
    sessions: set = app[SESSIONS]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    log.info("draining: %d open sessions, grace %.0f s", len(sessions), grace_s)
    # The session set changes in the handlers' finally blocks: polling it is the simple way
    while sessions and loop.time() < deadline and not (stop and stop.is_set()):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    left = list(sessions)
    for s in left:
        session = getattr(s, "session", s)  # WebRTC wraps a RealtimeSession
        with contextlib.suppress(Exception):
            session.error("server_shutdown", "the server is shutting down; reconnect to "
                          "resume", type_="server_error")
    if left:
        await asyncio.gather(*(getattr(s, "session", s).drain(0.5) for s in left),
                             return_exceptions=True)
    log.info("drained: %d sessions still open are closed", len(left))
    return len(left)


async def _close_sessions(app: web.Application) -> None:
    for session in list(app[SESSIONS]):
        await session.close()
