"""What nginx (TLS, proxying) adds to the WebSocket path, and how long sessions take to
open: the same small exchange against a replica directly and through the proxy.

    python -m bench.proxy --direct ws://127.0.0.1:8081/v1/realtime \\
        --proxied wss://127.0.0.1/v1/realtime --cafile nginx/certs/fullchain.pem [--key KEY]

Per path: session open (TCP + TLS + upgrade + session.created) and the round trip of a
``session.update`` -> ``session.updated`` on an open session (p50 / p95, ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time

import websockets


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def measure(url: str, context: ssl.SSLContext | None, key: str | None, opens: int,
                  rounds: int) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    open_ms, rtt_ms = [], []
    for _ in range(opens):
        t0 = time.perf_counter()
        async with websockets.connect(url, ssl=context, additional_headers=headers,
                                      compression=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            open_ms.append(1000 * (time.perf_counter() - t0))
        await asyncio.sleep(0.55)  # under nginx's 2 new sessions/s per address
    async with websockets.connect(url, ssl=context, additional_headers=headers,
                                  compression=None) as ws:
        await ws.recv()
        update = json.dumps({"type": "session.update", "session": {
            "type": "realtime", "instructions": "Be brief."}})
        for _ in range(rounds):
            t0 = time.perf_counter()
            await ws.send(update)
            while json.loads(await ws.recv())["type"] != "session.updated":
                pass
            rtt_ms.append(1000 * (time.perf_counter() - t0))
    return {"open_p50": statistics.median(open_ms), "open_p95": _pct(open_ms, 95),
            "rtt_p50": statistics.median(rtt_ms), "rtt_p95": _pct(rtt_ms, 95)}


async def run(args: argparse.Namespace) -> None:
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    print(f"{'path':<8} {'open p50':>9} {'open p95':>9} {'rtt p50':>8} {'rtt p95':>8}  (ms)")
    for name, url, ctx in (("direct", args.direct, None), ("proxied", args.proxied, context)):
        r = await measure(url, ctx, args.key, args.opens, args.rounds)
        print(f"{name:<8} {r['open_p50']:9.1f} {r['open_p95']:9.1f} {r['rtt_p50']:8.2f} "
              f"{r['rtt_p95']:8.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--direct", required=True, help="ws://replica:port/v1/realtime")
    p.add_argument("--proxied", required=True, help="wss://nginx/v1/realtime")
    p.add_argument("--cafile", help="the proxy's certificate (self-signed trials)")
    p.add_argument("--key", help="RTMEDIA_API_KEY, when the replicas need one")
    p.add_argument("--opens", type=int, default=20)
    p.add_argument("--rounds", type=int, default=200)
    asyncio.run(run(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
