"""``rtmedia models load|unload|status``: the heavy models of a running media server.

They talk to the media server (its /v1/models endpoints, with the API key), not to
Triton directly: the server's loader is the one that tracks use, idle time and the
memory budget, so a model loaded by hand is unloaded by the same rules.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request


def _call(args: argparse.Namespace, method: str, path: str) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    key = args.api_key or os.environ.get("RTMEDIA_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(args.server.rstrip("/") + path, method=method,
                                 data=b"{}" if method == "POST" else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": {"message": str(exc)}}


def _row(m: dict) -> str:
    size = m.get("size_bytes") or 0
    load = f"{m['load_s']:.1f} s" if m.get("load_s") is not None else "-"
    return (f"{m.get('id', m.get('name')):<12} {m.get('use_case', ''):<11} "
            f"{m.get('state', ''):<10} {size / 2**20:>8.1f} MiB  load {load:<8} "
            f"running {m.get('running', 0)} waiting {m.get('waiting', 0)}")


def cmd_status(args: argparse.Namespace) -> int:
    try:
        status, data = _call(args, "GET", "/v1/models")
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {args.server}: {exc.reason}")
        return 1
    if status != 200:
        print(f"error: {data.get('error', {}).get('message', status)}")
        return 1
    for m in data["data"]:
        print(_row(m))
    return 0


def _change(args: argparse.Namespace, action: str) -> int:
    try:
        status, data = _call(args, "POST", f"/v1/models/{args.model}/{action}")
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {args.server}: {exc.reason}")
        return 1
    if status != 200:
        print(f"error: {data.get('error', {}).get('message', status)}")
        return 1
    print(_row(data))
    return 0


def add_commands(models: argparse._SubParsersAction) -> None:
    def server_args(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--server", default=os.environ.get("RTMEDIA_SERVER",
                                                           "http://127.0.0.1:8080"),
                        help="the media server (default $RTMEDIA_SERVER or "
                             "http://127.0.0.1:8080)")
        sp.add_argument("--api-key", help="default $RTMEDIA_API_KEY")
        sp.add_argument("--timeout", type=float, default=600.0)
        return sp

    sp = server_args(models.add_parser("status", help="heavy models of a running server: "
                                       "loaded or not, size, use"))
    sp.set_defaults(func=cmd_status)
    for action, helptext in (("load", "load a heavy model now (else: on first use)"),
                             ("unload", "unload a heavy model now (else: when idle)")):
        sp = server_args(models.add_parser(action, help=helptext))
        sp.add_argument("model", help="vlm, video_vlm (or the use case: multimodal, video)")
        sp.set_defaults(func=lambda args, a=action: _change(args, a))
