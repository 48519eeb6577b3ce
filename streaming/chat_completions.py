"""``POST /v1/chat/completions``: the OpenAI-compatible HTTP door for non-realtime clients.

Text and ``image_url`` parts (data URLs: this server fetches nothing) go to the
multimodal model, a video to the video model, text-only chats to the agent LLM, with
the routing, limits and API keys of the Realtime door. ``stream: true`` answers with
server-sent events (``chat.completion.chunk``, then ``data: [DONE]``).

A video is one content part, either
  ``{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}``,
  ``{"type": "video_url", "video_url": {"url": "file:///PATH"}}`` (PATH inside one of
  RTMEDIA_VIDEO_DIRS), or frames the client sampled itself:
  ``{"type": "video_frames", "video_frames": {"frames": ["data:image/jpeg;base64,..."],
  "timestamps": [0.0, 1.0], "transcript": "..."}}``.
The server samples up to RTMEDIA_VIDEO_MAX_FRAMES frames of a clip and transcribes its
audio with the stt model.

While a heavy model loads on first use, a streaming answer carries SSE comments
``: loading MODEL`` (ignored by SDKs, visible to raw clients) and then its tokens.
Also here: ``GET /v1/models`` and ``POST /v1/models/{name}/load|unload`` (the API key).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from pipelines.router import ModelRouter
from pipelines.services import chat
from pipelines.triton_client import TritonModelError, TritonUnavailable
from pipelines.video_clip import decode_clip, transcribe_clip
from pipelines.vision import vision_chat
from streaming.model_loader import (
    Busy,
    LoadedVision,
    ModelLoader,
    ModelUnavailable,
    store_size,
)
from streaming.settings import Settings

log = logging.getLogger(__name__)
LOADER = web.AppKey("model_loader", ModelLoader)
ROUTER_KEY = web.AppKey("chat_router", ModelRouter)
SETTINGS_KEY = web.AppKey("chat_settings", Settings)
MAX_TOKENS_LIMIT = 1024
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class BadRequest(ValueError):
    pass


@dataclass
class ChatRequest:
    use_case: str  # agent | multimodal | video
    messages: list[dict]  # the model's shape: text/image parts (vlm) or strings (llm)
    images: list[bytes] = field(default_factory=list)
    video: dict | None = None  # {"source": path|bytes} or {"frames", "timestamps", ...}
    stream: bool = False
    model: str = ""
    max_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None


# -- parsing ---------------------------------------------------------------------------
def data_url_bytes(url: object, kind: str) -> bytes:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise BadRequest(f"{kind} URLs must be data: URLs (base64); this server fetches "
                         "nothing")
    head, _, payload = url.partition(",")
    if ";base64" not in head:
        raise BadRequest(f"{kind} data URLs must be base64")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"the {kind} data URL is not valid base64") from None


def video_path(url: str, allowed: tuple) -> str:
    path = Path(url.removeprefix("file://")).resolve()
    for folder in allowed:
        if path.is_relative_to(Path(folder).resolve()):
            if not path.is_file():
                raise BadRequest(f"no video file at {path}")
            return str(path)
    raise BadRequest("file:// videos must be inside RTMEDIA_VIDEO_DIRS"
                     + ("" if allowed else " (none is configured)"))


def parse_request(body: dict, settings: Settings) -> ChatRequest:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    req = ChatRequest("agent", [], stream=bool(body.get("stream", False)),
                      model=str(body.get("model") or ""))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 256))
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise BadRequest(f"max_tokens must be an integer in 1..{MAX_TOKENS_LIMIT}")
    req.max_tokens = max_tokens
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 2):
            raise BadRequest(f"{key} must be a number in 0..2")
        setattr(req, key, None if value is None else float(value))
    if body.get("seed") is not None:
        if not isinstance(body["seed"], int):
            raise BadRequest("seed must be an integer")
        req.seed = body["seed"]
    parts_out: list[dict] = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest("each message needs a role: system, developer, user or "
                             "assistant")
        content = m.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = [_part(p, req, settings) for p in content]
        else:
            raise BadRequest("a message's content is a string or a list of parts")
        parts_out.append({"role": ROLES[m["role"]], "content": parts})
    if req.video is not None:
        if req.images:
            raise BadRequest("send either images or one video, not both")
        if parts_out[-1]["role"] != "user":
            raise BadRequest("the last message must be the user's question about the video")
        req.use_case = "video"
    elif req.images or req.model == "vlm":
        req.use_case = "multimodal"
    if req.use_case == "agent":
        req.messages = [{"role": m["role"], "content": "".join(p["text"] for p in m["content"])}
                        for m in parts_out]
    else:
        req.messages = parts_out
    return req


def _part(part: object, req: ChatRequest, settings: Settings) -> dict:
    if not isinstance(part, dict):
        raise BadRequest("a content part is an object with a type")
    kind = part.get("type")
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        req.images.append(data_url_bytes(url, "image"))
        return {"type": "image"}
    if kind in ("video_url", "video_frames"):
        if req.video is not None:
            raise BadRequest("one video per request")
        spec = part.get(kind)
        if not isinstance(spec, dict):
            raise BadRequest(f"{kind} must be an object")
        if kind == "video_url":
            url = spec.get("url")
            if isinstance(url, str) and url.startswith("file://"):
                req.video = {"source": video_path(url, settings.video_dirs)}
            else:
                req.video = {"source": data_url_bytes(url, "video")}
        else:
            frames = spec.get("frames")
            if not isinstance(frames, list) or not frames:
                raise BadRequest("video_frames.frames must be a non-empty list of data URLs")
            if len(frames) > max(settings.video_max_frames, 1) * 2:
                raise BadRequest(f"at most {settings.video_max_frames * 2} frames")
            stamps = spec.get("timestamps", [float(i) for i in range(len(frames))])
            if not isinstance(stamps, list) or len(stamps) != len(frames) or not all(
                    isinstance(t, int | float) for t in stamps):
                raise BadRequest("video_frames.timestamps must be one number per frame")
            transcript = spec.get("transcript", "")
            if not isinstance(transcript, str):
                raise BadRequest("video_frames.transcript must be a string")
            req.video = {"frames": [data_url_bytes(f, "frame") for f in frames],
                         "timestamps": [float(t) for t in stamps], "transcript": transcript}
        return {"type": "text", "text": ""}
    raise BadRequest(f"unsupported content part {kind!r}: use text, image_url, video_url "
                     "or video_frames")


# -- answering -------------------------------------------------------------------------
def error_response(status: int, message: str, code: str,
                   headers: dict | None = None) -> web.Response:
    kind = "invalid_request_error" if status == 400 else code
    return web.json_response({"error": {"message": message, "type": kind, "code": code,
                                        "param": None}}, status=status, headers=headers)


async def read_json(request: web.Request, limit: int) -> object:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None


async def tokens(app: web.Application, req: ChatRequest,
                 on_loading) -> AsyncIterator:
    """The reply's tokens from the model the request routes to."""
    router: ModelRouter = app[ROUTER_KEY]
    settings: Settings = app[SETTINGS_KEY]
    opts = {"max_tokens": req.max_tokens, "temperature": req.temperature, "seed": req.seed}
    loader: ModelLoader = app[LOADER]
    if req.use_case == "agent":  # capped like the heavy models (voice turns share it)
        async with loader.use("agent") as route, contextlib.aclosing(
                chat(route.client, req.messages, model=route.model, **opts)) as gen:
            async for tok in gen:
                yield tok
        return
    extra: dict = {}
    images = req.images
    if req.use_case == "video":
        video = req.video or {}
        if "source" in video:
            try:
                clip = await asyncio.to_thread(
                    decode_clip, video["source"], max_frames=settings.video_max_frames,
                    max_seconds=settings.video_max_seconds)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            stt = router.route("stt")
            transcript = await transcribe_clip(stt.client, clip.audio, model=stt.model)
            images, extra = clip.frames, {"timestamps": clip.timestamps,
                                          "transcript": transcript}
        else:
            images = video["frames"]
            extra = {"timestamps": video["timestamps"], "transcript": video["transcript"]}
    async with loader.use(req.use_case, on_loading) as route:
        async with contextlib.aclosing(vision_chat(
                route.client, req.messages, images, model=route.model, top_p=req.top_p,
                **opts, **extra)) as gen:
            async for tok in gen:
                yield tok


