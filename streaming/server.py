"""The media server: HTTP + WebSocket (aiohttp), health, readiness, metrics, the web demo.

Endpoints:
  GET /v1/realtime         WebSocket, OpenAI Realtime protocol (voice agent)
  GET /v1/realtime?intent=transcription   captions only
  GET /healthz             the process is up
  GET /readyz              200 only when Triton and the models the agent needs are ready
  GET /metrics             Prometheus
  GET /                    the web demo (static files)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipelines.router import ModelRouter
from streaming import metrics as M
from streaming.realtime import Limits, RealtimeSession
from streaming.settings import Settings

log = logging.getLogger(__name__)
WEB_DEMO = Path(__file__).resolve().parent.parent / "web_demo"
# Hard cap of one WebSocket message; between Limits.max_message_bytes and this the
# client gets an error event and the session goes on, above it the socket closes (1009).
HARD_MESSAGE_CAP = 16 << 20

ROUTER = web.AppKey("router", ModelRouter)
SETTINGS = web.AppKey("settings", Settings)
SESSIONS = web.AppKey("sessions", set)
AVATAR = web.AppKey("avatar", object)


def make_router(settings: Settings) -> ModelRouter:
    url = settings.triton_url or f"{settings.triton_host}:{settings.triton_grpc_port}"
    return ModelRouter(url, dict(settings.triton_urls), {
        "stt": settings.stt_model, "tts": settings.tts_model, "agent": settings.llm_model,
        "avatar": settings.avatar_model})


def create_app(settings: Settings, router: ModelRouter | None = None) -> web.Application:
    app = web.Application(client_max_size=HARD_MESSAGE_CAP)
    app[SETTINGS] = settings
    app[ROUTER] = router or make_router(settings)
    app[SESSIONS] = set()
    app.router.add_get("/v1/realtime", realtime_ws)
    app.router.add_post("/v1/realtime/calls", realtime_call)
    app.router.add_get("/v1/config", client_config)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if WEB_DEMO.is_dir():
        app.router.add_get("/", index)
        app.router.add_static("/", WEB_DEMO, show_index=False)
    app.on_startup.append(_load_avatar)
    app.on_shutdown.append(_close_sessions)
    app.on_cleanup.append(lambda a: a[ROUTER].close())
    return app


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/index.html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    router: ModelRouter = request.app[ROUTER]
    problems = []
    for use_case in ("stt", "tts", "agent"):
        route = router.route(use_case)
        if not await route.client.model_ready(route.model):
            problems.append(f"{use_case}: model {route.model!r} not ready at "
                            f"{route.client.url}")
    status = 503 if problems else 200
    return web.json_response({"ready": not problems, "problems": problems}, status=status)


async def metrics(request: web.Request) -> web.Response:
    M.TRITON_STREAMS.set(request.app[ROUTER].open_streams())
    body = generate_latest(M.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _authorized(request: web.Request, settings: Settings) -> bool:
    if not settings.api_key:
        return True
    header = request.headers.get("Authorization", "")
    token = header.removeprefix("Bearer ").strip() or request.query.get("api_key", "")
    if not token:  # browsers cannot set headers on WebSocket: subprotocol carries it
        for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            proto = proto.strip()
            if proto.startswith("openai-insecure-api-key."):
                token = proto.removeprefix("openai-insecure-api-key.")
    return token == settings.api_key


async def realtime_ws(request: web.Request) -> web.StreamResponse:
    settings: Settings = request.app[SETTINGS]
    sessions: set = request.app[SESSIONS]
    if not _authorized(request, settings):
        return web.json_response({"error": {"type": "invalid_request_error",
                                            "code": "invalid_api_key",
                                            "message": "missing or wrong API key"}},
                                 status=401)
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "")
                 .split(",") if p.strip()]
    ws = web.WebSocketResponse(max_msg_size=HARD_MESSAGE_CAP, compress=False, heartbeat=20,
                               protocols=[p for p in protocols if p == "realtime"])
    await ws.prepare(request)
    kind = "transcription" if request.query.get("intent") == "transcription" else "realtime"
    beta = "realtime=v1" in request.headers.get("OpenAI-Beta", "")
    if len(sessions) >= settings.max_sessions:
        M.SESSIONS_REFUSED.inc()
        M.ERRORS.labels("session_limit").inc()
        await ws.send_json({"type": "error", "event_id": "event_refused", "error": {
            "type": "server_error", "code": "session_limit",
            "message": f"the server is at its limit of {settings.max_sessions} concurrent "
                       "sessions; try again later"}})
        await ws.close(code=1013, message=b"session limit")
        return ws

    send_lock = asyncio.Lock()

    async def send(event: dict) -> None:
        if ws.closed:
            raise ConnectionError("websocket closed")
        async with send_lock:
            await ws.send_str(json.dumps(event, separators=(",", ":")))

    session = RealtimeSession(send, request.app[ROUTER], kind=kind, beta=beta,
                              limits=Limits(max_message_bytes=settings.max_message_bytes),
                              model=request.query.get("model") or "rtmedia-voice",
                              audio_lead_s=settings.ws_audio_lead_ms / 1000)
    sessions.add(session)
    M.SESSIONS_ACTIVE.labels(kind).inc()
    M.SESSIONS_TOTAL.labels(kind).inc()
    try:
        await session.start()
        while True:
            try:
                msg = await ws.receive(timeout=settings.idle_timeout_s)
            except TimeoutError:
                session.error("idle_timeout", f"no message for "
                              f"{settings.idle_timeout_s:.0f} s; closing the session",
                              type_="server_error")
                await session.drain()
                await ws.close(code=1000, message=b"idle timeout")
                break
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
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
        if not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()
    return ws


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
    """What the web pages need to know: ICE servers, the avatar and its mouth area."""
    settings: Settings = request.app[SETTINGS]
    avatar = _avatar(request.app)
    return web.json_response({
        "ice_servers": settings.ice_servers, "avatar": settings.avatar_name,
        "mouth": list(avatar.mouth_region()) if avatar else None})


async def realtime_call(request: web.Request) -> web.Response:
    """WebRTC: POST an SDP offer (application/sdp, or JSON {"sdp": ...}), get the answer.

    The client opens a data channel (any label; OpenAI uses "oai-events") for the
    protocol events; reply audio and the avatar video come as media tracks."""
    from streaming.webrtc import WebRTCSession

    settings: Settings = request.app[SETTINGS]
    sessions: set = request.app[SESSIONS]
    if not _authorized(request, settings):
        return web.json_response({"error": {"code": "invalid_api_key",
                                            "message": "missing or wrong API key"}}, status=401)
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
    if len(sessions) >= settings.max_sessions:
        M.SESSIONS_REFUSED.inc()
        M.ERRORS.labels("session_limit").inc()
        return web.json_response({"error": {"code": "session_limit", "message":
                                            f"the server is at its limit of "
                                            f"{settings.max_sessions} sessions"}}, status=503)
    avatar = _avatar(request.app)
    if avatar is None:
        return web.json_response({"error": {"code": "avatar_missing", "message":
                                            f"no avatar {settings.avatar_name!r} in the model "
                                            "store; run `rtmedia models install-defaults`"}},
                                 status=503)
    kind = "transcription" if request.query.get("intent") == "transcription" else "realtime"

    def closed(s) -> None:
        sessions.discard(s)
        M.SESSIONS_ACTIVE.labels("webrtc").dec()

    rtc = WebRTCSession(request.app[ROUTER], avatar, settings.avatar_name, kind=kind,
                        ice_servers=settings.ice_servers,
                        limits=Limits(max_message_bytes=settings.max_message_bytes),
                        on_closed=closed)
    rtc.media.video.audio_lead_s = settings.av_audio_lead_ms / 1000
    sessions.add(rtc)
    M.SESSIONS_ACTIVE.labels("webrtc").inc()
    M.SESSIONS_TOTAL.labels("webrtc").inc()
    try:
        answer = await rtc.answer(body)
    except Exception as exc:
        await rtc.close()
        return web.json_response({"error": {"code": "invalid_offer", "message": str(exc)}},
                                 status=400)
    if as_json:
        return web.json_response({"sdp": answer, "type": "answer"}, status=201)
    return web.Response(text=answer, status=201, content_type="application/sdp")


async def _close_sessions(app: web.Application) -> None:
    for session in list(app[SESSIONS]):
        await session.close()