async def chat_completions(request: web.Request) -> web.StreamResponse:
    settings: Settings = request.app[SETTINGS_KEY]
    try:
        req = parse_request(await read_json(request, settings.chat_max_body_bytes), settings)
    except BadRequest as exc:
        return error_response(400, str(exc), "invalid_request")
    cid = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    model_name = req.model or {"agent": "llm", "multimodal": "vlm",
                               "video": "video_vlm"}[req.use_case]
    if req.stream:
        return await _stream(request, req, cid, created, model_name)
    text, reason, produced = [], "stop", 0
    try:
        async for tok in tokens(request.app, req, None):
            text.append(tok.text)
            produced += bool(tok.text)
            if tok.finish_reason:
                reason = tok.finish_reason
                produced = getattr(tok, "usage", {}).get("completion_tokens", produced)
    except (BadRequest, Busy, ModelUnavailable, TritonModelError, TritonUnavailable) as exc:
        return _failure(exc)
    return web.json_response({
        "id": cid, "object": "chat.completion", "created": created, "model": model_name,
        "choices": [{"index": 0, "finish_reason": reason,
                     "message": {"role": "assistant", "content": "".join(text)}}],
        "usage": {"prompt_tokens": 0, "completion_tokens": produced,
                  "total_tokens": produced}})


def _failure(exc: Exception) -> web.Response:
    if isinstance(exc, Busy):
        return error_response(429, str(exc), "busy", {"Retry-After": "1"})
    if isinstance(exc, ModelUnavailable | TritonUnavailable):
        return error_response(503, str(exc), "model_unavailable")
    return error_response(400, str(exc), "invalid_request")


async def _stream(request: web.Request, req: ChatRequest, cid: str, created: int,
                  model_name: str) -> web.StreamResponse:
    resp: web.StreamResponse | None = None

    async def start() -> web.StreamResponse:
        nonlocal resp
        if resp is None:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
            await resp.prepare(request)
        return resp

    async def on_loading() -> None:
        await (await start()).write(f": loading {model_name}\n\n".encode())

    def chunk(delta: dict, reason: str | None) -> bytes:
        data = {"id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    gen = tokens(request.app, req, on_loading)
    try:
        first = True
        async with contextlib.aclosing(gen):
            async for tok in gen:
                out = await start()
                if first:
                    await out.write(chunk({"role": "assistant", "content": ""}, None))
                    first = False
                if tok.text:
                    await out.write(chunk({"content": tok.text}, None))
                if tok.finish_reason:
                    await out.write(chunk({}, tok.finish_reason))
    except (BadRequest, Busy, ModelUnavailable, TritonModelError, TritonUnavailable) as exc:
        if resp is None:
            return _failure(exc)
        err = json.loads(_failure(exc).text)
        await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
    out = await start()
    await out.write(b"data: [DONE]\n\n")
    await out.write_eof()
    return out


# -- model management ------------------------------------------------------------------
async def list_models(request: web.Request) -> web.Response:
    loader: ModelLoader = request.app[LOADER]
    heavy = {m["name"]: m for m in await loader.status()}
    router: ModelRouter = request.app[ROUTER_KEY]
    data = [{"id": router.models.get("agent", "llm"), "object": "model", "owned_by": "rtmedia",
             "use_case": "agent", "state": "ready"}]
    data += [{"id": name, "object": "model", "owned_by": "rtmedia", **m}
             for name, m in heavy.items()]
    return web.json_response({"object": "list", "data": data})


async def load_model(request: web.Request) -> web.Response:
    loader: ModelLoader = request.app[LOADER]
    try:
        use_case = loader.find(request.match_info["name"])
        await loader.ensure_loaded(use_case)
    except KeyError as exc:
        return error_response(404, str(exc.args[0]), "model_not_found")
    except (Busy, ModelUnavailable) as exc:
        return _failure(exc)
    return web.json_response(loader.models[use_case].status())


async def unload_model(request: web.Request) -> web.Response:
    loader: ModelLoader = request.app[LOADER]
    try:
        use_case = loader.find(request.match_info["name"])
    except KeyError as exc:
        return error_response(404, str(exc.args[0]), "model_not_found")
    model = loader.models[use_case]
    if model.running or model.waiting:
        return error_response(409, f"{model.name} is in use", "in_use")
    await loader.unload(use_case)
    return web.json_response(model.status())


def install(app: web.Application, router: ModelRouter, settings: Settings) -> ModelLoader:
    """Add the routes and the heavy-model loader to the media server's app."""
    app[ROUTER_KEY] = router
    app[SETTINGS_KEY] = settings
    loader = app[LOADER] = make_loader(router, settings)
    router.vision = LoadedVision(loader)  # the voice agent's turns with images
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/models/{name}/load", load_model)
    app.router.add_post("/v1/models/{name}/unload", unload_model)

    async def start(app: web.Application) -> None:
        loader.start()

    async def stop(app: web.Application) -> None:
        await loader.close()

    app.on_startup.append(start)
    app.on_cleanup.insert(0, stop)
    return loader


def make_loader(router: ModelRouter, settings: Settings) -> ModelLoader:
    return ModelLoader(
        router, idle_unload_s=settings.heavy_idle_unload_s,
        memory_budget_bytes=settings.heavy_memory_budget_mb << 20,
        max_concurrent=settings.heavy_max_concurrent, max_queue=settings.heavy_max_queue,
        sizes={uc: store_size(Path(settings.models_dir), uc) for uc in ("multimodal", "video")})
